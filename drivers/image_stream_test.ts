import assert from "node:assert/strict";
import { MemoryDevice } from "../core/memory_device.ts";
import { imageStream } from "./image_stream.ts";
import { RawImage } from "./raw.ts";

function pattern(length: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = (i * 17 + 3) % 251;
  return out;
}

function concat(chunks: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(chunks.reduce((sum, chunk) => sum + chunk.length, 0));
  let at = 0;
  for (const chunk of chunks) {
    out.set(chunk, at);
    at += chunk.length;
  }
  return out;
}

async function collect(stream: ReadableStream<Uint8Array>): Promise<Uint8Array[]> {
  const chunks: Uint8Array[] = [];
  for await (const chunk of stream) chunks.push(chunk);
  return chunks;
}

/** A raw image over a copy of `bytes` that counts the reads made through it. */
function countingImage(bytes: Uint8Array): { image: RawImage; reads: () => number } {
  const device = MemoryDevice.from(bytes);
  const image = new RawImage(device, { ownsDevice: true });
  let reads = 0;
  const read = device.read.bind(device);
  device.read = (buffer, offset) => {
    reads++;
    return read(buffer, offset);
  };
  return { image, reads: () => reads };
}

Deno.test("imageStream() yields the whole image in chunks of chunkSize", async () => {
  await using image = new RawImage(MemoryDevice.from(pattern(10_000)), { ownsDevice: true });
  const chunks = await collect(imageStream(image, { chunkSize: 4096 }));
  assert.deepEqual(chunks.map((chunk) => chunk.length), [4096, 4096, 1808]);
  assert.deepEqual(concat(chunks), pattern(10_000));
});

Deno.test("imageStream() uses 1 MiB chunks by default", async () => {
  await using image = new RawImage(new MemoryDevice({ size: 2.5 * 2 ** 20 }), { ownsDevice: true });
  const chunks = await collect(imageStream(image));
  assert.deepEqual(chunks.map((chunk) => chunk.length), [2 ** 20, 2 ** 20, 2 ** 19]);
});

Deno.test("imageStream() streams only the range from start to end", async () => {
  await using image = new RawImage(MemoryDevice.from(pattern(5000)), { ownsDevice: true });
  const chunks = await collect(imageStream(image, { start: 100, end: 2100, chunkSize: 1024 }));
  assert.deepEqual(chunks.map((chunk) => chunk.length), [1024, 976]);
  assert.deepEqual(concat(chunks), pattern(5000).subarray(100, 2100));
  const tail = await collect(imageStream(image, { start: 4990 }));
  assert.deepEqual(concat(tail), pattern(5000).subarray(4990));
});

Deno.test("imageStream() ends at once for an empty range or image", async () => {
  await using image = new RawImage(MemoryDevice.from(pattern(100)), { ownsDevice: true });
  assert.deepEqual(await collect(imageStream(image, { start: 50, end: 50 })), []);
  assert.deepEqual(await collect(imageStream(image, { start: 100 })), []);
  await using empty = new RawImage(new MemoryDevice(), { ownsDevice: true });
  assert.deepEqual(await collect(imageStream(empty)), []);
});

Deno.test("imageStream() rejects a chunk size that is not a positive integer", async () => {
  await using image = new RawImage(new MemoryDevice({ size: 100 }), { ownsDevice: true });
  for (const chunkSize of [0, -1, 1.5, NaN, Infinity]) {
    assert.throws(
      () => imageStream(image, { chunkSize }),
      { name: "QcowError", code: "INVALID_ARGUMENT" },
      `${chunkSize}`,
    );
  }
});

Deno.test("imageStream() rejects ranges outside the image with OUT_OF_RANGE", async () => {
  await using image = new RawImage(new MemoryDevice({ size: 100 }), { ownsDevice: true });
  const ranges = [{ end: 101 }, { start: 101 }, { start: 60, end: 50 }, { start: -1 }, {
    start: 0.5,
  }];
  for (const range of ranges) {
    assert.throws(
      () => imageStream(image, range),
      { name: "QcowError", code: "OUT_OF_RANGE" },
      JSON.stringify(range),
    );
  }
});

Deno.test("imageStream() reads only as far ahead as the consumer pulls", async () => {
  const { image, reads } = countingImage(pattern(100 * 512));
  await using _ = image;
  const stream = imageStream(image, { chunkSize: 512 });
  const reader = stream.getReader();
  const first = await reader.read();
  assert.deepEqual(first.value, pattern(512));
  // Give the stream time to fill its queue: it may read ahead a couple of chunks, not all 100.
  await new Promise((resolve) => setTimeout(resolve, 10));
  assert.ok(reads() <= 4, `${reads()} reads after one chunk`);
  await reader.cancel();
  const afterCancel = reads();
  await new Promise((resolve) => setTimeout(resolve, 10));
  assert.equal(reads(), afterCancel);
});

Deno.test("imageStream() hands out a new array for every chunk", async () => {
  await using image = new RawImage(MemoryDevice.from(pattern(2048)), { ownsDevice: true });
  const chunks = await collect(imageStream(image, { chunkSize: 512 }));
  const buffers = new Set(chunks.map((chunk) => chunk.buffer));
  assert.equal(buffers.size, 4);
  chunks[0]!.fill(0);
  assert.deepEqual(chunks[1], pattern(2048).subarray(512, 1024));
  assert.deepEqual(concat(await collect(imageStream(image, { chunkSize: 512 }))), pattern(2048));
});

Deno.test("imageStream() errors the stream when a read fails", async () => {
  const device = MemoryDevice.from(pattern(4096));
  await using image = new RawImage(device, { ownsDevice: true });
  const reader = imageStream(image, { chunkSize: 1024, end: 4096 }).getReader();
  await reader.read();
  await device.close();
  await assert.rejects(async () => {
    for (;;) if ((await reader.read()).done) break;
  }, { name: "QcowError", code: "CLOSED" });
});
