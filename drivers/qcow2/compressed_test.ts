import assert from "node:assert/strict";
import { deflateSync } from "fflate";
import { QcowError } from "../../core/errors.ts";
import { inflateCluster } from "./compressed.ts";

function pattern(length: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(length);
  let x = seed;
  for (let i = 0; i < length; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    bytes[i] = (x >>> 24) & 0x0f;
  }
  return bytes;
}

function throwsBadData(fn: () => unknown, pattern: RegExp): void {
  assert.throws(fn, (error: unknown) => {
    assert.ok(error instanceof QcowError, `expected a QcowError, got ${error}`);
    assert.equal(error.code, "BAD_COMPRESSED_DATA");
    assert.match(error.message, pattern);
    return true;
  });
}

Deno.test("inflateCluster() inflates a raw deflate stream of one cluster", () => {
  for (const size of [512, 4096, 65536, 2 * 1024 * 1024]) {
    const data = pattern(size, size);
    assert.deepEqual(inflateCluster(deflateSync(data), size), data);
  }
});

Deno.test("inflateCluster() accepts trailing bytes after the stream, as the sector padding", () => {
  const data = pattern(4096, 1);
  const stream = deflateSync(data);
  const padded = new Uint8Array(stream.length + 300).fill(0xa5);
  padded.set(stream);
  assert.deepEqual(inflateCluster(padded, 4096), data);
});

Deno.test("inflateCluster() keeps the first cluster of a stream that inflates to more", () => {
  const data = pattern(3 * 4096, 2);
  assert.deepEqual(inflateCluster(deflateSync(data), 4096), data.subarray(0, 4096));
  const stored = deflateSync(data, { level: 0 });
  assert.deepEqual(inflateCluster(stored, 4096), data.subarray(0, 4096));
});

Deno.test("inflateCluster() accepts a stream cut short once it has filled the cluster", () => {
  const data = pattern(2 * 65536, 3);
  const stream = deflateSync(data);
  const cut = stream.subarray(0, stream.length - 16);
  assert.deepEqual(inflateCluster(cut, 65536), data.subarray(0, 65536));
});

Deno.test("inflateCluster() refuses a stream that ends before the cluster is full", () => {
  throwsBadData(
    () => inflateCluster(deflateSync(pattern(1000, 4)), 4096),
    /inflates to 1000 bytes/,
  );
  throwsBadData(() => inflateCluster(new Uint8Array(0), 512), /inflates to 0 bytes/);
});

Deno.test("inflateCluster() refuses bytes that are not deflate data, saying where they are", () => {
  throwsBadData(
    () => inflateCluster(new Uint8Array(512).fill(0xff), 65536, "0x50000"),
    /at 0x50000 is not valid deflate data/,
  );
  const cut = deflateSync(pattern(65536, 5)).subarray(0, 100);
  throwsBadData(() => inflateCluster(cut, 65536), /not valid deflate data|inflates to/);
});

Deno.test("inflateCluster() stops early on a stream that would inflate to gigabytes", () => {
  // About 4 GiB of zeros in 4 MiB of input: the largest descriptor a 2 MiB cluster can have.
  const bomb = deflateSync(new Uint8Array(64 * 1024 * 1024));
  const input = new Uint8Array(4 * 1024 * 1024);
  for (let at = 0; at + bomb.length <= input.length; at += bomb.length) input.set(bomb, at);
  const out = inflateCluster(input, 2 * 1024 * 1024);
  assert.equal(out.length, 2 * 1024 * 1024);
  assert.ok(out.every((b) => b === 0));
});
