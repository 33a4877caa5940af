/**
 * Snapshots and the overlap checks: once a snapshot exists, a write steered by a damaged L2 entry
 * onto the snapshot table or a snapshot's L1 table is refused and marks the image corrupt, and
 * snapshot operations refuse to work on a read-only image or an unknown snapshot.
 *
 * @module
 */

import assert from "node:assert/strict";
import { readU32, writeU32 } from "../core/bytes.ts";
import { isQcowError } from "../core/errors.ts";
import { MemoryDevice } from "../core/memory_device.ts";
import { createQcow2 } from "../drivers/qcow2/create.ts";
import { entryOffset } from "../drivers/qcow2/entries.ts";
import { Qcow2Image } from "../drivers/qcow2/qcow2_image.ts";

const KiB = 1024;

/** An image with one snapshot; returns the device and where the first L2 table is. */
async function imageWithSnapshot(): Promise<{ device: MemoryDevice; l2: number }> {
  const device = new MemoryDevice();
  await createQcow2(device, { size: 1024 * KiB, clusterSize: 4096 });
  await using image = await Qcow2Image.open(device, { readOnly: false });
  await image.write(new Uint8Array(4096).fill(1), 0);
  await image.createSnapshot("s");
  await image.write(new Uint8Array(4096).fill(2), 0); // the active L2 table is its own again
  const l1 = new Uint8Array(8);
  await device.read(l1, image.header.l1TableOffset);
  return { device, l2: entryOffset(readU32(l1, 0), readU32(l1, 4)) };
}

/** Points the active L2 entry of cluster 0 at `host`, flagged COPIED (written in place). */
async function steer(device: MemoryDevice, l2: number, host: number): Promise<void> {
  const entry = new Uint8Array(8);
  writeU32(entry, 0, (0x80000000 | Math.floor(host / 2 ** 32)) >>> 0);
  writeU32(entry, 4, host % 2 ** 32);
  await device.write(entry, l2);
}

for (const target of ["snapshot table", "inactive L1 table"] as const) {
  Deno.test(`a write onto the ${target} is refused once a snapshot exists`, async () => {
    const { device, l2 } = await imageWithSnapshot();
    let host: number;
    {
      await using image = await Qcow2Image.open(device);
      host = target === "snapshot table"
        ? image.header.snapshotsOffset
        : (await image.listSnapshots())[0]!.l1TableOffset;
    }
    const before = new Uint8Array(4096);
    await device.read(before, host);
    await steer(device, l2, host);
    const image = await Qcow2Image.open(device, { readOnly: false });
    await assert.rejects(
      image.write(new Uint8Array(512).fill(9), 0),
      (e: unknown) =>
        isQcowError(e, "CORRUPT_METADATA") && e.message.includes(`overlaps with ${target}`),
    );
    assert.equal(image.corrupt, true);
    await image.close();
    const after = new Uint8Array(4096);
    await device.read(after, host);
    assert.deepEqual(after, before, `the ${target} is untouched`);
  });
}

Deno.test("snapshot operations refuse read-only images and unknown snapshots", async () => {
  const { device } = await imageWithSnapshot();
  {
    await using image = await Qcow2Image.open(device);
    await assert.rejects(image.createSnapshot("x"), (e: unknown) => isQcowError(e, "READ_ONLY"));
    await assert.rejects(image.deleteSnapshot("s"), (e: unknown) => isQcowError(e, "READ_ONLY"));
    await assert.rejects(image.snapshotView("nope"), (e: unknown) => isQcowError(e, "NOT_FOUND"));
  }
  await using image = await Qcow2Image.open(device, { readOnly: false });
  await assert.rejects(image.applySnapshot("nope"), (e: unknown) => isQcowError(e, "NOT_FOUND"));
  await assert.rejects(
    image.deleteSnapshot("1", { match: "name" }),
    (e: unknown) => isQcowError(e, "NOT_FOUND"),
  );
  await assert.rejects(
    image.createSnapshot("dup", { id: "1" }),
    (e: unknown) => isQcowError(e, "INVALID_ARGUMENT"),
  );
  assert.deepEqual((await image.listSnapshots()).map((s) => s.name), ["s"]);
});

Deno.test("a 65537th snapshot is refused, as QEMU refuses it", async () => {
  const device = new MemoryDevice();
  await createQcow2(device, { size: 64 * KiB, clusterSize: 4096 });
  // 65536 empty entries (the table lies past the end of the file and reads as zeros).
  const fields = new Uint8Array(12);
  writeU32(fields, 0, 65536);
  writeU32(fields, 8, 1 << 20);
  await device.write(fields, 60);
  await using image = await Qcow2Image.open(device, { readOnly: false });
  assert.equal((await image.listSnapshots()).length, 65536);
  await assert.rejects(
    image.createSnapshot("one too many"),
    (e: unknown) => isQcowError(e, "TOO_LARGE") && /65536/.test(e.message),
  );
});
