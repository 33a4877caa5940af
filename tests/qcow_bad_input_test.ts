/**
 * Bad input for the qcow (version 1) reader: hand-made damage with the exact error it must give,
 * and a bounded seeded mutation fuzzer (the pattern of `fuzz_test.ts`) over small qcow seeds.
 * Only QcowErrors may come out, and every case must finish.
 *
 * Environment: QCOWLAB_QCOW_FUZZ_SEED and QCOWLAB_QCOW_FUZZ_CASES (default 800).
 *
 * @module
 */

import assert from "node:assert/strict";
import { writeU32, writeU64 } from "../core/bytes.ts";
import { MemoryDevice } from "../core/memory_device.ts";
import type { QcowErrorCode } from "../core/errors.ts";
import { openImage } from "../drivers/open_image.ts";
import { createQcow } from "../drivers/qcow/create.ts";
import { QcowImage } from "../drivers/qcow/qcow_image.ts";
import { checkQcow } from "../drivers/qcow/check.ts";
import { encodeCompressed } from "../drivers/qcow/entries.ts";
import { describeMutation, type Mutation, Random, runCase, type Seed } from "./_fuzz.ts";

const KiB = 1024;

/** A small valid image: 4 KiB clusters, 512-entry L2 tables, some data and a compressed cluster. */
async function seedImage(options: { backing?: string; encrypted?: boolean } = {}): Promise<
  Uint8Array
> {
  const device = new MemoryDevice({ name: "seed.qcow" });
  await createQcow(device, {
    size: 4 * 1024 * KiB,
    clusterSize: 4096,
    l2Entries: 512,
    ...(options.backing ? { backingFile: options.backing } : {}),
    ...(options.encrypted ? { encrypted: true } : {}),
  });
  const image = await QcowImage.open(device, {
    readOnly: false,
    ...(options.encrypted ? { passphrase: "pw" } : {}),
  });
  await image.write(new Uint8Array(10000).fill(0x11), 1000);
  await image.write(new Uint8Array(4096).fill(0x22), 2 * 1024 * KiB + 4096);
  if (!options.encrypted) {
    await image.writeCompressed(new Uint8Array(4096).fill(0x33), 64 * KiB);
  }
  await image.close();
  const bytes = new Uint8Array(device.size);
  await device.read(bytes, 0);
  return bytes;
}

async function openFails(bytes: Uint8Array, code: QcowErrorCode, pattern: RegExp): Promise<void> {
  const device = MemoryDevice.from(bytes, { name: "bad.qcow", readOnly: true });
  await assert.rejects(
    (async () => {
      await using image = await openImage(device, { backing: false });
      const buffer = new Uint8Array(image.size);
      await image.read(buffer, 0);
    })(),
    (error: Error & { code?: string }) => {
      assert.equal(error.code, code, error.message);
      assert.match(error.message, pattern);
      return true;
    },
  );
}

function withByte(bytes: Uint8Array, at: number, value: number): Uint8Array {
  const copy = bytes.slice();
  copy[at] = value;
  return copy;
}

Deno.test("qcow bad input: cluster_bits outside 9..16 and l2_bits outside 6..13", async () => {
  const good = await seedImage();
  for (const bits of [0, 8, 17, 255]) {
    await openFails(withByte(good, 32, bits), "BAD_HEADER", new RegExp(`cluster_bits is ${bits}`));
  }
  for (const bits of [0, 5, 14, 255]) {
    await openFails(withByte(good, 33, bits), "BAD_HEADER", new RegExp(`l2_bits is ${bits}`));
  }
});

Deno.test("qcow bad input: sizes that overflow or that need an L1 table too large", async () => {
  const good = await seedImage();
  const huge = good.slice();
  writeU64(huge, 24, 2 ** 60);
  await openFails(huge, "TOO_LARGE", /2\^53/);
  const big = good.slice();
  writeU64(big, 24, 2 ** 52); // 4 KiB x 512 entries: 2^31 L1 entries
  await openFails(big, "BAD_TABLE", /L1 table would be/);
  const tiny = good.slice();
  writeU64(tiny, 24, 1);
  await openFails(tiny, "BAD_HEADER", /too small/);
});

Deno.test("qcow bad input: tables past the end of the file or over the header", async () => {
  const good = await seedImage();
  const farL1 = good.slice();
  writeU64(farL1, 40, good.length);
  await openFails(farL1, "BAD_TABLE", /past the end of the file/);
  const headerL1 = good.slice();
  writeU64(headerL1, 40, 8);
  await openFails(headerL1, "BAD_TABLE", /overlaps the header/);
  // An L1 entry pointing past the end: the read that needs it fails.
  const farL2 = good.slice();
  writeU64(farL2, 48, good.length + 4096);
  await openFails(farL2, "CORRUPT_METADATA", /L2 table .* past the end/);
  const name = good.slice();
  writeU64(name, 8, good.length - 2);
  writeU32(name, 16, 100);
  await openFails(name, "BAD_HEADER", /Backing file name/);
  const longName = good.slice();
  writeU64(longName, 8, 48);
  writeU32(longName, 16, 5000);
  await openFails(longName, "BAD_HEADER", /too long/);
});

Deno.test("qcow bad input: compressed sizes past the end and invalid cluster offsets", async () => {
  const good = await seedImage();
  const device = MemoryDevice.from(good.slice());
  const l2 = Number(new DataView(good.buffer).getBigUint64(48));
  // Entry 16 (virtual 64 KiB) is the compressed one: make it run past the end.
  const bad = good.slice();
  const [hi, lo] = encodeCompressed(good.length - 10, 4000, 12);
  writeU32(bad, l2 + 16 * 8, hi);
  writeU32(bad, l2 + 16 * 8 + 4, lo);
  await openFails(bad, "CORRUPT_METADATA", /Compressed cluster .* past the end/);
  // Garbage that is not deflate.
  const garbage = good.slice();
  const [ghi, glo] = encodeCompressed(0, 40, 12);
  writeU32(garbage, l2 + 16 * 8, ghi);
  writeU32(garbage, l2 + 16 * 8 + 4, glo);
  await openFails(garbage, "BAD_COMPRESSED_DATA", /deflate|inflates/);
  const unaligned = good.slice();
  writeU64(unaligned, l2, 4096 + 7);
  await openFails(unaligned, "CORRUPT_METADATA", /not sector aligned/);
  const beyond = good.slice();
  writeU64(beyond, l2, 2 ** 62);
  await openFails(beyond, "CORRUPT_METADATA", /beyond 2\^53/);
  await device.close();
});

Deno.test("qcow bad input: encrypted images need a passphrase; unknown methods are refused", async () => {
  const encrypted = await seedImage({ encrypted: true });
  await openFails(encrypted, "PASSPHRASE_REQUIRED", /passphrase/);
  const method = encrypted.slice();
  writeU32(method, 36, 2);
  await openFails(method, "BAD_HEADER", /encryption method 2/);
  const version = encrypted.slice();
  writeU32(version, 4, 1);
  assert.equal(
    (await QcowImage.open(MemoryDevice.from(version), { passphrase: "pw" })).format,
    "qcow",
  );
  await assert.rejects(
    QcowImage.open(MemoryDevice.from(withByte(version, 7, 4))),
    { code: "UNSUPPORTED_VERSION" },
  );
});

Deno.test("qcow bad input: writes refuse resize and compressed writes to encrypted images", async () => {
  const device = MemoryDevice.from(await seedImage({ encrypted: true }));
  await using image = await QcowImage.open(device, { readOnly: false, passphrase: "pw" });
  await assert.rejects(image.resize(1 << 30), { code: "UNSUPPORTED_FEATURE" });
  await assert.rejects(image.writeCompressed(new Uint8Array(4096), 0), {
    code: "UNSUPPORTED_FEATURE",
  });
  await assert.rejects(image.writeCompressed(new Uint8Array(100), 0), {
    code: "INVALID_ARGUMENT",
  });
});

Deno.test("checkQcow() finds damage that goes beyond what qemu-img can check", async () => {
  const good = await seedImage();
  const clean = await checkQcow(MemoryDevice.from(good));
  assert.deepEqual(clean.errors, []);
  assert.equal(clean.leakedTailBytes, 0);
  assert.equal(clean.leakedClusters, 0);
  assert.equal(clean.compressedClusters, 1);
  assert.ok(clean.dataClusters >= 4);
  const l2 = Number(new DataView(good.buffer).getBigUint64(48));
  // Two entries pointing at the same cluster, one unaligned, one past the end, space appended.
  const bad = good.slice();
  bad.set(bad.subarray(l2, l2 + 8), l2 + 100 * 8);
  writeU64(bad, l2 + 101 * 8, 4096 * 3 + 512);
  const grown = new Uint8Array(bad.length + 3 * 4096);
  writeU64(bad, l2 + 102 * 8, Math.ceil(grown.length / 4096) * 4096 + 65536);
  grown.set(bad);
  const report = await checkQcow(MemoryDevice.from(grown));
  assert.deepEqual(
    [...new Set(report.errors.map((e) => e.kind))].sort(),
    ["overlap", "past-end", "unaligned"],
  );
  assert.ok(report.errors.some((e) => /0x64000 at 0x\w+ overlaps/.test(e.message)));
  assert.ok(report.errors.some((e) => /0x65000 at 0x3200 is not cluster aligned/.test(e.message)));
  assert.ok(report.errors.some((e) => /0x66000 .* past the end/.test(e.message)));
  assert.equal(report.leakedTailBytes, 3 * 4096);
});

// ------------------------------------------------------------------ fuzzing

const RUN_SEED = Number(Deno.env.get("QCOWLAB_QCOW_FUZZ_SEED") ?? 0x9c0e1);
const CASES = Number(Deno.env.get("QCOWLAB_QCOW_FUZZ_CASES") ?? 800);

/** Damage aimed at the header, the L1 table and the L2 tables of a qcow layer. */
function qcowMutation(rng: Random, layer: number, bytes: Uint8Array): Mutation {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const l1 = Number(view.getBigUint64(40));
  const l2 = bytes.length > l1 + 8 ? Number(view.getBigUint64(l1)) : 0;
  const r = rng.float();
  const interesting = [0, 1, 8, 9, 16, 17, 0xff, 0x7fffffff, 0x80000000, 0xffffffff, bytes.length];
  if (r < 0.25) {
    // A header field.
    const at = rng.pick([8, 12, 16, 20, 24, 28, 32, 36, 40, 44]);
    return { op: "u32", layer, at, value: rng.chance(0.5) ? rng.pick(interesting) : rng.u32() };
  }
  if (r < 0.4) return { op: "flip", layer, at: rng.below(48), bit: rng.below(8) };
  if (r < 0.7 && l2 > 0 && l2 + 4096 <= bytes.length) {
    // An L2 entry: compressed bits, odd offsets, huge values.
    const at = l2 + 8 * rng.below(512);
    const hi = rng.chance(0.5) ? (0x80000000 | rng.below(2 ** 31)) >>> 0 : rng.pick(interesting);
    const lo = rng.chance(0.5) ? rng.below(bytes.length + 8192) : rng.u32();
    return { op: "u64", layer, at, hi, lo };
  }
  if (r < 0.8) {
    return { op: "u64", layer, at: l1 + 8 * rng.below(2), hi: rng.pick([0, 0, 1]), lo: rng.u32() };
  }
  if (r < 0.9) return { op: "truncate", layer, length: rng.below(bytes.length) };
  const at = rng.below(bytes.length);
  return {
    op: "fill",
    layer,
    at,
    bytes: Array.from({ length: 1 + rng.below(64) }, () => rng.below(256)),
  };
}

Deno.test("qcow fuzz: mutated qcow images and chains give QcowErrors only, and finish", async () => {
  const base = await seedImage();
  const seeds: Seed[] = [
    { label: "qcow-4k", weight: 3, layers: [{ name: "top.qcow", bytes: base }] },
    {
      label: "qcow-chain",
      weight: 2,
      layers: [
        { name: "top.qcow", bytes: await seedImage({ backing: "base.qcow" }) },
        { name: "base.qcow", bytes: base },
      ],
    },
  ];
  const codes = new Map<string, number>();
  for (let index = 0; index < CASES; index++) {
    const rng = new Random((RUN_SEED ^ Math.imul(index + 1, 0x9e3779b1)) >>> 0);
    const seed = rng.weighted(seeds);
    const mutations: Mutation[] = [];
    const count = 1 + rng.below(3);
    for (let i = 0; i < count; i++) {
      const layer = rng.below(seed.layers.length);
      mutations.push(qcowMutation(rng, layer, seed.layers[layer]!.bytes));
    }
    const fuzzCase = {
      index,
      seed: seed.label,
      mutations,
      chunk: rng.pick([512, 4096, 65536 + 512]),
      probes: [rng.float(), rng.float(), rng.float()],
    };
    try {
      const outcome = await runCase(seed, fuzzCase);
      for (const code of outcome.codes) codes.set(code, (codes.get(code) ?? 0) + 1);
    } catch (error) {
      console.error(`case ${index}: ${mutations.map(describeMutation).join("; ")}`);
      throw error;
    }
  }
  // The damage must reach the checks, not just bounce off the magic.
  for (const code of ["BAD_HEADER", "BAD_TABLE", "CORRUPT_METADATA"]) {
    assert.ok((codes.get(code) ?? 0) > 0, `no ${code} in ${JSON.stringify([...codes])}`);
  }
});
