/**
 * QEMU's iotest 061 (qemu-img amend: compat up- and downgrades, zero cluster expansion, dirty
 * images, feature bits) re-expressed: each input is built with qemu-img and qemu-io, amended by
 * qcowlab's CLI and by qemu-img amend on a copy, and compared (files byte for byte where QEMU's
 * layout is reproducible; otherwise qemu-img info, a clean qemu-img check and the contents).
 */

import assert from "node:assert/strict";
import {
  be64,
  compareAmend,
  crashQemuIo,
  incompatibleBits,
  poke,
  qcowlab,
  qemuInfoField,
} from "./_iotests.ts";
import { HAVE_QEMU, makeTempDir, qemuImg, qemuIo, runTool } from "./_qemu.ts";

async function create(path: string, size: string, ...options: string[]): Promise<void> {
  await qemuImg("create", "-q", "-f", "qcow2", ...options, path, size);
}

async function version(path: string): Promise<number> {
  const head = (await Deno.readFile(path)).subarray(0, 8);
  return new DataView(head.buffer, head.byteOffset).getUint32(4);
}

Deno.test({
  name: "iotest 061: version downgrade with zero expansion, plain and after a dirty crash",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    // 061: "Testing version downgrade with zero expansion".
    const image = `${dir.path}/t.qcow2`;
    await create(image, "64M");
    await qemuIo(image, ["write -P 0x2a 0 128k", "write -z 0 64k"]);
    const { ours } = await compareAmend(dir.path, image, "compat=0.10", { identical: true });
    assert.equal(await version(ours), 2);
    await qemuIo(ours, ["read -P 0 0 64k", "read -P 0x2a 64k 64k"]);

    // 061: "Testing version downgrade with zero expansion and dirty bit" / "Testing dirty
    // version downgrade": the repair runs first (its layout is qcowlab's, so no byte equality).
    const dirty = `${dir.path}/dirty.qcow2`;
    await create(dirty, "64M", "-o", "compat=1.1,lazy_refcounts=on");
    await crashQemuIo(dirty, ["write -P 0x2a 0 128k", "write -z 0 64k"]);
    assert.equal(await incompatibleBits(dirty) & 1n, 1n);
    const down = await compareAmend(dir.path, dirty, "compat=0.10", {});
    assert.equal(await version(down.ours), 2);
    await qemuIo(down.ours, ["read -P 0 0 64k", "read -P 0x2a 64k 64k"]);
  },
});

Deno.test({
  name:
    "iotest 061: unknown compatible and autoclear bits go with a downgrade; unknown incompatible ones refuse it",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    // 061: "Testing version downgrade with unknown compat/autoclear flags".
    const image = `${dir.path}/t.qcow2`;
    await create(image, "64M");
    await poke(image, 80, be64(1n << 42n));
    await poke(image, 88, be64(1n << 42n));
    const { ours } = await compareAmend(dir.path, image, "compat=0.10", { identical: true });
    assert.equal(await version(ours), 2);

    // 061: "Testing version downgrade with unknown incompat flags": the image cannot be opened.
    const unknown = `${dir.path}/unknown.qcow2`;
    await create(unknown, "64M");
    await poke(unknown, 72, be64(1n << 63n));
    const before = await Deno.readFile(unknown);
    const mine = await qcowlab("amend", "-o", "compat=0.10", unknown);
    const theirs = await runTool("qemu-img", ["amend", "-o", "compat=0.10", unknown]);
    assert.equal(mine.status, 1);
    assert.notEqual(theirs.code, 0);
    // The same refusal; QEMU names the unknown bit as a mask, qcowlab by its number.
    assert.match(mine.err, /Unsupported qcow2 feature\(s\): Unknown incompatible feature: bit 63/);
    assert.match(
      theirs.stderr,
      /Unsupported qcow2 feature\(s\): Unknown incompatible feature: 8000000000000000/,
    );
    assert.deepEqual(await Deno.readFile(unknown), before);
  },
});

Deno.test({
  name: "iotest 061: version upgrade with lazy refcounts, and lazy_refcounts=off on a dirty image",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    // 061: "Testing version upgrade and resize" (without the resize).
    const image = `${dir.path}/t.qcow2`;
    await create(image, "64M", "-o", "compat=0.10");
    await qemuIo(image, ["write -P 0x2a 42M 64k", "write -P 0x2a 0 64k"]);
    const { ours } = await compareAmend(dir.path, image, "compat=1.1,lazy_refcounts=on", {
      identical: true,
    });
    assert.equal(await version(ours), 3);
    await qemuIo(ours, ["read -P 0x2a 42M 64k"]);

    // 061: "Testing dirty lazy_refcounts=off".
    const dirty = `${dir.path}/dirty.qcow2`;
    await create(dirty, "64M", "-o", "compat=1.1,lazy_refcounts=on");
    await crashQemuIo(dirty, ["write -P 0x2a 0 128k"]);
    const off = await compareAmend(dir.path, dirty, "lazy_refcounts=off", {});
    const data = await qemuInfoField(off.ours, "format-specific") as {
      data: Record<string, unknown>;
    };
    assert.equal(data.data["lazy-refcounts"], false);
    assert.equal(await incompatibleBits(off.ours), 0n);
    await qemuIo(off.ours, ["read -P 0x2a 0 128k"]);
  },
});

Deno.test({
  name: "iotest 061: zero expansion on inactive clusters and on shared L2 tables (snapshots)",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    // 061: "Testing zero expansion on inactive clusters".
    const inactive = `${dir.path}/inactive.qcow2`;
    await create(inactive, "64M");
    await qemuIo(inactive, ["write -z 0 256k"]);
    await qemuImg("snapshot", "-c", "foo", inactive);
    await qemuIo(inactive, ["write -P 0x2a 0 128k"]);
    const a = await compareAmend(dir.path, inactive, "compat=0.10", { identical: true });
    await qemuImg("snapshot", "-a", "foo", a.ours);
    await qemuIo(a.ours, ["read -P 0 0 256k"]);

    // 061: "Testing zero expansion on shared L2 table".
    const shared = `${dir.path}/shared.qcow2`;
    await create(shared, "64M");
    await qemuIo(shared, ["write -P 0x11 1M 64k", "write -z 0 256k"]);
    await qemuImg("snapshot", "-c", "foo", shared);
    const b = await compareAmend(dir.path, shared, "compat=0.10", { identical: true });
    await qemuIo(b.ours, ["read -P 0 0 256k", "read -P 0x11 1M 64k"]);
  },
});

Deno.test({
  name:
    "iotest 061: zero expansion on backed images, active and inactive, and with a shared L2 table",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    const base = `${dir.path}/base.qcow2`;
    await create(base, "64M");
    await qemuIo(base, ["write -P 0x11 0 1M"]);
    const backed = (name: string) => create(name, "64M", "-b", base, "-F", "qcow2");

    // 061: "Testing zero expansion on backed image".
    const active = `${dir.path}/active.qcow2`;
    await backed(active);
    await qemuIo(active, ["write -P 0x2a 0 64k", "write -z 0 256k"]);
    const a = await compareAmend(dir.path, active, "compat=0.10", { identical: true });
    await qemuIo(a.ours, ["read -P 0 0 256k", "read -P 0x11 256k 768k"]);

    // 061: "Testing zero expansion on backed inactive clusters".
    const inactive = `${dir.path}/inactive.qcow2`;
    await backed(inactive);
    await qemuIo(inactive, ["write -z 0 256k"]);
    await qemuImg("snapshot", "-c", "foo", inactive);
    await qemuIo(inactive, ["write -P 0x2a 0 128k"]);
    const b = await compareAmend(dir.path, inactive, "compat=0.10", { identical: true });
    await qemuImg("snapshot", "-a", "foo", b.ours);
    await qemuIo(b.ours, ["read -P 0 0 256k", "read -P 0x11 256k 768k"]);

    // 061: "Testing zero expansion on backed image with shared L2 table".
    const shared = `${dir.path}/shared.qcow2`;
    await backed(shared);
    await qemuIo(shared, ["write -z 0 256k"]);
    await qemuImg("snapshot", "-c", "foo", shared);
    const c = await compareAmend(dir.path, shared, "compat=0.10", { identical: true });
    await qemuIo(c.ours, ["read -P 0 0 256k"]);
    await qemuImg("snapshot", "-a", "foo", c.ours);
    await qemuIo(c.ours, ["read -P 0 0 256k", "read -P 0x11 256k 768k"]);
  },
});

Deno.test({
  name: "iotest 061: preallocated zero clusters on a full image, and the refusals",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    // 061: "Testing preallocated zero expansion on full image".
    const full = `${dir.path}/full.qcow2`;
    await create(full, "4M");
    await qemuIo(full, ["write -P 0x2a 0 4M", "write -z 0 1M", "write -z 3M 64k"]);
    const { ours } = await compareAmend(dir.path, full, "compat=0.10", { identical: true });
    await qemuIo(ours, ["read -P 0 0 1M", "read -P 0x2a 1M 2M", "read -P 0 3M 64k"]);

    // 061: "Testing invalid configurations".
    const image = `${dir.path}/t.qcow2`;
    await create(image, "64M");
    const lazyV2 =
      "Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)";
    await compareAmend(dir.path, image, "compat=0.10,lazy_refcounts=on", { fails: lazyV2 });
    await compareAmend(dir.path, image, "compat=0.42", {
      fails: "Unknown compatibility level 0.42",
    });
    await compareAmend(dir.path, image, "foo=bar", { fails: "Invalid parameter 'foo'" });
  },
});
