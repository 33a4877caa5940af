import assert from "node:assert/strict";
import { FileDevice } from "../core/file_device.ts";
import { MemoryDevice } from "../core/memory_device.ts";
import { HAVE_QEMU, makeTempDir, qemuImg } from "../tests/_qemu.ts";
import { warnIfNoQemu } from "../tests/_support.ts";
import { probeFormat } from "./probe.ts";

warnIfNoQemu("drivers/probe_test.ts");

function withHead(head: number[], size = 512): MemoryDevice {
  const bytes = new Uint8Array(size);
  bytes.set(head.slice(0, size));
  return MemoryDevice.from(bytes);
}

Deno.test("probeFormat() calls a device without the qcow magic raw", async () => {
  await using zeros = new MemoryDevice({ size: 512 });
  assert.equal(await probeFormat(zeros), "raw");
  await using nearMagic = withHead([0x51, 0x46, 0x49, 0xfa, 0, 0, 0, 3]);
  assert.equal(await probeFormat(nearMagic), "raw");
  await using shifted = withHead([0, 0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3]);
  assert.equal(await probeFormat(shifted), "raw");
});

Deno.test("probeFormat() calls the qcow magic with version 1 qcow, and with 2 and 3 qcow2", async () => {
  for (const [version, format] of [[1, "qcow"], [2, "qcow2"], [3, "qcow2"]] as const) {
    await using device = withHead([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, version]);
    assert.equal(await probeFormat(device), format, `version ${version}`);
  }
});

Deno.test("probeFormat() calls devices shorter than eight bytes raw, magic or not", async () => {
  await using empty = new MemoryDevice();
  assert.equal(await probeFormat(empty), "raw");
  await using magicOnly = withHead([0x51, 0x46, 0x49, 0xfb, 0, 0, 0], 7);
  assert.equal(await probeFormat(magicOnly), "raw");
  await using exact = withHead([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3], 8);
  assert.equal(await probeFormat(exact), "qcow2");
});

Deno.test("probeFormat() passes on the device's errors", async () => {
  const device = new MemoryDevice({ size: 512 });
  await device.close();
  await assert.rejects(probeFormat(device), { name: "QcowError", code: "CLOSED" });
});

Deno.test({
  name: "probeFormat() recognises the images qemu-img creates",
  ignore: !HAVE_QEMU,
  fn: async () => {
    await using dir = await makeTempDir();
    const cases = [
      ["v3.qcow2", ["-f", "qcow2"], "qcow2"],
      ["v2.qcow2", ["-f", "qcow2", "-o", "compat=0.10"], "qcow2"],
      ["disk.raw", ["-f", "raw"], "raw"],
    ] as const;
    for (const [name, args, format] of cases) {
      const path = `${dir.path}/${name}`;
      await qemuImg("create", "-q", ...args, path, "1M");
      await using device = FileDevice.open(path);
      assert.equal(await probeFormat(device), format, name);
    }
  },
});
