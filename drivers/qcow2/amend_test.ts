import assert from "node:assert/strict";
import { MemoryDevice } from "../../core/memory_device.ts";
import { isQcowError } from "../../core/errors.ts";
import { amendQcow2 } from "./amend.ts";
import { checkExitStatus, checkQcow2 } from "./check.ts";
import { createQcow2 } from "./create.ts";
import { Qcow2Image } from "./qcow2_image.ts";

async function bytesOf(device: MemoryDevice): Promise<Uint8Array> {
  const out = new Uint8Array(device.size);
  await device.read(out, 0);
  return out;
}

async function fresh(options: Parameters<typeof createQcow2>[1]): Promise<MemoryDevice> {
  const device = new MemoryDevice({ name: "t.qcow2" });
  await createQcow2(device, options);
  return device;
}

async function clean(device: MemoryDevice): Promise<void> {
  const result = await checkQcow2(device);
  assert.equal(checkExitStatus(result), 0, result.messages.join("\n"));
  assert.equal(result.leaks, undefined);
}

Deno.test("amendQcow2() upgrades an empty v2 image to exactly what create writes for v3", async () => {
  const v2 = await fresh({ size: 1 << 24, compat: "0.10" });
  const v3 = await fresh({ size: 1 << 24, compat: "1.1", lazyRefcounts: true });
  await amendQcow2(v2, { compat: "1.1", lazyRefcounts: true });
  assert.deepEqual(await bytesOf(v2), await bytesOf(v3));
});

Deno.test("amendQcow2() downgrades, turning zero clusters into unallocated ones without a backing file", async () => {
  const device = await fresh({ size: 1 << 24, clusterSize: 4096 });
  {
    await using image = await Qcow2Image.open(device, { readOnly: false });
    await image.write(new Uint8Array(64 * 1024).fill(7), 0);
    await image.writeZeroes(8192, 16384); // zero clusters that keep their host clusters
    await image.writeZeroes(1 << 20, 8192); // zero clusters without host clusters
  }
  const result = await amendQcow2(device, { compat: "0.10" });
  assert.ok(result.zeroClustersExpanded > 0);
  await using image = await Qcow2Image.open(device);
  assert.equal(image.header.version, 2);
  const data = new Uint8Array(64 * 1024);
  await image.read(data, 0);
  assert.ok(data.subarray(0, 8192).every((b) => b === 7));
  assert.ok(data.subarray(8192, 24576).every((b) => b === 0));
  assert.ok(data.subarray(24576).every((b) => b === 7));
  await clean(device);
});

Deno.test("amendQcow2() changes the refcount width both ways and keeps the image clean", async () => {
  const device = await fresh({ size: 1 << 24, clusterSize: 4096 });
  {
    await using image = await Qcow2Image.open(device, { readOnly: false });
    await image.write(new Uint8Array(300 * 1024).fill(3), 12345);
  }
  for (const bits of [1, 64, 8, 16]) {
    await amendQcow2(device, { refcountBits: bits });
    await using image = await Qcow2Image.open(device);
    assert.equal(2 ** image.header.refcountOrder, bits);
    const data = new Uint8Array(300 * 1024);
    await image.read(data, 12345);
    assert.ok(data.every((b) => b === 3));
    await clean(device);
  }
});

Deno.test("amendQcow2() refuses bad options and impossible changes with typed errors, writing nothing", async () => {
  const device = await fresh({ size: 1 << 24, extendedL2: true, clusterSize: 65536 });
  const before = await bytesOf(device);
  const refusals: [Parameters<typeof amendQcow2>[1], string, RegExp][] = [
    [{ compat: "0.9" }, "INVALID_ARGUMENT", /Unknown compatibility level 0\.9/],
    [{ refcountBits: 12 }, "INVALID_ARGUMENT", /power of two/],
    [{ compat: "0.10", lazyRefcounts: true }, "INVALID_ARGUMENT", /Lazy refcounts only/],
    [{ compat: "0.10" }, "UNSUPPORTED_FEATURE", /incompatible features 0x10 set/],
    [{ backingFile: "other.qcow2" }, "INVALID_ARGUMENT", /Cannot amend the backing file/],
    [{ clusterSize: 4096 } as never, "INVALID_ARGUMENT", /Invalid amend option/],
  ];
  for (const [options, code, message] of refusals) {
    await assert.rejects(
      () => amendQcow2(device, options),
      (e) => isQcowError(e, code as never) && message.test(e.message),
      JSON.stringify(options),
    );
  }
  assert.deepEqual(await bytesOf(device), before);
});

Deno.test("amendQcow2() never writes zeros over metadata that a zero cluster's entry points at", async () => {
  const device = await fresh({ size: 1 << 24, clusterSize: 4096 });
  {
    await using image = await Qcow2Image.open(device, { readOnly: false });
    await image.write(new Uint8Array(8192).fill(5), 0);
  }
  const head = new Uint8Array(104);
  await device.read(head, 0);
  const view = new DataView(head.buffer);
  const l1Offset = Number(view.getBigUint64(40));
  const l1 = new Uint8Array(8);
  await device.read(l1, l1Offset);
  const l2Offset = Number(new DataView(l1.buffer).getBigUint64(0) & 0x00fffffffffffe00n);
  // L2 entry 1: an allocated zero cluster "at" the L1 table.
  const entry = new Uint8Array(8);
  new DataView(entry.buffer).setBigUint64(0, 0x8000000000000001n | BigInt(l1Offset));
  await device.write(entry, l2Offset + 8);
  const before = await bytesOf(device);
  await assert.rejects(
    () => amendQcow2(device, { compat: "0.10" }),
    (e) => isQcowError(e, "CORRUPT_METADATA") && /overlaps with active L1 table/.test(e.message),
  );
  assert.deepEqual(await bytesOf(device), before);
});
