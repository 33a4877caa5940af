import assert from "node:assert/strict";
import { MemoryDevice } from "../core/memory_device.ts";
import { RawImage } from "./raw.ts";

function pattern(length: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = (i * 13 + 5) % 251;
  return out;
}

Deno.test("RawImage reads the device's bytes at the same offsets", async () => {
  await using device = MemoryDevice.from(pattern(10_000), { chunkSize: 512 });
  await using image = new RawImage(device);
  assert.equal(image.size, 10_000);
  const out = new Uint8Array(3000);
  await image.read(out, 4000);
  assert.deepEqual(out, pattern(10_000).subarray(4000, 7000));
});

Deno.test("RawImage describes itself as a raw image without a backing file", async () => {
  await using device = new MemoryDevice({ size: 4096, name: "disk.img" });
  await using image = new RawImage(device);
  assert.equal(image.format, "raw");
  assert.equal(image.filename, "disk.img");
  assert.equal(image.device, device);
  assert.equal(image.backing, undefined);
  assert.equal(image.backingName, undefined);
  assert.equal(image.backingFormat, undefined);
});

Deno.test("RawImage follows the device's size as it changes", async () => {
  await using device = new MemoryDevice({ size: 100 });
  await using image = new RawImage(device);
  await device.write(new Uint8Array([1]), 199);
  assert.equal(image.size, 200);
  const out = new Uint8Array(1);
  await image.read(out, 199);
  assert.deepEqual(out, new Uint8Array([1]));
});

Deno.test("RawImage rejects reads past the end with OUT_OF_RANGE", async () => {
  await using image = new RawImage(new MemoryDevice({ size: 512 }), { ownsDevice: true });
  await assert.rejects(image.read(new Uint8Array(2), 511), {
    name: "QcowError",
    code: "OUT_OF_RANGE",
  });
  await assert.rejects(image.read(new Uint8Array(1), 512), { code: "OUT_OF_RANGE" });
});

Deno.test("RawImage.blockStatus() reports data at the same host offset", async () => {
  await using image = new RawImage(new MemoryDevice({ size: 8192 }), { ownsDevice: true });
  assert.deepEqual(await image.blockStatus(0, 8192), { length: 8192, kind: "data", hostOffset: 0 });
  assert.deepEqual(await image.blockStatus(1000, 24), {
    length: 24,
    kind: "data",
    hostOffset: 1000,
  });
});

Deno.test("RawImage.blockStatus() rejects ranges outside the image", async () => {
  await using image = new RawImage(new MemoryDevice({ size: 8192 }), { ownsDevice: true });
  await assert.rejects(image.blockStatus(8192, 1), { code: "OUT_OF_RANGE" });
  await assert.rejects(image.blockStatus(8000, 200), { code: "OUT_OF_RANGE" });
  await assert.rejects(image.blockStatus(-1, 1), { code: "INVALID_ARGUMENT" });
  await assert.rejects(image.blockStatus(0, NaN), { code: "INVALID_ARGUMENT" });
});

Deno.test("RawImage.info() reports size, name, format and allocated bytes", async () => {
  await using device = new MemoryDevice({ size: 2 ** 30, name: "big.raw" });
  await device.write(new Uint8Array([1]), 2 ** 20);
  await using image = new RawImage(device);
  assert.deepEqual(image.info(), {
    "virtual-size": 2 ** 30,
    filename: "big.raw",
    format: "raw",
    "dirty-flag": false,
    "actual-size": 65536,
  });
});

Deno.test("RawImage.info() leaves out actual-size for devices that do not know it", async () => {
  await using memory = new MemoryDevice({ size: 512, name: "opaque" });
  const device = {
    size: memory.size,
    readOnly: true,
    name: memory.name,
    read: (buffer: Uint8Array, offset: number) => memory.read(buffer, offset),
    write: (data: Uint8Array, offset: number) => memory.write(data, offset),
    flush: () => memory.flush(),
    truncate: (size: number) => memory.truncate(size),
    close: () => memory.close(),
    [Symbol.asyncDispose]: () => memory.close(),
  };
  await using image = new RawImage(device);
  assert.equal("actual-size" in image.info(), false);
  assert.equal(image.info()["virtual-size"], 512);
});

Deno.test("RawImage.setBacking() refuses a backing image", async () => {
  await using image = new RawImage(new MemoryDevice({ size: 512 }), { ownsDevice: true });
  await using other = new RawImage(new MemoryDevice({ size: 512 }), { ownsDevice: true });
  image.setBacking(undefined);
  assert.throws(() => image.setBacking(other), { name: "QcowError", code: "INVALID_ARGUMENT" });
  assert.equal(image.backing, undefined);
});

Deno.test("RawImage.close() leaves a device it does not own open", async () => {
  await using device = MemoryDevice.from(pattern(16));
  const image = new RawImage(device);
  await image.close();
  await assert.rejects(image.read(new Uint8Array(1), 0), { name: "QcowError", code: "CLOSED" });
  const out = new Uint8Array(16);
  await device.read(out, 0);
  assert.deepEqual(out, pattern(16));
});

Deno.test("RawImage.close() closes a device it owns, once", async () => {
  const device = MemoryDevice.from(pattern(16));
  let closes = 0;
  const close = device.close.bind(device);
  device.close = () => {
    closes++;
    return close();
  };
  const image = new RawImage(device, { ownsDevice: true });
  await image.close();
  await image.close();
  await image[Symbol.asyncDispose]();
  assert.equal(closes, 1);
  await assert.rejects(device.read(new Uint8Array(1), 0), { code: "CLOSED" });
  await assert.rejects(image.read(new Uint8Array(1), 0), { code: "CLOSED" });
});
