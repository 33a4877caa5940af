import { deepStrictEqual, equal, throws } from "node:assert/strict";
import { readU32, readU64 } from "../core/bytes.ts";
import { MemoryDevice } from "../core/memory_device.ts";
import { createQcow2 } from "../drivers/qcow2/create.ts";
import { openImage } from "../drivers/open_image.ts";
import { entryOffset } from "../drivers/qcow2/entries.ts";
import { readRefcount } from "../drivers/qcow2/refcount_math.ts";
import { applyEdits } from "./_edits.ts";

async function image(): Promise<Uint8Array> {
  const device = new MemoryDevice();
  await createQcow2(device, { size: 1 << 20 });
  const disk = await openImage(device, { readOnly: false });
  await disk.write(new Uint8Array(65536).fill(1), 0);
  await disk.close();
  return device.toBytes();
}

Deno.test("applyEdits() writes at file offsets and leaves the input alone", async () => {
  const bytes = await image();
  const before = bytes.slice();
  const out = applyEdits(bytes, [
    { edit: "u32", where: { in: "file", at: 4 }, value: 9 },
    { edit: "bits", where: { in: "file", at: 72 }, plus: 4, or: 2 },
    { edit: "truncate", length: 200 },
  ]);
  equal(readU32(out, 4), 9);
  equal(readU32(out, 76), 2);
  equal(out.length, 200);
  deepStrictEqual(bytes, before);
});

Deno.test("applyEdits() finds L1 and L2 entries and refcounts in the metadata", async () => {
  const bytes = await image();
  const l1 = readU64(bytes, 40);
  const l2 = entryOffset(readU32(bytes, l1), readU32(bytes, l1 + 4));
  const data = entryOffset(readU32(bytes, l2), readU32(bytes, l2 + 4));
  const out = applyEdits(bytes, [
    { edit: "bits", where: { in: "l1", index: 0 }, andNot: 0x80000000 },
    { edit: "shift", where: { in: "l2", guest: 0 }, by: 0x200 },
    { edit: "refcount", cluster: { of: "guest", guest: 0 }, value: 0 },
    { edit: "refcount", cluster: { of: "end" }, value: 1 },
  ]);
  equal(readU32(out, l1) & 0x80000000, 0);
  equal(readU32(out, l2 + 4), readU32(bytes, l2 + 4) + 0x200);
  const block = readU64(out, readU64(out, 48));
  const refcounts = out.subarray(block, block + 65536);
  equal(readRefcount(refcounts, data / 65536, 4), 0);
  equal(readRefcount(refcounts, bytes.length / 65536, 4), 1);
  equal(out.length, bytes.length + 65536);
});

Deno.test("applyEdits() refuses places the image does not have", async () => {
  const bytes = await image();
  throws(
    () => applyEdits(bytes, [{ edit: "shift", where: { in: "l1", index: 5 }, by: 1 }]),
    /past the table/,
  );
  throws(
    () => applyEdits(bytes, [{ edit: "u8", where: { in: "snapshot" }, value: 1 }]),
    /no snapshot table/,
  );
});
