/**
 * Interoperability of the qcow (version 1) driver and legacy AES with QEMU: images built by
 * `qemu-img` and `qemu-io` read byte for byte as `qemu-img convert -O raw` reads them, and images
 * qcowlab creates and writes read identically through qemu-img.
 *
 * @module
 */

import assert from "node:assert/strict";
import {
  createQcow,
  createQcow2,
  encryptNewQcow2,
  type Image,
  MemoryDevice,
  openImage,
} from "../mod.ts";
import { deflateSync } from "fflate";
import { writeU32, writeU64 } from "../core/bytes.ts";
import { FileDevice } from "../core/file_device.ts";
import { encodeCompressed } from "../drivers/qcow/entries.ts";
import { QcowImage } from "../drivers/qcow/qcow_image.ts";
import {
  firstDifference,
  HAVE_QEMU,
  makeTempDir,
  qemuContents,
  qemuImg,
  qemuInfo,
  runTool,
  seededRandom,
} from "./_qemu.ts";

const KiB = 1024;
const MiB = 1024 * KiB;
const PASS = "correct horse";

async function qemuIoQcow(path: string, commands: string[], passphrase?: string): Promise<void> {
  const args: string[] = [];
  if (passphrase === undefined) args.push("-f", "qcow");
  else {
    args.push("--object", `secret,id=sec0,data=${passphrase}`, "--image-opts");
  }
  for (const command of commands) args.push("-c", command);
  args.push(
    passphrase === undefined ? path : `driver=qcow,file.filename=${path},encrypt.key-secret=sec0`,
  );
  const run = await runTool("qemu-io", args);
  assert.equal(run.code, 0, run.stderr + run.stdout);
  assert.doesNotMatch(run.stdout, /failed|error/i);
}

/** The whole disk of an encrypted image as qemu-img converts it. */
async function qemuEncryptedContents(
  path: string,
  driver: "qcow" | "qcow2",
  scratch: string,
  passphrase = PASS,
): Promise<Uint8Array> {
  await qemuImg(
    "convert",
    "--object",
    `secret,id=sec0,data=${passphrase}`,
    "--image-opts",
    `driver=${driver},file.filename=${path},encrypt.key-secret=sec0`,
    "-O",
    "raw",
    scratch,
  );
  return await Deno.readFile(scratch);
}

async function contents(image: Image): Promise<Uint8Array> {
  const out = new Uint8Array(image.size);
  for (let at = 0; at < image.size; at += MiB) {
    await image.read(out.subarray(at, Math.min(image.size, at + MiB)), at);
  }
  return out;
}

function assertSame(ours: Uint8Array, theirs: Uint8Array, what: string): void {
  const at = firstDifference(ours, theirs);
  assert.equal(at, -1, `${what}: first difference at ${at}`);
}

/** Random qemu-io writes with patterns at unaligned offsets. */
function qemuWrites(seed: number, size: number, count: number): string[] {
  const random = seededRandom(seed);
  const commands: string[] = [];
  for (let i = 0; i < count; i++) {
    const length = 1 + Math.floor(random() * 20000);
    const offset = Math.floor(random() * (size - length));
    // qemu-io needs sector-aligned requests only for encrypted images: align everything.
    const start = Math.floor(offset / 512) * 512;
    const len = Math.ceil(length / 512) * 512;
    commands.push(`write -P ${1 + (i % 250)} ${start} ${len}`);
  }
  return commands;
}

Deno.test({
  name: "qcow interop: images written by qemu-io read as qemu-img converts them",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    const path = `${dir.path}/plain.qcow`;
    await qemuImg("create", "-f", "qcow", path, "8M");
    await qemuIoQcow(path, [...qemuWrites(1, 8 * MiB, 40), "write -z 1M 64k"]);
    const expected = await qemuContents(path, `${dir.path}/out.raw`);
    await using image = await openImage(path);
    assert.equal(image.format, "qcow");
    assertSame(await contents(image), expected, "plain qcow");
    const info = await qemuInfo(path);
    const ours = image.info();
    for (const field of ["virtual-size", "cluster-size", "format", "dirty-flag"] as const) {
      assert.deepEqual(ours[field], info[field], field);
    }
  },
});

Deno.test({
  name: "qcow interop: backing chains mixing qcow, qcow2 and raw read as in QEMU",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    const d = dir.path;
    const raw = new Uint8Array(4 * MiB).map((_, i) => (i * 31) >> 7);
    await Deno.writeFile(`${d}/base.raw`, raw);
    // qcow over raw, qcow2 over that, qcow over the qcow2.
    await qemuImg("create", "-f", "qcow", "-b", "base.raw", "-F", "raw", `${d}/l1.qcow`);
    await qemuIoQcow(`${d}/l1.qcow`, qemuWrites(2, 4 * MiB, 15));
    await qemuImg("create", "-f", "qcow2", "-b", "l1.qcow", "-F", "qcow", `${d}/l2.qcow2`);
    const l2 = await runTool("qemu-io", [
      "-f",
      "qcow2",
      "-c",
      "write -P 77 100k 300k",
      `${d}/l2.qcow2`,
    ]);
    assert.equal(l2.code, 0, l2.stderr);
    await qemuImg("create", "-f", "qcow", "-b", "l2.qcow2", "-F", "qcow2", `${d}/top.qcow`, "6M");
    await qemuIoQcow(`${d}/top.qcow`, qemuWrites(3, 6 * MiB, 15));
    for (const name of ["l1.qcow", "l2.qcow2", "top.qcow"]) {
      const expected = await qemuContents(`${d}/${name}`, `${d}/out.raw`);
      await using image = await openImage(`${d}/${name}`);
      assertSame(await contents(image), expected, name);
      const info = await qemuInfo(`${d}/${name}`);
      assert.equal(image.info()["backing-filename"], info["backing-filename"]);
      assert.equal(image.info()["full-backing-filename"], info["full-backing-filename"]);
    }
  },
});

Deno.test({
  name: "qcow interop: compressed images from qemu-img convert -c read identically",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    const d = dir.path;
    const random = seededRandom(4);
    const raw = new Uint8Array(3 * MiB + 1536);
    for (let at = 0; at < raw.length; at += 4096) {
      const kind = Math.floor(random() * 3);
      const end = Math.min(raw.length, at + 4096);
      if (kind === 0) { for (let i = at; i < end; i++) raw[i] = Math.floor(random() * 256); }
      if (kind === 1) { for (let i = at; i < end; i++) raw[i] = (i >> 3) & 0xff; }
    }
    await Deno.writeFile(`${d}/in.raw`, raw);
    // qemu-img 7.2 ends a compressed convert to qcow with an empty compressed write that the qcow
    // driver refuses, so it exits 1 without a message after writing everything; qemu-img compare
    // shows the image is complete.
    const convert = await runTool("qemu-img", [
      "convert",
      "-c",
      "-O",
      "qcow",
      `${d}/in.raw`,
      `${d}/c.qcow`,
    ]);
    assert.ok(convert.code <= 1 && convert.stderr === "", convert.stderr);
    await qemuImg("compare", "-f", "raw", "-F", "qcow", `${d}/in.raw`, `${d}/c.qcow`);
    await using image = await openImage(`${d}/c.qcow`);
    assertSame(await contents(image), raw, "compressed qcow");
    let compressed = 0;
    for (let at = 0; at < image.size;) {
      const status = await image.blockStatus(at, image.size - at);
      if (status.kind === "compressed") compressed++;
      at += status.length;
    }
    assert.ok(compressed > 100, `only ${compressed} compressed clusters`);
  },
});

Deno.test({
  name: "qcow interop: AES-encrypted qcow and qcow2 images from qemu read with the passphrase",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    const d = dir.path;
    for (const driver of ["qcow", "qcow2"] as const) {
      const path = `${d}/enc.${driver}`;
      await qemuImg(
        "create",
        "-f",
        driver,
        "--object",
        `secret,id=sec0,data=${PASS}`,
        "-o",
        "encrypt.format=aes,encrypt.key-secret=sec0",
        path,
        "4M",
      );
      const commands = qemuWrites(5, 4 * MiB, 25);
      const args = ["--object", `secret,id=sec0,data=${PASS}`, "--image-opts"];
      for (const c of commands) args.push("-c", c);
      args.push(`driver=${driver},file.filename=${path},encrypt.key-secret=sec0`);
      const run = await runTool("qemu-io", args);
      assert.equal(run.code, 0, run.stderr);
      const expected = await qemuEncryptedContents(path, driver, `${d}/out.raw`);
      await using image = await openImage(path, { passphrase: PASS });
      assertSame(await contents(image), expected, `encrypted ${driver}`);
      assert.equal(image.info().encrypted, true);
      const theirInfo = await qemuInfo(path);
      for (const field of ["encrypted", "format-specific", "cluster-size", "format"] as const) {
        assert.deepEqual(image.info()[field], theirInfo[field], field);
      }
      await assert.rejects(openImage(path), { code: "PASSPHRASE_REQUIRED" });
      // A wrong passphrase is not detected: the data reads as something else.
      await using wrong = await openImage(path, { passphrase: "wrong" });
      assert.notDeepEqual(await contents(wrong), expected);
    }
  },
});

Deno.test({
  name: "qcow interop: images qcowlab creates and writes read identically through qemu-img",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    const d = dir.path;
    const cases: { name: string; encrypted: boolean; clusterSize?: number; backing: boolean }[] = [
      { name: "plain", encrypted: false, backing: false },
      { name: "backed", encrypted: false, backing: true },
      { name: "big-clusters", encrypted: false, clusterSize: 65536, backing: false },
      { name: "encrypted", encrypted: true, backing: false },
      { name: "encrypted-backed", encrypted: true, backing: true },
    ];
    const baseBytes = new Uint8Array(5 * MiB).map((_, i) => (i * 7) >> 9);
    await Deno.writeFile(`${d}/base.raw`, baseBytes);
    for (const c of cases) {
      const path = `${d}/${c.name}.qcow`;
      const size = 5 * MiB - 512;
      {
        await using device = FileDevice.open(path, { create: true, readOnly: false });
        await createQcow(device, {
          size,
          encrypted: c.encrypted,
          ...(c.clusterSize ? { clusterSize: c.clusterSize } : {}),
          ...(c.backing ? { backingFile: "base.raw" } : {}),
        });
      }
      const model = c.backing ? baseBytes.slice(0, size) : new Uint8Array(size);
      const random = seededRandom(c.name.length * 97);
      {
        await using image = await openImage(path, {
          readOnly: false,
          ...(c.encrypted ? { passphrase: PASS } : {}),
        });
        for (let i = 0; i < 60; i++) {
          const length = 1 + Math.floor(random() * 70000);
          const offset = Math.floor(random() * (size - length));
          const data = new Uint8Array(length).map(() => Math.floor(random() * 256));
          if (i % 5 === 0) data.fill(i);
          await image.write(data, offset);
          model.set(data, offset);
        }
        if (!c.encrypted) {
          const cs = c.clusterSize ?? (c.backing ? 512 : 4096);
          const block = new Uint8Array(cs * 4).map((_, i) => (i >> 4) & 0xff);
          await image.writeCompressed(block, cs * 8);
          model.set(block, cs * 8);
          // A partial write into a compressed cluster moves it to a new, uncompressed one.
          await image.write(new Uint8Array(100).fill(0xee), cs * 9 + 7);
          model.fill(0xee, cs * 9 + 7, cs * 9 + 107);
        }
        await image.writeZeroes(2 * MiB + 100, 70000);
        model.fill(0, 2 * MiB + 100, 2 * MiB + 70100);
        assertSame(await contents(image), model, `${c.name} through qcowlab`);
      }
      const theirs = c.encrypted
        ? await qemuEncryptedContents(path, "qcow", `${d}/out.raw`)
        : await qemuContents(path, `${d}/out.raw`);
      assertSame(theirs, model, `${c.name} through qemu-img`);
      const info = await qemuInfo(path);
      assert.equal(info["format"], "qcow");
      assert.equal(info["virtual-size"], size);
    }
  },
});

Deno.test({
  name: "qcow interop: convert -O qcow with qemu-img and qcowlab's compressed writes agree",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    const d = dir.path;
    // A 64 KiB cluster with repeats further apart than 4 KiB: QEMU inflates with a 4 KiB window.
    const device = new MemoryDevice({ name: `${d}/w.qcow` });
    await createQcow(device, { size: 1 * MiB, clusterSize: 65536 });
    const random = seededRandom(9);
    const chunk = new Uint8Array(8192).map(() => Math.floor(random() * 16));
    const cluster = new Uint8Array(65536);
    for (let at = 0; at < cluster.length; at += chunk.length) cluster.set(chunk, at);
    {
      await using image = await QcowImage.open(device, { readOnly: false });
      await image.writeCompressed(cluster, 65536);
      assert.equal((await image.blockStatus(65536, 65536)).kind, "compressed");
    }
    const bytes = new Uint8Array(device.size);
    await device.read(bytes, 0);
    await Deno.writeFile(`${d}/w.qcow`, bytes);
    const theirs = await qemuContents(`${d}/w.qcow`, `${d}/out.raw`);
    assertSame(theirs.subarray(65536, 131072), cluster, "64 KiB compressed cluster");
  },
});

Deno.test({
  name: "qcow2 AES interop: qcowlab's writes to encrypted qcow2 images read identically in QEMU",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    const d = dir.path;
    const baseBytes = new Uint8Array(3 * MiB).map((_, i) => (i * 5) >> 8);
    await Deno.writeFile(`${d}/base.raw`, baseBytes);
    const made = [
      // Made by qemu-img, then written by qcowlab.
      async (path: string): Promise<void> => {
        await qemuImg(
          "create",
          "-f",
          "qcow2",
          "--object",
          `secret,id=sec0,data=${PASS}`,
          "-o",
          "encrypt.format=aes,encrypt.key-secret=sec0,cluster_size=4k",
          "-b",
          "base.raw",
          "-F",
          "raw",
          path,
          "3M",
        );
      },
      // Made by qcowlab.
      async (path: string): Promise<void> => {
        await using device = FileDevice.open(path, { create: true, readOnly: false });
        await createQcow2(device, {
          size: 3 * MiB,
          clusterSize: 65536,
          backingFile: "base.raw",
          backingFormat: "raw",
        });
        await encryptNewQcow2(device);
      },
    ];
    for (const [i, make] of made.entries()) {
      const path = `${d}/e${i}.qcow2`;
      await make(path);
      const model = baseBytes.slice();
      const random = seededRandom(40 + i);
      {
        await using image = await openImage(path, { readOnly: false, passphrase: PASS });
        for (let n = 0; n < 50; n++) {
          const length = 1 + Math.floor(random() * 30000);
          const offset = Math.floor(random() * (model.length - length));
          const data = new Uint8Array(length).map(() => Math.floor(random() * 256));
          await image.write(data, offset);
          model.set(data, offset);
        }
        await image.writeZeroes(MiB + 3, 9000);
        model.fill(0, MiB + 3, MiB + 9003);
        await assert.rejects(image.writeCompressed(new Uint8Array(65536), 0), {
          code: "UNSUPPORTED_FEATURE",
        });
        assertSame(await contents(image), model, `e${i} through qcowlab`);
      }
      assertSame(
        await qemuEncryptedContents(path, "qcow2", `${d}/out.raw`),
        model,
        `e${i} through qemu-img`,
      );
    }
  },
});

Deno.test({
  name: "qcow interop: QEMU inflates deflate streams with back-references beyond its 4 KiB window",
  ignore: !HAVE_QEMU,
  async fn() {
    // QEMU writes qcow clusters with a 4 KiB window (windowBits -12), and so does qcowlab (pako).
    // fflate cannot limit its window; its output still reads in QEMU, because zlib inflates a
    // cluster into one buffer, where every earlier byte of the cluster stays in reach.
    await using dir = await makeTempDir();
    const device = new MemoryDevice({ name: `${dir.path}/f.qcow` });
    await createQcow(device, { size: 1 * MiB, clusterSize: 65536 });
    const random = seededRandom(11);
    const chunk = new Uint8Array(8192).map(() => Math.floor(random() * 16));
    const cluster = new Uint8Array(65536);
    for (let at = 0; at < cluster.length; at += chunk.length) cluster.set(chunk, at);
    const packed = deflateSync(cluster, { level: 6 });
    assert.ok(packed.length < 8192, "fflate used the repeats 8 KiB back");
    // L1 at 48 (one entry), the L2 table at 64 KiB, the stream after it.
    const l1 = new Uint8Array(8);
    writeU64(l1, 0, 65536);
    const l2 = new Uint8Array(4096);
    const [hi, lo] = encodeCompressed(65536 + 4096, packed.length, 16);
    writeU32(l2, 0, hi);
    writeU32(l2, 4, lo);
    await device.write(l1, 48);
    await device.write(l2, 65536);
    await device.write(packed, 65536 + 4096);
    const bytes = new Uint8Array(device.size);
    await device.read(bytes, 0);
    await Deno.writeFile(`${dir.path}/f.qcow`, bytes);
    const theirs = await qemuContents(`${dir.path}/f.qcow`, `${dir.path}/out.raw`);
    assertSame(theirs.subarray(0, 65536), cluster, "fflate stream through qemu-img");
    await using image = await openImage(`${dir.path}/f.qcow`);
    const ours = new Uint8Array(65536);
    await image.read(ours, 0);
    assertSame(ours, cluster, "fflate stream through qcowlab");
  },
});
