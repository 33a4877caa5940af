import assert from "node:assert/strict";
import { MemoryDevice } from "../core/memory_device.ts";
import { HAVE_QEMU, makeTempDir, qemuContents, qemuImg } from "../tests/_qemu.ts";
import { makeChain, openFilesUnder, warnIfNoQemu } from "../tests/_support.ts";
import type { Image } from "./image.ts";
import { resolveBackingPath } from "./backing_path.ts";
import { openImage } from "./open_image.ts";
import { Qcow2Image } from "./qcow2/qcow2_image.ts";
import { RawImage } from "./raw.ts";

warnIfNoQemu("drivers/open_image_test.ts");

async function readAll(image: Image): Promise<Uint8Array> {
  const out = new Uint8Array(image.size);
  await image.read(out, 0);
  return out;
}

Deno.test("openImage() opens a device as raw when it has no qcow magic", async () => {
  await using device = MemoryDevice.from(new Uint8Array(4096).fill(3), { name: "plain" });
  await using image = await openImage(device);
  assert.ok(image instanceof RawImage);
  assert.equal(image.format, "raw");
  assert.equal(image.filename, "plain");
  assert.deepEqual(await readAll(image), new Uint8Array(4096).fill(3));
});

Deno.test("openImage() leaves a device passed in open after closing the image", async () => {
  await using device = MemoryDevice.from(new Uint8Array([1, 2, 3]));
  const image = await openImage(device, { format: "raw" });
  await image.close();
  const out = new Uint8Array(3);
  await device.read(out, 0);
  assert.deepEqual(out, new Uint8Array([1, 2, 3]));
});

Deno.test("openImage() rejects options it does not know with INVALID_ARGUMENT", async () => {
  await using device = new MemoryDevice({ size: 512 });
  const bad: unknown[] = [
    { format: "vmdk" },
    { maxChainDepth: 0 },
    { l2CacheSize: -1 },
    { backing: "yes" },
    { resolveBacking: "base.raw" },
    { cache: true },
  ];
  for (const options of bad) {
    await assert.rejects(
      openImage(device, options as Parameters<typeof openImage>[1]),
      { name: "QcowError", code: "INVALID_ARGUMENT" },
      JSON.stringify(options),
    );
  }
});

Deno.test("openImage() reports a missing file as NOT_FOUND", async () => {
  await using dir = await makeTempDir();
  await assert.rejects(openImage(`${dir.path}/nothing.qcow2`), {
    name: "QcowError",
    code: "NOT_FOUND",
  });
});

Deno.test("openImage() opens a raw file and closes it with the image", async () => {
  await using dir = await makeTempDir();
  const path = `${dir.path}/disk.raw`;
  await Deno.writeFile(path, new Uint8Array(1024).fill(7));
  const image = await openImage(path);
  assert.equal(image.format, "raw");
  assert.equal(image.filename, path);
  assert.deepEqual(openFilesUnder(dir.path), [path]);
  await image.close();
  assert.deepEqual(openFilesUnder(dir.path), []);
});

Deno.test({
  name: "openImage() reads a qcow2 chain byte for byte as qemu-img convert does",
  ignore: !HAVE_QEMU,
  fn: async () => {
    await using dir = await makeTempDir();
    const chain = await makeChain(dir.path);
    for (const path of [chain.base, chain.top, chain.overRaw]) {
      await using image = await openImage(path);
      assert.ok(image instanceof Qcow2Image, path);
      const expected = await qemuContents(path, `${dir.path}/out.raw`);
      assert.equal(image.size, expected.length, path);
      assert.ok((await readAll(image)).every((byte, i) => byte === expected[i]), path);
    }
  },
});

Deno.test({
  name: "openImage() opens the backing chain from the overlay's directory",
  ignore: !HAVE_QEMU,
  fn: async () => {
    await using dir = await makeTempDir();
    const chain = await makeChain(dir.path);
    await using top = await openImage(chain.top);
    assert.equal(top.backingName, "base.qcow2");
    assert.equal(top.backingFormat, "qcow2");
    assert.equal(top.backing?.filename, chain.base);
    assert.equal(top.backing?.format, "qcow2");
    assert.equal(top.backing?.backing, undefined);
    await using overRaw = await openImage(chain.overRaw);
    assert.equal(overRaw.backing?.filename, chain.raw);
    assert.equal(overRaw.backing?.format, "raw");
  },
});

Deno.test({
  name: "openImage() closes every file of the chain with the top image",
  ignore: !HAVE_QEMU,
  fn: async () => {
    await using dir = await makeTempDir();
    const chain = await makeChain(dir.path);
    const top = await openImage(chain.top);
    assert.deepEqual(openFilesUnder(dir.path).sort(), [chain.base, chain.top].sort());
    const base = top.backing!;
    await top.close();
    assert.deepEqual(openFilesUnder(dir.path), []);
    await assert.rejects(base.read(new Uint8Array(1), 0), { code: "CLOSED" });
    await top.close();
  },
});

Deno.test({
  name: "openImage() with backing: false reads ranges the top image lacks as zeros",
  ignore: !HAVE_QEMU,
  fn: async () => {
    await using dir = await makeTempDir();
    const chain = await makeChain(dir.path);
    await using top = await openImage(chain.top, { backing: false });
    assert.equal(top.backing, undefined);
    assert.equal(top.backingName, "base.qcow2");
    assert.deepEqual(openFilesUnder(dir.path), [chain.top]);
    const first = new Uint8Array(128 * 1024);
    await top.read(first, 0);
    assert.ok(first.subarray(0, 64 * 1024).every((byte) => byte === 0));
    assert.ok(first.subarray(64 * 1024).every((byte) => byte === 0xbb));
  },
});

Deno.test({
  name: "openImage() keeps a whole chain in memory with resolveBacking",
  ignore: !HAVE_QEMU,
  fn: async () => {
    await using dir = await makeTempDir();
    const chain = await makeChain(dir.path);
    await using base = MemoryDevice.from(await Deno.readFile(chain.base), { name: "mem:base" });
    await using topDevice = MemoryDevice.from(await Deno.readFile(chain.top), { name: "mem:top" });
    const asked: [string, string][] = [];
    await using image = await openImage(topDevice, {
      resolveBacking: (name, overlay) => {
        asked.push([name, overlay.filename]);
        return base;
      },
    });
    assert.deepEqual(asked, [["base.qcow2", "mem:top"]]);
    assert.equal(image.backing?.device, base);
    const expected = await qemuContents(chain.top, `${dir.path}/out.raw`);
    assert.ok((await readAll(image)).every((byte, i) => byte === expected[i]));
  },
});

Deno.test({
  name: "openImage() reports a missing backing file as BACKING_MISSING and closes the overlay",
  ignore: !HAVE_QEMU,
  fn: async () => {
    await using dir = await makeTempDir();
    const top = `${dir.path}/orphan.qcow2`;
    await qemuImg(
      "create",
      "-q",
      "-f",
      "qcow2",
      "-u",
      "-b",
      "gone.qcow2",
      "-F",
      "qcow2",
      top,
      "1M",
    );
    await assert.rejects(openImage(top), (error: unknown) => {
      assert.equal((error as { code?: string }).code, "BACKING_MISSING");
      assert.match((error as Error).message, /gone\.qcow2/);
      return true;
    });
    assert.deepEqual(openFilesUnder(dir.path), []);
    await using alone = await openImage(top, { backing: false });
    assert.equal(alone.backingName, "gone.qcow2");
  },
});

Deno.test({
  name: "openImage() refuses a backing chain that loops with BACKING_LOOP",
  ignore: !HAVE_QEMU,
  fn: async () => {
    await using dir = await makeTempDir();
    const a = `${dir.path}/a.qcow2`;
    const b = `${dir.path}/b.qcow2`;
    await qemuImg("create", "-q", "-f", "qcow2", "-u", "-b", "b.qcow2", "-F", "qcow2", a, "1M");
    await qemuImg("create", "-q", "-f", "qcow2", "-u", "-b", "a.qcow2", "-F", "qcow2", b, "1M");
    await assert.rejects(openImage(a), { name: "QcowError", code: "BACKING_LOOP" });
    // Found when a file comes round again, not only once the depth limit is reached.
    let resolved = 0;
    const resolveBacking = (name: string, overlay: Image): string => {
      resolved++;
      return resolveBackingPath(overlay.filename, name);
    };
    await assert.rejects(openImage(a, { resolveBacking }), { code: "BACKING_LOOP" });
    assert.equal(resolved, 2);
    const self = `${dir.path}/self.qcow2`;
    await qemuImg(
      "create",
      "-q",
      "-f",
      "qcow2",
      "-u",
      "-b",
      "self.qcow2",
      "-F",
      "qcow2",
      self,
      "1M",
    );
    await assert.rejects(openImage(self), { code: "BACKING_LOOP" });
    // The same file under another name is still the same file.
    const c = `${dir.path}/c.qcow2`;
    await qemuImg("create", "-q", "-f", "qcow2", "-u", "-b", "./c.qcow2", "-F", "qcow2", c, "1M");
    await assert.rejects(openImage(c), { code: "BACKING_LOOP" });
    assert.deepEqual(openFilesUnder(dir.path), []);
  },
});

Deno.test({
  name: "openImage() refuses chains deeper than maxChainDepth with BACKING_LOOP",
  ignore: !HAVE_QEMU,
  fn: async () => {
    await using dir = await makeTempDir();
    const chain = await makeChain(dir.path);
    const third = `${dir.path}/third.qcow2`;
    await qemuImg("create", "-q", "-f", "qcow2", "-b", "top.qcow2", "-F", "qcow2", third, "2M");
    await assert.rejects(openImage(third, { maxChainDepth: 1 }), {
      name: "QcowError",
      code: "BACKING_LOOP",
    });
    assert.deepEqual(openFilesUnder(dir.path), []);
    await using image = await openImage(third, { maxChainDepth: 2 });
    assert.equal(image.backing?.backing?.filename, chain.base);
  },
});

Deno.test({
  name: "openImage() refuses a backing format it does not know",
  ignore: !HAVE_QEMU,
  fn: async () => {
    await using dir = await makeTempDir();
    const top = `${dir.path}/top.qcow2`;
    await Deno.writeFile(`${dir.path}/base.vmdk`, new Uint8Array(512));
    await qemuImg("create", "-q", "-f", "qcow2", "-u", "-b", "base.vmdk", "-F", "vmdk", top, "1M");
    await assert.rejects(openImage(top), { name: "QcowError", code: "UNSUPPORTED_FEATURE" });
    assert.deepEqual(openFilesUnder(dir.path), []);
  },
});
