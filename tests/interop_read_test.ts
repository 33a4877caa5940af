/**
 * Interoperability of the read path with QEMU: every image here is built by `qemu-img` and
 * `qemu-io`, and qcowlab must read it byte for byte as `qemu-img convert -O raw` does, map it as
 * `qemu-img map` does and describe it as `qemu-img info` does.
 *
 * @module
 */

import { deepStrictEqual } from "node:assert";
import { type Image, mapImage, openImage } from "../mod.ts";
import {
  dropBackingFormat,
  firstDifference,
  HAVE_QEMU,
  makeTempDir,
  qemuContents,
  qemuImg,
  qemuInfo,
  qemuIo,
  qemuMap,
  type QemuMapEntry,
  qemuRange,
  seededRandom,
} from "./_qemu.ts";

if (!HAVE_QEMU) {
  console.warn("qemu-img or qemu-io is not installed: skipping the qemu interoperability tests");
}

const KiB = 1024;
const MiB = 1024 * KiB;
const TiB = 1024 * 1024 * MiB;

/** The `qemu-img info` fields qcowlab reports too and must agree on. */
const INFO_FIELDS = [
  "virtual-size",
  "cluster-size",
  "format",
  "dirty-flag",
  "format-specific",
  "backing-filename",
  "full-backing-filename",
  "backing-filename-format",
] as const;

/** What `qemu-img` must report for a case to test what its name says. */
type Expectation = [
  what: string,
  holds: (map: QemuMapEntry[], info: Record<string, unknown>) => boolean,
];

/** How to check one case. */
interface CheckOptions {
  /** Compare only these `[start, length]` ranges instead of converting the whole disk. */
  ranges?: [number, number][];
  /** Checks that the images were built as intended, before qcowlab is compared with qemu-img. */
  expect?: Expectation[];
}

/** Registers one matrix case: `build` makes the images in a fresh directory and names the top. */
function interop(
  name: string,
  build: (dir: string) => Promise<string>,
  options: CheckOptions = {},
): void {
  Deno.test({
    name: HAVE_QEMU ? name : `${name} (skipped: qemu-img not installed)`,
    ignore: !HAVE_QEMU,
    async fn() {
      await using dir = await makeTempDir();
      const top = await build(dir.path);
      const map = await qemuMap(top);
      const info = await qemuInfo(top);
      for (const [what, holds] of options.expect ?? []) {
        if (!holds(map, info)) {
          throw new Error(`The case is built wrong: qemu-img shows no ${what}`);
        }
      }
      await using image = await openImage(top);
      await compareContents(image, top, `${dir.path}/expected.raw`, options);
      const ours = (await mapImage(image)).map(({ filename: _, ...entry }) => entry);
      deepStrictEqual(ours, map);
      await compareInfo(image);
    },
  });
}

// Expectations shared by several cases.
const COMPRESSED: Expectation = [
  "compressed cluster",
  (map) => map.some((e) => e.data && e.offset === undefined),
];
const ZERO: Expectation = ["zero cluster", (map) => map.some((e) => e.present && e.zero)];
const PREALLOCATED_ZERO: Expectation = [
  "zero cluster with a host offset",
  (map) => map.some((e) => e.present && e.zero && e.offset !== undefined),
];
const UNALLOCATED: Expectation = [
  "unallocated range between data",
  (map) => map.some((e, i) => !e.present && i > 0 && i < map.length - 1),
];
const SUBCLUSTERS: Expectation = [
  "range smaller than a cluster",
  (map, info) => map.some((e) => e.length < (info["cluster-size"] as number)),
];
function depth(n: number): Expectation {
  return [`data at depth ${n}`, (map) => map.some((e) => e.depth === n && e.data)];
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

function assertSameBytes(got: Uint8Array, expected: Uint8Array, what: string, at: number): void {
  const i = firstDifference(got, expected);
  if (i < 0) return;
  throw new Error(
    `${what}: byte ${at + i} (${hex(at + i)}) differs: qcowlab read ${got[i]}, qemu ${
      expected[i]
    } (lengths ${got.length} and ${expected.length})`,
  );
}

async function compareContents(
  image: Image,
  path: string,
  scratch: string,
  options: CheckOptions,
): Promise<void> {
  if (options.ranges) {
    for (const [start, length] of options.ranges) {
      const expected = await qemuRange(path, start, length, scratch);
      const got = new Uint8Array(length);
      await image.read(got, start);
      assertSameBytes(got, expected, `Range ${start}+${length}`, start);
    }
    return;
  }
  const expected = await qemuContents(path, scratch);
  if (image.size !== expected.length) {
    throw new Error(`Size ${image.size} differs from qemu-img's ${expected.length}`);
  }
  const chunk = new Uint8Array(MiB);
  for (let at = 0; at < expected.length; at += chunk.length) {
    const part = chunk.subarray(0, Math.min(chunk.length, expected.length - at));
    await image.read(part, at);
    assertSameBytes(part, expected.subarray(at, at + part.length), "Sequential read", at);
  }
  // Unaligned reads of random lengths cross cluster, subcluster and L2 boundaries in odd places.
  const random = seededRandom(expected.length);
  for (let i = 0; i < 64; i++) {
    const length = 1 + Math.floor(random() * Math.min(expected.length, 300 * KiB));
    const start = Math.floor(random() * (expected.length - length + 1));
    const part = new Uint8Array(length);
    await image.read(part, start);
    assertSameBytes(part, expected.subarray(start, start + length), "Unaligned read", start);
  }
}

function pick(info: object): Record<string, unknown> {
  const picked: Record<string, unknown> = {};
  for (const field of INFO_FIELDS) {
    const value = (info as Record<string, unknown>)[field];
    if (value !== undefined) picked[field] = value;
  }
  return picked;
}

/** Compares `info()` of every image in the chain with `qemu-img info` of its file. */
async function compareInfo(image: Image): Promise<void> {
  const ours: Record<string, unknown>[] = [];
  const theirs: Record<string, unknown>[] = [];
  for (let layer: Image | undefined = image; layer; layer = layer.backing) {
    ours.push({ filename: layer.filename, ...pick(layer.info()) });
    theirs.push({ filename: layer.filename, ...pick(await qemuInfo(layer.filename)) });
  }
  deepStrictEqual(ours, theirs);
}

// ---- Building blocks ----

/** Options for {@linkcode create}. */
interface CreateOptions {
  /** `-o` options such as `cluster_size=4096`. */
  o?: string[];
  /** Backing file name as stored in the image. */
  backing?: string;
  /** The backing file's format. */
  backingFormat?: "raw" | "qcow2";
  /** Remove the recorded backing format after creation, so readers must probe it. */
  probe?: boolean;
}

async function create(path: string, size: number, options: CreateOptions = {}): Promise<string> {
  const args = ["create", "-q", "-f", "qcow2"];
  if (options.o?.length) args.push("-o", options.o.join(","));
  if (options.backing !== undefined) {
    // qemu-img 7.2 insists on a backing format at creation; `probe` removes it afterwards.
    args.push("-b", options.backing, "-F", options.backingFormat ?? "qcow2");
  }
  args.push(path, String(size));
  await qemuImg(...args);
  if (options.probe) await dropBackingFormat(path);
  return path;
}

/** A raw file of `size` random, non-zero bytes with no holes. */
async function denseRaw(path: string, size: number, seed: number): Promise<string> {
  const random = seededRandom(seed);
  const bytes = new Uint8Array(size);
  for (let i = 0; i < size; i++) bytes[i] = 1 + Math.floor(random() * 255);
  await Deno.writeFile(path, bytes);
  return path;
}

/**
 * `count` writes of `write -P pattern offset length` at unaligned offsets with unaligned lengths
 * up to `maxLength`, chosen by a seeded PRNG.
 */
function randomWrites(seed: number, size: number, count: number, maxLength: number): string[] {
  const random = seededRandom(seed);
  const commands: string[] = [];
  for (let i = 0; i < count; i++) {
    const length = 1 + Math.floor(random() * maxLength);
    const offset = Math.floor(random() * (size - length));
    const pattern = 1 + Math.floor(random() * 255);
    commands.push(`write -P ${pattern} ${offset} ${length}`);
  }
  return commands;
}

/**
 * Writes, zeroes and discards at a scale suited to `clusterSize`, in one qemu-io run. The image
 * must hold at least six clusters.
 */
async function mixedWorkload(
  path: string,
  size: number,
  clusterSize: number,
  seed: number,
): Promise<void> {
  const c = clusterSize;
  await qemuIo(path, [
    ...randomWrites(seed, size, 40, Math.min(Math.max(3 * c, 48 * KiB), size / 8)),
    `write -P 0x5a 0 ${c + c / 2}`,
    `write -z ${c} ${c}`,
    `write -z -u ${2 * c} ${c}`,
    `discard ${3 * c} ${c}`,
    `write -z ${size - 2 * c} ${2 * c}`,
    ...randomWrites(seed + 1, size, 10, 5000),
  ]);
}

// ---- The matrix ----

for (const compat of ["0.10", "1.1"]) {
  interop(`qcowlab reads a compat=${compat} image as qemu-img does`, async (dir) => {
    const size = 4 * MiB + 3 * 512;
    const path = await create(`${dir}/compat.qcow2`, size, { o: [`compat=${compat}`] });
    await mixedWorkload(path, size, 64 * KiB, 10);
    return path;
  }, { expect: compat === "1.1" ? [ZERO, PREALLOCATED_ZERO, UNALLOCATED] : [UNALLOCATED] });
}

for (const clusterSize of [512, 4 * KiB, 64 * KiB, 2 * MiB]) {
  interop(
    `qcowlab reads an image with ${clusterSize}-byte clusters as qemu-img does`,
    async (dir) => {
      const size = Math.max(3 * MiB, 6 * clusterSize) + 512;
      const path = await create(`${dir}/clusters.qcow2`, size, {
        o: [`cluster_size=${clusterSize}`],
      });
      await mixedWorkload(path, size, clusterSize, clusterSize);
      return path;
    },
    { expect: [ZERO] },
  );
}

for (const bits of [1, 16, 64]) {
  interop(`qcowlab reads an image with refcount_bits=${bits} as qemu-img does`, async (dir) => {
    const size = 2 * MiB;
    const path = await create(`${dir}/refcount.qcow2`, size, { o: [`refcount_bits=${bits}`] });
    await mixedWorkload(path, size, 64 * KiB, 20 + bits);
    return path;
  }, { expect: [ZERO, UNALLOCATED] });
}

interop(
  "qcowlab reads an extended_l2 image with subcluster writes, zeroes and discards as qemu-img does",
  async (dir) => {
    const size = 3 * MiB;
    const path = await create(`${dir}/extended.qcow2`, size, { o: ["extended_l2=on"] });
    const sub = 2 * KiB; // 64 KiB clusters have 32 subclusters of 2 KiB
    await qemuIo(path, [
      "write -P 1 0 4k",
      "write -P 2 8k 4k",
      "write -P 3 62k 4k", // crosses into the next cluster
      `write -z ${128 * KiB + 3 * sub} ${2 * sub}`,
      `write -P 4 ${192 * KiB} 64k`,
      `write -z ${192 * KiB + 5 * sub} ${sub}`,
      `write -z -u ${192 * KiB + 9 * sub} ${3 * sub}`,
      `discard ${192 * KiB + 20 * sub} ${4 * sub}`,
      `write -z ${320 * KiB} 64k`,
      `write -P 5 ${512 * KiB + 100} 1000`, // inside one subcluster, unaligned
      `write -P 6 ${size - 4 * KiB} 4k`,
      ...randomWrites(31, size, 30, 9000),
    ]);
    return path;
  },
  { expect: [SUBCLUSTERS, ZERO, PREALLOCATED_ZERO] },
);

interop(
  "qcowlab reads an extended_l2 overlay whose unallocated subclusters show the backing file",
  async (dir) => {
    const base = await create(`${dir}/base.qcow2`, 2 * MiB);
    await qemuIo(base, ["write -P 0x11 0 2M"]);
    const top = await create(`${dir}/top.qcow2`, 2 * MiB, {
      o: ["extended_l2=on", "cluster_size=32768"],
      backing: "base.qcow2",
      backingFormat: "qcow2",
    });
    const sub = KiB; // 32 KiB clusters have 1 KiB subclusters
    await qemuIo(top, [
      `write -P 0x22 ${3 * sub} ${2 * sub}`,
      `write -z ${8 * sub} ${3 * sub}`,
      `write -P 0x33 ${40 * sub + 7} ${10 * sub}`,
      `discard ${64 * KiB} ${32 * KiB}`,
      `write -z ${128 * KiB} ${64 * KiB}`,
      ...randomWrites(41, 2 * MiB, 25, 6000),
    ]);
    return top;
  },
  { expect: [SUBCLUSTERS, ZERO, depth(1)] },
);

interop("qcowlab reads a lazy_refcounts image as qemu-img does", async (dir) => {
  const size = 2 * MiB;
  const path = await create(`${dir}/lazy.qcow2`, size, { o: ["lazy_refcounts=on"] });
  await mixedWorkload(path, size, 64 * KiB, 50);
  return path;
}, { expect: [ZERO] });

interop(
  "qcowlab reads a lazy_refcounts image left dirty by a crash as qemu-img does",
  async (dir) => {
    const path = await create(`${dir}/dirty.qcow2`, 2 * MiB, { o: ["lazy_refcounts=on"] });
    await qemuIo(path, [...randomWrites(51, 2 * MiB, 20, 40 * KiB), "abort"], { crash: true });
    return path;
  },
  { expect: [["dirty flag", (_, info) => info["dirty-flag"] === true]] },
);

/**
 * `qemu-img convert -c` of a raw disk with incompressible noise (which qemu stores uncompressed
 * even with -c), runs of one byte, scattered patterns and zeros.
 */
async function compressed(dir: string, o: string[], clusterSize: number): Promise<string> {
  const size = 3 * MiB + 512;
  const bytes = new Uint8Array(size);
  const random = seededRandom(clusterSize + o.length);
  for (let i = 0; i < 256 * KiB; i++) bytes[i] = Math.floor(random() * 256);
  bytes.fill(0x77, MiB, MiB + MiB / 2);
  for (let i = 0; i < 40; i++) {
    const length = 1 + Math.floor(random() * 30 * KiB);
    const start = Math.floor(random() * (size - length));
    bytes.fill(1 + Math.floor(random() * 255), start, start + length);
  }
  await Deno.writeFile(`${dir}/source.raw`, bytes);
  const path = `${dir}/compressed.qcow2`;
  const options = [`cluster_size=${clusterSize}`, ...o].join(",");
  await qemuImg(
    "convert",
    "-c",
    "-f",
    "raw",
    "-O",
    "qcow2",
    "-o",
    options,
    `${dir}/source.raw`,
    path,
  );
  return path;
}

// The compressed descriptor splits its bits between offset and length by cluster size.
for (const clusterSize of [512, 64 * KiB, 2 * MiB]) {
  interop(
    `qcowlab reads compressed ${clusterSize}-byte clusters as qemu-img does`,
    async (dir) => await compressed(dir, [], clusterSize),
    { expect: [COMPRESSED] },
  );
}

interop(
  "qcowlab reads compressed clusters of a compat=0.10 image as qemu-img does",
  async (dir) => {
    return await compressed(dir, ["compat=0.10"], 4 * KiB);
  },
  { expect: [COMPRESSED] },
);

interop(
  "qcowlab reads compressed clusters in an extended_l2 image as qemu-img does",
  async (dir) => {
    return await compressed(dir, ["extended_l2=on"], 64 * KiB);
  },
  { expect: [COMPRESSED] },
);

interop(
  "qcowlab reads compressed clusters partly overwritten, zeroed and discarded as qemu-img does",
  async (dir) => {
    const path = await compressed(dir, [], 64 * KiB);
    await qemuIo(path, [
      `write -P 0x42 ${MiB + 1000} 3000`,
      `write -z ${MiB + 128 * KiB} 64k`,
      `discard ${MiB + 256 * KiB} 64k`,
      ...randomWrites(71, 3 * MiB, 10, 20 * KiB),
    ]);
    return path;
  },
  { expect: [COMPRESSED, ZERO, UNALLOCATED] },
);

interop("qcowlab reads zero clusters written by write -z as qemu-img does", async (dir) => {
  const size = 2 * MiB;
  const path = await create(`${dir}/zero.qcow2`, size);
  await qemuIo(path, [
    "write -P 9 0 1M",
    "write -z 0 64k", // over allocated data: the cluster stays allocated
    "write -z -u 128k 128k", // the same, but unmapped
    "write -z 1M 256k", // over unallocated clusters
    "write -z 100000 5000", // unaligned: partial clusters are written as zeros
  ]);
  return path;
}, { expect: [ZERO, PREALLOCATED_ZERO] });

interop("qcowlab reads zero clusters over a backing file as qemu-img does", async (dir) => {
  const base = await denseRaw(`${dir}/base.raw`, 2 * MiB, 81);
  const top = await create(`${dir}/top.qcow2`, 2 * MiB, { backing: base, backingFormat: "raw" });
  await qemuIo(top, [
    "write -P 9 0 512k",
    "write -z 0 64k",
    "write -z -u 64k 64k",
    "write -z 768k 128k",
    "write -z 1000000 70000",
  ]);
  return top;
}, { expect: [ZERO, depth(1)] });

// Without a backing file, discarded clusters of a version 2 image become unallocated; version 3
// turns them into zero clusters.
for (const compat of ["0.10", "1.1"]) {
  interop(
    `qcowlab reads ranges discarded from a compat=${compat} image as qemu-img does`,
    async (dir) => {
      const path = await create(`${dir}/discard.qcow2`, 2 * MiB, { o: [`compat=${compat}`] });
      await qemuIo(path, [
        "write -P 3 0 2M",
        "discard 0 64k",
        "discard 256k 192k",
        "discard 1000000 300000", // unaligned: only whole clusters inside go
        "discard 1984k 64k",
      ]);
      return path;
    },
    {
      expect: compat === "1.1"
        ? [["discarded zero cluster", (map) => map.some((e) => e.zero && e.offset === undefined)]]
        : [UNALLOCATED],
    },
  );
}

interop("qcowlab reads ranges discarded over a backing file as qemu-img does", async (dir) => {
  const base = await denseRaw(`${dir}/base.raw`, 2 * MiB, 91);
  const top = await create(`${dir}/top.qcow2`, 2 * MiB, { backing: base, backingFormat: "raw" });
  await qemuIo(top, ["write -P 3 0 1M", "discard 0 64k", "discard 512k 256k", "discard 1M 64k"]);
  return top;
}, { expect: [ZERO, depth(1)] });

// qemu-img map asks the host file system for holes (SEEK_HOLE) in a raw file and reports them as
// zero, not data; qcowlab sees only the file's bytes. So a raw base here is written in full: a
// sparse one would read the same but map differently.
interop(
  "qcowlab reads a 3-deep chain over a raw base shorter than its overlays as qemu-img does",
  async (dir) => {
    await denseRaw(`${dir}/base.raw`, MiB + 4 * KiB, 101);
    const mid = await create(`${dir}/mid.qcow2`, 2 * MiB, {
      backing: "base.raw",
      backingFormat: "raw",
    });
    await qemuIo(mid, [
      ...randomWrites(102, 2 * MiB, 20, 30 * KiB),
      "write -z 192k 64k",
      "discard 1M 128k", // past the base's end
    ]);
    const top = await create(`${dir}/top.qcow2`, 3 * MiB + 512, {
      o: ["cluster_size=4096"],
      backing: "mid.qcow2",
      backingFormat: "qcow2",
    });
    await qemuIo(top, [
      ...randomWrites(103, 3 * MiB, 30, 20 * KiB),
      "write -z 20k 8k",
      "discard 64k 64k",
      `write -P 0x66 ${3 * MiB} 512`,
    ]);
    return top;
  },
  {
    expect: [depth(1), depth(2), [
      "unallocated range past the end of the raw base",
      (map) => map.some((e) => !e.present && e.start >= MiB + 4 * KiB),
    ]],
  },
);

interop(
  "qcowlab resolves a relative backing name against the overlay's directory",
  async (dir) => {
    await Deno.mkdir(`${dir}/a`);
    await Deno.mkdir(`${dir}/b`);
    const base = await create(`${dir}/b/base.qcow2`, MiB);
    await qemuIo(base, ["write -P 0x10 0 1M"]);
    const top = await create(`${dir}/a/top.qcow2`, MiB, {
      backing: "../b/base.qcow2",
      backingFormat: "qcow2",
    });
    await qemuIo(top, randomWrites(111, MiB, 10, 10 * KiB));
    return top;
  },
  { expect: [depth(1)] },
);

for (const format of ["qcow2", "raw"] as const) {
  interop(
    `qcowlab probes a ${format} backing file whose format the overlay does not record`,
    async (dir) => {
      const base = format === "raw"
        ? await denseRaw(`${dir}/base.raw`, MiB, 121)
        : await create(`${dir}/base.qcow2`, MiB);
      if (format === "qcow2") await qemuIo(base, ["write -P 0x10 0 1M"]);
      const top = await create(`${dir}/top.qcow2`, MiB, {
        backing: base.slice(dir.length + 1),
        backingFormat: format,
        probe: true,
      });
      await qemuIo(top, randomWrites(122, MiB, 10, 10 * KiB));
      return top;
    },
    { expect: [depth(1)] },
  );
}

const HUGE = 5 * TiB + 3 * 512;
const HUGE_WRITES: [number, number][] = [
  [2 ** 32 - 1000, 3000], // across 4 GiB
  [2 ** 42 + 12345, 70000], // 4 TiB and a bit
  [HUGE - 200 * KiB - 7, 100 * KiB],
  [HUGE - 1000, 1000], // the last bytes
];

interop(
  "qcowlab reads an image above 4 TiB with data near its end as qemu-img does",
  async (dir) => {
    const path = await create(`${dir}/huge.qcow2`, HUGE);
    await qemuIo(
      path,
      HUGE_WRITES.map(([start, length], i) => `write -P ${0x31 + i} ${start} ${length}`),
    );
    return path;
  },
  {
    expect: [["data above 4 TiB", (map) => map.some((e) => e.data && e.start > 4 * TiB)]],
    ranges: [
      ...HUGE_WRITES.map(([start, length]): [number, number] => [start - 999, length + 2000]),
      [0, 64 * KiB],
      [3 * TiB + 5, 100 * KiB],
      [HUGE - 5 * MiB, 5 * MiB],
    ].map(([start, length]): [number, number] => [start!, Math.min(length!, HUGE - start!)]),
  },
);

for (const clusterSize of [512, 64 * KiB]) {
  interop(
    `qcowlab reads many unaligned pattern writes into ${clusterSize}-byte clusters as qemu-img does`,
    async (dir) => {
      const size = 2 * MiB + 1536;
      const path = await create(`${dir}/patterns.qcow2`, size, {
        o: [`cluster_size=${clusterSize}`],
      });
      await qemuIo(path, randomWrites(131 + clusterSize, size, 200, 12 * KiB));
      return path;
    },
  );
}

interop(
  "qcowlab reads many unaligned pattern writes into an extended_l2 image as qemu-img does",
  async (dir) => {
    const size = 2 * MiB + 1536;
    const path = await create(`${dir}/patterns.qcow2`, size, {
      o: ["extended_l2=on", "cluster_size=16384"],
    });
    await qemuIo(path, randomWrites(141, size, 200, 12 * KiB));
    return path;
  },
  { expect: [SUBCLUSTERS] },
);
