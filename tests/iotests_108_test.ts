/**
 * QEMU's iotest 108 (rebuilding the refcount structure) re-expressed: an image built by qemu-io
 * loses (parts of) its refcount structure, `cli.ts check` reports it as `qemu-img check` does,
 * `cli.ts check -r all` rebuilds it next to `qemu-img check -r all` on a copy, and qemu-img judges
 * both: clean, and the same virtual contents.
 */

import assert from "node:assert/strict";
import { be64, poke, qcowlab, qemuCheck } from "./_iotests.ts";
import { HAVE_QEMU, makeTempDir, qemuImg, qemuIo, runTool } from "./_qemu.ts";

/** Where a fresh 64 MiB image with 64 KiB clusters keeps its tables. */
const REFTABLE = 0x10000;
const REFBLOCK = 0x20000;
const L2 = 0x40000;
const FIRST_DATA = 0x50000;

interface Scenario {
  /** The 108 case it re-expresses. */
  iotest: string;
  damage: (path: string) => Promise<void>;
}

const SCENARIOS: Scenario[] = [
  {
    iotest: "Repairing an image without any refcount table (its only entry zeroed)",
    damage: (path) => poke(path, REFTABLE, be64(0)),
  },
  {
    iotest: "Repairing an image whose refcount block holds only zeros",
    damage: (path) => poke(path, REFBLOCK, new Array(64).fill(0)),
  },
  {
    iotest: "Repairing a refcount table entry pointing at a data cluster",
    damage: (path) => poke(path, REFTABLE, be64(FIRST_DATA)),
  },
  {
    iotest: "Repairing a refcount table entry pointing at the L2 table",
    damage: (path) => poke(path, REFTABLE, be64(L2)),
  },
  {
    iotest: "Repairing a refcount block beyond the image end",
    damage: (path) => poke(path, REFTABLE, be64(0x1000000)),
  },
];

for (const scenario of SCENARIOS) {
  Deno.test({
    name: `iotest 108: ${scenario.iotest}`,
    ignore: !HAVE_QEMU,
    async fn() {
      await using dir = await makeTempDir();
      const ours = `${dir.path}/ours.qcow2`;
      const theirs = `${dir.path}/theirs.qcow2`;
      const pristine = `${dir.path}/pristine.qcow2`;
      await qemuImg("create", "-q", "-f", "qcow2", pristine, "64M");
      await qemuIo(pristine, ["write -P 0x2a 0 128k", "write -P 0x3b 8M 64k", "write -z 1M 64k"]);
      await Deno.copyFile(pristine, ours);
      await scenario.damage(ours);
      await Deno.copyFile(ours, theirs);

      // The damage as both see it: the same numbers and exit status.
      const found = await qcowlab("check", "--output", "json", ours);
      const qemuFound = await qemuCheck(theirs);
      const report = JSON.parse(found.out);
      assert.equal(found.status, qemuFound.code);
      assert.notEqual(found.status, 0);
      for (const key of ["corruptions", "leaks", "check-errors"]) {
        assert.equal(report[key], qemuFound.report[key], key);
      }

      // The rebuild: both say so and end clean, with the contents of the undamaged image.
      const repaired = await qcowlab("check", "-r", "all", ours);
      const qemuRepaired = await qemuCheck(theirs, "all");
      assert.equal(repaired.status, 0, repaired.err);
      assert.equal(qemuRepaired.code, 0, qemuRepaired.run.stderr);
      assert.match(repaired.err, /Rebuilding refcount structure/);
      assert.match(qemuRepaired.run.stderr, /Rebuilding refcount structure/);
      for (const image of [ours, theirs]) {
        const judged = await qemuCheck(image);
        assert.equal(judged.code, 0, judged.run.stdout);
        const same = await runTool("qemu-img", ["compare", image, pristine]);
        assert.equal(same.code, 0, same.stdout);
      }
      // The rebuilt image takes new allocations again.
      await qemuIo(ours, [
        "write -P 0x4c 16M 256k",
        "read -P 0x4c 16M 256k",
        "read -P 0x2a 0 128k",
      ]);
      assert.equal((await qcowlab("check", ours)).status, 0);
    },
  });
}

Deno.test({
  // 108's image with more than one refcount block: 512-byte clusters make the refcount
  // structure span many blocks, and the first block is lost.
  name: "iotest 108: rebuilding a refcount structure of many blocks (512-byte clusters)",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    const pristine = `${dir.path}/pristine.qcow2`;
    const ours = `${dir.path}/ours.qcow2`;
    await qemuImg("create", "-q", "-f", "qcow2", "-o", "cluster_size=512", pristine, "64M");
    await qemuIo(pristine, ["write -P 0x2a 0 512k", "write -P 0x3b 32M 128k"]);
    await Deno.copyFile(pristine, ours);
    const bytes = await Deno.readFile(ours);
    const view = new DataView(bytes.buffer);
    const reftable = Number(view.getBigUint64(48));
    assert.ok(view.getBigUint64(reftable + 8) !== 0n, "more than one refcount block");
    await poke(ours, reftable, be64(0));
    const found = await qcowlab("check", ours);
    assert.equal(found.status, (await qemuCheck(ours)).code);
    const repaired = await qcowlab("check", "-r", "all", ours);
    assert.equal(repaired.status, 0, repaired.err);
    assert.equal((await qemuCheck(ours)).code, 0);
    const same = await runTool("qemu-img", ["compare", ours, pristine]);
    assert.equal(same.code, 0, same.stdout);
  },
});
