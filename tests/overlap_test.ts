/**
 * Overlap checks against QEMU: images whose L2 entries were edited to point at metadata; a write
 * there must be refused and the image marked corrupt, as qemu-io does.
 */

import assert from "node:assert/strict";
import { isQcowError } from "../core/errors.ts";
import { FileDevice } from "../core/file_device.ts";
import { MemoryDevice } from "../core/memory_device.ts";
import { Qcow2Image, type Qcow2OpenOptions } from "../drivers/qcow2/qcow2_image.ts";
import { createQcow2 } from "../drivers/qcow2/create.ts";
import { checkExitStatus, checkQcow2 } from "../drivers/qcow2/check.ts";
import { HAVE_QEMU, makeTempDir, qemuImg, qemuInfo, qemuIo } from "./_qemu.ts";
import { warnIfNoQemu } from "./_support.ts";

warnIfNoQemu("overlap_test.ts");

const KiB = 1024;
const MiB = 1024 * KiB;
const COPIED = 1n << 63n;
/** The guest cluster whose L2 entry is redirected (4 KiB clusters). */
const GUEST = 4096;

interface Layout {
  l1: number;
  refcountTable: number;
  refcountBlock: number;
  l2: number;
  otherL2: number;
}

function u64(bytes: Uint8Array, at: number): number {
  return Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(at));
}

function setU64(bytes: Uint8Array, at: number, value: bigint): void {
  new DataView(bytes.buffer, bytes.byteOffset).setBigUint64(at, value);
}

/** The offset in the L1 entry at `at` (without its COPIED flag). */
function tableOffset(bytes: Uint8Array, at: number): number {
  const entry = new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(at);
  return Number(entry & 0x00fffffffffffe00n);
}

function layout(bytes: Uint8Array): Layout {
  const l1 = u64(bytes, 40);
  const refcountTable = u64(bytes, 48);
  return {
    l1,
    refcountTable,
    refcountBlock: u64(bytes, refcountTable),
    l2: tableOffset(bytes, l1),
    otherL2: tableOffset(bytes, l1 + 8),
  };
}

/** An 8 MiB image with 4 KiB clusters and two L2 tables, made by qemu-img and qemu-io. */
async function base(dir: string): Promise<string> {
  const path = `${dir}/base.qcow2`;
  await qemuImg("create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", path, "8M");
  await qemuIo(path, ["write -P 1 0 8k", "write -P 2 2M 4k"]);
  return path;
}

/**
 * A copy of `path` whose L2 entry for guest cluster 1 points at `target` (COPIED; the metadata
 * there has refcount 1 already). An entry cannot point at the header (offset 0 means
 * unallocated): for the header, the entry is cleared and the header's refcount set to 0, so the
 * write allocates cluster 0.
 */
async function redirected(path: string, copy: string, target: number): Promise<Uint8Array> {
  const bytes = await Deno.readFile(path);
  const { l2, refcountBlock } = layout(bytes);
  if (target === 0) {
    setU64(bytes, l2 + 8, 0n);
    bytes.fill(0, refcountBlock, refcountBlock + 2); // 16-bit refcount of cluster 0
  } else {
    setU64(bytes, l2 + 8, BigInt(target) | COPIED);
  }
  await Deno.writeFile(copy, bytes);
  return bytes;
}

async function openWritable(path: string, options: Qcow2OpenOptions = {}): Promise<Qcow2Image> {
  const device = FileDevice.open(path, { readOnly: false });
  return await Qcow2Image.open(device, { ...options, readOnly: false, ownsDevice: true });
}

function withoutFeatures(bytes: Uint8Array): Uint8Array {
  const copy = bytes.slice();
  copy.fill(0, 72, 80);
  return copy;
}

async function qemuIoOutput(path: string, command: string): Promise<string> {
  const output = await new Deno.Command("qemu-io", {
    args: ["-f", "qcow2", "-c", command, path],
    stdout: "piped",
    stderr: "piped",
    env: { LC_ALL: "C" },
  }).output();
  const decoder = new TextDecoder();
  return decoder.decode(output.stdout) + decoder.decode(output.stderr);
}

const CASES: [string, (l: Layout) => number][] = [
  ["qcow2_header", () => 0],
  ["active L1 table", (l) => l.l1],
  ["refcount table", (l) => l.refcountTable],
  ["refcount block", (l) => l.refcountBlock],
  ["active L2 table", (l) => l.otherL2],
];

for (const [name, where] of CASES) {
  Deno.test({
    name: `overlap: a write aimed at the ${name} marks the image corrupt, as in qemu-io`,
    ignore: !HAVE_QEMU,
    async fn() {
      await using dir = await makeTempDir();
      const original = await base(dir.path);
      const target = where(layout(await Deno.readFile(original)));
      const ours = `${dir.path}/ours.qcow2`;
      const theirs = `${dir.path}/theirs.qcow2`;
      const before = await redirected(original, ours, target);
      await Deno.copyFile(ours, theirs);

      const image = await openWritable(ours);
      try {
        await assert.rejects(
          image.write(new Uint8Array(512).fill(9), GUEST),
          (e) =>
            isQcowError(e, "CORRUPT_METADATA") &&
            e.message ===
              `Marking image as corrupt: Preventing invalid write on metadata (overlaps with ${name})`,
        );
        assert.equal(image.corrupt, true);
        const notCorrupt = (e: unknown) =>
          isQcowError(e, "CORRUPT_METADATA") && /Image is corrupt/.test(e.message);
        await assert.rejects(image.read(new Uint8Array(512), 0), notCorrupt);
        await assert.rejects(image.write(new Uint8Array(512), 2 * MiB), notCorrupt);
        await assert.rejects(image.writeZeroes(0, 4096), notCorrupt);
        await assert.rejects(image.flush(), notCorrupt);
      } finally {
        await image.close();
      }
      const after = await Deno.readFile(ours);
      assert.deepEqual(withoutFeatures(after), withoutFeatures(before));
      assert.equal(after[79]! & 2, 2);
      const info = await qemuInfo(ours);
      const data = (info["format-specific"] as { data: { corrupt: boolean } }).data;
      assert.equal(data.corrupt, true);
      await assert.rejects(
        openWritable(ours),
        (e) => isQcowError(e, "CORRUPT_METADATA") && /cannot be opened read\/write/.test(e.message),
      );

      // qemu-io refuses the same write with the same region and leaves the same file.
      const output = await qemuIoOutput(theirs, "write -P 9 4096 512");
      assert.match(output, new RegExp(`overlaps with ${name}`));
      assert.match(output, /Marking image as corrupt/);
      const qemuData = (await qemuInfo(theirs))["format-specific"] as {
        data: { corrupt: boolean };
      };
      assert.equal(qemuData.data.corrupt, true);
      assert.deepEqual(await Deno.readFile(theirs), after);
    },
  });
}

Deno.test({
  name: "overlap: with overlapCheck none the write goes through",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    const original = await base(dir.path);
    const { refcountBlock } = layout(await Deno.readFile(original));
    const ours = `${dir.path}/ours.qcow2`;
    await redirected(original, ours, refcountBlock);
    const image = await openWritable(ours, { overlapCheck: "none" });
    await image.write(new Uint8Array(512).fill(9), GUEST);
    await image.close();
    const after = await Deno.readFile(ours);
    assert.deepEqual(
      after.subarray(refcountBlock, refcountBlock + 512),
      new Uint8Array(512).fill(9),
    );
    assert.equal(after[79]! & 2, 0);
  },
});

Deno.test({
  name: "overlap: the constant template does not check L2 tables or refcount blocks",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    const original = await base(dir.path);
    const { otherL2, refcountTable } = layout(await Deno.readFile(original));
    const ours = `${dir.path}/ours.qcow2`;
    await redirected(original, ours, otherL2);
    const image = await openWritable(ours, { overlapCheck: "constant" });
    await image.write(new Uint8Array(8), GUEST + 512); // lands on unused L2 entries
    await image.close();
    assert.equal((await Deno.readFile(ours))[79]! & 2, 0);

    await redirected(original, ours, refcountTable);
    const again = await openWritable(ours, { overlapCheck: "constant" });
    await assert.rejects(
      again.write(new Uint8Array(8), GUEST),
      (e) => isQcowError(e, "CORRUPT_METADATA") && /overlaps with refcount table/.test(e.message),
    );
    await again.close();
  },
});

Deno.test({
  name: "overlap: an unaligned L2 table offset found by a write marks the image corrupt",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    const original = await base(dir.path);
    const bytes = await Deno.readFile(original);
    const { l1, l2 } = layout(bytes);
    setU64(bytes, l1, BigInt(l2 + 512) | COPIED);
    const ours = `${dir.path}/ours.qcow2`;
    await Deno.writeFile(ours, bytes);
    const image = await openWritable(ours);
    await assert.rejects(
      image.write(new Uint8Array(512), 0),
      (e) =>
        isQcowError(e, "CORRUPT_METADATA") &&
        /^Marking image as corrupt: L2 table offset 0x[0-9a-f]+ unaligned/.test(e.message),
    );
    await assert.rejects(image.read(new Uint8Array(512), 2 * MiB), (e) => isQcowError(e));
    await image.close();
    const after = await Deno.readFile(ours);
    assert.deepEqual(withoutFeatures(after), withoutFeatures(bytes));
    assert.equal(after[79]! & 2, 2);
    // qemu-io marks the image corrupt for the same finding and leaves the same file.
    const theirs = `${dir.path}/theirs.qcow2`;
    await Deno.writeFile(theirs, bytes);
    assert.match(
      await qemuIoOutput(theirs, "write 0 512"),
      /Marking image as corrupt: L2 table offset 0x[0-9a-f]+ unaligned/,
    );
    assert.deepEqual(await Deno.readFile(theirs), after);
  },
});

Deno.test("overlap: ordinary writes, L1 growth and refcount growth raise no false alarm", async () => {
  for (const overlapCheck of ["cached", "all"] as const) {
    const device = new MemoryDevice({ name: "grow.qcow2" });
    await createQcow2(device, { size: 4 * MiB, clusterSize: 512 });
    const image = await Qcow2Image.open(device, { readOnly: false, overlapCheck });
    // Small clusters: writing a few MiB needs new refcount blocks and a larger refcount table.
    for (let at = 0; at < 4 * MiB; at += 96 * KiB) {
      await image.write(new Uint8Array(1536).fill(at % 251), at + 100);
    }
    await image.resize(64 * MiB);
    await image.write(new Uint8Array(4096).fill(3), 60 * MiB);
    await image.write(new Uint8Array(100).fill(4), 60 * MiB + 10);
    // Past 8 MiB of file the refcount table (one 512-byte cluster) must grow.
    await image.write(new Uint8Array(10 * MiB).fill(5), 20 * MiB);
    assert.ok(image.header.refcountTableClusters > 1);
    await image.close();
    assert.equal(image.corrupt, false);
    assert.equal(checkExitStatus(await checkQcow2(device)), 0);
    const reader = await Qcow2Image.open(device);
    const back = new Uint8Array(100);
    await reader.read(back, 60 * MiB + 10);
    assert.deepEqual(back, new Uint8Array(100).fill(4));
    await reader.close();
  }
});

const SNAPSHOT_CASES: [string, (b: Uint8Array) => number][] = [
  ["snapshot table", (b) => u64(b, 64)],
  ["inactive L1 table", (b) => u64(b, u64(b, 64))],
];

for (const [name, where] of SNAPSHOT_CASES) {
  Deno.test({
    name:
      `overlap: a write aimed at the ${name} of a snapshot marks the image corrupt, as in qemu-io`,
    ignore: !HAVE_QEMU,
    async fn() {
      await using dir = await makeTempDir();
      const original = await base(dir.path);
      await qemuImg("snapshot", "-c", "s1", original);
      const target = where(await Deno.readFile(original));
      const ours = `${dir.path}/ours.qcow2`;
      const theirs = `${dir.path}/theirs.qcow2`;
      // The L2 table is shared with the snapshot: the write copies it first, then hits the
      // (COPIED) entry, as QEMU does.
      await redirected(original, ours, target);
      await Deno.copyFile(ours, theirs);
      const image = await openWritable(ours);
      await assert.rejects(
        image.write(new Uint8Array(512).fill(9), GUEST),
        (e) =>
          isQcowError(e, "CORRUPT_METADATA") &&
          e.message ===
            `Marking image as corrupt: Preventing invalid write on metadata (overlaps with ${name})`,
      );
      await assert.rejects(image.read(new Uint8Array(512), 0), (e) => isQcowError(e));
      await image.close();
      const after = await Deno.readFile(ours);
      const untouched = (await Deno.readFile(theirs)).subarray(target, target + 512);
      assert.deepEqual(after.subarray(target, target + untouched.length), untouched);
      assert.equal(after[79]! & 2, 2);
      const output = await qemuIoOutput(theirs, "write -P 9 4096 512");
      assert.match(output, new RegExp(`overlaps with ${name}`));
      assert.equal((await Deno.readFile(theirs))[79]! & 2, 2);
    },
  });
}

Deno.test({
  name: "overlap: snapshot L2 tables are checked with the all template only",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    const original = await base(dir.path);
    const snapshotL2 = layout(await Deno.readFile(original)).l2;
    await qemuImg("snapshot", "-c", "s1", original);
    // The write copies the shared L2 table: the old one is the snapshot's only.
    await qemuIo(original, ["write -P 3 0 512"]);
    const ours = `${dir.path}/ours.qcow2`;
    const before = await redirected(original, ours, snapshotL2);
    assert.notEqual(layout(before).l2, snapshotL2);
    const strict = await openWritable(ours, { overlapCheck: "all" });
    await assert.rejects(
      strict.write(new Uint8Array(512).fill(9), GUEST),
      (e) =>
        isQcowError(e, "CORRUPT_METADATA") && /overlaps with inactive L2 table\)$/.test(e.message),
    );
    await strict.close();
    assert.deepEqual(withoutFeatures(await Deno.readFile(ours)), withoutFeatures(before));

    await Deno.writeFile(ours, before);
    const cached = await openWritable(ours);
    await cached.write(new Uint8Array(8).fill(9), GUEST + 504); // unused entries of that table
    await cached.close();
    assert.equal((await Deno.readFile(ours))[79]! & 2, 0);
  },
});
