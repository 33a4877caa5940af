import assert from "node:assert/strict";
import { MemoryDevice } from "../core/memory_device.ts";
import { checkQcow2 } from "../drivers/qcow2/check.ts";
import { createQcow2 } from "../drivers/qcow2/create.ts";
import { Qcow2Image } from "../drivers/qcow2/qcow2_image.ts";
import { openImage } from "../drivers/open_image.ts";
import { HAVE_QEMU, makeTempDir, qemuInfo } from "./_qemu.ts";
import { main } from "../cli.ts";

const MiB = 1024 * 1024;

async function lazyImage(): Promise<MemoryDevice> {
  const device = new MemoryDevice({ name: "lazy.qcow2" });
  await createQcow2(device, { size: 8 * MiB, lazyRefcounts: true });
  return device;
}

/** What a crash right now would leave: a copy of the device's bytes. */
function crashCopy(device: MemoryDevice): MemoryDevice {
  return MemoryDevice.from(device.toBytes(), { name: "crashed.qcow2" });
}

Deno.test("lazy refcounts: the dirty bit is on disk before the first allocation, and refcounts wait for close", async () => {
  const device = await lazyImage();
  const image = await openImage(device, { readOnly: false });
  assert.equal(image.info()["dirty-flag"], false, "opening alone does not dirty the image");
  await image.write(new Uint8Array(3 * 65536).fill(9), 0);
  await image.flush();

  // After a flush the data and L2 tables are on disk, the refcounts are not: the crash state is
  // dirty, and its refcounts are stale (used clusters with refcount 0).
  const crashed = crashCopy(device);
  await using reader = await openImage(crashed);
  assert.equal(reader.info()["dirty-flag"], true);
  const stale = await checkQcow2(MemoryDevice.from(crashed.toBytes()));
  assert.ok((stale.corruptions ?? 0) > 0, "refcounts were not written on flush");
  const bytes = new Uint8Array(65536);
  await reader.read(bytes, 65536);
  assert.ok(bytes.every((b) => b === 9), "a read-only open reads a dirty image as it is");

  // A clean close writes the refcounts and clears the bit.
  await image.close();
  const closed = await checkQcow2(MemoryDevice.from(device.toBytes()));
  assert.equal(closed.corruptions ?? 0, 0);
  assert.equal(closed.leaks ?? 0, 0);
  await using again = await openImage(device);
  assert.equal(again.info()["dirty-flag"], false);
});

Deno.test("opening a dirty image writable repairs it first and reports the repair", async () => {
  const device = await lazyImage();
  const image = await openImage(device, { readOnly: false });
  await image.write(new Uint8Array(65536).fill(4), 2 * MiB);
  await image.flush();
  const crashed = crashCopy(device);
  await image.close();
  const before = crashed.toBytes();

  // Read-only: nothing is repaired, nothing written.
  const reader = await Qcow2Image.open(crashed);
  assert.equal(reader.repairResult, undefined);
  await reader.close();
  assert.deepEqual(crashed.toBytes(), before);

  const writer = await Qcow2Image.open(crashed, { readOnly: false });
  const report = writer.repairResult;
  assert.ok(report, "the repair ran");
  assert.ok((report["corruptions-fixed"] ?? 0) > 0, "it fixed the stale refcounts");
  assert.equal(writer.info()["dirty-flag"], false);
  const back = new Uint8Array(65536);
  await writer.read(back, 2 * MiB);
  assert.ok(back.every((b) => b === 4), "the data survives the repair");
  await writer.write(new Uint8Array(512).fill(5), 5 * MiB);
  await writer.close();
  const after = await checkQcow2(crashed);
  assert.equal(after.corruptions ?? 0, 0);
  assert.equal(after.leaks ?? 0, 0);
});

Deno.test({
  name:
    "a lazy-refcount image left dirty by qcowlab is what qemu-img calls dirty, and qemu repairs it",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    const device = await lazyImage();
    const image = await openImage(device, { readOnly: false });
    await image.write(new Uint8Array(65536).fill(3), 0);
    await image.flush();
    const path = `${dir.path}/crashed.qcow2`;
    await Deno.writeFile(path, device.toBytes());
    await image.close();
    assert.equal((await qemuInfo(path))["dirty-flag"], true);
    const repair = await new Deno.Command("qemu-img", {
      args: ["check", "-q", "-r", "all", path],
      stdout: "null",
      stderr: "null",
    }).output();
    assert.equal(repair.code, 0);
    assert.equal((await qemuInfo(path))["dirty-flag"], false);
  },
});

Deno.test("the CLI says on stderr when opening a dirty image repaired it", async () => {
  await using dir = await makeTempDir();
  const device = await lazyImage();
  const image = await openImage(device, { readOnly: false });
  await image.write(new Uint8Array(65536).fill(6), 0);
  await image.flush();
  const path = `${dir.path}/dirty.qcow2`;
  await Deno.writeFile(path, device.toBytes());
  await image.close();
  let err = "";
  let out = "";
  const status = await main(["io", "-c", "read -P 6 0 64k", path], {
    stdout: (t) => void (out += t),
    stderr: (t) => void (err += t),
    terminal: false,
  });
  assert.equal(status, 0, err);
  assert.match(
    err,
    /^Repaired dirty image .*dirty\.qcow2: 0 leaked clusters and [1-9]\d* corruptions fixed\n$/,
  );
  assert.match(out, /read 65536\/65536 bytes at offset 0/);
});
