/**
 * QEMU's iotest 039 (dirty bit, lazy refcounts, automatic repair) re-expressed: images are built
 * and crashed with qemu-io, qcowlab's CLI acts on them, and qemu-img judges the result.
 */

import assert from "node:assert/strict";
import { FileDevice } from "../core/file_device.ts";
import { Qcow2Image } from "../drivers/qcow2/qcow2_image.ts";
import {
  assertQemuClean,
  crashQemuIo,
  incompatibleBits,
  qcowlab,
  qemuCheck,
  qemuInfoField,
} from "./_iotests.ts";
import { HAVE_QEMU, makeTempDir, qemuIo, runTool } from "./_qemu.ts";

const DIRTY = 1n;

Deno.test({
  // 039: "Checking that image is clean on shutdown".
  name: "iotest 039: a lazy-refcounts image written and closed by qcowlab is clean",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    const image = `${dir.path}/t.qcow2`;
    assert.equal((await qcowlab("create", "-o", "lazy_refcounts=on", image, "128M")).status, 0);
    const write = await qcowlab("io", "-c", "write -P 0x5a 0 512", "-c", "write 1M 64k", image);
    assert.equal(write.status, 0, write.err);
    assert.equal(await incompatibleBits(image), 0n);
    assert.equal(await qemuInfoField(image, "dirty-flag"), false);
    await assertQemuClean(image);
  },
});

Deno.test({
  // 039: "Creating a dirty image file", "Read-only access must still work", "Repairing the image
  // file must succeed", "Data should still be accessible after repair".
  name: "iotest 039: a dirty image reads read-only unchanged, checks as qemu-img, and repairs",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    const image = `${dir.path}/t.qcow2`;
    assert.equal((await qcowlab("create", "-o", "lazy_refcounts=on", image, "128M")).status, 0);
    await crashQemuIo(image, ["write -P 0x5a 0 512"]);
    assert.equal(await incompatibleBits(image) & DIRTY, DIRTY);
    const info = JSON.parse((await qcowlab("info", "--output", "json", image)).out);
    assert.equal(info["dirty-flag"], true);

    // qcowlab's check finds what qemu-img's finds, with the same status.
    const theirs = await runTool("qemu-img", ["check", image]);
    const ours = await qcowlab("check", image);
    assert.equal(ours.status, theirs.code);
    assert.equal(ours.status, 2);
    assert.equal(ours.out, theirs.stdout);
    assert.match(ours.err, /ERROR cluster 5 refcount=0 reference=1/);

    // Read-only access works and repairs nothing.
    const before = await Deno.readFile(image);
    const read = await qcowlab("io", "-r", "-c", "read -P 0x5a 0 512", image);
    assert.equal(read.status, 0, read.err);
    assert.deepEqual(await Deno.readFile(image), before);

    const repair = await qcowlab("check", "-r", "all", image);
    assert.equal(repair.status, 0, repair.err);
    assert.match(
      repair.err,
      /ERROR cluster 5 refcount=0 reference=1\nRebuilding refcount structure/,
    );
    assert.equal(await incompatibleBits(image), 0n);
    await assertQemuClean(image);
    await qemuIo(image, ["read -P 0x5a 0 512"]);
    assert.equal((await qcowlab("io", "-r", "-c", "read -P 0x5a 0 512", image)).status, 0);
  },
});

Deno.test({
  // 039: "Opening a dirty image read/write should repair it".
  name: "iotest 039: opening a dirty image read/write repairs it first",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    const image = `${dir.path}/t.qcow2`;
    assert.equal((await qcowlab("create", "-o", "lazy_refcounts=on", image, "128M")).status, 0);
    await crashQemuIo(image, ["write -P 0x5a 0 512", "write -P 0x11 8M 128k"]);
    assert.equal((await qemuCheck(image)).code, 2);
    const write = await qcowlab("io", "-c", "write -P 0x6b 512 512", image);
    assert.equal(write.status, 0, write.err);
    assert.match(
      write.err,
      /^Repaired dirty image .*: 0 leaked clusters and \d+ corruptions fixed$/m,
    );
    assert.equal(await incompatibleBits(image), 0n);
    await assertQemuClean(image);
    await qemuIo(image, ["read -P 0x5a 0 512", "read -P 0x6b 512 512", "read -P 0x11 8M 128k"]);
  },
});

Deno.test({
  // 039: "Creating an image file with lazy_refcounts=off": a crash leaves no dirty bit and no
  // corruption, refcounts having been written in order.
  name: "iotest 039: without lazy refcounts a crash leaves a clean image",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    const image = `${dir.path}/t.qcow2`;
    assert.equal((await qcowlab("create", "-o", "lazy_refcounts=off", image, "128M")).status, 0);
    await crashQemuIo(image, ["write -P 0x5a 0 512"]);
    assert.equal(await incompatibleBits(image), 0n);
    const ours = await qcowlab("check", image);
    assert.equal(ours.status, 0, ours.err);
    await assertQemuClean(image);
  },
});

Deno.test({
  // 039's dirty image, made by qcowlab: writes with lazy refcounts, then the process "dies"
  // (the device is closed without closing the image).
  name: "iotest 039: qcowlab's own lazy-refcounts crash is what qemu-img calls a dirty image",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    const image = `${dir.path}/t.qcow2`;
    assert.equal((await qcowlab("create", "-o", "lazy_refcounts=on", image, "128M")).status, 0);
    const device = FileDevice.open(image, { readOnly: false });
    const opened = await Qcow2Image.open(device, { readOnly: false });
    await opened.write(new Uint8Array(192 * 1024).fill(0x3c), 4 * 1024 * 1024);
    await opened.flush();
    await device.close(); // the crash: no clean close
    assert.equal(await qemuInfoField(image, "dirty-flag"), true);
    const theirs = await qemuCheck(image);
    const ours = JSON.parse((await qcowlab("check", "--output", "json", image)).out);
    assert.equal(theirs.code, 2);
    assert.equal(ours.corruptions, theirs.report.corruptions);
    assert.equal(ours.leaks, theirs.report.leaks);
    // qemu-io opening it read/write repairs it as qcowlab would; then both agree it is clean.
    const reopen = await runTool("qemu-io", [
      "-f",
      "qcow2",
      "-c",
      "read -P 0x3c 4M 192k",
      "-c",
      "write -P 0x3d 0 4k",
      image,
    ]);
    assert.equal(reopen.code, 0, reopen.stderr);
    assert.match(reopen.stderr, /Rebuilding refcount structure/);
    assert.doesNotMatch(reopen.stdout, /failed/);
    assert.equal(await incompatibleBits(image), 0n);
    assert.equal((await qcowlab("check", image)).status, 0);
  },
});
