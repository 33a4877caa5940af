/**
 * QEMU's iotest 060 (corrupt bit, overlap checks, inconsistent metadata found during I/O)
 * re-expressed: qemu-io builds an image, the test breaks one table entry, qcowlab's CLI writes
 * through it next to qemu-io on a copy, and the two files, statuses and corrupt bits are compared;
 * then `check -r all` by each is judged by qemu-img.
 */

import assert from "node:assert/strict";
import {
  be64,
  crashQemuIo,
  incompatibleBits,
  poke,
  qcowlab,
  qemuCheck,
  qemuCompareQcow2,
  qemuInfoField,
} from "./_iotests.ts";
import { firstDifference, HAVE_QEMU, makeTempDir, qemuImg, qemuIo, runTool } from "./_qemu.ts";

const CORRUPT = 2n;
/** Where a fresh 64 MiB image with 64 KiB clusters keeps its tables. */
const REFTABLE = 0x10000;
const REFBLOCK = 0x20000;
const L1 = 0x30000;
const L2 = 0x40000;

interface Scenario {
  /** The 060 case it re-expresses. */
  iotest: string;
  /** Where to write which 64-bit entry. */
  at: number;
  entry: bigint;
  /** What both must say when the write is refused. */
  message: RegExp;
  /** Whether a read-only read of the first cluster still works. */
  readable: boolean;
}

const SCENARIOS: Scenario[] = [
  {
    iotest: "Testing L2 reference into L1",
    at: L2,
    entry: 0x8000000000000000n | BigInt(L1),
    message: /Preventing invalid write on metadata \(overlaps with active L1 table\)/,
    readable: true,
  },
  {
    iotest: "Testing L1 reference into the refcount table",
    at: L1,
    entry: 0x8000000000000000n | BigInt(REFTABLE),
    message: /Preventing invalid write on metadata \(overlaps with refcount table\)/,
    readable: true,
  },
  {
    iotest: "Testing L2 reference into a refcount block",
    at: L2,
    entry: 0x8000000000000000n | BigInt(REFBLOCK),
    message: /Preventing invalid write on metadata \(overlaps with refcount block\)/,
    readable: true,
  },
  {
    iotest: "Testing unaligned L2 entry",
    at: L2,
    entry: 0x8000000000052a00n,
    message: /offset 0x52a00 unaligned/,
    readable: false,
  },
  {
    iotest: "Testing unaligned L1 entry (L2 table offset)",
    at: L1,
    entry: 0x8000000000042a00n,
    message: /L2 table offset 0x42a00 unaligned \(L1 index: 0(x0)?\)/,
    readable: false,
  },
];

for (const scenario of SCENARIOS) {
  Deno.test({
    name: `iotest 060: ${scenario.iotest}: the write is refused and marks the image corrupt`,
    ignore: !HAVE_QEMU,
    async fn() {
      await using dir = await makeTempDir();
      const ours = `${dir.path}/ours.qcow2`;
      const theirs = `${dir.path}/theirs.qcow2`;
      await qemuImg("create", "-q", "-f", "qcow2", ours, "64M");
      await qemuIo(ours, ["write -P 1 0 64k", "write -P 3 1M 64k"]);
      await poke(ours, scenario.at, be64(scenario.entry));
      await Deno.copyFile(ours, theirs);

      // Read-only: a finding is reported at most; nothing is written, no bit is set.
      const before = await Deno.readFile(ours);
      const read = await qcowlab("io", "-r", "-c", "read 0 512", ours);
      const qemuRead = await runTool("qemu-io", ["-f", "qcow2", "-r", "-c", "read 0 512", theirs]);
      assert.equal(read.status === 0, scenario.readable, read.err);
      assert.equal(!/failed/.test(qemuRead.stdout), scenario.readable, qemuRead.stdout);
      assert.deepEqual(await Deno.readFile(ours), before);

      const write = await qcowlab("io", "-c", "write -P 2 0 512", ours);
      const qemuWrite = await runTool("qemu-io", ["-f", "qcow2", "-c", "write -P 2 0 512", theirs]);
      assert.equal(write.status, 1);
      assert.match(write.err, scenario.message);
      assert.match(qemuWrite.stderr, scenario.message);
      assert.match(qemuWrite.stdout, /write failed: Input\/output error/);
      // The same bytes on disk: the corrupt bit set, and no metadata byte overwritten.
      const a = await Deno.readFile(ours);
      const b = await Deno.readFile(theirs);
      assert.equal(firstDifference(a, b), -1);
      assert.equal(await incompatibleBits(ours) & CORRUPT, CORRUPT);
      const info = JSON.parse((await qcowlab("info", "--output", "json", ours)).out);
      assert.equal(info["format-specific"].data.corrupt, true);
      assert.equal(
        (await qemuInfoField(ours, "format-specific") as { data: { corrupt: boolean } }).data
          .corrupt,
        true,
      );

      // A corrupt image refuses read/write opens, as QEMU's does; reading still works.
      const again = await qcowlab("io", "-c", "write -P 2 0 512", ours);
      assert.equal(again.status, 1);
      assert.match(again.err, /is corrupt; cannot be opened read\/write/);
      if (scenario.readable) {
        assert.equal((await qcowlab("io", "-r", "-c", "read 1M 64k", ours)).status, 0);
      }

      // check -r all by each, judged by qemu-img: the same outcome.
      const ourRepair = await qcowlab("check", "-r", "all", ours);
      const theirRepair = await qemuCheck(theirs, "all");
      assert.equal(ourRepair.status, theirRepair.code, ourRepair.err);
      const judgedOurs = await qemuCheck(ours);
      const judgedTheirs = await qemuCheck(theirs);
      assert.equal(judgedOurs.code, judgedTheirs.code);
      assert.equal(
        (await incompatibleBits(ours) & CORRUPT) === 0n,
        (await incompatibleBits(theirs) & CORRUPT) === 0n,
      );
      if (judgedOurs.code === 0 && judgedTheirs.code === 0) {
        // Both repaired images read the same, and ours is writable again.
        const same = await qemuCompareQcow2(ours, theirs);
        assert.equal(same.code, 0, same.stdout);
        await qemuIo(ours, ["write -P 4 2M 64k", "read -P 4 2M 64k"]);
        // An L2 entry's damage leaves the rest of its table, and so the data at 1M, intact.
        if (scenario.at === L2) await qemuIo(ours, ["read -P 3 1M 64k"]);
      }
    },
  });
}

Deno.test({
  // 060: "Testing corrupt image, dirty too": a dirty and corrupt image is not repaired by a
  // read/write open, which is refused; check -r all repairs both.
  name: "iotest 060: a corrupt and dirty image is refused read/write until check -r all",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    const image = `${dir.path}/t.qcow2`;
    await qemuImg("create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", image, "64M");
    await crashQemuIo(image, ["write -P 7 0 128k"]);
    const bits = await incompatibleBits(image);
    await poke(image, 72, be64(bits | CORRUPT));
    const refused = await qcowlab("io", "-c", "write -P 2 0 512", image);
    assert.equal(refused.status, 1);
    assert.match(refused.err, /is corrupt; cannot be opened read\/write/);
    const theirs = await runTool("qemu-io", ["-f", "qcow2", "-c", "write 0 512", image]);
    assert.match(theirs.stderr, /is corrupt; cannot be opened read\/write/);
    const repair = await qcowlab("check", "-r", "all", image);
    assert.equal(repair.status, 0, repair.err);
    assert.equal(await incompatibleBits(image), 0n);
    assert.equal((await qemuCheck(image)).code, 0);
    await qemuIo(image, ["read -P 7 0 128k"]);
  },
});
