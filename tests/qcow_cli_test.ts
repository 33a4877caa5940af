/**
 * The CLI with qcow (version 1) images and legacy AES: create -f qcow, convert -O qcow (plain,
 * compressed, encrypted), info, map, compare, io and check, compared with qemu-img where it has
 * the same command.
 *
 * @module
 */

import assert from "node:assert/strict";
import { type CliRun as Run, runCli } from "./_cli.ts";
import { HAVE_QEMU, makeTempDir, qemuImg, runTool } from "./_qemu.ts";

async function cli(dir: string, args: string[]): Promise<Run> {
  const previous = Deno.cwd();
  Deno.chdir(dir);
  try {
    return await runCli(args);
  } finally {
    Deno.chdir(previous);
  }
}

function ok(run: Run): Run {
  assert.equal(run.status, 0, run.err + run.out);
  return run;
}

Deno.test({
  name: "qcow CLI: create -f qcow makes what qemu-img create -f qcow makes",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    const d = dir.path;
    ok(await cli(d, ["create", "-f", "qcow", "ours.qcow", "3M"]));
    await qemuImg("create", "-f", "qcow", `${d}/theirs.qcow`, "3M");
    assert.deepEqual(
      await Deno.readFile(`${d}/ours.qcow`),
      await Deno.readFile(`${d}/theirs.qcow`),
    );
    const run = ok(
      await cli(d, ["create", "-f", "qcow", "-b", "ours.qcow", "-F", "qcow", "o2.qcow"]),
    );
    assert.match(run.out, /Formatting 'o2.qcow', fmt=qcow size=3145728 backing_file=ours.qcow/);
    await qemuImg("create", "-f", "qcow", "-b", "ours.qcow", "-F", "qcow", `${d}/t2.qcow`);
    assert.deepEqual(await Deno.readFile(`${d}/o2.qcow`), await Deno.readFile(`${d}/t2.qcow`));
    ok(await cli(d, ["create", "-f", "qcow", "-o", "encrypt.format=aes", "enc.qcow", "1M"]));
    const info = JSON.parse(await qemuImg("info", "--output", "json", `${d}/enc.qcow`));
    assert.equal(info.encrypted, true);
    const bad = await cli(d, ["create", "-f", "qcow", "-o", "cluster_size=64k", "x.qcow", "1M"]);
    assert.equal(bad.status !== 0, true);
    assert.match(bad.err, /Invalid parameter 'cluster_size'/);
  },
});

Deno.test({
  name: "qcow CLI: io, info, map, compare and check on qcow images",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    const d = dir.path;
    ok(await cli(d, ["create", "-f", "qcow", "a.qcow", "4M"]));
    ok(
      await cli(d, [
        "io",
        "-c",
        "write -P 0x5a 1000 70000",
        "-c",
        "write -c -P 0x11 1M 4k",
        "-c",
        "read -P 0x5a 1000 70000",
        "a.qcow",
      ]),
    );
    const theirs = JSON.parse(await qemuImg("info", "--output", "json", `${d}/a.qcow`));
    const ours = JSON.parse(ok(await cli(d, ["info", "--output", "json", "a.qcow"])).out);
    for (const key of ["virtual-size", "cluster-size", "format"]) {
      assert.deepEqual(ours[key], theirs[key], key);
    }
    const qemuMap = JSON.parse(await qemuImg("map", "--output", "json", `${d}/a.qcow`));
    const ourMap = JSON.parse(ok(await cli(d, ["map", "--output", "json", "a.qcow"])).out);
    assert.deepEqual(ourMap, qemuMap);
    await qemuImg("convert", "-O", "raw", `${d}/a.qcow`, `${d}/a.raw`);
    ok(await cli(d, ["compare", "a.qcow", "a.raw"]));
    const check = ok(await cli(d, ["check", "--output", "json", "a.qcow"]));
    const report = JSON.parse(check.out);
    assert.equal(report["check-errors"], 0);
    assert.equal(report["compressed-clusters"], 1);
    const qemuCheck = await runTool("qemu-img", ["check", `${d}/a.qcow`]);
    assert.equal(qemuCheck.code, 63, "qemu-img cannot check qcow: ours goes beyond it");
    // Damage: point an L2 entry past the end of the file.
    const bytes = await Deno.readFile(`${d}/a.qcow`);
    const view = new DataView(bytes.buffer);
    const l2 = Number(view.getBigUint64(48));
    view.setBigUint64(l2 + 8 * 100, BigInt(bytes.length + 65536));
    await Deno.writeFile(`${d}/a.qcow`, bytes);
    const damaged = await cli(d, ["check", "a.qcow"]);
    assert.equal(damaged.status, 2, damaged.out);
    assert.match(damaged.out, /past the end of the file/);
  },
});

Deno.test({
  name: "qcow CLI: convert -O qcow (plain, compressed, encrypted) reads back through qemu-img",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    const d = dir.path;
    const raw = new Uint8Array(2 * 1024 * 1024 + 4096).map((_, i) => (i % 7 === 0 ? i >> 10 : 0));
    raw.fill(0, 300000, 700000);
    await Deno.writeFile(`${d}/in.raw`, raw);
    await Deno.writeTextFile(`${d}/pass`, "s3cret\n");
    ok(await cli(d, ["convert", "-q", "-O", "qcow", "in.raw", "p.qcow"]));
    ok(await cli(d, ["convert", "-q", "-c", "-O", "qcow", "in.raw", "c.qcow"]));
    ok(
      await cli(d, [
        "convert",
        "-q",
        "-O",
        "qcow",
        "-o",
        "encrypt.format=aes",
        "--passphrase-file",
        "pass",
        "in.raw",
        "e.qcow",
      ]),
    );
    Deno.env.set("QCOWLAB_TEST_PASS", "s3cret");
    ok(
      await cli(d, [
        "convert",
        "-q",
        "-O",
        "qcow2",
        "-o",
        "encrypt.format=aes",
        "--passphrase-env",
        "QCOWLAB_TEST_PASS",
        "e.qcow",
        "e.qcow2",
      ]),
    );
    for (const name of ["p.qcow", "c.qcow"]) {
      await qemuImg("compare", "-f", "raw", `${d}/in.raw`, `${d}/${name}`);
    }
    for (const [name, driver] of [["e.qcow", "qcow"], ["e.qcow2", "qcow2"]]) {
      await qemuImg(
        "convert",
        "--object",
        "secret,id=s,data=s3cret",
        "--image-opts",
        `driver=${driver},file.filename=${d}/${name},encrypt.key-secret=s`,
        "-O",
        "raw",
        `${d}/out.raw`,
      );
      assert.deepEqual(await Deno.readFile(`${d}/out.raw`), raw, name);
    }
    const sizes = await Promise.all(["p.qcow", "c.qcow"].map((n) => Deno.stat(`${d}/${n}`)));
    assert.ok(sizes[1]!.size < sizes[0]!.size / 2, "compression did not shrink the image");
    const missing = await cli(d, ["info", "e.qcow"]);
    assert.equal(missing.status, 1);
    assert.match(missing.err, /encrypted \(AES\); give its passphrase/);
    assert.doesNotMatch(missing.err + missing.out, /s3cret/);
    ok(await cli(d, ["compare", "--passphrase-file", "pass", "e.qcow", "in.raw"]));
  },
});
