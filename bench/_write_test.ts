import assert from "node:assert/strict";
import { createQcow2, MemoryDevice, Qcow2Image } from "../mod.ts";
import { timeWrites, verifyFile, verifyImage, writeTests } from "./_write.ts";

const MiB = 1024 * 1024;

Deno.test("write tests: what timeWrites writes passes verification, and only with its tag", async () => {
  const [allocate, overwrite, small] = writeTests(2 * MiB, "image");
  assert.equal(allocate!.offsets.length, 32);
  assert.equal(small!.offsets.length, 512);
  const device = new MemoryDevice();
  await createQcow2(device, { size: 2 * MiB, clusterSize: 65536 });
  for (const [test, tag] of [[allocate!, 1], [overwrite!, 2]] as const) {
    const times = await timeWrites(await Qcow2Image.open(device, { readOnly: false }), test, tag);
    assert.ok(times.total >= times.writes);
    await using image = await Qcow2Image.open(device);
    await verifyImage(image, test, tag);
    await assert.rejects(verifyImage(image, test, tag + 1), /reads back wrong \(tag/);
  }
  // The first test's pattern was overwritten by the second's.
  await using image = await Qcow2Image.open(device);
  await assert.rejects(verifyImage(image, allocate!, 2), /reads back wrong/);
});

Deno.test("write tests: verifyFile runs qemu-img check and qemu-io on the file", async () => {
  const [allocate] = writeTests(MiB, "usable");
  // With the later wrap rule the last request lands on offset 0 again.
  assert.equal(allocate!.offsets.at(-1), 0);
  const device = new MemoryDevice();
  await createQcow2(device, { size: MiB, clusterSize: 65536 });
  await timeWrites(await Qcow2Image.open(device, { readOnly: false }), allocate!, 9);
  const path = await Deno.makeTempFile({ suffix: ".qcow2" });
  try {
    await Deno.writeFile(path, device.toBytes());
    await verifyFile(path, allocate!, 9);
    await assert.rejects(verifyFile(path, allocate!, 10), /reads back wrong/);
  } finally {
    await Deno.remove(path);
  }
});
