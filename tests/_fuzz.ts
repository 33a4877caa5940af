/**
 * A seeded mutation fuzzer for the image readers: the case generator, the mutations, and the
 * target that opens, inspects, maps and reads a mutated image. Shared by `fuzz_test.ts` and the
 * worker it starts, so a failing case can be replayed in either.
 *
 * Every case is a pure function of (seed, index): `makeCase` derives its own generator from both.
 *
 * @module
 */

import { readU32 } from "../core/bytes.ts";
import { QcowError } from "../core/errors.ts";
import { MemoryDevice } from "../core/memory_device.ts";
import { mulberry32 } from "../core/_random.ts";
import type { Image } from "../drivers/image.ts";
import { mapImage } from "../drivers/map_image.ts";
import { openImage, type OpenImageOptions } from "../drivers/open_image.ts";
import { compressedLocation, entryCompressed, entryOffset } from "../drivers/qcow2/entries.ts";
import { INCOMPAT_EXTENDED_L2, parseQcow2Header } from "../drivers/qcow2/header.ts";

/** One file of a seed image. */
export interface Layer {
  /** The name the backing resolver knows it by (what the overlay's header stores). */
  name: string;
  /** The valid file. */
  bytes: Uint8Array;
}

/** A valid image, possibly a chain (layer 0 on top), and how often to pick it. */
export interface Seed {
  /** A label for messages. */
  label: string;
  /** The chain, top first. */
  layers: Layer[];
  /** Relative weight when picking seeds. */
  weight: number;
}

/** A byte range worth mutating, and how much. */
interface Region {
  layer: number;
  kind: string;
  start: number;
  end: number;
  weight: number;
  /** For L1 and L2 regions: log2 of the cluster size. */
  clusterBits?: number;
  /** For L2 regions: bytes per entry (8 or 16). */
  entryBytes?: number;
}

/** One edit of one layer. */
export type Mutation =
  | { op: "u32"; layer: number; at: number; value: number }
  | { op: "u64"; layer: number; at: number; hi: number; lo: number }
  | { op: "flip"; layer: number; at: number; bit: number }
  | { op: "fill"; layer: number; at: number; bytes: number[] }
  | { op: "truncate"; layer: number; length: number }
  | { op: "append"; layer: number; length: number }
  | { op: "backing"; layer: number; name: string };

/** A complete, replayable case. */
export interface FuzzCase {
  /** Case number within the run. */
  index: number;
  /** Label of the seed image. */
  seed: string;
  /** Edits, applied in order. */
  mutations: Mutation[];
  /** Read chunk size. */
  chunk: number;
  /** L2 cache size option, if any. */
  l2CacheSize?: number;
  /** Fractions of the virtual size where reads go when the image is too big to read whole. */
  probes: number[];
}

/** What a case ended with: "ok" or the codes of the QcowErrors met, in order. */
export interface Outcome {
  codes: string[];
}

/** A non-QcowError, with the case that raised it. */
export class FuzzFailure extends Error {
  /** The case. */
  readonly fuzzCase: FuzzCase;
  /** The step that failed (open, info, map, read). */
  readonly step: string;

  constructor(fuzzCase: FuzzCase, step: string, error: unknown) {
    const detail = error instanceof Error
      ? `${error.name}: ${error.message}\n${error.stack}`
      : String(
        error,
      );
    super(`case ${fuzzCase.index} (${fuzzCase.seed}), step ${step}: ${detail}`, { cause: error });
    this.name = "FuzzFailure";
    this.fuzzCase = fuzzCase;
    this.step = step;
  }
}

// ------------------------------------------------------------------ random numbers

/** A small seeded generator (mulberry32). */
export class Random {
  #next: () => number;

  constructor(seed: number) {
    this.#next = mulberry32(seed);
  }

  /** A uniform u32. */
  u32(): number {
    return this.#next();
  }

  /** A uniform integer in [0, n). */
  below(n: number): number {
    if (n <= 2 ** 32) return Math.floor((this.u32() / 2 ** 32) * n);
    return Math.floor((this.u32() * 2 ** 21 + (this.u32() >>> 11)) / 2 ** 53 * n);
  }

  /** A uniform float in [0, 1). */
  float(): number {
    return this.u32() / 2 ** 32;
  }

  /** True with probability p. */
  chance(p: number): boolean {
    return this.float() < p;
  }

  /** One element. */
  pick<T>(items: readonly T[]): T {
    return items[this.below(items.length)]!;
  }

  /** One element, chosen by weight. */
  weighted<T extends { weight: number }>(items: readonly T[]): T {
    const total = items.reduce((sum, item) => sum + item.weight, 0);
    let x = this.float() * total;
    for (const item of items) {
      x -= item.weight;
      if (x < 0) return item;
    }
    return items[items.length - 1]!;
  }
}

/** Mixes the run seed and the case index into the seed of the case's own generator. */
function caseSeed(seed: number, index: number): number {
  let h = (seed ^ Math.imul(index + 0x9e3779b9, 0x85ebca6b)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x7feb352d);
  h = Math.imul(h ^ (h >>> 15), 0x846ca68b);
  return (h ^ (h >>> 16)) >>> 0;
}

// ------------------------------------------------------------------ regions

/** Finds the metadata of a valid layer: header, extensions, L1, the used part of L2 tables... */
function regionsOf(bytes: Uint8Array, layer: number): Region[] {
  const all: Region[] = [{ layer, kind: "any", start: 0, end: bytes.length, weight: 1 }];
  if (bytes.length < 72 || readU32(bytes, 0) !== 0x514649fb) {
    all.push({ layer, kind: "raw-head", start: 0, end: Math.min(bytes.length, 512), weight: 1 });
    return all;
  }
  const clusterSize = 2 ** readU32(bytes, 20);
  const header = parseQcow2Header(bytes.subarray(0, clusterSize));
  const headerEnd = header.headerLength;
  all.push({ layer, kind: "header", start: 0, end: headerEnd, weight: 12 });
  const extEnd = header.backingFileOffset !== 0
    ? header.backingFileOffset + header.backingFileSize
    : Math.min(
      clusterSize,
      headerEnd + 8 + header.extensions.reduce(
        (sum, e) => sum + 8 + Math.ceil(e.data.length / 8) * 8,
        0,
      ),
    );
  all.push({ layer, kind: "extensions", start: headerEnd, end: extEnd, weight: 4 });
  const l1Bytes = header.l1Size * 8;
  all.push({
    layer,
    kind: "l1",
    start: header.l1TableOffset,
    end: header.l1TableOffset + l1Bytes,
    weight: 6,
    clusterBits: header.clusterBits,
  });
  all.push({
    layer,
    kind: "reftable",
    start: header.refcountTableOffset,
    end: header.refcountTableOffset + 64,
    weight: 1,
  });
  const extended = (header.incompatibleFeatures & INCOMPAT_EXTENDED_L2) !== 0n;
  const entryBytes = extended ? 16 : 8;
  const perTable = clusterSize / entryBytes;
  const clusters = Math.ceil(header.size / clusterSize);
  for (let i = 0; i < header.l1Size; i++) {
    const l2 = entryOffset(
      readU32(bytes, header.l1TableOffset + i * 8),
      readU32(bytes, header.l1TableOffset + i * 8 + 4),
    );
    if (l2 === 0) continue;
    const used = Math.min(perTable, clusters - i * perTable);
    all.push({
      layer,
      kind: "l2",
      start: l2,
      end: l2 + used * entryBytes,
      weight: 10,
      clusterBits: header.clusterBits,
      entryBytes,
    });
    for (let e = 0; e < used; e++) {
      const hi = readU32(bytes, l2 + e * entryBytes);
      const lo = readU32(bytes, l2 + e * entryBytes + 4);
      if (entryCompressed(hi)) {
        const { offset, length } = compressedLocation(hi, lo, header.clusterBits);
        const end = Math.min(bytes.length, offset + length);
        all.push({ layer, kind: "compressed", start: offset, end, weight: 3 });
      } else if (entryOffset(hi, lo) !== 0) {
        const data = entryOffset(hi, lo);
        all.push({ layer, kind: "data", start: data, end: data + 64, weight: 0.2 });
      }
    }
  }
  return all.filter((r) => r.end > r.start && r.start < bytes.length);
}

/** Offsets an attacker would pick: cluster boundaries in and around the file. */
function pointerCandidates(bytes: Uint8Array): number[] {
  const clusterSize = bytes.length >= 24 && readU32(bytes, 0) === 0x514649fb
    ? 2 ** Math.min(21, readU32(bytes, 20))
    : 512;
  const out = [0, clusterSize, bytes.length, bytes.length - clusterSize];
  for (let at = 0; at < bytes.length && out.length < 24; at += clusterSize) out.push(at);
  return out.filter((n) => n >= 0);
}

// ------------------------------------------------------------------ case generation

// deno-fmt-ignore
const U32_VALUES = [
  0, 1, 2, 3, 4, 7, 8, 9, 0x10, 0x15, 0x16, 0x1f, 0x20, 0x3f, 0x40, 0x68, 0x70, 0x1ff, 0x200,
  0x3ff, 0x400, 0xfff, 0x1000, 0xffff, 0x10000, 0x10001, 0x200000, 0x3fffff, 0x400000, 0x400001,
  0x7fffffff, 0x80000000, 0x80000001, 0xfffffffe, 0xffffffff,
  // Magics of the format and its extensions.
  0x514649fb, 0xe2792aca, 0x6803f857, 0x23852875, 0x0537be77, 0x44415441,
];

function u32Value(rng: Random, pointers: number[]): number {
  const r = rng.below(10);
  if (r < 5) return rng.pick(U32_VALUES);
  if (r < 7) return rng.u32();
  if (r < 9) return rng.pick(pointers) >>> 0;
  return (rng.pick(pointers) + rng.pick([1, 8, 512, -1, -8])) >>> 0;
}

function u64Value(rng: Random, pointers: number[]): [number, number] {
  const flags = rng.pick([0, 0, 0, 0x80000000, 0x40000000, 0xc0000000]);
  const r = rng.below(12);
  if (r < 4) {
    const p = rng.pick(pointers) + rng.pick([0, 0, 0, 1, 8, 0x200, 0x1ff, 0x8000]);
    return [(Math.floor(p / 2 ** 32) | flags) >>> 0, (p >>> 0) | (rng.chance(0.1) ? 1 : 0)];
  }
  if (r < 6) return [rng.pick(U32_VALUES), rng.pick(U32_VALUES)];
  if (r < 8) return [rng.u32(), rng.u32()];
  if (r < 9) return [flags, rng.u32()];
  if (r < 10) {
    return [(rng.pick([0x001fffff, 0x00200000, 0x00ffffff, 0x01000000]) | flags) >>> 0, 0];
  }
  if (r < 11) return [0, rng.u32() & ~0x1ff];
  return [0xffffffff, 0xffffffff];
}

/** A plausible but wrong L1 or L2 entry: real cluster offsets, flags, descriptors, bitmaps. */
function entryMutation(rng: Random, region: Region, pointers: number[]): Mutation {
  const bits = region.clusterBits!;
  const entryBytes = region.entryBytes ?? 8;
  const index = rng.below(Math.max(1, Math.ceil((region.end - region.start) / entryBytes)));
  const at = region.start + index * entryBytes;
  const { layer } = region;
  if (entryBytes === 16 && rng.chance(0.4)) {
    // The subcluster bitmap: allocated bits (low word) or zero bits (high word).
    const mask = rng.pick([0, 1, 0x80000000, 0xffffffff, 0x0000ffff, rng.u32()]);
    return { op: "u32", layer, at: at + 8 + rng.pick([0, 4]), value: mask };
  }
  const pointer = rng.pick(pointers) + rng.pick([0, 0, 0, 0x200, 1, 0x10000]);
  const hiOf = (n: number) => Math.floor(n / 2 ** 32);
  const kind = region.kind === "l1" ? 0 : rng.below(5);
  if (kind === 0) {
    // A data cluster or L2 table pointer, COPIED or not, maybe with the zero bit.
    const flags = rng.pick([0, 0x80000000]);
    const zero = region.kind === "l2" && rng.chance(0.3) ? 1 : 0;
    return {
      op: "u64",
      layer,
      at,
      hi: (hiOf(pointer) | flags) >>> 0,
      lo: ((pointer >>> 0) | zero) >>> 0,
    };
  }
  if (kind === 1) return { op: "u64", layer, at, hi: 0, lo: rng.pick([0, 1]) };
  // A compressed descriptor: offset anywhere near real clusters, any sector count.
  const x = 70 - bits;
  const sectors = rng.below(2 ** (bits - 8));
  const offset = pointer + rng.below(4096);
  const value = (1n << 62n) | (BigInt(sectors) << BigInt(x)) |
    (BigInt(offset) & ((1n << BigInt(x)) - 1n));
  return { op: "u64", layer, at, hi: Number(value >> 32n), lo: Number(value & 0xffffffffn) };
}

function fillBytes(rng: Random): number[] {
  const length = rng.pick([1, 2, 4, 8, 16, 48, 64, 512]);
  const kind = rng.below(3);
  return Array.from({ length }, () => kind === 0 ? 0 : kind === 1 ? 0xff : rng.below(256));
}

function mutationFor(rng: Random, seed: Seed, regions: Region[]): Mutation {
  const region = rng.weighted(regions);
  const { layer } = region;
  const bytes = seed.layers[layer]!.bytes;
  const span = region.end - region.start;
  const op = rng.below(100);
  if (op < 5) {
    // Truncate at a boundary of a region, or anywhere.
    const base = rng.chance(0.5)
      ? region.start
      : rng.chance(0.5)
      ? region.end
      : rng.below(bytes.length + 1);
    const length = Math.max(
      0,
      Math.min(bytes.length, base + rng.pick([0, 0, -1, 1, -8, 8, -4, 3])),
    );
    return { op: "truncate", layer, length };
  }
  if (op < 6) return { op: "append", layer, length: rng.pick([1, 511, 512, 65536]) };
  const pointers = pointerCandidates(bytes);
  if (op < 9 && seed.layers.length > 1) {
    // Rewire the chain: point a layer at another one, itself, or nothing known.
    const names = [...seed.layers.map((l) => l.name), "nowhere.qcow2"];
    return { op: "backing", layer: rng.below(seed.layers.length), name: rng.pick(names) };
  }
  if (op < 25 && region.clusterBits !== undefined) return entryMutation(rng, region, pointers);
  if (op < 40) {
    const at = region.start + (rng.below(Math.max(1, Math.ceil(span / 8))) * 8);
    const [hi, lo] = u64Value(rng, pointers);
    return { op: "u64", layer, at, hi, lo };
  }
  if (op < 65) {
    const at = region.start + (rng.below(Math.max(1, Math.ceil(span / 4))) * 4);
    return { op: "u32", layer, at, value: u32Value(rng, pointers) };
  }
  if (op < 90) {
    return {
      op: "flip",
      layer,
      at: region.start + rng.below(Math.max(1, span)),
      bit: rng.below(8),
    };
  }
  return {
    op: "fill",
    layer,
    at: region.start + rng.below(Math.max(1, span)),
    bytes: fillBytes(rng),
  };
}

const regionCache = new WeakMap<Seed, Region[]>();

function regionsOfSeed(seed: Seed): Region[] {
  let regions = regionCache.get(seed);
  if (!regions) {
    regions = seed.layers.flatMap((layer, i) => {
      const own = regionsOf(layer.bytes, i);
      // The top layer gets most of the attention.
      if (i > 0) { for (const r of own) r.weight *= 0.25; }
      return own;
    });
    regionCache.set(seed, regions);
  }
  return regions;
}

/** Builds case `index` of the run with seed `runSeed`. */
export function makeCase(seeds: readonly Seed[], runSeed: number, index: number): FuzzCase {
  const rng = new Random(caseSeed(runSeed, index));
  const seed = rng.weighted(seeds);
  const regions = regionsOfSeed(seed);
  const r = rng.float();
  const count = r < 0.55 ? 1 : r < 0.85 ? 2 + rng.below(2) : 4 + rng.below(6);
  const mutations: Mutation[] = [];
  for (let i = 0; i < count; i++) mutations.push(mutationFor(rng, seed, regions));
  const fuzzCase: FuzzCase = {
    index,
    seed: seed.label,
    mutations,
    chunk: rng.pick([512, 4096, 65536 + 512, 1024 * 1024]),
    probes: [rng.float(), rng.float(), rng.float()],
  };
  if (rng.chance(0.2)) fuzzCase.l2CacheSize = rng.pick([0, 512, 65536]);
  return fuzzCase;
}

/** Applies the case's mutations to copies of the seed's layers. */
export function applyMutations(seed: Seed, mutations: readonly Mutation[]): Uint8Array[] {
  const layers = seed.layers.map((layer) => layer.bytes);
  const copied = new Set<number>();
  const own = (i: number): Uint8Array => {
    if (!copied.has(i)) {
      layers[i] = layers[i]!.slice();
      copied.add(i);
    }
    return layers[i]!;
  };
  for (const m of mutations) {
    const bytes = own(m.layer);
    const put = (at: number, value: number) => {
      if (at >= 0 && at < bytes.length) bytes[at] = value;
    };
    switch (m.op) {
      case "u32":
        for (let i = 0; i < 4; i++) put(m.at + i, m.value >>> (24 - 8 * i));
        break;
      case "u64":
        for (let i = 0; i < 4; i++) put(m.at + i, m.hi >>> (24 - 8 * i));
        for (let i = 0; i < 4; i++) put(m.at + 4 + i, m.lo >>> (24 - 8 * i));
        break;
      case "flip":
        put(m.at, bytes[m.at]! ^ (1 << m.bit));
        break;
      case "fill":
        m.bytes.forEach((b, i) => put(m.at + i, b));
        break;
      case "truncate":
        layers[m.layer] = bytes.slice(0, m.length);
        break;
      case "backing": {
        // Rewrite the name where the header says it is, if there is room for it.
        if (bytes.length < 20) break;
        const offset = readU32(bytes, 8) * 2 ** 32 + readU32(bytes, 12);
        const name = new TextEncoder().encode(m.name);
        if (offset === 0 || offset + name.length > bytes.length) break;
        bytes.set(name, offset);
        for (let i = 0; i < 4; i++) put(16 + i, name.length >>> (24 - 8 * i));
        break;
      }
      case "append": {
        const longer = new Uint8Array(bytes.length + m.length);
        longer.set(bytes);
        layers[m.layer] = longer;
        break;
      }
    }
  }
  return layers;
}

/** Renders a mutation for failure messages. */
export function describeMutation(m: Mutation): string {
  const hex = (n: number) => `0x${n.toString(16)}`;
  switch (m.op) {
    case "u32":
      return `layer ${m.layer}: u32 at ${hex(m.at)} = ${hex(m.value)}`;
    case "u64":
      return `layer ${m.layer}: u64 at ${hex(m.at)} = ${hex(m.hi)}_${
        m.lo.toString(16).padStart(8, "0")
      }`;
    case "flip":
      return `layer ${m.layer}: flip bit ${m.bit} at ${hex(m.at)}`;
    case "fill":
      return `layer ${m.layer}: ${m.bytes.length} bytes at ${hex(m.at)} = [${
        m.bytes.slice(0, 8)
      }...]`;
    case "truncate":
      return `layer ${m.layer}: truncate to ${m.length}`;
    case "append":
      return `layer ${m.layer}: append ${m.length} zero bytes`;
    case "backing":
      return `layer ${m.layer}: backing file name = ${m.name}`;
  }
}

// ------------------------------------------------------------------ the target

/** Virtual sizes up to this are mapped and read whole. */
export const READ_WHOLE_LIMIT = 64 * 1024 * 1024;
const PROBE_LENGTH = 256 * 1024;

/**
 * Opens the mutated chain through `openImage` (probing formats, resolving backing names among
 * the layers), then runs info, map and reads. QcowErrors are the expected way to fail and are
 * collected; anything else is thrown as a {@linkcode FuzzFailure}.
 */
export async function runCase(seed: Seed, fuzzCase: FuzzCase): Promise<Outcome> {
  const layers = applyMutations(seed, fuzzCase.mutations);
  const devices = layers.map((bytes, i) =>
    MemoryDevice.from(bytes, { name: seed.layers[i]!.name, readOnly: true })
  );
  const codes: string[] = [];
  const attempt = async <T>(step: string, fn: () => Promise<T> | T): Promise<T | undefined> => {
    try {
      return await fn();
    } catch (error) {
      if (error instanceof QcowError) {
        codes.push(error.code);
        return undefined;
      }
      throw new FuzzFailure(fuzzCase, step, error);
    }
  };
  const options: OpenImageOptions = {
    resolveBacking: (name: string) => {
      const i = seed.layers.findIndex((layer) => layer.name === name);
      if (i < 0) throw new QcowError("NOT_FOUND", `No layer named ${name}`);
      return devices[i]!;
    },
  };
  if (fuzzCase.l2CacheSize !== undefined) options.l2CacheSize = fuzzCase.l2CacheSize;
  const image = await attempt("open", () => openImage(devices[0]!, options));
  if (image === undefined) return { codes };
  try {
    await attempt("info", () => image.info());
    const size = image.size;
    if (size <= READ_WHOLE_LIMIT) {
      await attempt("map", () => mapImage(image));
      await readRange(image, 0, size, fuzzCase.chunk, attempt);
    } else {
      const starts = [0, size - PROBE_LENGTH, ...fuzzCase.probes.map((p) => Math.floor(p * size))];
      for (const start of starts) {
        const from = Math.max(0, Math.min(start, size - PROBE_LENGTH));
        const length = Math.min(PROBE_LENGTH, size - from);
        await attempt("map", () => mapImage(image, { start: from, length }));
        await readRange(image, from, length, fuzzCase.chunk, attempt);
      }
    }
  } finally {
    await attempt("close", () => image.close());
  }
  return { codes };
}

async function readRange(
  image: Image,
  start: number,
  length: number,
  chunk: number,
  attempt: <T>(step: string, fn: () => Promise<T> | T) => Promise<T | undefined>,
): Promise<void> {
  const buffer = new Uint8Array(Math.min(chunk, Math.max(length, 1)));
  let failures = 0;
  for (let at = start; at < start + length && failures < 64;) {
    const n = Math.min(buffer.length, start + length - at);
    const ok = await attempt(`read ${at}+${n}`, async () => {
      await image.read(buffer.subarray(0, n), at);
      return true;
    });
    if (!ok) failures++;
    at += n;
  }
}
