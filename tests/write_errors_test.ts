import assert from "node:assert/strict";
import { isQcowError } from "../core/errors.ts";
import { MemoryDevice } from "../core/memory_device.ts";
import { createQcow2 } from "../drivers/qcow2/create.ts";
import { checkQcow2 } from "../drivers/qcow2/check.ts";
import { openImage } from "../drivers/open_image.ts";

const MiB = 1024 * 1024;

/** A 4 MiB v3 image with 64 KiB clusters and data in its first two clusters. */
async function image(): Promise<MemoryDevice> {
  const device = new MemoryDevice({ name: "img.qcow2" });
  await createQcow2(device, { size: 4 * MiB });
  const writable = await openImage(device, { readOnly: false });
  await writable.write(new Uint8Array(128 * 1024).fill(7), 0);
  await writable.close();
  return device;
}

function edit(device: MemoryDevice, offset: number, bytes: number[]): MemoryDevice {
  const copy = device.toBytes();
  copy.set(bytes, offset);
  return MemoryDevice.from(copy, { name: device.name });
}

function u64At(bytes: Uint8Array, offset: number): number {
  return Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(offset));
}

Deno.test("a write to an image opened read-only fails with READ_ONLY and changes nothing", async () => {
  const device = await image();
  const before = device.toBytes();
  await using reader = await openImage(device);
  await assert.rejects(reader.write(new Uint8Array(512), 0), (e) => isQcowError(e, "READ_ONLY"));
  await assert.rejects(reader.writeZeroes(0, 512), (e) => isQcowError(e, "READ_ONLY"));
  await assert.rejects(reader.discard(0, 65536), (e) => isQcowError(e, "READ_ONLY"));
  await assert.rejects(reader.resize(8 * MiB), (e) => isQcowError(e, "READ_ONLY"));
  assert.deepEqual(device.toBytes(), before);

  const locked = MemoryDevice.from(before, { readOnly: true });
  await assert.rejects(
    openImage(locked, { readOnly: false }),
    (e) => isQcowError(e, "READ_ONLY") && /read-only/.test(e.message),
  );
});

Deno.test("a write past the end fails with OUT_OF_RANGE and changes nothing", async () => {
  const device = await image();
  const before = device.toBytes();
  await using writer = await openImage(device, { readOnly: false });
  await assert.rejects(
    writer.write(new Uint8Array(1024), 4 * MiB - 512),
    (e) => isQcowError(e, "OUT_OF_RANGE"),
  );
  await assert.rejects(writer.writeZeroes(4 * MiB, 1), (e) => isQcowError(e, "OUT_OF_RANGE"));
  await assert.rejects(writer.write(new Uint8Array(1), -1), (e) => isQcowError(e));
  await writer.close();
  assert.deepEqual(device.toBytes(), before);
});

Deno.test("a write through an unaligned L2 table offset marks the image corrupt and changes nothing else", async () => {
  const device = await image();
  const bytes = device.toBytes();
  const l1 = u64At(bytes, 40);
  // Point L1 entry 0 at an unaligned L2 table (COPIED kept).
  const view = new DataView(bytes.buffer, bytes.byteOffset);
  view.setBigUint64(l1, view.getBigUint64(l1) + 512n);
  const broken = MemoryDevice.from(bytes, { name: device.name });
  const before = broken.toBytes();
  await using writer = await openImage(broken, { readOnly: false });
  await assert.rejects(
    writer.write(new Uint8Array(512).fill(1), 4096),
    (e) => isQcowError(e, "CORRUPT_METADATA") && /unaligned/.test(e.message),
  );
  await assert.rejects(
    writer.read(new Uint8Array(512), 0),
    (e) => isQcowError(e, "CORRUPT_METADATA"),
  );
  await writer.close();
  // As qemu-io: the corrupt bit (incompatible feature bit 1) is set, no other byte changes.
  const after = broken.toBytes();
  assert.equal(after[79]! & 2, 2);
  after[79] = before[79]!;
  assert.deepEqual(after, before);
});

Deno.test("an allocation through a refcount block past the end fails and leaves the check no worse", async () => {
  const device = await image();
  const bytes = device.toBytes();
  const reftable = u64At(bytes, 48);
  // Refcount table entry 0 -> far past the end of the file.
  const broken = edit(device, reftable, [0, 0, 0, 1, 0, 0, 0, 0]);
  const checkBefore = await checkQcow2(MemoryDevice.from(broken.toBytes()));
  await using writer = await openImage(broken, { readOnly: false });
  await assert.rejects(
    writer.write(new Uint8Array(512).fill(1), 3 * MiB),
    (e) => isQcowError(e, "CORRUPT_METADATA"),
  );
  // Data already mapped is still readable and writable in place.
  const back = new Uint8Array(512);
  await writer.read(back, 0);
  assert.ok(back.every((b) => b === 7));
  await writer.close().catch(() => {});
  const checkAfter = await checkQcow2(MemoryDevice.from(broken.toBytes()));
  assert.ok((checkAfter.corruptions ?? 0) <= (checkBefore.corruptions ?? 0));
  assert.ok((checkAfter["check-errors"] ?? 0) <= (checkBefore["check-errors"] ?? 0));
});
