import assert from "node:assert/strict";
import { MemoryDevice } from "../core/memory_device.ts";
import { HAVE_QEMU, makeTempDir, qemuImg, qemuMap } from "../tests/_qemu.ts";
import { makeChain, warnIfNoQemu } from "../tests/_support.ts";
import type { BlockStatus, Image, ImageInfo } from "./image.ts";
import { type MapEntry, type MapEntryWithFile, mapImage } from "./map_image.ts";
import { openImage } from "./open_image.ts";
import { RawImage } from "./raw.ts";

warnIfNoQemu("drivers/map_image_test.ts");

const KiB = 1024;

/** An image whose allocation is scripted: `layout` lists runs from offset 0 on. */
class ScriptedImage implements Image {
  readonly format = "qcow2" as const;
  readonly device: MemoryDevice;
  readonly backingName = undefined;
  readonly backingFormat = undefined;
  backing: Image | undefined;
  calls: [number, number][] = [];
  #layout: (BlockStatus & { start: number })[];

  constructor(name: string, size: number, layout: BlockStatus[], backing?: Image) {
    this.device = new MemoryDevice({ size, name });
    this.backing = backing;
    let start = 0;
    this.#layout = layout.map((status) => {
      const run = { ...status, start };
      start += status.length;
      return run;
    });
    assert.equal(start, size);
  }

  get size(): number {
    return this.device.size;
  }

  get filename(): string {
    return this.device.name;
  }

  readonly readOnly = true;

  read(): Promise<void> {
    return Promise.reject(new Error("not used"));
  }

  write(): Promise<void> {
    return Promise.reject(new Error("not used"));
  }

  writeZeroes(): Promise<void> {
    return Promise.reject(new Error("not used"));
  }

  discard(): Promise<void> {
    return Promise.reject(new Error("not used"));
  }

  writeCompressed(): Promise<void> {
    return Promise.reject(new Error("not used"));
  }

  resize(): Promise<void> {
    return Promise.reject(new Error("not used"));
  }

  flush(): Promise<void> {
    return Promise.reject(new Error("not used"));
  }

  blockStatus(offset: number, length: number): Promise<BlockStatus> {
    this.calls.push([offset, length]);
    const run = this.#layout.find((r) => offset >= r.start && offset < r.start + r.length)!;
    const status: BlockStatus = {
      kind: run.kind,
      length: Math.min(length, run.start + run.length - offset),
    };
    if (run.hostOffset !== undefined) status.hostOffset = run.hostOffset + offset - run.start;
    return Promise.resolve(status);
  }

  info(): ImageInfo {
    return {
      "virtual-size": this.size,
      filename: this.filename,
      format: "qcow2",
      "dirty-flag": false,
    };
  }

  setBacking(backing: Image | undefined): void {
    this.backing = backing;
  }

  async close(): Promise<void> {
    await this.backing?.close();
    await this.device.close();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

function withoutFile(entries: MapEntryWithFile[]): MapEntry[] {
  return entries.map(({ filename: _, ...entry }) => entry);
}

Deno.test("mapImage() reports a raw image as one run of data", async () => {
  await using image = new RawImage(new MemoryDevice({ size: 4096, name: "disk.raw" }), {
    ownsDevice: true,
  });
  assert.deepEqual(await mapImage(image), [
    {
      start: 0,
      length: 4096,
      depth: 0,
      present: true,
      zero: false,
      data: true,
      offset: 0,
      filename: "disk.raw",
    },
  ]);
});

Deno.test("mapImage() maps only the range asked for", async () => {
  await using image = new RawImage(new MemoryDevice({ size: 4096 }), { ownsDevice: true });
  const entries = await mapImage(image, { start: 1000, length: 24 });
  assert.deepEqual(withoutFile(entries), [
    { start: 1000, length: 24, depth: 0, present: true, zero: false, data: true, offset: 1000 },
  ]);
  assert.deepEqual(withoutFile(await mapImage(image, { start: 4000 })), [
    { start: 4000, length: 96, depth: 0, present: true, zero: false, data: true, offset: 4000 },
  ]);
  assert.deepEqual(await mapImage(image, { start: 4096 }), []);
  assert.deepEqual(await mapImage(image, { length: 0 }), []);
});

Deno.test("mapImage() rejects ranges outside the image with OUT_OF_RANGE", async () => {
  await using image = new RawImage(new MemoryDevice({ size: 4096 }), { ownsDevice: true });
  const outOfRange = { name: "QcowError", code: "OUT_OF_RANGE" };
  await assert.rejects(mapImage(image, { start: 4000, length: 97 }), outOfRange);
  await assert.rejects(mapImage(image, { start: -1 }), outOfRange);
  await assert.rejects(mapImage(image, { length: 1.5 }), outOfRange);
  await assert.rejects(mapImage(image, { length: 4097 }), outOfRange);
});

Deno.test({
  name: "mapImage() rejects a start past the end or a negative length with OUT_OF_RANGE",
  fn: async () => {
    await using image = new RawImage(new MemoryDevice({ size: 4096 }), { ownsDevice: true });
    const outOfRange = { name: "QcowError", code: "OUT_OF_RANGE" };
    await assert.rejects(mapImage(image, { start: 4097 }), outOfRange);
    await assert.rejects(mapImage(image, { start: 100, length: -50 }), outOfRange);
  },
});

Deno.test("mapImage() merges neighbours with equal flags and contiguous offsets", async () => {
  await using image = new ScriptedImage("top", 6 * KiB, [
    { kind: "data", length: KiB, hostOffset: 10 * KiB },
    { kind: "data", length: KiB, hostOffset: 11 * KiB },
    { kind: "data", length: KiB, hostOffset: 20 * KiB },
    { kind: "zero", length: KiB },
    { kind: "zero", length: KiB },
    { kind: "compressed", length: KiB },
  ]);
  assert.deepEqual(withoutFile(await mapImage(image)), [
    {
      start: 0,
      length: 2 * KiB,
      depth: 0,
      present: true,
      zero: false,
      data: true,
      offset: 10 * KiB,
    },
    {
      start: 2 * KiB,
      length: KiB,
      depth: 0,
      present: true,
      zero: false,
      data: true,
      offset: 20 * KiB,
    },
    { start: 3 * KiB, length: 2 * KiB, depth: 0, present: true, zero: true, data: false },
    { start: 5 * KiB, length: KiB, depth: 0, present: true, zero: false, data: true },
  ]);
});

Deno.test("mapImage() looks through unallocated ranges into the backing chain", async () => {
  const base = new ScriptedImage("base", 4 * KiB, [
    { kind: "data", length: 2 * KiB, hostOffset: 0 },
    { kind: "unallocated", length: 2 * KiB },
  ]);
  await using top = new ScriptedImage("top", 8 * KiB, [
    { kind: "unallocated", length: KiB },
    { kind: "zero", length: KiB },
    { kind: "unallocated", length: 6 * KiB },
  ], base);
  const entries = await mapImage(top);
  assert.deepEqual(entries, [
    {
      start: 0,
      length: KiB,
      depth: 1,
      present: true,
      zero: false,
      data: true,
      offset: 0,
      filename: "base",
    },
    { start: KiB, length: KiB, depth: 0, present: true, zero: true, data: false, filename: "top" },
    {
      start: 2 * KiB,
      length: 2 * KiB,
      depth: 1,
      present: false,
      zero: true,
      data: false,
      filename: "base",
    },
    {
      start: 4 * KiB,
      length: 4 * KiB,
      depth: 0,
      present: false,
      zero: true,
      data: false,
      filename: "top",
    },
  ]);
  // The backing image is never asked about bytes past its end.
  assert.ok(base.calls.every(([offset, length]) => offset + length <= base.size), `${base.calls}`);
});

/** Drops fields of `qemu-img map` output that qcowlab does not produce (newer QEMUs add some). */
function comparable(entries: MapEntry[]): MapEntry[] {
  return entries.map((e) => {
    const entry: MapEntry = {
      start: e.start,
      length: e.length,
      depth: e.depth,
      present: e.present,
      zero: e.zero,
      data: e.data,
    };
    if (e.offset !== undefined) entry.offset = e.offset;
    return entry;
  });
}

Deno.test({
  name: "mapImage() agrees with qemu-img map on a qcow2 chain",
  ignore: !HAVE_QEMU,
  fn: async () => {
    await using dir = await makeTempDir();
    const chain = await makeChain(dir.path);
    for (const path of [chain.base, chain.top, chain.overRaw]) {
      await using image = await openImage(path);
      const expected = comparable(await qemuMap(path));
      assert.deepEqual(withoutFile(await mapImage(image)), expected, path);
    }
  },
});

Deno.test({
  name: "mapImage() agrees with qemu-img map on part of a qcow2 chain",
  ignore: !HAVE_QEMU,
  fn: async () => {
    await using dir = await makeTempDir();
    const chain = await makeChain(dir.path);
    await using image = await openImage(chain.top);
    for (const [start, length] of [[64 * KiB, 600 * KiB], [512 * KiB, 1024 * KiB]] as const) {
      const json = await qemuImg(
        "map",
        "--output",
        "json",
        `--start-offset=${start}`,
        `--max-length=${length}`,
        chain.top,
      );
      const expected = comparable(JSON.parse(json));
      assert.deepEqual(withoutFile(await mapImage(image, { start, length })), expected);
    }
  },
});

Deno.test({
  name: "mapImage() names the file that holds each range",
  ignore: !HAVE_QEMU,
  fn: async () => {
    await using dir = await makeTempDir();
    const chain = await makeChain(dir.path);
    await using image = await openImage(chain.top);
    const entries = await mapImage(image);
    for (const entry of entries) {
      assert.equal(entry.filename, entry.depth === 0 ? chain.top : chain.base);
    }
    assert.ok(entries.some((entry) => entry.depth === 1));
  },
});
