import assert from "node:assert/strict";
import { qemuBenchOffsets, randomOffsets } from "./_pattern.ts";

Deno.test("qemuBenchOffsets() wraps at the image size like qemu-img 7.2", () => {
  const offsets = qemuBenchOffsets({ imageSize: 16384, requestSize: 4096, count: 5, step: 12288 });
  assert.deepEqual([...offsets], [0, 12288, 8192, 4096, 0]);
});

Deno.test("qemuBenchOffsets() wraps at the usable size like later qemu-img", () => {
  const offsets = qemuBenchOffsets({
    imageSize: 16384,
    requestSize: 4096,
    count: 5,
    step: 4096,
    wrap: "usable",
  });
  assert.deepEqual([...offsets], [0, 4096, 8192, 0, 4096]);
});

Deno.test("qemuBenchOffsets() steps by the request size by default", () => {
  const offsets = qemuBenchOffsets({
    imageSize: 1 << 20,
    requestSize: 65536,
    count: 3,
    start: 512,
  });
  assert.deepEqual([...offsets], [512, 66048, 131584]);
});

Deno.test("qemuBenchOffsets() with an odd multiple step visits every block once", () => {
  const blocks = 1024;
  const offsets = qemuBenchOffsets({
    imageSize: blocks * 4096,
    requestSize: 4096,
    count: blocks,
    step: 4096 * 633,
  });
  assert.equal(new Set(offsets).size, blocks);
});

Deno.test("randomOffsets() is aligned, in range and repeatable", () => {
  const a = randomOffsets(1000, { imageSize: 1 << 24, align: 4096, seed: 42 });
  const b = randomOffsets(1000, { imageSize: 1 << 24, align: 4096, seed: 42 });
  assert.deepEqual([...a], [...b]);
  for (const o of a) assert.ok(o % 4096 === 0 && o >= 0 && o + 4096 <= 1 << 24);
});
