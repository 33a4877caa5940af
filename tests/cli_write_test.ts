import assert from "node:assert/strict";
import { type CliRun as Run, runCli } from "./_cli.ts";
import { HAVE_QEMU, makeTempDir, qemuImg, qemuInfo, qemuIo, qemuMap, runTool } from "./_qemu.ts";

if (!HAVE_QEMU) console.warn("cli_write_test: qemu is missing; the tests that need it are skipped");

/** Runs the CLI in-process; paths are absolute, so the working directory does not matter. */
function cli(...args: string[]): Promise<Run> {
  return runCli(args);
}

/** Runs a QEMU tool and returns its status and output, failing or not. */
async function qemu(command: string, ...args: string[]): Promise<Run> {
  const output = await runTool(command, args);
  return { status: output.code, out: output.stdout, err: output.stderr };
}

/** Asserts that qemu-img finds the image clean and that two images read the same. */
async function assertCleanAndIdentical(image: string, reference: string): Promise<void> {
  const [check] = await Promise.all([
    qemu("qemu-img", "check", image),
    assertIdentical(image, reference),
  ]);
  assert.equal(check.status, 0, `qemu-img check ${image}:\n${check.out}${check.err}`);
}

/** Asserts that qemu-img compare finds two images identical. */
async function assertIdentical(image: string, reference: string): Promise<void> {
  const compare = await qemu("qemu-img", "compare", image, reference);
  assert.equal(compare.out, "Images are identical.\n", `${image} vs ${reference}: ${compare.out}`);
}

/** qemu-io's output without the timing line, whose figures differ from run to run. */
function withoutTimings(text: string): string[] {
  return text.split("\n").filter((line) => !line.includes("ops/sec"));
}

function assertOneLineError(run: Run, pattern: RegExp): void {
  assert.notEqual(run.status, 0, `expected a failure, got: ${run.out}`);
  assert.match(run.err, /^qcowlab: [^\n]+\n$/, `one line on stderr, got: ${run.err}`);
  assert.match(run.err, pattern);
  assert.doesNotMatch(run.err, /internal error/);
}

async function exists(path: string): Promise<boolean> {
  return await Deno.stat(path).then(() => true, () => false);
}

// Option sets for create: qemu-img create's arguments, the size, and whether qcowlab writes the
// very same bytes (it does but for the preallocated layouts noted).
const CREATE_CASES: { args: string[]; size?: string; sameBytes: boolean }[] = [
  { args: [], size: "64M", sameBytes: true },
  { args: ["-o", "compat=0.10"], size: "1G", sameBytes: true },
  { args: ["-o", "compat=v2,cluster_size=4k"], size: "1.5M", sameBytes: true },
  {
    args: ["-o", "cluster_size=4k,refcount_bits=8,lazy_refcounts=on"],
    size: "10M",
    sameBytes: true,
  },
  { args: ["-o", "refcount_bits=1"], size: "3T", sameBytes: true },
  { args: ["-o", "cluster_size=2M,refcount_bits=64"], size: "64M", sameBytes: true },
  { args: ["-o", "extended_l2=on", "-o", "lazy_refcounts=off"], size: "10M", sameBytes: true },
  { args: ["-o", "preallocation=metadata"], size: "10M", sameBytes: true },
  { args: ["-o", "compat=1.1,cluster_size=512"], size: "1001", sameBytes: true },
  { args: ["-b", "base.qcow2", "-F", "qcow2"], sameBytes: true },
  { args: ["-o", "backing_file=base.qcow2,backing_fmt=qcow2"], size: "100M", sameBytes: true },
  { args: ["-b", "base.raw", "-F", "raw", "-o", "cluster_size=16k"], sameBytes: true },
  // qcowlab marks preallocated subclusters allocated; qemu-img leaves them unallocated.
  { args: ["-o", "extended_l2=on,preallocation=metadata"], size: "10M", sameBytes: false },
  // qcowlab allocates preallocated clusters one by one, so a second refcount block lands a few
  // clusters earlier than where qemu-img, allocating runs, puts it.
  { args: ["-o", "preallocation=metadata,cluster_size=512"], size: "2M", sameBytes: false },
];

Deno.test({
  name: "cli create makes the image qemu-img create makes, for every option set",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    await qemuImg("create", "-q", "-f", "qcow2", `${dir.path}/base.qcow2`, "5M");
    await qemuImg("create", "-q", "-f", "raw", `${dir.path}/base.raw`, "3M");
    for (const [i, { args, size, sameBytes }] of CREATE_CASES.entries()) {
      const what = [...args, size].join(" ");
      const ours = `${dir.path}/ours${i}.qcow2`;
      const theirs = `${dir.path}/theirs${i}.qcow2`;
      const tail = size === undefined ? [] : [size];
      const run = await cli("create", "-f", "qcow2", ...args, ours, ...tail);
      assert.equal(run.status, 0, `${what}: ${run.err}`);
      const expected = await qemuImg("create", "-f", "qcow2", ...args, theirs, ...tail);
      assert.equal(run.out, expected.replace(theirs, ours), what);

      const [info, reference] = await Promise.all([qemuInfo(ours), qemuInfo(theirs)]);
      for (const key of Object.keys(reference)) {
        if (key === "filename" || key === "actual-size") continue;
        assert.deepEqual(info[key], reference[key], `${what}: ${key}`);
      }
      assert.equal(Object.keys(info).length, Object.keys(reference).length, what);
      if (sameBytes) {
        assert.deepEqual(await Deno.readFile(ours), await Deno.readFile(theirs), what);
      }
      await assertCleanAndIdentical(ours, theirs);
    }
  },
});

Deno.test({
  name: "cli create -f raw makes a sparse file of the size qemu-img makes",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    const run = await cli("create", "-f", "raw", `${dir.path}/a.raw`, "1001");
    assert.equal(run.status, 0, run.err);
    const expected = await qemuImg("create", "-f", "raw", `${dir.path}/b.raw`, "1001");
    assert.equal(run.out, expected.replace("b.raw", "a.raw"));
    assert.equal((await Deno.stat(`${dir.path}/a.raw`)).size, 1024);
    assert.equal((await Deno.stat(`${dir.path}/b.raw`)).size, 1024);
    const quiet = await cli("create", "-q", "-f", "raw", `${dir.path}/c.raw`, "1T");
    assert.equal(quiet.out, "");
    const stat = await Deno.stat(`${dir.path}/c.raw`);
    assert.equal(stat.size, 2 ** 40);
    assert.ok((stat.blocks ?? 0) < 64, "sparse");
  },
});

Deno.test("cli create reports bad options and sizes in one line and creates nothing", async () => {
  await using dir = await makeTempDir();
  const file = `${dir.path}/x.qcow2`;
  const cases: [string[], RegExp][] = [
    [["-o", "foo=1", file, "1M"], /Invalid parameter 'foo'/],
    [["-o", "lazy_refcounts=maybe", file, "1M"], /'lazy_refcounts' expects 'on' or 'off'/],
    [["-o", "compat=2", file, "1M"], /'compat' does not accept value '2'/],
    [["-o", "preallocation=bogus", file, "1M"], /'preallocation' does not accept value 'bogus'/],
    [["-o", "preallocation=full", file, "1M"], /Preallocation mode 'full' is not supported/],
    [["-o", "cluster_size=3000", file, "1M"], /x\.qcow2: Cluster size must be a power of two/],
    [["-o", "cluster_size=4q", file, "1M"], /Invalid size '4q'/],
    [["-o", "refcount_bits=3", file, "1M"], /Refcount width must be a power of two/],
    [["-o", "compat=0.10,refcount_bits=8", file, "1M"], /Different refcount widths/],
    [["-o", "compat=0.10,lazy_refcounts=on", file, "1M"], /Lazy refcounts only supported/],
    [["-o", "extended_l2=on,cluster_size=8k", file, "1M"], /Extended L2 entries/],
    [["-o", "compression_type=zstd", file, "1M"], /zstd compression is not supported/],
    [["-o", "nonsense", file, "1M"], /Invalid option 'nonsense'/],
    [[file, "1x"], /Invalid size '1x'/],
    [[file, "1.5"], /Invalid size '1\.5'/],
    [[file, "16E"], /more than 2\^53/],
    [[file], /Image creation needs a size parameter/],
    [[file, "1M", "2M"], /Expected FILE and an optional SIZE/],
    [["-f", "vmdk", file, "1M"], /Unknown format 'vmdk'/],
    [["-F", "qcow2", file, "1M"], /Backing format given without a backing file/],
    [["-b", "missing.qcow2", "-F", "qcow2", file], /Could not open backing image/],
    [["-f", "raw", "-o", "cluster_size=4k", file, "1M"], /Invalid parameter 'cluster_size'/],
    [["-f", "raw", "-b", "base", "-F", "raw", file, "1M"], /Backing file not supported/],
    [["--bogus", file, "1M"], /Unknown option '--bogus'/],
  ];
  for (const [args, pattern] of cases) {
    assertOneLineError(await cli("create", ...args), pattern);
    assert.equal(await exists(file), false, `${args.join(" ")} left a file behind`);
  }
  // Like qemu-img 7.2, a backing file must come with its format; the message names the probed one.
  await Deno.writeFile(`${dir.path}/base.raw`, new Uint8Array(4096));
  assertOneLineError(
    await cli("create", "-b", "base.raw", file),
    /without backing format \(detected format of raw; use -F raw\)/,
  );
});

/** Commands run through both `cli io` and qemu-io; every kind of write, at odd offsets too. */
const IO_COMMANDS = [
  "write -P 0x11 0 64k",
  "write -P 0x12 70000 5000",
  "write -z 64k 64k",
  "write -z -u 128k 4k",
  "write -c -P 0x13 192k 64k",
  "write -P 0x14 1M 1",
  // Partial clusters are left alone, even where whole subclusters are covered.
  "discard 0 4k",
  "discard 1000 3000",
  "discard 256k 256k",
  "write -zu 2M 192k",
  "flush",
  "read -P 0x11 4k 4k",
  "read -q 0 1M",
  "truncate 5M",
  "write -P 0x15 4M 1M",
  "write 4608k 512",
  "read -P 0xcd 4608k 512",
];

const IO_CASES: { options: string; backing: boolean }[] = [
  { options: "", backing: false },
  { options: "compat=0.10", backing: false },
  { options: "cluster_size=4k,refcount_bits=1", backing: false },
  { options: "extended_l2=on", backing: false },
  { options: "", backing: true },
  { options: "compat=0.10", backing: true },
  { options: "extended_l2=on,cluster_size=32k", backing: true },
];

Deno.test({
  name: "cli io commands leave the image qemu-io leaves, and print what qemu-io prints",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    const base = `${dir.path}/base.qcow2`;
    await qemuImg("create", "-q", "-f", "qcow2", base, "4M");
    await qemuIo(base, ["write -P 0x5a 0 4M"]);
    for (const [i, { options, backing }] of IO_CASES.entries()) {
      const what = `${options || "defaults"}${backing ? " over a backing file" : ""}`;
      const ours = `${dir.path}/ours${i}.qcow2`;
      const theirs = `${dir.path}/theirs${i}.qcow2`;
      const args = ["create", "-q", "-f", "qcow2"];
      if (options) args.push("-o", options);
      if (backing) args.push("-b", "base.qcow2", "-F", "qcow2");
      await qemuImg(...args, ours, "4M");
      await Deno.copyFile(ours, theirs);

      const run = await cli("io", ...IO_COMMANDS.flatMap((c) => ["-c", c]), ours);
      assert.equal(run.status, 0, `${what}: ${run.err}`);
      assert.equal(run.err, "");
      const reference = await qemu(
        "qemu-io",
        "-f",
        "qcow2",
        ...IO_COMMANDS.flatMap((c) => ["-c", c]),
        theirs,
      );
      assert.equal(reference.status, 0, `${what}: ${reference.out}${reference.err}`);
      assert.deepEqual(withoutTimings(run.out), withoutTimings(reference.out), what);
      await assertCleanAndIdentical(ours, theirs);
      assert.deepEqual((await qemuInfo(ours))["virtual-size"], 5 * 1024 * 1024, what);
      if (!backing && options === "") {
        // Where no choice is left to the writer, the allocation is the same too.
        assert.deepEqual(await qemuMap(ours), await qemuMap(theirs), what);
      }
    }
  },
});

Deno.test({
  name: "cli io read -P reports a mismatch as qemu-io does, names the byte, and exits 1",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    const image = `${dir.path}/a.qcow2`;
    await qemuImg("create", "-q", "-f", "qcow2", image, "1M");
    await qemuIo(image, ["write -P 7 0 64k", "write -P 8 5000 1"]);
    const commands = ["-c", "read -P 7 4k 4k", "-c", "read -P 7 8k 4k"];
    const run = await cli("io", ...commands, image);
    assert.equal(run.status, 1);
    const reference = await qemu("qemu-io", "-f", "qcow2", ...commands, image);
    assert.equal(reference.status, 1);
    assert.deepEqual(withoutTimings(run.out), withoutTimings(reference.out));
    assert.equal(run.out.split("\n")[0], "Pattern verification failed at offset 4096, 4096 bytes");
    assert.equal(
      run.err,
      "qcowlab: Pattern verification failed: byte at offset 5000 is 0x08, expected 0x07\n",
    );
    // The read that matched still ran and passed: only the status says something failed.
    assert.match(run.out, /read 4096\/4096 bytes at offset 8192\n/);
  },
});

Deno.test({
  name: "cli io checks every command first and reports failing ones in one line each",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    const image = `${dir.path}/a.qcow2`;
    await qemuImg("create", "-q", "-f", "qcow2", image, "1M");
    const before = await Deno.readFile(image);
    const bad: [string, RegExp][] = [
      ["frob 0 1", /command "frob" not found/],
      ["write 0 1x", /Parsing error: .* -- 1x/],
      ["write 0", /bad argument count 1 to write, expected 2 arguments/],
      ["write -u 0 4k", /-u requires -z/],
      ["write -z -P 1 0 4k", /Only one of -z and -P/],
      ["write -P 300 0 1", /300 is not a valid pattern byte/],
      ["read -x 0 1", /invalid option -- 'x'/],
      ["read -P", /option requires an argument -- 'P'/],
      ["flush now", /bad argument count 1 to flush/],
    ];
    assertOneLineError(await cli("io", image), /Expected at least one -c COMMAND/);
    for (const [command, pattern] of bad) {
      const run = await cli("io", "-c", "write -P 1 0 64k", "-c", command, image);
      assertOneLineError(run, pattern);
      assert.equal(run.out, "", "nothing ran");
    }
    assert.deepEqual(await Deno.readFile(image), before);

    // Failures while running: reported, the other commands still run, the status is 1.
    const run = await cli(
      "io",
      "-c",
      "write -c 1k 64k",
      "-c",
      "write 1M 1",
      "-c",
      "write -P 3 0 512",
      image,
    );
    assert.equal(run.status, 1);
    assert.deepEqual(run.err.split("\n"), [
      "qcowlab: write failed: Compressed writes must cover whole 65536-byte clusters (offset 1024, 65536 bytes)",
      `qcowlab: write failed: Request at 1048576 for 1 bytes ends past the end of ${image} (1048576 bytes)`,
      "",
    ]);
    assert.match(run.out, /^wrote 512\/512 bytes at offset 0\n/);

    const readOnly = await cli(
      "io",
      "-r",
      "-c",
      "write 0 1",
      "-c",
      "flush",
      "-c",
      "read 0 1",
      image,
    );
    assert.equal(readOnly.status, 1);
    assert.match(readOnly.err, /^qcowlab: write failed: Image .* is read-only\n$/);
    assert.match(readOnly.out, /^read 1\/1 bytes at offset 0\n/);
  },
});

// A known driver bug, kept as a test to switch on once drivers/qcow2/qcow2_image.ts is fixed.

Deno.test({
  name: "preallocated extended-L2 clusters of an overlay show its backing file, as in QEMU",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    const base = `${dir.path}/base.qcow2`;
    await qemuImg("create", "-q", "-f", "qcow2", base, "1M");
    await qemuIo(base, ["write -P 0x5a 0 1M"]);
    const args = ["-o", "extended_l2=on,preallocation=metadata", "-b", "base.qcow2", "-F", "qcow2"];
    const ours = `${dir.path}/ours.qcow2`;
    assert.equal((await cli("create", "-q", ...args, ours)).status, 0);
    await qemuImg("create", "-q", "-f", "qcow2", ...args, `${dir.path}/theirs.qcow2`);
    await assertCleanAndIdentical(ours, `${dir.path}/theirs.qcow2`);
    await assertCleanAndIdentical(ours, base);
  },
});

/** A chain base.qcow2 <- top.qcow2 with data, zeros and compressed clusters, made by qemu. */
async function makeChain(dir: string): Promise<string> {
  await qemuImg("create", "-q", "-f", "qcow2", `${dir}/src.qcow2`, "3M");
  await qemuIo(`${dir}/src.qcow2`, ["write -P 0x11 0 128k", "write -P 0x12 200k 1000"]);
  await qemuImg("convert", "-c", "-O", "qcow2", `${dir}/src.qcow2`, `${dir}/base.qcow2`);
  await qemuIo(`${dir}/base.qcow2`, ["write -P 0x22 1M 64k", "write -P 0x23 2M 300k"]);
  const top = `${dir}/top.qcow2`;
  await qemuImg("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top, "4M");
  await qemuIo(top, [
    "write -P 0x33 64k 4k",
    "write -z 1M 64k",
    "write -P 0x44 3M 100k",
    "write -z 2M 64k",
    "write -P 0 2200k 64k",
  ]);
  return top;
}

Deno.test({
  name: "cli convert -O qcow2 copies a qemu-made chain as qemu-img convert does, plain or -c",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    const top = await makeChain(dir.path);

    const plain = `${dir.path}/plain.qcow2`;
    const run = await cli("convert", "-O", "qcow2", top, plain);
    assert.equal(run.status, 0, run.err);
    assert.equal(run.out, "");
    assert.match(run.err, /convert: 100%\n$/);
    await assertCleanAndIdentical(plain, top);
    assert.equal((await qemuInfo(plain))["backing-filename"], undefined);
    // Same clusters written in the same order: the very bytes qemu-img convert writes.
    await qemuImg("convert", "-O", "qcow2", top, `${dir.path}/reference.qcow2`);
    assert.deepEqual(
      await Deno.readFile(plain),
      await Deno.readFile(`${dir.path}/reference.qcow2`),
    );

    const compressed = `${dir.path}/compressed.qcow2`;
    const quiet = await cli("convert", "-q", "-c", "-O", "qcow2", top, compressed);
    assert.equal(quiet.status, 0, quiet.err);
    assert.equal(quiet.err, "");
    await assertCleanAndIdentical(compressed, top);
    const check = await qemuImg("check", compressed);
    assert.match(check, /100\.00% compressed clusters/);
    const map = await qemuMap(compressed);
    assert.ok(map.every((e) => e.offset === undefined), "no uncompressed data clusters");

    const small = `${dir.path}/small.qcow2`;
    const options = await cli(
      "convert",
      "-q",
      "-O",
      "qcow2",
      "-o",
      "compat=0.10,cluster_size=4k",
      top,
      small,
    );
    assert.equal(options.status, 0, options.err);
    await assertCleanAndIdentical(small, top);
    const info = await qemuInfo(small);
    assert.equal(info["cluster-size"], 4096);
    assert.equal((info["format-specific"] as { data: { compat: string } }).data.compat, "0.10");

    // Raw sources of odd sizes are rounded up to whole sectors, as qemu-img does.
    const raw = `${dir.path}/odd.raw`;
    await Deno.writeFile(raw, new Uint8Array(1000).fill(9));
    const fromRaw = await cli("convert", "-q", "-c", "-f", "raw", "-O", "qcow2", raw, small);
    assert.equal(fromRaw.status, 0, fromRaw.err);
    await assertCleanAndIdentical(small, raw);
    assert.equal((await qemuInfo(small))["virtual-size"], 1024);

    // Raw output still works, and refuses -c as qemu-img does.
    const out = await cli("convert", "-q", top, `${dir.path}/out.raw`);
    assert.equal(out.status, 0, out.err);
    await assertIdentical(`${dir.path}/out.raw`, top);
    assertOneLineError(
      await cli("convert", "-c", top, `${dir.path}/c.raw`),
      /Compression not supported for this file format/,
    );
    assertOneLineError(
      await cli("convert", "-O", "qcow2", "-o", "backing_file=x", top, `${dir.path}/b.qcow2`),
      /Option 'backing_file' is not supported by convert/,
    );
    assertOneLineError(
      await cli("convert", "-O", "qcow2", "-o", "cluster_size=3000", top, `${dir.path}/b.qcow2`),
      /Cluster size must be a power of two/,
    );
    assert.equal(await exists(`${dir.path}/b.qcow2`), false);
  },
});

Deno.test({
  name: "cli resize grows and shrinks to the sizes qemu-img resize gives, and refuses as it does",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    const ours = `${dir.path}/ours.qcow2`;
    const theirs = `${dir.path}/theirs.qcow2`;
    await qemuImg("create", "-q", "-f", "qcow2", ours, "4M");
    await qemuIo(ours, ["write -P 1 1M 64k"]);
    await Deno.copyFile(ours, theirs);
    const steps = [["+1M"], ["16G"], ["--shrink", "3M"], ["--shrink", "-1M"], ["2.5M"]];
    for (const step of steps) {
      const run = await cli("resize", ours, ...step);
      assert.equal(run.status, 0, `${step.join(" ")}: ${run.err}`);
      assert.equal(run.out, "Image resized.\n");
      // qemu-img needs "--" before a negative size; qcowlab takes it either way.
      const size = step.at(-1)!;
      await qemuImg(
        "resize",
        ...step.slice(0, -1),
        theirs,
        ...(size.startsWith("-") ? ["--"] : []),
        size,
      );
      assert.equal(
        (await qemuInfo(ours))["virtual-size"],
        (await qemuInfo(theirs))["virtual-size"],
        step.join(" "),
      );
      await assertCleanAndIdentical(ours, theirs);
    }

    assertOneLineError(await cli("resize", ours, "1M"), /Use the --shrink option/);
    // qemu-img --shrink would drop the data; qcowlab only cuts an unallocated tail.
    assertOneLineError(
      await cli("resize", "--shrink", ours, "1M"),
      /Cannot shrink .* offset 1048576 is allocated/,
    );
    assertOneLineError(await cli("resize", ours, "+1001"), /multiple of 512/);
    assertOneLineError(await cli("resize", "--shrink", ours, "-1G"), /must be positive/);
    assertOneLineError(await cli("resize", ours, "1q"), /Invalid size '1q'/);
    assertOneLineError(await cli("resize", ours), /Expected FILE and SIZE/);
    assert.equal((await qemuInfo(ours))["virtual-size"], 2.5 * 1024 * 1024);

    // Growing an overlay over a longer backing file: the new area reads as zeros (version 3), or
    // the grow is refused (version 2), as with qemu-img.
    const base = `${dir.path}/base.qcow2`;
    await qemuImg("create", "-q", "-f", "qcow2", base, "8M");
    await qemuIo(base, ["write -P 0x5a 0 8M"]);
    for (const compat of ["1.1", "0.10"]) {
      const overlay = `${dir.path}/overlay-${compat}.qcow2`;
      const reference = `${dir.path}/reference-${compat}.qcow2`;
      const args = ["-o", `compat=${compat}`, "-b", "base.qcow2", "-F", "qcow2"];
      await qemuImg("create", "-q", "-f", "qcow2", ...args, overlay, "4M");
      await Deno.copyFile(overlay, reference);
      const run = await cli("resize", overlay, "+2M");
      const theirs = await qemu("qemu-img", "resize", reference, "+2M");
      assert.equal(run.status === 0, theirs.status === 0, `${compat}: ${run.err}`);
      if (run.status !== 0) assertOneLineError(run, /backing file would show through/);
      await assertCleanAndIdentical(overlay, reference);
    }

    const quiet = await cli("resize", "-q", "-f", "raw", `${dir.path}/new.raw`, "1M");
    assertOneLineError(quiet, /no such file/);
    await Deno.writeFile(`${dir.path}/a.raw`, new Uint8Array(1000));
    const raw = await cli("resize", "-q", "-f", "raw", `${dir.path}/a.raw`, "+24");
    assert.equal(raw.status, 0, raw.err);
    assert.equal(raw.out, "");
    assert.equal((await Deno.stat(`${dir.path}/a.raw`)).size, 1024);
  },
});

Deno.test("cli prints help for create, resize, convert and io", async () => {
  for (const command of ["create", "resize", "convert", "io"]) {
    const run = await cli(command, "--help");
    assert.equal(run.status, 0);
    assert.match(run.out, new RegExp(`^Usage: cli.ts ${command}`));
  }
  const options = await cli("create", "-o", "help");
  assert.match(options.out, /^Supported options:\n/);
  assert.match(options.out, /cluster_size=<size>/);
});
