/**
 * Internal snapshots against qemu-img, in both directions: snapshots made by `qemu-img snapshot
 * -c` are listed, read, applied and deleted by qcowlab, and snapshots made by qcowlab by qemu-img.
 * Listings must agree byte for byte (`cli.ts snapshot -l` and `qemu-img snapshot -l`), every
 * snapshot must read the same through both (`qemu-img convert -l`), and `qemu-img check` must
 * stay clean after every operation.
 *
 * @module
 */

import assert from "node:assert/strict";
import { FileDevice } from "../core/file_device.ts";
import { openImage } from "../drivers/open_image.ts";
import { createQcow2, type CreateQcow2Options } from "../drivers/qcow2/create.ts";
import { Qcow2Image } from "../drivers/qcow2/qcow2_image.ts";
import { checkQcow2 } from "../drivers/qcow2/check.ts";
import { main } from "../cli.ts";
import {
  firstDifference,
  HAVE_QEMU,
  makeTempDir,
  qemuImg,
  qemuIo,
  runTool,
  seededRandom,
} from "./_qemu.ts";

const KiB = 1024;
const MiB = 1024 * KiB;

if (!HAVE_QEMU) {
  console.warn("qemu-img or qemu-io is not installed: skipping the snapshot interop tests");
}

/** The image shapes every test runs on, as qemu-img create options. */
const SHAPES: { label: string; options: string; create: CreateQcow2Options }[] = [
  {
    label: "v3, 64 KiB clusters",
    options: "compat=1.1",
    create: { size: 4 * MiB },
  },
  {
    label: "v2, 4 KiB clusters",
    options: "compat=0.10,cluster_size=4k",
    create: { size: 4 * MiB, compat: "0.10", clusterSize: 4096 },
  },
  {
    label: "v3, 512-byte clusters, 8-bit refcounts",
    options: "cluster_size=512,refcount_bits=8",
    create: { size: 2 * MiB, clusterSize: 512, refcountBits: 8 },
  },
  {
    label: "v3, extended L2, 32 KiB clusters",
    options: "extended_l2=on,cluster_size=32k",
    create: { size: 4 * MiB, extendedL2: true, clusterSize: 32 * KiB },
  },
];

/** What `cli.ts` prints and returns. */
async function cli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = "";
  let stderr = "";
  const code = await main(args, {
    stdout: (text) => void (stdout += text),
    stderr: (text) => void (stderr += text),
    terminal: false,
  });
  return { code, stdout, stderr };
}

/** `qemu-img check` must find nothing wrong. */
async function assertQemuClean(path: string, when: string): Promise<void> {
  const run = await runTool("qemu-img", ["check", path]);
  assert.equal(run.code, 0, `qemu-img check after ${when}:\n${run.stdout}${run.stderr}`);
  assert.match(run.stdout, /No errors were found on the image/, when);
}

/** The listing qcowlab prints must be qemu-img's, byte for byte. */
async function assertSameListing(path: string, when: string): Promise<string> {
  const ours = await cli("snapshot", "-l", path);
  assert.equal(ours.code, 0, ours.stderr);
  const theirs = await qemuImg("snapshot", "-l", path);
  assert.equal(ours.stdout, theirs, `listing after ${when}`);
  return theirs;
}

/** A snapshot's disk (or the active disk) as qemu-img converts it. */
async function qemuSnapshot(path: string, name: string | undefined, scratch: string) {
  const args = ["convert", "-O", "raw", ...(name === undefined ? [] : ["-l", name]), path, scratch];
  await qemuImg(...args);
  return await Deno.readFile(scratch);
}

/** A snapshot's disk (or the active disk) as qcowlab reads it. */
async function ourSnapshot(path: string, name: string | undefined): Promise<Uint8Array> {
  await using image = await openImage(path);
  assert.ok(image instanceof Qcow2Image);
  // qemu-img convert -l reads a snapshot with the image's current size.
  const view = name === undefined ? image : await image.snapshotView(name, { size: image.size });
  try {
    const bytes = new Uint8Array(view.size);
    await view.read(bytes, 0);
    return bytes;
  } finally {
    if (view !== image) await view.close();
  }
}

function assertSameBytes(ours: Uint8Array, theirs: Uint8Array, what: string): void {
  assert.equal(ours.length, theirs.length, `${what}: size`);
  const at = firstDifference(ours, theirs);
  assert.equal(at, -1, `${what}: first difference at byte ${at}`);
}

/** Every snapshot and the active disk read the same through qcowlab and qemu-img. */
async function assertSameContents(path: string, scratch: string, when: string): Promise<void> {
  await using image = await openImage(path);
  assert.ok(image instanceof Qcow2Image);
  const names = (await image.listSnapshots()).map((s) => s.id);
  for (const id of [undefined, ...names]) {
    const theirs = await qemuSnapshot(
      path,
      id === undefined ? undefined : `snapshot.id=${id}`,
      scratch,
    );
    assertSameBytes(await ourSnapshot(path, id), theirs, `${when}, snapshot ${id ?? "(active)"}`);
  }
}

async function withWritable<T>(path: string, fn: (image: Qcow2Image) => Promise<T>): Promise<T> {
  await using image = await openImage(path, { readOnly: false });
  assert.ok(image instanceof Qcow2Image);
  return await fn(image);
}

for (const shape of SHAPES) {
  Deno.test({
    name:
      `snapshots made by qemu-img are listed, read, applied and deleted by qcowlab (${shape.label})`,
    ignore: !HAVE_QEMU,
    async fn() {
      await using dir = await makeTempDir();
      const path = `${dir.path}/disk.qcow2`;
      const scratch = `${dir.path}/scratch.raw`;
      const size = shape.create.size;
      await qemuImg("create", "-q", "-f", "qcow2", "-o", shape.options, path, String(size));
      await qemuIo(path, ["write -P 0x11 0 300k", `write -P 0x12 ${size - 64 * KiB} 64k`]);
      await qemuImg("snapshot", "-c", "first", path);
      await qemuIo(path, ["write -P 0x21 100k 50k", "write -c -P 0x22 1M 64k"]);
      await qemuImg("snapshot", "-c", "second", path);
      await qemuIo(path, ["write -P 0x31 0 8k", "discard 1M 64k", "write -z 200k 64k"]);
      await qemuImg("snapshot", "-c", "first", path); // a second snapshot with the same name
      await qemuIo(path, ["write -P 0x41 64k 64k"]);

      await assertSameListing(path, "qemu-img snapshot -c");
      await assertSameContents(path, scratch, "qemu-img snapshot -c");
      const second = await qemuSnapshot(path, "second", scratch);

      // Apply by name, then by id, with qcowlab.
      await withWritable(path, (image) => image.applySnapshot("second"));
      await assertQemuClean(path, "apply second");
      assertSameBytes(await qemuSnapshot(path, undefined, scratch), second, "after apply");
      const first = await qemuSnapshot(path, "snapshot.id=1", scratch);
      assert.equal((await cli("snapshot", "-a", "1", path)).code, 0);
      await assertQemuClean(path, "apply 1");
      assertSameBytes(await qemuSnapshot(path, undefined, scratch), first, "after apply 1");

      // Writes after an apply copy shared clusters; snapshots keep their bytes.
      await withWritable(path, async (image) => {
        await image.write(new Uint8Array(70 * KiB).fill(0x51), 90 * KiB);
      });
      await assertQemuClean(path, "write after apply");
      assertSameBytes(await qemuSnapshot(path, "snapshot.id=1", scratch), first, "snapshot 1 kept");

      // Delete by name with the CLI (the first "first" goes), and through the API.
      assert.equal((await cli("snapshot", "-d", "first", path)).code, 0);
      await assertQemuClean(path, "delete first");
      await assertSameListing(path, "delete first");
      assertSameBytes(await qemuSnapshot(path, "second", scratch), second, "second kept");
      await withWritable(path, (image) => image.deleteSnapshot("second"));
      await assertQemuClean(path, "delete second");
      await assertSameListing(path, "delete second");
      await assertSameContents(path, scratch, "deletes");
      await withWritable(path, (image) => image.deleteSnapshot("3"));
      await assertQemuClean(path, "delete all");
      assert.equal(await qemuImg("snapshot", "-l", path), "");
      // Nothing leaked: qcowlab's own check agrees with qemu-img.
      const device = FileDevice.open(path);
      try {
        const result = await checkQcow2(device);
        assert.equal(result.leaks ?? 0, 0);
        assert.equal(result.corruptions ?? 0, 0);
      } finally {
        await device.close();
      }
    },
  });

  Deno.test({
    name:
      `snapshots made by qcowlab are listed, read, applied and deleted by qemu-img (${shape.label})`,
    ignore: !HAVE_QEMU,
    async fn() {
      await using dir = await makeTempDir();
      const path = `${dir.path}/disk.qcow2`;
      const scratch = `${dir.path}/scratch.raw`;
      const size = shape.create.size;
      const device = FileDevice.open(path, { readOnly: false, create: true });
      await createQcow2(device, shape.create);
      await device.close();
      const random = seededRandom(size);
      const data = (n: number): Uint8Array =>
        Uint8Array.from({ length: n }, () => Math.floor(random() * 256));

      await withWritable(path, async (image) => {
        await image.write(data(300 * KiB), 0);
        await image.write(data(64 * KiB), size - 64 * KiB);
        await image.createSnapshot("alpha");
      });
      await assertQemuClean(path, "create alpha");
      await withWritable(path, async (image) => {
        await image.write(data(50 * KiB), 100 * KiB);
        await image.writeCompressed(new Uint8Array(image.clusterSize).fill(3), 1 * MiB);
        await image.createSnapshot("beta", { vmState: data(100 * KiB) });
        await image.write(data(8 * KiB), 0);
        await image.discard(1 * MiB, image.clusterSize);
        await image.createSnapshot("gamma");
        await image.write(data(64 * KiB), 64 * KiB);
      });
      await assertQemuClean(path, "create beta, gamma");
      await assertSameListing(path, "qcowlab create");
      await assertSameContents(path, scratch, "qcowlab create");

      // qemu-img applies and deletes what qcowlab made, qcowlab reads the result.
      const beta = await qemuSnapshot(path, "beta", scratch);
      await qemuImg("snapshot", "-a", "beta", path);
      await assertQemuClean(path, "qemu-img apply beta");
      assertSameBytes(await ourSnapshot(path, undefined), beta, "active after qemu-img apply");
      await qemuImg("snapshot", "-d", "alpha", path);
      await assertQemuClean(path, "qemu-img delete alpha");
      await assertSameListing(path, "qemu-img delete alpha");
      await assertSameContents(path, scratch, "qemu-img delete alpha");
      // The VM state survived, and goes with its snapshot.
      await withWritable(path, async (image) => {
        assert.equal((await image.readSnapshotVmState("beta")).length, 100 * KiB);
        await image.applySnapshot("gamma");
        await image.deleteSnapshot("beta");
        await image.deleteSnapshot("gamma");
      });
      await assertQemuClean(path, "qcowlab apply gamma, delete beta and gamma");
      assert.equal(await qemuImg("snapshot", "-l", path), "");
      const run = await runTool("qemu-img", ["check", "--output", "json", path]);
      assert.equal(JSON.parse(run.stdout)["leaks"] ?? 0, 0);
    },
  });
}

Deno.test({
  name: "snapshots on an image with a backing file read the backing file where unallocated",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    const base = `${dir.path}/base.qcow2`;
    const path = `${dir.path}/top.qcow2`;
    const scratch = `${dir.path}/scratch.raw`;
    await qemuImg("create", "-q", "-f", "qcow2", base, "2M");
    await qemuIo(base, ["write -P 0x7b 0 2M"]);
    await qemuImg("create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", path, "2M");
    await qemuIo(path, ["write -P 0x01 64k 64k"]);
    await withWritable(path, async (image) => {
      await image.createSnapshot("one");
      await image.write(new Uint8Array(128 * KiB).fill(2), 0);
    });
    await assertQemuClean(path, "create on overlay");
    await assertSameContents(path, scratch, "overlay");
    const one = await ourSnapshot(path, "one");
    assert.equal(one[0], 0x7b);
    assert.equal(one[64 * KiB], 0x01);
  },
});

Deno.test({
  name: "cli.ts snapshot reports errors as qemu-img does and refuses mixed actions",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    const path = `${dir.path}/disk.qcow2`;
    await qemuImg("create", "-q", "-f", "qcow2", path, "1M");
    await qemuImg("snapshot", "-c", "s", path);
    const missing = await cli("snapshot", "-d", "1", path);
    assert.equal(missing.code, 1);
    assert.equal(missing.stderr, "qcowlab: Could not delete snapshot '1': snapshot not found\n");
    const apply = await cli("snapshot", "-a", "nope", path);
    assert.equal(apply.code, 1);
    assert.match(apply.stderr, /Could not apply snapshot 'nope'/);
    const mixed = await cli("snapshot", "-l", "-c", "x", path);
    assert.equal(mixed.code, 1);
    assert.match(mixed.stderr, /Cannot mix '-l', '-a', '-c', '-d'/);
    // qemu-img keeps 255 bytes of a name; so does cli.ts.
    const long = "n".repeat(300);
    assert.equal((await cli("snapshot", "-c", long, path)).code, 0);
    await qemuImg("snapshot", "-c", long, path);
    // Columns are padded by bytes, as C's printf pads them.
    assert.equal((await cli("snapshot", "-c", "héllo wörld", path)).code, 0);
    await assertSameListing(path, "long and non-ASCII names");
    // Dates are local times, in whatever zone the process runs in.
    const env = { TZ: "Asia/Kolkata", LC_ALL: "C" };
    const cliPath = new URL("../cli.ts", import.meta.url).pathname;
    const decode = (bytes: Uint8Array): string => new TextDecoder().decode(bytes);
    const ours = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", cliPath, "snapshot", "-l", path],
      env,
    }).output();
    const theirs = await new Deno.Command("qemu-img", { args: ["snapshot", "-l", path], env })
      .output();
    assert.equal(decode(ours.stdout), decode(theirs.stdout), "listing in another time zone");
    await assertQemuClean(path, "long names");
  },
});

Deno.test({
  name: "cli.ts convert -l copies a snapshot as qemu-img convert -l does",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    const path = `${dir.path}/disk.qcow2`;
    await qemuImg("create", "-q", "-f", "qcow2", path, "1M");
    await qemuIo(path, ["write -P 1 0 512k"]);
    await qemuImg("snapshot", "-c", "x", path);
    await qemuIo(path, ["write -P 2 0 256k"]);
    await qemuImg("snapshot", "-c", "y", path);
    await qemuIo(path, ["write -P 3 0 128k"]);
    for (
      const spec of ["x", "2", "snapshot.name=y", "snapshot.id=1", "snapshot.id=1,snapshot.name=x"]
    ) {
      const ours = `${dir.path}/ours.raw`;
      const theirs = `${dir.path}/theirs.raw`;
      const run = await cli("convert", "-q", "-l", spec, "-O", "raw", path, ours);
      assert.equal(run.code, 0, run.stderr);
      await qemuImg("convert", "-l", spec, "-O", "raw", path, theirs);
      assertSameBytes(await Deno.readFile(ours), await Deno.readFile(theirs), `convert -l ${spec}`);
    }
    const bad = await cli(
      "convert",
      "-q",
      "-l",
      "snapshot.id=1,snapshot.name=y",
      path,
      `${dir.path}/x`,
    );
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /Can't find snapshot/);
  },
});

Deno.test({
  name: "applying a snapshot of another disk size resizes the disk, as qemu-img does (v3 only)",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    const path = `${dir.path}/disk.qcow2`;
    const scratch = `${dir.path}/scratch.raw`;
    await qemuImg("create", "-q", "-f", "qcow2", path, "4M");
    await qemuIo(path, ["write -P 5 0 4M"]);
    await withWritable(path, async (image) => {
      await image.createSnapshot("small");
      await image.resize(8 * MiB);
      await image.write(new Uint8Array(MiB).fill(6), 6 * MiB);
      await image.createSnapshot("large");
      // Through the API a view has the snapshot's own disk size.
      const view = await image.snapshotView("small");
      assert.equal(view.size, 4 * MiB);
      await view.close();
      await image.applySnapshot("small");
      assert.equal(image.size, 4 * MiB);
    });
    await assertQemuClean(path, "apply of a smaller snapshot");
    const info = JSON.parse(await qemuImg("info", "--output", "json", path));
    assert.equal(info["virtual-size"], 4 * MiB);
    await assertSameContents(path, scratch, "resized");
    await withWritable(path, (image) => image.applySnapshot("large"));
    await assertQemuClean(path, "apply of a larger snapshot");
    assertSameBytes(
      await ourSnapshot(path, undefined),
      await qemuSnapshot(path, "large", scratch),
      "after growing back",
    );
    // Version 2 records no disk sizes: resizing with snapshots is refused, as qemu-img does.
    const v2 = `${dir.path}/v2.qcow2`;
    await qemuImg("create", "-q", "-f", "qcow2", "-o", "compat=0.10", v2, "1M");
    await qemuImg("snapshot", "-c", "s", v2);
    await withWritable(v2, async (image) => {
      await assert.rejects(
        image.resize(2 * MiB),
        (e: unknown) => e instanceof Error && /v2 image which has snapshots/.test(e.message),
      );
    });
  },
});
