import assert from "node:assert/strict";
import { main } from "../cli.ts";
import { type CapturedIo, captureIo as capture } from "./_cli.ts";
import { HAVE_QEMU, makeTempDir, type TempDir } from "./_qemu.ts";

if (!HAVE_QEMU) console.warn("cli_test: qemu-img is missing; the tests that need it are skipped");

function sh(cmd: string, args: string[], cwd?: string): string {
  const out = new Deno.Command(cmd, {
    args,
    ...(cwd ? { cwd } : {}),
    stdout: "piped",
    stderr: "piped",
  })
    .outputSync();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) {
    throw new Error(`${cmd} ${args.join(" ")} failed: ${new TextDecoder().decode(out.stderr)}`);
  }
  return text;
}

/** Runs the CLI in `dir` (so relative names print as qemu-img prints them). */
async function cli(
  dir: string,
  args: string[],
  terminal = false,
): Promise<CapturedIo & { status: number }> {
  const io = capture(terminal);
  const previous = Deno.cwd();
  Deno.chdir(dir);
  try {
    const status = await main(args, io);
    return Object.assign(io, { status });
  } finally {
    Deno.chdir(previous);
  }
}

/** A chain base.qcow2 <- top.qcow2 with data, zeros and a compressed cluster, made by qemu. */
async function makeChain(): Promise<TempDir> {
  const temp = await makeTempDir();
  const dir = temp.path;
  sh("qemu-img", ["create", "-q", "-f", "qcow2", "src.qcow2", "3M"], dir);
  sh("qemu-io", ["-c", "write -P 0x11 0 128k", "src.qcow2"], dir);
  sh("qemu-img", ["convert", "-c", "-O", "qcow2", "src.qcow2", "base.qcow2"], dir);
  sh("qemu-io", ["-c", "write -P 0x22 1M 64k", "base.qcow2"], dir);
  sh("qemu-img", [
    "create",
    "-q",
    "-f",
    "qcow2",
    "-b",
    "base.qcow2",
    "-F",
    "qcow2",
    "top.qcow2",
    "4M",
  ], dir);
  sh("qemu-io", [
    "-c",
    "write -P 0x33 64k 4k",
    "-c",
    "write -z 1M 64k",
    "-c",
    "write -P 0x44 3M 100k",
    "top.qcow2",
  ], dir);
  return temp;
}

Deno.test({
  name: "cli map prints the same JSON and table text as qemu-img map",
  ignore: !HAVE_QEMU,
  async fn() {
    await using images = await makeChain();
    const dir = images.path;
    const json = await cli(dir, ["map", "--output", "json", "top.qcow2"]);
    assert.equal(json.status, 0, json.err);
    assert.equal(json.out, sh("qemu-img", ["map", "--output", "json", "top.qcow2"], dir));
    // The table cannot show compressed clusters: both refuse.
    const refused = await cli(dir, ["map", "top.qcow2"]);
    assert.equal(refused.status, 1);
    assert.match(refused.err, /compressed clusters/);
    sh("qemu-img", [
      "create",
      "-q",
      "-f",
      "qcow2",
      "-b",
      "src.qcow2",
      "-F",
      "qcow2",
      "plain.qcow2",
    ], dir);
    sh(
      "qemu-io",
      ["-c", "write -P 0x33 64k 4k", "-c", "write -P 0x44 2M 100k", "plain.qcow2"],
      dir,
    );
    const table = await cli(dir, ["map", "plain.qcow2"]);
    assert.equal(table.status, 0, table.err);
    assert.equal(table.out, sh("qemu-img", ["map", "plain.qcow2"], dir));
  },
});

Deno.test({
  name: "cli info reports the fields qemu-img info reports, in JSON and as text",
  ignore: !HAVE_QEMU,
  async fn() {
    await using images = await makeChain();
    const dir = images.path;
    const ours = await cli(dir, ["info", "--output", "json", "top.qcow2"]);
    assert.equal(ours.status, 0, ours.err);
    const theirs = JSON.parse(sh("qemu-img", ["info", "--output", "json", "top.qcow2"], dir));
    const mine = JSON.parse(ours.out);
    for (const key of Object.keys(theirs)) assert.deepEqual(mine[key], theirs[key], key);

    const chain = await cli(dir, ["info", "--backing-chain", "--output", "json", "top.qcow2"]);
    const theirChain = JSON.parse(
      sh("qemu-img", ["info", "--backing-chain", "--output", "json", "top.qcow2"], dir),
    );
    assert.equal(JSON.parse(chain.out).length, theirChain.length);

    // The human form: every line qemu-img prints, but for the disk size (allocation may differ
    // by a block between runs), qcowlab prints too.
    const text = await cli(dir, ["info", "top.qcow2"]);
    const expected = sh("qemu-img", ["info", "top.qcow2"], dir).split("\n")
      .filter((line) => !line.startsWith("disk size:") && line !== "");
    const got = text.out.split("\n").filter((line) =>
      !line.startsWith("disk size:") && line !== ""
    );
    assert.deepEqual(got, expected);
  },
});

Deno.test({
  name: "cli convert -O raw writes what qemu-img convert writes, and compare agrees",
  ignore: !HAVE_QEMU,
  async fn() {
    await using images = await makeChain();
    const dir = images.path;
    const ours = await cli(dir, ["convert", "-O", "raw", "top.qcow2", "ours.raw"]);
    assert.equal(ours.status, 0, ours.err);
    assert.match(ours.err, /convert: 100%/, "plain progress lines when not on a terminal");
    sh("qemu-img", ["convert", "-O", "raw", "top.qcow2", "theirs.raw"], dir);
    const a = await Deno.readFile(`${dir}/ours.raw`);
    const b = await Deno.readFile(`${dir}/theirs.raw`);
    assert.equal(a.length, b.length);
    assert.ok(a.every((byte, i) => byte === b[i]), "raw exports differ");

    const same = await cli(dir, ["compare", "top.qcow2", "ours.raw"]);
    assert.equal(same.status, 0);
    assert.equal(same.out, "Images are identical.\n");

    const bar = await cli(dir, ["convert", "-O", "raw", "top.qcow2", "bar.raw"], true);
    assert.match(bar.err, /\r.*\[#+\] 100\.0%/, "a bar redrawn in place on a terminal");
    const quiet = await cli(dir, ["convert", "-q", "-O", "raw", "top.qcow2", "quiet.raw"]);
    assert.equal(quiet.err, "");
  },
});

Deno.test({
  name: "cli compare finds the first differing offset and exits as qemu-img compare does",
  ignore: !HAVE_QEMU,
  async fn() {
    await using images = await makeChain();
    const dir = images.path;
    sh("qemu-img", ["convert", "-O", "raw", "top.qcow2", "copy.raw"], dir);
    sh("qemu-io", ["-f", "raw", "-c", "write -P 0x99 123457 1", "copy.raw"], dir);
    const ours = await cli(dir, ["compare", "top.qcow2", "copy.raw"]);
    const theirs = new Deno.Command("qemu-img", {
      args: ["compare", "top.qcow2", "copy.raw"],
      cwd: dir,
      stdout: "piped",
    }).outputSync();
    assert.equal(ours.status, theirs.code);
    assert.equal(ours.out, new TextDecoder().decode(theirs.stdout));
    assert.equal(ours.out, "Content mismatch at offset 123392!\n");

    // A larger image whose extra part is zero compares equal unless strict.
    sh("qemu-img", [
      "create",
      "-q",
      "-f",
      "qcow2",
      "-b",
      "top.qcow2",
      "-F",
      "qcow2",
      "big.qcow2",
      "8M",
    ], dir);
    assert.equal((await cli(dir, ["compare", "top.qcow2", "big.qcow2"])).status, 0);
    assert.equal((await cli(dir, ["compare", "-s", "top.qcow2", "big.qcow2"])).status, 1);
    sh("qemu-io", ["-c", "write -P 1 7M 512", "big.qcow2"], dir);
    const tail = await cli(dir, ["compare", "top.qcow2", "big.qcow2"]);
    assert.equal(tail.status, 1);
    assert.equal(tail.out, "Content mismatch at offset 7340032!\n");

    const missing = await cli(dir, ["compare", "top.qcow2", "nothing.qcow2"]);
    assert.equal(missing.status, 2);
    assert.match(missing.err, /nothing\.qcow2/);
  },
});

Deno.test("cli reports bad usage and missing files as one line with a non-zero status", async () => {
  await using temp = await makeTempDir();
  const dir = temp.path;
  const missing = await cli(dir, ["info", "no-such.qcow2"]);
  assert.equal(missing.status, 1);
  assert.equal(missing.err, "qcowlab: Cannot open no-such.qcow2: no such file\n");
  const bad = await cli(dir, ["map", "--output", "xml", "x"]);
  assert.equal(bad.status, 1);
  assert.match(bad.err, /^qcowlab: --output must be human or json/);
  assert.equal(bad.err.split("\n").length, 2);
  const unknown = await cli(dir, ["frobnicate"]);
  assert.equal(unknown.status, 1);
  assert.match(unknown.err, /unknown command 'frobnicate'/);
  await Deno.writeFile(`${dir}/junk.qcow2`, new Uint8Array([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 9]));
  const junk = await cli(dir, ["info", "-f", "qcow2", "junk.qcow2"]);
  assert.equal(junk.status, 1);
  assert.match(junk.err, /^qcowlab: /);
  assert.doesNotMatch(junk.err, /internal error/);
});

Deno.test("cli prints help for every command", async () => {
  for (const command of ["info", "map", "convert", "compare"]) {
    const io = capture();
    assert.equal(await main([command, "--help"], io), 0);
    assert.match(io.out, new RegExp(`^Usage: cli.ts ${command}`));
  }
  const io = capture();
  assert.equal(await main(["--help"], io), 0);
  assert.match(io.out, /Commands:/);
});
