/**
 * A model of a qcow2 virtual disk as a plain byte array, random scenarios for it (create options,
 * an optional backing file, operation sequences) and a runner that applies a scenario to qcowlab
 * and to the model side by side. Shared by `model_test.ts` (in memory) and
 * `interop_write_test.ts` (which hands the final images to qemu-img).
 *
 * The model follows QEMU 7.2, checked by hand with qemu-io (see `interop_write_test.ts`, which
 * repeats those checks):
 * - a discard acts on whole clusters only (subclusters too are ignored), and the last cluster
 *   counts as whole when the image ends inside it and the discard reaches the end; a discarded
 *   cluster reads as zeros, except in a version 2 image with a backing file, where QEMU refuses
 *   discards and nothing changes;
 * - growing an image whose backing file is longer than the old size makes the new area read as
 *   zeros; a version 2 image, which cannot mark clusters as zeros, manages that only inside the
 *   cluster holding the old end, and refuses to grow past it; without such a backing file the new
 *   area reads as zeros anyway;
 * - qcowlab refuses to shrink over clusters it has allocated (QEMU would discard them).
 *
 * @module
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import { createQcow2, type CreateQcow2Options } from "../drivers/qcow2/create.ts";
import { isQcowError } from "../core/errors.ts";
import { MemoryDevice } from "../core/memory_device.ts";
import { openImage } from "../drivers/open_image.ts";
import type { Image } from "../drivers/image.ts";
import { assertStructure, type StructureSummary } from "./_structure.ts";
import { checkExitStatus, checkQcow2 } from "../drivers/qcow2/check.ts";
import { firstDifference, seededRandom } from "./_qemu.ts";

const KiB = 1024;
const MiB = 1024 * KiB;

/** The largest virtual size a scenario reaches. */
export const MAX_MODEL_SIZE = 6 * MiB;

/** The backing file of a scenario. */
export interface BackingSpec {
  format: "raw" | "qcow2";
  /** Virtual size in bytes (a multiple of 512). */
  size: number;
  /** Seeds its contents. */
  seed: number;
  /** qcow2 only: its cluster size. */
  clusterSize: number;
}

/** How a scenario's image is created and opened. */
export interface ImageOptions {
  compat: "0.10" | "1.1";
  clusterSize: number;
  refcountBits: number;
  lazyRefcounts: boolean;
  extendedL2: boolean;
  preallocation: boolean;
  /** Initial virtual size. */
  size: number;
  backing?: BackingSpec;
  /** L2 cache size in tables on every open (small values force evictions); 0 for the default. */
  l2CacheTables: number;
}

/**
 * Where an operation acts, as raw numbers mapped onto the current size when it runs (the size
 * changes as the scenario goes, and raw numbers shrink well).
 */
export interface Place {
  /** Picks the cluster. */
  cluster: number;
  /** 0: cluster start, 1: a few bytes in, 2: anywhere inside, 3: a few bytes before its end. */
  anchor: number;
  /** Picks the byte within the anchor's choices. */
  delta: number;
  /** 0: up to a sector, 1: about a cluster, 2: whole clusters, 3: up to 3 clusters, 4: to the end. */
  span: number;
  /** Picks the length within the span's choices. */
  length: number;
}

/** One step of a scenario. */
export type Op =
  | { op: "write"; place: Place; seed: number; fill: boolean }
  | { op: "writeZeroes"; place: Place; mayUnmap: boolean }
  | { op: "discard"; place: Place }
  | {
    op: "writeCompressed";
    cluster: number;
    clusters: number;
    seed: number;
    compressible: boolean;
  }
  | { op: "grow"; sectors: number }
  | { op: "shrink"; sectors: number }
  | { op: "flush" }
  | { op: "reopen" }
  | { op: "read"; place: Place };

/** A whole scenario. */
export interface Scenario {
  options: ImageOptions;
  ops: Op[];
}

const placeArb: fc.Arbitrary<Place> = fc.record({
  cluster: fc.nat(),
  anchor: fc.nat({ max: 3 }),
  delta: fc.nat(),
  span: fc.nat({ max: 4 }),
  length: fc.nat(),
});

/** One operation, weighted towards writes. */
export const opArbitrary: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 8,
    arbitrary: fc.record({
      op: fc.constant("write" as const),
      place: placeArb,
      seed: fc.nat(),
      fill: fc.boolean(),
    }),
  },
  {
    weight: 3,
    arbitrary: fc.record({
      op: fc.constant("writeZeroes" as const),
      place: placeArb,
      mayUnmap: fc.boolean(),
    }),
  },
  { weight: 3, arbitrary: fc.record({ op: fc.constant("discard" as const), place: placeArb }) },
  {
    weight: 3,
    arbitrary: fc.record({
      op: fc.constant("writeCompressed" as const),
      cluster: fc.nat(),
      clusters: fc.integer({ min: 1, max: 3 }),
      seed: fc.nat(),
      compressible: fc.boolean(),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      op: fc.constant("grow" as const),
      sectors: fc.integer({ min: 1, max: 4096 }),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({ op: fc.constant("shrink" as const), sectors: fc.nat() }),
  },
  { weight: 1, arbitrary: fc.constant({ op: "flush" as const }) },
  { weight: 1, arbitrary: fc.constant({ op: "reopen" as const }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant("read" as const), place: placeArb }) },
);

/** Create options, sizes and a backing file, limited to what qemu-img accepts. */
export const optionsArbitrary: fc.Arbitrary<ImageOptions> = fc.record({
  v3: fc.oneof({ weight: 3, arbitrary: fc.constant(true) }, {
    weight: 1,
    arbitrary: fc.constant(false),
  }),
  clusterBits: fc.oneof(
    { weight: 20, arbitrary: fc.integer({ min: 9, max: 16 }) },
    { weight: 1, arbitrary: fc.constant(21) },
  ),
  refcountOrder: fc.integer({ min: 0, max: 6 }),
  lazyRefcounts: fc.boolean(),
  extendedL2: fc.boolean(),
  preallocation: fc.oneof(
    { weight: 9, arbitrary: fc.constant(false) },
    { weight: 1, arbitrary: fc.constant(true) },
  ),
  sectors: fc.integer({ min: 1, max: 8192 }),
  alignToCluster: fc.boolean(),
  backing: fc.oneof(
    { weight: 2, arbitrary: fc.constant(undefined) },
    {
      weight: 3,
      arbitrary: fc.record({
        format: fc.constantFrom("raw" as const, "qcow2" as const),
        percent: fc.integer({ min: 10, max: 150 }),
        seed: fc.nat(),
        clusterSize: fc.constantFrom(4096, 65536),
      }),
    },
  ),
  l2CacheTables: fc.oneof(
    { weight: 3, arbitrary: fc.constant(0) },
    { weight: 1, arbitrary: fc.integer({ min: 2, max: 4 }) },
  ),
}).map((r): ImageOptions => {
  const clusterSize = 2 ** r.clusterBits;
  let size = r.sectors * 512;
  if (r.alignToCluster) size = Math.max(clusterSize, Math.round(size / clusterSize) * clusterSize);
  size = Math.min(size, 4 * MiB);
  const extendedL2 = r.v3 && r.extendedL2 && clusterSize >= 16 * KiB;
  const options: ImageOptions = {
    compat: r.v3 ? "1.1" : "0.10",
    clusterSize,
    refcountBits: r.v3 ? 2 ** r.refcountOrder : 16,
    lazyRefcounts: r.v3 && r.lazyRefcounts,
    extendedL2,
    preallocation: r.preallocation && (r.backing === undefined || extendedL2),
    size,
    l2CacheTables: r.l2CacheTables,
  };
  if (r.backing !== undefined) {
    options.backing = {
      format: r.backing.format,
      size: Math.max(512, Math.round((size * r.backing.percent) / 100 / 512) * 512),
      seed: r.backing.seed,
      clusterSize: r.backing.clusterSize,
    };
  }
  return options;
});

/** Options for {@linkcode scenarioArbitrary}. */
export interface ScenarioShape {
  /** Fewest operations; default 1. */
  minOps?: number;
  /** Most operations; default 30. */
  maxOps?: number;
  /** Image options; default {@linkcode optionsArbitrary}. */
  options?: fc.Arbitrary<ImageOptions>;
  /** Operations; default {@linkcode opArbitrary}. */
  op?: fc.Arbitrary<Op>;
}

/** A scenario: image options and a sequence of operations. */
export function scenarioArbitrary(shape: ScenarioShape = {}): fc.Arbitrary<Scenario> {
  return fc.record({
    options: shape.options ?? optionsArbitrary,
    ops: fc.array(shape.op ?? opArbitrary, {
      minLength: shape.minOps ?? 1,
      maxLength: shape.maxOps ?? 30,
      size: "max",
    }),
  });
}

/**
 * Images whose refcount structures must grow: 512-byte clusters with 64-bit (or 32-bit)
 * refcounts, where the first refcount table cluster covers only 2 MiB (4 MiB) of file.
 */
export const growthOptionsArbitrary: fc.Arbitrary<ImageOptions> = fc.record({
  clusterSize: fc.constant(512),
  refcountBits: fc.constantFrom(64, 64, 64, 32),
  sectors: fc.integer({ min: 6144, max: 12288 }),
  backing: fc.option(fc.nat(), { freq: 3 }),
  l2CacheTables: fc.constantFrom(0, 3),
}).map((r): ImageOptions => {
  const options: ImageOptions = {
    compat: "1.1",
    clusterSize: r.clusterSize,
    refcountBits: r.refcountBits,
    lazyRefcounts: false,
    extendedL2: false,
    preallocation: false,
    size: r.sectors * 512,
    l2CacheTables: r.l2CacheTables,
  };
  if (r.backing !== null) {
    options.backing = { format: "raw", size: options.size / 2, seed: r.backing, clusterSize: 4096 };
  }
  return options;
});

/** Operations for {@linkcode growthOptionsArbitrary}: mostly long writes. */
export const growthOpArbitrary: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.record({
      op: fc.constant("write" as const),
      // From near the start to the end of the disk.
      place: fc.record({
        cluster: fc.nat({ max: 64 }),
        anchor: fc.nat({ max: 3 }),
        delta: fc.nat(),
        span: fc.constant(4),
        length: fc.nat(),
      }),
      seed: fc.nat(),
      fill: fc.boolean(),
    }),
  },
  { weight: 3, arbitrary: opArbitrary },
);

/** Fills `buffer` with seeded pseudo-random bytes. */
export function fillRandom(buffer: Uint8Array, seed: number): Uint8Array {
  const random = seededRandom(seed);
  const words = Math.floor(buffer.length / 4);
  const view = new DataView(buffer.buffer, buffer.byteOffset, buffer.byteLength);
  for (let i = 0; i < words; i++) view.setUint32(i * 4, random() * 2 ** 32);
  for (let i = words * 4; i < buffer.length; i++) buffer[i] = random() * 256;
  return buffer;
}

/** Seeded bytes that deflate well: a short random pattern repeated with a few changes. */
export function fillCompressible(buffer: Uint8Array, seed: number): Uint8Array {
  const random = seededRandom(seed);
  const pattern = fillRandom(new Uint8Array(1 + Math.floor(random() * 64)), seed + 1);
  for (let i = 0; i < buffer.length; i++) buffer[i] = pattern[i % pattern.length]!;
  for (let k = 0; k < 8 && buffer.length > 0; k++) {
    buffer[Math.floor(random() * buffer.length)] = random() * 256;
  }
  return buffer;
}

/** The backing file's virtual contents and the device holding it. */
export interface BuiltBacking {
  /** What the backing file reads as. */
  contents: Uint8Array;
  /** The backing file itself (raw bytes or a qcow2 image). */
  device: MemoryDevice;
  /** The name the overlay stores. */
  name: string;
}

/** Builds a scenario's backing file: raw random bytes, or a qcow2 image with random extents. */
export async function buildBacking(spec: BackingSpec): Promise<BuiltBacking> {
  if (spec.format === "raw") {
    const contents = fillRandom(new Uint8Array(spec.size), spec.seed);
    return {
      contents,
      device: MemoryDevice.from(contents, { name: "base.raw" }),
      name: "base.raw",
    };
  }
  const device = new MemoryDevice({ name: "base.qcow2" });
  await createQcow2(device, { size: spec.size, clusterSize: spec.clusterSize });
  const contents = new Uint8Array(spec.size);
  const image = await openImage(device, { readOnly: false });
  try {
    const random = seededRandom(spec.seed);
    for (let k = 0; k < 6; k++) {
      const at = Math.floor(random() * spec.size);
      const length = Math.min(spec.size - at, 1 + Math.floor(random() * 256 * KiB));
      const data = fillRandom(new Uint8Array(length), spec.seed + k);
      await image.write(data, at);
      contents.set(data, at);
    }
  } finally {
    await image.close();
  }
  return { contents, device, name: "base.qcow2" };
}

/** The create options qcowlab gets for `options`. */
export function createOptions(options: ImageOptions, backing?: BuiltBacking): CreateQcow2Options {
  const create: CreateQcow2Options = {
    size: options.size,
    compat: options.compat,
    clusterSize: options.clusterSize,
    refcountBits: options.refcountBits,
    lazyRefcounts: options.lazyRefcounts,
    extendedL2: options.extendedL2,
  };
  if (options.preallocation) create.preallocation = "metadata";
  if (backing !== undefined && options.backing !== undefined) {
    create.backingFile = backing.name;
    create.backingFormat = options.backing.format;
  }
  return create;
}

/** The model: the virtual disk as bytes, and what QEMU's rules need to know about the image. */
export class DiskModel {
  bytes: Uint8Array;
  readonly clusterSize: number;
  readonly v3: boolean;
  readonly backing: Uint8Array | undefined;

  constructor(size: number, clusterSize: number, v3: boolean, backing?: Uint8Array) {
    this.clusterSize = clusterSize;
    this.v3 = v3;
    this.backing = backing;
    this.bytes = new Uint8Array(size);
    if (backing) this.bytes.set(backing.subarray(0, size));
  }

  get size(): number {
    return this.bytes.length;
  }

  write(data: Uint8Array, offset: number): void {
    this.bytes.set(data, offset);
  }

  zero(offset: number, length: number): void {
    this.bytes.fill(0, offset, offset + length);
  }

  /** QEMU's discard: whole clusters only; v2 with a backing file ignores it. */
  discard(offset: number, length: number): void {
    if (!this.v3 && this.backing) return;
    const cs = this.clusterSize;
    const end = offset + length;
    for (let start = Math.ceil(offset / cs) * cs; start < end; start += cs) {
      const stop = Math.min(start + cs, this.size);
      if (stop <= end) this.zero(start, stop - start);
    }
  }

  /**
   * Whether growing to `size` fails: in a version 2 image with a backing file longer than the disk,
   * QEMU can write zeros over the rest of the last cluster but cannot mark whole clusters as zeros.
   */
  growRefused(size: number): boolean {
    const lastClusterEnd = Math.ceil(this.size / this.clusterSize) * this.clusterSize;
    return !this.v3 && this.backing !== undefined && this.backing.length > this.size &&
      size > lastClusterEnd;
  }

  /** Grows or shrinks; a grown area reads as zeros. */
  resize(size: number): void {
    const bytes = new Uint8Array(size);
    bytes.set(this.bytes.subarray(0, Math.min(size, this.size)));
    this.bytes = bytes;
  }

  /** What `[offset, end)` reads as when this image holds nothing there. */
  unallocatedView(offset: number, end: number): Uint8Array {
    const view = new Uint8Array(end - offset);
    if (this.backing && offset < this.backing.length) {
      view.set(this.backing.subarray(offset, Math.min(end, this.backing.length)));
    }
    return view;
  }
}

/** A concrete byte range. */
export interface Range {
  offset: number;
  length: number;
}

/** Maps a {@linkcode Place} onto an image of `size` bytes with clusters of `cs`; undefined if empty. */
export function resolvePlace(place: Place, size: number, cs: number): Range | undefined {
  if (size === 0) return undefined;
  const clusters = Math.ceil(size / cs);
  const base = (place.cluster % clusters) * cs;
  const small = 1 + (place.delta % Math.min(cs - 1, 511));
  let within: number;
  switch (place.anchor) {
    case 0:
      within = 0;
      break;
    case 1:
      within = small;
      break;
    case 2:
      within = place.delta % cs;
      break;
    default:
      within = cs - small;
  }
  const offset = Math.min(base + within, size - 1);
  const room = size - offset;
  let length: number;
  switch (place.span) {
    case 0:
      length = 1 + (place.length % 512);
      break;
    case 1:
      length = cs - 256 + (place.length % 512);
      break;
    case 2:
      length = cs * (1 + (place.length % 3));
      break;
    case 3:
      length = 1 + (place.length % (3 * cs));
      break;
    default:
      length = room;
  }
  return { offset, length: Math.max(1, Math.min(length, room)) };
}

/** Describes an op as it ran, for failure messages. */
function describe(op: Op, range?: Range): string {
  const where = range ? ` ${range.offset}+${range.length}` : "";
  switch (op.op) {
    case "write":
      return `write${where} (${op.fill ? "fill" : "random"} ${op.seed})`;
    case "writeZeroes":
      return `writeZeroes${where}${op.mayUnmap ? " mayUnmap" : ""}`;
    case "discard":
    case "read":
      return `${op.op}${where}`;
    case "writeCompressed":
      return `writeCompressed${where} (${op.compressible ? "compressible" : "random"})`;
    case "grow":
    case "shrink":
      return `${op.op}${where}`;
    default:
      return op.op;
  }
}

/** What {@linkcode runScenario} leaves behind. */
export interface ScenarioResult {
  /** The closed image. */
  device: MemoryDevice;
  /** The backing file, if any. */
  backing: BuiltBacking | undefined;
  /** The expected virtual disk. */
  model: DiskModel;
  /** The operations as they ran. */
  log: string[];
  /** The final image's structure (when checked). */
  summary: StructureSummary | undefined;
}

/** Options for {@linkcode runScenario}. */
export interface RunOptions {
  /** Check the structure after each flush and at each reopen (default true). */
  checkStructure?: boolean;
}

/**
 * Runs `scenario` against qcowlab and the model, comparing reads as it goes, the structure at every
 * flush and reopen, and the whole disk at the end. The image is closed on return.
 */
export async function runScenario(
  scenario: Scenario,
  runOptions: RunOptions = {},
): Promise<ScenarioResult> {
  const { options } = scenario;
  const checkStructure = runOptions.checkStructure ?? true;
  const backing = options.backing ? await buildBacking(options.backing) : undefined;
  const device = new MemoryDevice({ name: "model.qcow2" });
  await createQcow2(device, createOptions(options, backing));
  const cs = options.clusterSize;
  const model = new DiskModel(options.size, cs, options.compat === "1.1", backing?.contents);
  const log: string[] = [];
  const open = (): Promise<Image> => {
    const openOptions: Parameters<typeof openImage>[1] = { readOnly: false };
    if (backing) openOptions.resolveBacking = () => backing.device;
    if (options.l2CacheTables > 0) openOptions.l2CacheSize = options.l2CacheTables * cs;
    return openImage(device, openOptions);
  };
  const context = (): string => `after ${log.length} op(s): ${log.slice(-6).join("; ")}`;
  const compare = async (image: Image, offset: number, length: number): Promise<void> => {
    const actual = new Uint8Array(length);
    await image.read(actual, offset);
    const expected = model.bytes.subarray(offset, offset + length);
    const at = firstDifference(actual, expected);
    if (at >= 0) {
      assert.fail(
        `read ${offset}+${length} differs at virtual ${offset + at}: got ${actual[at]}, ` +
          `expected ${expected[at]} (${context()})`,
      );
    }
  };
  let summary: StructureSummary | undefined;
  const structure = async (open = false): Promise<void> => {
    if (!checkStructure) return;
    if (open && options.lazyRefcounts) {
      // With lazy refcounts an open image is dirty and its refcounts on disk lag behind until
      // close: what is on disk must be an image that a repair makes whole.
      const copy = MemoryDevice.from(device.toBytes(), { name: "flushed.qcow2" });
      const repair = await checkQcow2(copy, { repair: "all" });
      assert.equal(checkExitStatus(repair), 0, `repair of the flushed state ${context()}`);
      summary = await assertStructure(copy, { label: `repaired image ${context()}` });
      return;
    }
    summary = await assertStructure(device, { label: `image ${context()}` });
  };

  let image = await open();
  /** Compares the range an op touched and a cluster either side of it. */
  const around = (range: Range): Promise<void> => {
    const from = Math.max(0, range.offset - cs);
    const to = Math.min(model.size, range.offset + range.length + cs);
    return compare(image, from, to - from);
  };
  try {
    await structure();
    for (const op of scenario.ops) {
      const size = model.size;
      switch (op.op) {
        case "write": {
          const range = resolvePlace(op.place, size, cs);
          if (!range) break;
          log.push(describe(op, range));
          const data = new Uint8Array(range.length);
          if (op.fill) data.fill(op.seed % 256);
          else fillRandom(data, op.seed);
          await image.write(data, range.offset);
          model.write(data, range.offset);
          await around(range);
          break;
        }
        case "writeZeroes": {
          const range = resolvePlace(op.place, size, cs);
          if (!range) break;
          log.push(describe(op, range));
          await image.writeZeroes(range.offset, range.length, { mayUnmap: op.mayUnmap });
          model.zero(range.offset, range.length);
          await around(range);
          break;
        }
        case "discard": {
          const range = resolvePlace(op.place, size, cs);
          if (!range) break;
          log.push(describe(op, range));
          await image.discard(range.offset, range.length);
          model.discard(range.offset, range.length);
          await around(range);
          break;
        }
        case "writeCompressed": {
          if (size === 0) break;
          const clusters = Math.ceil(size / cs);
          const first = op.cluster % clusters;
          const offset = first * cs;
          const length = Math.min(op.clusters * cs, size - offset);
          const range = { offset, length };
          log.push(describe(op, range));
          const data = new Uint8Array(length);
          if (op.compressible) fillCompressible(data, op.seed);
          else fillRandom(data, op.seed);
          await image.writeCompressed(data, offset);
          model.write(data, offset);
          await around(range);
          break;
        }
        case "grow": {
          const newSize = Math.min(MAX_MODEL_SIZE, size + op.sectors * 512);
          if (newSize === size) break;
          log.push(describe(op, { offset: size, length: newSize - size }));
          if (model.growRefused(newSize)) {
            await assert.rejects(image.resize(newSize), (e) => isQcowError(e));
            assert.equal(image.size, size, "a refused resize changed the size");
          } else {
            await image.resize(newSize);
            model.resize(newSize);
          }
          await compare(image, Math.max(0, size - cs), model.size - Math.max(0, size - cs));
          break;
        }
        case "shrink": {
          const newSize = 512 * (1 + (op.sectors % Math.max(1, size / 512)));
          if (newSize >= size) break;
          log.push(describe(op, { offset: newSize, length: size - newSize }));
          // qcowlab refuses to cut off anything it has allocated: ask it where that is.
          let allocated = false;
          for (let at = newSize; at < size && !allocated;) {
            const status = await image.blockStatus(at, size - at);
            allocated = status.kind !== "unallocated";
            at += status.length;
          }
          if (allocated) {
            await assert.rejects(
              image.resize(newSize, { shrink: true }),
              (e) => isQcowError(e, "INVALID_ARGUMENT"),
            );
            assert.equal(image.size, size, "a refused shrink changed the size");
          } else {
            // Unallocated means it reads as the backing file (or zeros): the model must agree.
            const tail = model.bytes.subarray(newSize, size);
            const at = firstDifference(tail, model.unallocatedView(newSize, size));
            assert.equal(at, -1, `unallocated tail differs at ${newSize + at} (${context()})`);
            await image.resize(newSize, { shrink: true });
            model.resize(newSize);
          }
          break;
        }
        case "flush":
          log.push("flush");
          await image.flush();
          await structure(true);
          break;
        case "reopen":
          log.push("reopen");
          await image.close();
          await structure();
          image = await open();
          assert.equal(image.size, model.size, `size after reopen (${context()})`);
          break;
        case "read": {
          const range = resolvePlace(op.place, size, cs);
          if (!range) break;
          log.push(describe(op, range));
          await compare(image, range.offset, range.length);
          break;
        }
      }
    }
    assert.equal(image.size, model.size, "virtual size");
    await compare(image, 0, model.size);
    await image.close();
    await structure();
    image = await open();
    await compare(image, 0, model.size);
  } catch (error) {
    if (error instanceof Error) error.message += `\n  ops: ${log.join("; ")}`;
    throw error;
  } finally {
    await image.close();
  }
  return { device, backing, model, log, summary };
}
