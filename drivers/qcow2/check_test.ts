import assert from "node:assert/strict";
import { readU32, readU64, writeU32 } from "../../core/bytes.ts";
import type { BlockDevice } from "../../core/block_device.ts";
import { isQcowError } from "../../core/errors.ts";
import { MemoryDevice } from "../../core/memory_device.ts";
import { openImage } from "../open_image.ts";
import { checkExitStatus, checkQcow2 } from "./check.ts";
import { createQcow2 } from "./create.ts";
import { readRefcount, writeRefcount } from "./refcount_math.ts";

const CLUSTER = 65536;

/** A 1 MiB image with guest clusters 0..3 written, built by qcowlab itself. */
async function makeImage(options: { refcountBits?: number } = {}): Promise<MemoryDevice> {
  const device = new MemoryDevice({ name: "mem.qcow2" });
  await createQcow2(device, { size: 1024 * 1024, ...options });
  await using image = await openImage(device, { readOnly: false });
  for (let i = 0; i < 4; i++) await image.write(new Uint8Array(CLUSTER).fill(i + 1), i * CLUSTER);
  await image.flush();
  return device;
}

async function u64(device: MemoryDevice, offset: number): Promise<number> {
  const bytes = new Uint8Array(8);
  await device.read(bytes, offset);
  return readU64(bytes, 0);
}

/** Where refcount block 0 is, and the image's refcount order. */
async function refblock0(device: MemoryDevice): Promise<{ offset: number; order: number }> {
  const head = new Uint8Array(104);
  await device.read(head, 0);
  return { offset: await u64(device, readU64(head, 48)), order: readU32(head, 96) };
}

async function getRefcount(device: MemoryDevice, cluster: number): Promise<number> {
  const { offset, order } = await refblock0(device);
  const block = new Uint8Array(CLUSTER);
  await device.read(block, offset);
  return readRefcount(block, cluster, order);
}

async function setRefcount(device: MemoryDevice, cluster: number, value: number): Promise<void> {
  const { offset, order } = await refblock0(device);
  const block = new Uint8Array(CLUSTER);
  await device.read(block, offset);
  writeRefcount(block, cluster, order, value);
  await device.write(block, offset);
}

/** The host cluster of guest cluster 0. */
async function firstDataCluster(device: MemoryDevice): Promise<number> {
  const head = new Uint8Array(104);
  await device.read(head, 0);
  const l2 = (await u64(device, readU64(head, 40))) % 2 ** 56;
  return ((await u64(device, l2)) % 2 ** 56) / CLUSTER;
}

Deno.test("checkQcow2() finds nothing wrong with a fresh image", async () => {
  const device = await makeImage();
  const result = await checkQcow2(device);
  assert.equal(checkExitStatus(result), 0);
  assert.deepEqual(result.messages, []);
  assert.equal(result.filename, "mem.qcow2");
  assert.equal(result["total-clusters"], 16);
  assert.equal(result["allocated-clusters"], 4);
  assert.equal(result["image-end-offset"], device.size);
  assert.equal(result.corruptions, undefined);
});

Deno.test("checkQcow2() finds and frees a leaked cluster", async () => {
  const device = await makeImage();
  const leaked = device.size / CLUSTER;
  await device.truncate(device.size + CLUSTER);
  await setRefcount(device, leaked, 1);
  const found = await checkQcow2(device, { filename: "x" });
  assert.equal(found.leaks, 1);
  assert.equal(checkExitStatus(found), 3);
  assert.deepEqual(found.messages, [`Leaked cluster ${leaked} refcount=1 reference=0`]);

  const repaired = await checkQcow2(device, { repair: "leaks" });
  assert.equal(repaired["leaks-fixed"], 1);
  assert.equal(repaired.leaks, undefined);
  assert.equal(checkExitStatus(repaired), 0);
  assert.equal(await getRefcount(device, leaked), 0);
});

Deno.test("checkQcow2() rebuilds refcounts only with repair all", async () => {
  const device = await makeImage();
  const data = await firstDataCluster(device);
  await setRefcount(device, data, 0);
  const found = await checkQcow2(device);
  assert.equal(found.corruptions, 2); // the refcount and the COPIED flag
  assert.equal(checkExitStatus(found), 2);

  const leaksOnly = await checkQcow2(device, { repair: "leaks" });
  assert.equal(leaksOnly.failure, "Input/output error");
  assert.ok(leaksOnly.messages.includes("ERROR need to rebuild refcount structures"));
  assert.equal(checkExitStatus(leaksOnly), 1);

  const oldEnd = device.size;
  const repaired = await checkQcow2(device, { repair: "all" });
  assert.equal(checkExitStatus(repaired), 0);
  assert.equal(repaired["corruptions-fixed"], 1);
  assert.ok(repaired.messages.includes("Rebuilding refcount structure"));
  const head = new Uint8Array(72);
  await device.read(head, 0);
  assert.ok(readU64(head, 48) >= oldEnd, "the new refcount table lies past the old end");
  assert.equal(await getRefcount(device, data), 1);
  assert.equal(checkExitStatus(await checkQcow2(device)), 0);
});

Deno.test("checkQcow2() checks 1-bit and 64-bit refcounts", async () => {
  for (const refcountBits of [1, 64]) {
    const device = await makeImage({ refcountBits });
    assert.equal(checkExitStatus(await checkQcow2(device)), 0);
    await setRefcount(device, await firstDataCluster(device), 0);
    assert.equal(checkExitStatus(await checkQcow2(device)), 2);
    assert.equal(checkExitStatus(await checkQcow2(device, { repair: "all" })), 0);
    assert.equal(checkExitStatus(await checkQcow2(device)), 0);
  }
});

Deno.test("checkQcow2() judges COPIED flags with the stored refcounts", async () => {
  const device = await makeImage();
  const data = await firstDataCluster(device);
  await setRefcount(device, data, 2);
  const found = await checkQcow2(device);
  assert.deepEqual(found.messages, [
    `Leaked cluster ${data} refcount=2 reference=1`,
    `ERROR OFLAG_COPIED data cluster: l2_entry=80000000000${
      (data * CLUSTER).toString(16)
    } refcount=2`,
  ]);
  assert.equal(checkExitStatus(await checkQcow2(device, { repair: "all" })), 0);
});

Deno.test("checkQcow2() works on dirty and corrupt images and clears the bits on repair", async () => {
  const device = await makeImage();
  const bits = new Uint8Array(8);
  writeU32(bits, 4, 3);
  await device.write(bits, 72);
  await assert.rejects(openImage(device, { readOnly: false }));
  assert.equal(checkExitStatus(await checkQcow2(device)), 0);
  await checkQcow2(device, { repair: "leaks" });
  await device.read(bits, 72);
  assert.equal(readU32(bits, 4), 0);
});

Deno.test("checkQcow2() reads no data clusters", async () => {
  const device = await makeImage();
  const data = await firstDataCluster(device);
  const reads: [number, number][] = [];
  const spy: BlockDevice = {
    get size() {
      return device.size;
    },
    readOnly: true,
    name: "spy",
    read(buffer, offset) {
      reads.push([offset, buffer.length]);
      return device.read(buffer, offset);
    },
    write: (data, offset) => device.write(data, offset),
    flush: () => device.flush(),
    truncate: (size) => device.truncate(size),
    close: () => Promise.resolve(),
    [Symbol.asyncDispose]: () => Promise.resolve(),
  };
  assert.equal(checkExitStatus(await checkQcow2(spy)), 0);
  for (const [offset, length] of reads) {
    const first = Math.floor(offset / CLUSTER);
    const last = Math.floor((offset + length - 1) / CLUSTER);
    assert.ok(last < data || first >= data + 4, `read data at ${offset}`);
  }
});

Deno.test("checkQcow2() refuses bad options, read-only repairs and images it cannot open", async () => {
  const device = await makeImage();
  await assert.rejects(
    checkQcow2(device, { repair: "some" as "all" }),
    (error) => isQcowError(error, "INVALID_ARGUMENT"),
  );
  const readOnly = MemoryDevice.from(device.toBytes(), { readOnly: true });
  await assert.rejects(
    checkQcow2(readOnly, { repair: "all" }),
    (error) => isQcowError(error, "READ_ONLY"),
  );
  await device.write(new Uint8Array(4), 0);
  await assert.rejects(checkQcow2(device), (error) => isQcowError(error, "BAD_MAGIC"));
});

Deno.test("checkQcow2() checks a 16 TiB sparse image without reading its data", async () => {
  const device = new MemoryDevice();
  await createQcow2(device, { size: 2 ** 44 });
  {
    await using image = await openImage(device, { readOnly: false });
    await image.write(new Uint8Array(CLUSTER).fill(7), 2 ** 43);
  }
  const started = performance.now();
  const result = await checkQcow2(device);
  assert.ok(performance.now() - started < 2000);
  assert.equal(checkExitStatus(result), 0);
  assert.equal(result["total-clusters"], 2 ** 28);
  assert.equal(result["allocated-clusters"], 1);
});
