/**
 * The built-in catalog of test vectors: clean images of every geometry, backing chains, big sparse
 * images, dirty and damaged images, and malformed headers.
 *
 * @module
 */

import type { Edit, Layer, Location, State, Step, VectorSpec } from "./spec.ts";
import { QEMU_DIFFERENCES } from "./qemu_differences.ts";

/** The seed every content recipe of the built-in catalog derives from. */
export const CATALOG_SEED = 0x5eed_0001;

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const TiB = 1024 * GiB;

/** Every cluster size qcow2 allows. */
const CLUSTER_SIZES = [512, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048].map((n, i) =>
  i === 0 ? n : n * KiB
);
const REFCOUNT_BITS = [1, 2, 4, 8, 16, 32, 64];

function sizeName(n: number): string {
  if (n >= MiB && n % MiB === 0) return `${n / MiB}m`;
  if (n >= KiB && n % KiB === 0) return `${n / KiB}k`;
  return `${n}`;
}

interface Geometry {
  compat?: "0.10" | "1.1";
  clusterSize?: number;
  refcountBits?: number;
  extendedL2?: boolean;
  lazyRefcounts?: boolean;
  preallocation?: "off" | "metadata";
}

/** Size of the standard image for a cluster size: 12 clusters, at least 1 MiB. */
function standardSize(clusterSize: number): number {
  return Math.max(12 * clusterSize, MiB);
}

/**
 * The standard content recipe, in clusters `c` of an image of `size` bytes: a data cluster, a
 * random one, two compressed ones, zeroed clusters (kept and unmapped), a discarded one, a zero
 * write over nothing, a partial cluster (subclusters with extended L2) and the last cluster.
 */
function standardSteps(c: number, size: number): Step[] {
  return [
    { op: "write", offset: 0, length: c, pattern: 0x11 },
    { op: "write", offset: c, length: c, pattern: "random" },
    // Compressing big clusters is slow, so they get one compressed cluster, small ones two.
    {
      op: "compressed",
      offset: 2 * c,
      length: c >= 256 * KiB ? c : 2 * c,
      pattern: "compressible",
    },
    { op: "write", offset: 4 * c, length: 4 * c, pattern: 0x33 },
    { op: "zero", offset: 5 * c, length: c },
    { op: "zero", offset: 6 * c, length: c, unmap: true },
    { op: "discard", offset: 4 * c, length: c },
    { op: "zero", offset: 8 * c, length: c },
    { op: "write", offset: 10 * c + c / 4, length: c / 2, pattern: 0x5a },
    { op: "write", offset: size - c, length: c, pattern: 0x77 },
    // Last, so the freed cluster stays free (a hole inside the file).
    { op: "discard", offset: 7 * c, length: c },
  ];
}

function qcow2(name: string, size: number, g: Geometry, steps: Step[]): Layer {
  const create: Layer["create"] = { size };
  if (g.compat !== undefined) create.compat = g.compat;
  if (g.clusterSize !== undefined) create.clusterSize = g.clusterSize;
  if (g.refcountBits !== undefined) create.refcountBits = g.refcountBits;
  if (g.extendedL2 !== undefined) create.extendedL2 = g.extendedL2;
  if (g.lazyRefcounts !== undefined) create.lazyRefcounts = g.lazyRefcounts;
  if (g.preallocation !== undefined) create.preallocation = g.preallocation;
  return { name, format: "qcow2", create, steps };
}

function vector(
  id: string,
  description: string,
  tags: string[],
  layers: Layer[],
  state?: State,
): VectorSpec {
  const spec: VectorSpec = { id, description, tags, layers };
  if (state !== undefined) spec.state = state;
  const qemu = QEMU_DIFFERENCES[id];
  if (qemu !== undefined) spec.qemu = qemu;
  return spec;
}

/** A one-image vector with the standard recipe. */
function standard(id: string, description: string, tags: string[], g: Geometry): VectorSpec {
  const c = g.clusterSize ?? 64 * KiB;
  const size = standardSize(c);
  return vector(id, description, tags, [qcow2("disk.qcow2", size, g, standardSteps(c, size))]);
}

const catalog: VectorSpec[] = [];
const add = (spec: VectorSpec): void => void catalog.push(spec);

// ------------------------------------------------------------------ clean geometries

for (const c of CLUSTER_SIZES) {
  add(standard(
    `qcow2-v3-cluster-${sizeName(c)}`,
    `Version 3, ${sizeName(c)} clusters, every cluster kind`,
    ["clean", "cluster-size", "v3"],
    { clusterSize: c },
  ));
  add(standard(
    `qcow2-v2-cluster-${sizeName(c)}`,
    `Version 2, ${sizeName(c)} clusters, every cluster kind`,
    ["clean", "cluster-size", "v2"],
    { compat: "0.10", clusterSize: c },
  ));
  if (c >= 16 * KiB) {
    add(standard(
      `qcow2-v3-extended-l2-cluster-${sizeName(c)}`,
      `Extended L2 entries with ${sizeName(c)} clusters: subclusters, zero and partial`,
      ["clean", "extended-l2", "subclusters", "v3"],
      { clusterSize: c, extendedL2: true },
    ));
  }
}

for (const bits of REFCOUNT_BITS) {
  for (const c of [512, 64 * KiB]) {
    add(standard(
      `qcow2-v3-refcount-${bits}-cluster-${sizeName(c)}`,
      `${bits}-bit refcounts with ${sizeName(c)} clusters`,
      ["clean", "refcount-width", "v3"],
      { clusterSize: c, refcountBits: bits },
    ));
  }
}

add(standard(
  "qcow2-v3-lazy-refcounts-closed",
  "Lazy refcounts, closed cleanly (dirty bit clear, refcounts written)",
  ["clean", "lazy-refcounts", "v3"],
  { lazyRefcounts: true },
));
add(standard(
  "qcow2-v3-preallocation-metadata",
  "preallocation=metadata: every L2 table and data cluster allocated",
  ["clean", "preallocation", "v3"],
  { preallocation: "metadata" },
));
add(standard(
  "qcow2-v2-preallocation-metadata",
  "Version 2 with preallocation=metadata",
  ["clean", "preallocation", "v2"],
  { compat: "0.10", preallocation: "metadata" },
));
add(standard(
  "qcow2-v3-extended-l2-preallocation-metadata",
  "Extended L2 with preallocation=metadata",
  ["clean", "preallocation", "extended-l2", "v3"],
  { extendedL2: true, preallocation: "metadata", clusterSize: 32 * KiB },
));
add(vector("qcow2-v3-empty", "An empty image, as created", ["clean", "v3"], [
  qcow2("disk.qcow2", 64 * MiB, {}, []),
]));
add(vector("qcow2-v2-empty", "An empty version 2 image, as created", ["clean", "v2"], [
  qcow2("disk.qcow2", 64 * MiB, { compat: "0.10" }, []),
]));
add(vector("qcow2-v3-zero-size", "A zero-sized image", ["clean", "v3"], [
  qcow2("disk.qcow2", 0, {}, []),
]));
add(vector("qcow2-v3-odd-size", "A size that is not a whole number of clusters", ["clean", "v3"], [
  qcow2("disk.qcow2", 1000 * 512, {}, [
    { op: "write", offset: 1000 * 512 - 4096, length: 4096, pattern: 0x42 },
  ]),
]));
for (const [compat, c] of [["1.1", 4 * KiB], ["0.10", 4 * KiB], ["1.1", 512]] as const) {
  const v = compat === "1.1" ? "v3" : "v2";
  add(vector(
    `qcow2-${v}-scatter-cluster-${sizeName(c)}`,
    `Seeded random writes over a ${v} image with ${sizeName(c)} clusters`,
    ["clean", "random", v],
    [qcow2("disk.qcow2", 2 * MiB, { compat, clusterSize: c }, [
      { op: "scatter", count: 300, maxLength: 9000 },
    ])],
  ));
}
add(vector(
  "qcow2-v3-extended-l2-scatter",
  "Seeded random writes over extended L2 subclusters",
  ["clean", "random", "extended-l2", "subclusters", "v3"],
  [qcow2("disk.qcow2", 4 * MiB, { extendedL2: true, clusterSize: 32 * KiB }, [
    { op: "scatter", count: 300, maxLength: 5000 },
    { op: "zero", offset: 64 * KiB, length: 8 * KiB },
  ])],
));
add(vector(
  "qcow2-v3-resized",
  "Grown twice after writes, the L1 table moved",
  ["clean", "resize", "v3"],
  [qcow2("disk.qcow2", MiB, { clusterSize: 4 * KiB }, [
    { op: "write", offset: 0, length: 64 * KiB, pattern: 0x21 },
    { op: "resize", size: 64 * MiB },
    { op: "write", offset: 40 * MiB, length: 64 * KiB, pattern: 0x22 },
    { op: "resize", size: 3 * GiB },
    { op: "write", offset: 3 * GiB - 4 * KiB, length: 4 * KiB, pattern: 0x23 },
  ])],
));
add(vector(
  "qcow2-v3-refcount-table-growth",
  "512-byte clusters with 64-bit refcounts: enough writes to grow the refcount table",
  ["clean", "refcount-width", "v3"],
  [qcow2("disk.qcow2", 4 * MiB, { clusterSize: 512, refcountBits: 64 }, [
    { op: "write", offset: 0, length: 3 * MiB, pattern: "random" },
  ])],
));
add(vector(
  "qcow2-v3-all-compressed",
  "Every cluster compressed",
  ["clean", "compressed", "v3"],
  [qcow2("disk.qcow2", MiB, {}, [
    { op: "compressed", offset: 0, length: MiB, pattern: "compressible" },
  ])],
));
add(vector(
  "qcow2-v3-compressed-incompressible",
  "Compressed writes of random data (stored uncompressed, as qemu-img does)",
  ["clean", "compressed", "v3"],
  [qcow2("disk.qcow2", MiB, {}, [
    { op: "compressed", offset: 0, length: 256 * KiB, pattern: "random" },
    { op: "compressed", offset: 256 * KiB, length: 256 * KiB, pattern: 0 },
  ])],
));

// ------------------------------------------------------------------ big sparse images

const bigs: [string, number, Geometry][] = [
  ["qcow2-v3-sparse-1t", TiB + 64 * KiB, {}],
  ["qcow2-v2-sparse-4t", 4 * TiB, { compat: "0.10" }],
  ["qcow2-v3-sparse-2t-cluster-16k", 2 * TiB, { clusterSize: 16 * KiB }],
  ["qcow2-v3-sparse-16t-cluster-2m", 16 * TiB, { clusterSize: 2 * MiB }],
  ["qcow2-v3-sparse-64t-cluster-1m", 64 * TiB, { clusterSize: MiB }],
  ["qcow2-v3-sparse-8t-extended-l2", 8 * TiB, { extendedL2: true, clusterSize: 128 * KiB }],
];
for (const [id, size, g] of bigs) {
  add(vector(id, `A ${sizeName(size)}-byte sparse image written at both ends and in the middle`, [
    "clean",
    "big-sparse",
    g.compat === "0.10" ? "v2" : "v3",
  ], [
    qcow2("disk.qcow2", size, g, [
      { op: "write", offset: 0, length: 64 * KiB, pattern: 0x01 },
      { op: "write", offset: 2 ** 39 + 4096, length: 8192, pattern: 0x02 },
      { op: "write", offset: size - 4096, length: 4096, pattern: 0x03 },
    ]),
  ]));
}

// ------------------------------------------------------------------ backing chains

const chainSteps: Step[] = [
  { op: "write", offset: 0, length: 2 * MiB, pattern: 0xb0 },
  { op: "write", offset: 3 * MiB, length: 512 * KiB, pattern: "random" },
];
const overlaySteps: Step[] = [
  { op: "write", offset: 4096, length: 4096, pattern: 0x0f },
  { op: "write", offset: MiB + 100 * 512, length: 3 * 512, pattern: 0xf0 },
  { op: "zero", offset: 3 * MiB, length: 128 * KiB },
  { op: "discard", offset: 3 * MiB + 256 * KiB, length: 64 * KiB },
];
add(vector("chain-raw-base", "A qcow2 overlay on a raw base", ["clean", "chain", "v3"], [
  { name: "base.raw", format: "raw", create: { size: 4 * MiB }, steps: chainSteps },
  qcow2("top.qcow2", 4 * MiB, {}, overlaySteps),
]));
add(vector("chain-qcow2-base", "A qcow2 overlay on a qcow2 base", ["clean", "chain", "v3"], [
  qcow2("base.qcow2", 4 * MiB, {}, chainSteps),
  qcow2("top.qcow2", 4 * MiB, {}, overlaySteps),
]));
add(vector("chain-v2", "Version 2 overlay on a version 2 base", ["clean", "chain", "v2"], [
  qcow2("base.qcow2", 4 * MiB, { compat: "0.10" }, chainSteps),
  qcow2("top.qcow2", 4 * MiB, { compat: "0.10" }, overlaySteps),
]));
add(vector("chain-three-levels", "Three images: raw, qcow2 v2, qcow2 v3", ["clean", "chain"], [
  { name: "base.raw", format: "raw", create: { size: 4 * MiB }, steps: chainSteps },
  qcow2("mid.qcow2", 4 * MiB, { compat: "0.10", clusterSize: 4 * KiB }, [
    { op: "write", offset: 2 * MiB - 2048, length: 8192, pattern: 0x99 },
  ]),
  qcow2("top.qcow2", 4 * MiB, { clusterSize: 16 * KiB }, overlaySteps),
]));
add(vector(
  "chain-extended-l2",
  "Extended L2 overlay: partial subcluster writes over backing data",
  ["clean", "chain", "extended-l2", "subclusters", "v3"],
  [
    qcow2("base.qcow2", 4 * MiB, {}, chainSteps),
    qcow2("top.qcow2", 4 * MiB, { extendedL2: true }, [
      ...overlaySteps,
      { op: "zero", offset: 8 * KiB, length: 4 * KiB },
    ]),
  ],
));
add(vector(
  "chain-short-base",
  "An overlay larger than its base: the tail reads as zeros",
  ["clean", "chain", "v3"],
  [
    qcow2("base.qcow2", MiB, {}, [{ op: "write", offset: 0, length: MiB, pattern: 0x44 }]),
    qcow2("top.qcow2", 4 * MiB, {}, [{ op: "write", offset: 512 * KiB, length: 4096, pattern: 1 }]),
  ],
));
add(vector(
  "chain-grown-overlay",
  "An overlay grown past its base's size after creation",
  ["clean", "chain", "resize", "v3"],
  [
    qcow2("base.qcow2", 2 * MiB, {}, [{ op: "write", offset: 0, length: 2 * MiB, pattern: 0x45 }]),
    qcow2("top.qcow2", MiB, {}, [{ op: "resize", size: 4 * MiB }]),
  ],
));
{
  const top = qcow2("top.qcow2", 4 * MiB, {}, overlaySteps);
  top.backingFormat = false;
  add(vector(
    "chain-no-backing-format",
    "An overlay that does not record its backing format (probed)",
    ["clean", "chain", "v3"],
    [qcow2("base.qcow2", 4 * MiB, {}, chainSteps), top],
  ));
}
add(vector(
  "chain-compressed-base",
  "A compressed base under an overlay",
  ["clean", "chain", "compressed", "v3"],
  [
    qcow2("base.qcow2", 4 * MiB, { clusterSize: 4 * KiB }, [
      { op: "compressed", offset: 0, length: 512 * KiB, pattern: "compressible" },
    ]),
    qcow2("top.qcow2", 4 * MiB, {}, overlaySteps),
  ],
));

// ------------------------------------------------------------------ dirty after a crash

for (
  const [id, g] of [
    ["dirty-crash-v3", {}],
    ["dirty-crash-cluster-4k", { clusterSize: 4 * KiB }],
    ["dirty-crash-refcount-1", { refcountBits: 1 }],
    ["dirty-crash-extended-l2", { extendedL2: true }],
    ["dirty-crash-cluster-512", { clusterSize: 512 }],
  ] as [string, Geometry][]
) {
  const c = g.clusterSize ?? 64 * KiB;
  const size = standardSize(c);
  add(vector(
    id,
    "Lazy refcounts, written then never closed: dirty bit set, refcounts behind",
    ["dirty", "lazy-refcounts", "v3"],
    [qcow2("disk.qcow2", size, { ...g, lazyRefcounts: true }, standardSteps(c, size))],
    { kind: "dirty-crash" },
  ));
}

// ------------------------------------------------------------------ damaged metadata

const l1 = (index: number): Location => ({ in: "l1", index });
const l2 = (guest: number): Location => ({ in: "l2", guest });
const file = (at: number): Location => ({ in: "file", at });
const COPIED = 0x80000000;

interface Damage {
  name: string;
  description: string;
  tags: string[];
  /** Edits, for a standard image of cluster size `c`. */
  edits: (c: number) => Edit[];
  /** Only for these bases. */
  when?: (g: Geometry) => boolean;
}

const damages: Damage[] = [
  {
    name: "leak-free-cluster",
    description: "A leaked cluster inside the file (refcount 1, no reference)",
    tags: ["leak"],
    edits: () => [{ edit: "refcount", cluster: { of: "free" }, value: 1 }],
  },
  {
    name: "leak-past-end",
    description: "A leaked cluster appended to the file",
    tags: ["leak"],
    edits: () => [{ edit: "refcount", cluster: { of: "end" }, value: 1 }],
  },
  {
    name: "refcount-zero-data",
    description: "Refcount 0 on a used data cluster (refcount too low)",
    tags: ["refcount-too-low"],
    edits: () => [{ edit: "refcount", cluster: { of: "guest", guest: 0 }, value: 0 }],
  },
  {
    name: "refcount-zero-compressed",
    description: "Refcount 0 on the host cluster of a compressed cluster",
    tags: ["refcount-too-low", "compressed"],
    edits: (c) => [{ edit: "refcount", cluster: { of: "guest", guest: 2 * c }, value: 0 }],
  },
  {
    name: "refcount-zero-l2-table",
    description: "Refcount 0 on an L2 table",
    tags: ["refcount-too-low"],
    edits: () => [{ edit: "refcount", cluster: { of: "l1" }, value: 0 }],
  },
  {
    name: "l1-copied-clear",
    description: "COPIED missing on an L1 entry",
    tags: ["copied-flag"],
    edits: () => [{ edit: "bits", where: l1(0), andNot: COPIED }],
  },
  {
    name: "l2-copied-clear",
    description: "COPIED missing on an L2 entry",
    tags: ["copied-flag"],
    edits: () => [{ edit: "bits", where: l2(0), andNot: COPIED }],
  },
  {
    name: "l2-copied-refcount-2",
    description: "COPIED set on a data cluster whose refcount is 2",
    tags: ["copied-flag", "leak"],
    edits: () => [{ edit: "refcount", cluster: { of: "guest", guest: 0 }, value: 2 }],
    when: (g) => (g.refcountBits ?? 16) > 1,
  },
  {
    name: "l2-unaligned-data",
    description: "An L2 entry of a data cluster that is not cluster aligned",
    tags: ["unaligned-entry"],
    edits: () => [{ edit: "shift", where: l2(0), by: 0x200 }],
    when: (g) => (g.clusterSize ?? 65536) > 512,
  },
  {
    name: "l2-unaligned-zero",
    description: "An unaligned L2 entry of a preallocated zero cluster",
    tags: ["unaligned-entry"],
    edits: (c) => [{ edit: "shift", where: l2(5 * c), by: 0x200 }],
    when: (g) => g.compat !== "0.10" && (g.clusterSize ?? 65536) > 512,
  },
  {
    name: "l2-past-end",
    description: "An L2 entry pointing past the end of the file",
    tags: ["out-of-range-entry"],
    edits: () => [{ edit: "point", where: l2(0), to: { of: "past-end", by: 10 } }],
  },
  {
    name: "l1-past-end",
    description: "An L1 entry pointing past the end of the file",
    tags: ["out-of-range-entry"],
    edits: () => [{ edit: "point", where: l1(0), to: { of: "past-end", by: 10 } }],
  },
  {
    name: "l1-into-l1",
    description: "An L2 table pointing into the L1 table",
    tags: ["into-metadata"],
    edits: () => [{ edit: "point", where: l1(0), to: { of: "l1" } }],
  },
  {
    name: "l2-into-reftable",
    description: "A data cluster pointing at the refcount table",
    tags: ["into-metadata"],
    edits: () => [{ edit: "point", where: l2(0), to: { of: "reftable" } }],
  },
  {
    name: "l2-into-header",
    description: "A data cluster pointing at the header",
    tags: ["into-metadata"],
    edits: (c) => [{ edit: "point", where: l2(c), to: { of: "header" } }],
  },
  {
    name: "reftable-entry-missing",
    description: "The refcount table's first entry is zero: refcount block missing",
    tags: ["missing-refcount-table"],
    edits: () => [{ edit: "u64", where: { in: "reftable", index: 0 }, hi: 0, lo: 0 }],
  },
  {
    name: "reftable-entry-past-end",
    description: "A refcount table entry pointing past the end of the file",
    tags: ["missing-refcount-table", "out-of-range-entry"],
    edits:
      () => [{ edit: "point", where: { in: "reftable", index: 0 }, to: { of: "past-end", by: 7 } }],
  },
  {
    name: "shared-cluster",
    description: "Two L2 entries sharing one data cluster",
    tags: ["shared-cluster"],
    edits: (c) => [{ edit: "copy-entry", from: c, to: 0 }],
  },
  {
    name: "corrupt-bit",
    description: "The corrupt bit set on a consistent image",
    tags: ["corrupt-bit"],
    edits: () => [{ edit: "bits", where: file(76), or: 2 }],
    when: (g) => g.compat !== "0.10",
  },
  {
    name: "corrupt-dirty-leak",
    description: "Corrupt and dirty bits with a leaked cluster",
    tags: ["corrupt-bit", "dirty", "leak"],
    edits: () => [
      { edit: "refcount", cluster: { of: "free" }, value: 1 },
      { edit: "bits", where: file(76), or: 3 },
    ],
    when: (g) => g.compat !== "0.10",
  },
  {
    name: "dirty-bit",
    description: "The dirty bit set without lazy refcounts, refcounts consistent",
    tags: ["dirty"],
    edits: () => [{ edit: "bits", where: file(76), or: 1 }],
    when: (g) => g.compat !== "0.10",
  },
  {
    name: "invalid-subcluster-bitmap",
    description: "Extended L2 entries with invalid subcluster bitmaps",
    tags: ["extended-l2", "subclusters", "corrupt-entry"],
    edits: () => [{ edit: "u32", where: l2(0), plus: 8, value: 1 }],
    when: (g) => g.extendedL2 === true,
  },
];

const damageBases: [string, Geometry][] = [
  ["v3", {}],
  ["v2", { compat: "0.10" }],
  ["v3-cluster-4k-refcount-1", { clusterSize: 4 * KiB, refcountBits: 1 }],
  ["v3-cluster-512-refcount-64", { clusterSize: 512, refcountBits: 64 }],
  ["v3-extended-l2", { extendedL2: true, clusterSize: 32 * KiB }],
];
for (const [base, g] of damageBases) {
  for (const damage of damages) {
    if (damage.when && !damage.when(g)) continue;
    if (
      base !== "v3" && base !== "v2" && damage.tags.includes("leak") &&
      damage.name !== "leak-free-cluster"
    ) {
      continue;
    }
    const c = g.clusterSize ?? 64 * KiB;
    const size = standardSize(c);
    add(vector(
      `damaged-${base}-${damage.name}`,
      `${damage.description} (${base})`,
      ["damaged", ...damage.tags, g.compat === "0.10" ? "v2" : "v3"],
      [qcow2("disk.qcow2", size, g, standardSteps(c, size))],
      { kind: "damaged", edits: damage.edits(c) },
    ));
  }
}
add(vector(
  "damaged-sparse-1t-refcount-zero",
  "A 1 TiB sparse image with refcount 0 on the cluster at 512 GiB",
  ["damaged", "big-sparse", "refcount-too-low", "v3"],
  [qcow2("disk.qcow2", TiB, {}, [
    { op: "write", offset: 0, length: 64 * KiB, pattern: 1 },
    { op: "write", offset: 2 ** 39, length: 64 * KiB, pattern: 2 },
  ])],
  {
    kind: "damaged",
    edits: [{ edit: "refcount", cluster: { of: "guest", guest: 2 ** 39 }, value: 0 }],
  },
));
add(vector(
  "damaged-chain-overlay-leak",
  "A leaked cluster in an overlay of a backing chain",
  ["damaged", "chain", "leak", "v3"],
  [qcow2("base.qcow2", 4 * MiB, {}, chainSteps), qcow2("top.qcow2", 4 * MiB, {}, overlaySteps)],
  { kind: "damaged", edits: [{ edit: "refcount", cluster: { of: "end" }, value: 1 }] },
));

// ------------------------------------------------------------------ malformed headers

/** The base of the malformed-header vectors: v3, 64 KiB clusters, data and compressed. */
function headerBase(g: Geometry = {}): Layer {
  return qcow2("disk.qcow2", MiB, g, [
    { op: "write", offset: 0, length: 64 * KiB, pattern: 0x11 },
    { op: "compressed", offset: 128 * KiB, length: 64 * KiB, pattern: "compressible" },
  ]);
}

const u32 = (at: number, value: number): Edit => ({ edit: "u32", where: file(at), value });
const u64 = (at: number, hi: number, lo: number): Edit => ({
  edit: "u64",
  where: file(at),
  hi,
  lo,
});

const malformed: [string, string, Edit[], Geometry?][] = [
  ["bad-magic", "Bad magic (opened as qcow2)", [u32(0, 0x514649fc)]],
  ["too-short-for-magic", "A file of 3 bytes", [{ edit: "truncate", length: 3 }]],
  ["too-short-for-header", "A file cut inside the version 2 fields", [{
    edit: "truncate",
    length: 71,
  }]],
  ["too-short-for-v3-header", "A file cut inside the version 3 fields", [{
    edit: "truncate",
    length: 80,
  }]],
  ["version-0", "Version 0", [u32(4, 0)]],
  ["version-1-in-qcow2", "Version 1 read as qcow2", [u32(4, 1)]],
  ["version-4", "Version 4", [u32(4, 4)]],
  ["cluster-bits-8", "cluster_bits 8", [u32(20, 8)]],
  ["cluster-bits-22", "cluster_bits 22", [u32(20, 22)]],
  ["header-length-short", "header_length 72 in a version 3 header", [u32(100, 72)]],
  ["header-length-unaligned", "header_length 105", [u32(100, 105)]],
  ["header-length-past-cluster", "header_length past the first cluster", [u32(100, 0x10008)]],
  ["header-length-past-eof", "header_length past the end of a short file", [
    u32(100, 256),
    { edit: "truncate", length: 200 },
  ]],
  ["refcount-order-7", "refcount_order 7", [u32(96, 7)]],
  ["size-2-53", "Virtual size 2^53", [u64(24, 0x200000, 0)]],
  ["size-huge", "Virtual size 2^64 - 1", [u64(24, 0xffffffff, 0xffffffff)]],
  ["crypt-method-3", "Encryption method 3", [u32(32, 3)]],
  ["compression-type-7", "Compression type 7 with the compression bit", [
    u32(76, 8),
    { edit: "u8", where: file(104), value: 7 },
  ]],
  ["compression-bit-zlib", "The compression type bit set with zlib", [u32(76, 8)]],
  ["compression-type-no-bit", "A compression type without the compression bit", [
    { edit: "u8", where: file(104), value: 1 },
  ]],
  ["extended-l2-small-clusters", "The extended L2 bit with 4 KiB clusters", [u32(76, 16)], {
    clusterSize: 4 * KiB,
  }],
  ["backing-name-too-long", "A backing file name of 1024 bytes", [u64(8, 0, 0x800), u32(16, 1024)]],
  ["backing-name-outside-cluster", "A backing file name past the first cluster", [
    u64(8, 0, 0xfffe),
    u32(16, 4),
  ]],
  ["backing-name-past-eof", "A backing file name past the end of a short file", [
    u64(8, 0, 0x800),
    u32(16, 512),
    { edit: "truncate", length: 0x900 },
  ]],
  ["backing-offset-huge", "A backing file offset of 2^64 - 16", [
    u64(8, 0xffffffff, 0xfffffff0),
    u32(16, 4),
  ]],
  ["extension-too-large", "A header extension longer than the first cluster", [
    { edit: "u32", where: { in: "extension", index: 0 }, plus: 4, value: 0x10000 },
  ]],
  ["extension-into-backing-name", "A header extension running into the backing file name", [
    u64(8, 0, 0x100),
    u32(16, 4),
  ]],
  ["extension-header-into-backing-name", "No room for an extension header before the name", [
    u64(8, 0, 116),
    u32(16, 4),
  ]],
  ["extension-past-eof", "A header extension past the end of a short file", [
    { edit: "truncate", length: 200 },
  ]],
  ["end-marker-too-large", "The end marker's length past the first cluster", [
    { edit: "u32", where: { in: "extension", index: 1 }, plus: 4, value: 0x20000 },
  ]],
  ["backing-format-too-long", "A backing format extension of 1024 bytes", [
    { edit: "u32", where: { in: "extension", index: 0 }, value: 0xe2792aca },
    { edit: "u32", where: { in: "extension", index: 0 }, plus: 4, value: 1024 },
  ]],
  ["bitmaps-extension-length", "A bitmaps extension of 16 bytes", [
    { edit: "u32", where: { in: "extension", index: 0 }, value: 0x23852875 },
    { edit: "u32", where: { in: "extension", index: 0 }, plus: 4, value: 16 },
  ]],
  ["crypto-extension-length", "A crypto extension of 8 bytes", [
    { edit: "u32", where: { in: "extension", index: 0 }, value: 0x0537be77 },
    { edit: "u32", where: { in: "extension", index: 0 }, plus: 4, value: 8 },
  ]],
  ["l1-unaligned", "An L1 table offset that is not cluster aligned", [
    { edit: "shift", where: file(40), by: 8 },
  ]],
  ["l1-past-eof", "An L1 table past the end of the file", [u64(40, 0, 0x10000000)]],
  ["l1-offset-invalid", "An L1 table offset of 2^64 - 2^16", [u64(40, 0xffffffff, 0xffff0000)]],
  ["l1-too-large", "An L1 table over 32 MiB", [u32(36, 4 * MiB + 1)]],
  ["l1-too-small", "An L1 table of 0 entries for a 1 MiB image", [u32(36, 0)]],
  ["l1-cut", "A file cut inside the L1 table", [{ edit: "truncate", length: 0x30004 }]],
  ["reftable-unaligned", "A refcount table offset that is not cluster aligned", [
    { edit: "shift", where: file(48), by: 0x200 },
  ]],
  ["reftable-past-eof", "A refcount table past the end of the file", [u64(48, 0, 0x10000000)]],
  ["reftable-zero-clusters", "A refcount table of 0 clusters", [u32(56, 0)]],
  ["reftable-too-large", "A refcount table over 8 MiB", [u32(56, 0xffffffff)]],
  ["snapshots-too-many", "65537 snapshots", [u32(60, 65537), u64(64, 0, 0x40000)]],
  ["snapshots-unaligned", "A snapshot table offset that is not cluster aligned", [
    u64(64, 0, 0x40008),
  ]],
  ["snapshots-offset-invalid", "A snapshot table offset of 2^63", [u64(64, 0x80000000, 0)]],
  ["snapshot-extra-data", "A snapshot entry with too much extra data", [
    u32(60, 1),
    { edit: "point", where: file(64), to: { of: "guest", guest: 0 } },
  ]],
  ["unknown-feature-unnamed", "An unknown incompatible feature bit without a name", [
    u32(76, 1 << 6),
  ], { clusterSize: 4 * KiB }],
  ["unknown-feature-named", "An unknown incompatible feature bit named in the feature table", [
    // The table's first entry ("dirty bit") renamed to bit 6, then bit 6 set.
    { edit: "u8", where: { in: "extension", index: 0 }, plus: 9, value: 6 },
    u32(76, 1 << 6),
  ]],
  ["encryption-aes", "Encryption method 1 (AES)", [u32(32, 1)]],
  ["encryption-luks", "Encryption method 2 (LUKS) without its header", [u32(32, 2)]],
  ["compression-zstd", "zstd compression declared over zlib data", [
    u32(76, 8),
    { edit: "u8", where: file(104), value: 1 },
  ]],
  ["external-data-file-bit", "The external data file bit without a data file name", [u32(76, 4)]],
  ["data-file-raw-bit", "The raw external data bit without a data file", [u32(92, 2)]],
];
for (const [name, description, edits, g] of malformed) {
  add(vector(
    `header-${name}`,
    description,
    ["malformed-header"],
    [headerBase(g)],
    { kind: "damaged", edits },
  ));
}

// ------------------------------------------------------------------ internal snapshots

const snapshotSteps = (c: number): Step[] => [
  { op: "write", offset: 0, length: 4 * c, pattern: 0x51 },
  { op: "compressed", offset: 4 * c, length: c, pattern: "compressible" },
  { op: "snapshot", name: "s1", dateSeconds: 1_600_000_000 },
  { op: "write", offset: c, length: c, pattern: 0x52 },
  { op: "zero", offset: 2 * c, length: c },
  { op: "snapshot", name: "s2", dateSeconds: 1_600_000_100 },
  { op: "write", offset: 6 * c, length: c / 2, pattern: 0x53 },
];
for (
  const [id, g] of [
    ["snapshots-v3", {}],
    ["snapshots-v2", { compat: "0.10" }],
    ["snapshots-cluster-512", { clusterSize: 512 }],
    ["snapshots-extended-l2", { extendedL2: true, clusterSize: 32 * KiB }],
    ["snapshots-refcount-64", { refcountBits: 64, clusterSize: 4 * KiB }],
  ] as [string, Geometry][]
) {
  const c = g.clusterSize ?? 64 * KiB;
  add(vector(
    id,
    "Two internal snapshots taken between writes, then more writes",
    ["clean", "snapshots", g.compat === "0.10" ? "v2" : "v3"],
    [qcow2("disk.qcow2", standardSize(c), g, snapshotSteps(c))],
  ));
}
add(vector(
  "snapshots-reverted",
  "Written, snapshotted, overwritten, then reverted to the snapshot",
  ["clean", "snapshots", "v3"],
  [qcow2("disk.qcow2", MiB, {}, [
    { op: "write", offset: 0, length: 256 * KiB, pattern: 0x61 },
    { op: "snapshot", name: "before", dateSeconds: 1_600_000_000 },
    { op: "write", offset: 64 * KiB, length: 256 * KiB, pattern: 0x62 },
    { op: "revert", name: "before" },
  ])],
));
const snapshotDamages: [string, string, string[], Edit[]][] = [
  ["l1-copied-shared", "COPIED set on an L1 entry whose table a snapshot shares", ["copied-flag"], [
    { edit: "bits", where: l1(0), or: COPIED },
  ]],
  ["l2-copied-shared", "COPIED set on an L2 entry whose cluster a snapshot shares", [
    "copied-flag",
  ], [{ edit: "bits", where: l2(3 * 64 * KiB), or: COPIED }]],
  ["refcount-zero-shared", "Refcount 0 on a cluster a snapshot shares", ["refcount-too-low"], [
    { edit: "refcount", cluster: { of: "guest", guest: 3 * 64 * KiB }, value: 0 },
  ]],
  ["entry-without-disk-size", "A snapshot table entry cut to 8 bytes of extra data", [
    "snapshot-table",
  ], [{ edit: "u32", where: { in: "snapshot" }, plus: 36, value: 8 }]],
  ["entry-extra-data-too-large", "A snapshot table entry with 2000 bytes of extra data", [
    "snapshot-table",
  ], [{ edit: "u32", where: { in: "snapshot" }, plus: 36, value: 2000 }]],
  ["l1-unaligned", "A snapshot's L1 table offset that is not cluster aligned", [
    "snapshot-table",
    "unaligned-entry",
  ], [{ edit: "shift", where: { in: "snapshot" }, by: 0x200 }]],
  ["table-past-end", "A snapshot table past the end of the file", [
    "snapshot-table",
    "out-of-range-entry",
  ], [{ edit: "point", where: file(64), to: { of: "past-end", by: 16 } }]],
];
for (const [name, description, tags, edits] of snapshotDamages) {
  add(vector(
    `damaged-snapshots-${name}`,
    description,
    ["damaged", "snapshots", ...tags, "v3"],
    // Without the last write, every table and cluster of the image is shared with a snapshot.
    [qcow2("disk.qcow2", MiB, {}, snapshotSteps(64 * KiB).slice(0, -1))],
    { kind: "damaged", edits },
  ));
}

// ------------------------------------------------------------------ qcow (version 1)

function qcowLayer(
  name: string,
  size: number,
  create: Partial<Layer["create"]>,
  steps: Step[],
): Layer {
  return { name, format: "qcow", create: { ...create, size }, steps };
}

/** The standard recipe without discards or unmapping zero writes, which qcow does not have. */
function qcowSteps(c: number, size: number): Step[] {
  return [
    { op: "write", offset: 0, length: c, pattern: 0x11 },
    { op: "write", offset: c, length: c, pattern: "random" },
    { op: "compressed", offset: 2 * c, length: 2 * c, pattern: "compressible" },
    { op: "write", offset: 4 * c, length: 4 * c, pattern: 0x33 },
    { op: "zero", offset: 5 * c, length: c },
    { op: "write", offset: 10 * c + c / 4, length: c / 2, pattern: 0x5a },
    { op: "write", offset: size - c, length: c, pattern: 0x77 },
  ];
}

for (const c of [512, 1, 2, 4, 8, 16, 32, 64].map((n, i) => (i === 0 ? n : n * KiB))) {
  const size = standardSize(c);
  add(vector(
    `qcow-cluster-${sizeName(c)}`,
    `qcow (version 1) with ${sizeName(c)} clusters: data, compressed, zeros, partial`,
    ["clean", "qcow", "cluster-size"],
    [qcowLayer("disk.qcow", size, { clusterSize: c }, qcowSteps(c, size))],
  ));
}
for (const entries of [64, 8192]) {
  add(vector(
    `qcow-l2-entries-${entries}`,
    `qcow with ${entries}-entry L2 tables`,
    ["clean", "qcow"],
    [qcowLayer("disk.qcow", 4 * MiB, { l2Entries: entries }, qcowSteps(4 * KiB, 4 * MiB))],
  ));
}
add(vector("qcow-scatter", "Seeded random writes over a qcow image", ["clean", "qcow", "random"], [
  qcowLayer("disk.qcow", 2 * MiB, {}, [{ op: "scatter", count: 300, maxLength: 9000 }]),
]));
add(vector(
  "qcow-sparse-2t",
  "A 2 TiB sparse qcow image written at both ends and in the middle",
  ["clean", "qcow", "big-sparse"],
  [qcowLayer("disk.qcow", 2 * TiB, { clusterSize: 64 * KiB, l2Entries: 8192 }, [
    { op: "write", offset: 0, length: 64 * KiB, pattern: 0x01 },
    { op: "write", offset: 2 ** 39 + 4096, length: 8192, pattern: 0x02 },
    { op: "write", offset: 2 * TiB - 4096, length: 4096, pattern: 0x03 },
  ])],
));
add(vector("chain-qcow-over-raw", "A qcow overlay on a raw base", ["clean", "chain", "qcow"], [
  { name: "base.raw", format: "raw", create: { size: 4 * MiB }, steps: chainSteps },
  qcowLayer("top.qcow", 4 * MiB, {}, [
    { op: "write", offset: 4096, length: 4096, pattern: 0x0f },
    { op: "write", offset: MiB + 100 * 512, length: 3 * 512, pattern: 0xf0 },
  ]),
]));
add(vector("chain-qcow-over-qcow", "A qcow overlay on a qcow base", ["clean", "chain", "qcow"], [
  qcowLayer("base.qcow", 4 * MiB, {}, chainSteps),
  qcowLayer("top.qcow", 4 * MiB, {}, [{ op: "write", offset: 8192, length: 700, pattern: 0x0e }]),
]));
{
  const top = qcow2("top.qcow2", 4 * MiB, {}, overlaySteps);
  top.backingFormat = false;
  add(vector("chain-qcow2-over-qcow", "A qcow2 overlay on a qcow base (format probed)", [
    "clean",
    "chain",
    "qcow",
  ], [qcowLayer("base.qcow", 4 * MiB, {}, chainSteps), top]));
}

/** qcow header field offsets. */
const QCOW = {
  version: 4,
  backingOffset: 8,
  backingSize: 16,
  size: 24,
  clusterBits: 32,
  l2Bits: 33,
  crypt: 36,
  l1: 40,
};
const qcowMalformed: [string, string, Edit[]][] = [
  ["bad-magic", "Bad magic (opened as qcow)", [u32(0, 0x514649fa)]],
  ["version-2", "Version 2 read as qcow", [u32(QCOW.version, 2)]],
  ["too-short", "A file cut inside the header", [{ edit: "truncate", length: 40 }]],
  ["size-1", "A virtual size of 1 byte", [u64(QCOW.size, 0, 1)]],
  ["size-2-53", "A virtual size of 2^53", [u64(QCOW.size, 0x200000, 0)]],
  ["cluster-bits-8", "cluster_bits 8", [{ edit: "u8", where: file(QCOW.clusterBits), value: 8 }]],
  ["cluster-bits-17", "cluster_bits 17", [{
    edit: "u8",
    where: file(QCOW.clusterBits),
    value: 17,
  }]],
  ["l2-bits-5", "l2_bits 5", [{ edit: "u8", where: file(QCOW.l2Bits), value: 5 }]],
  ["l2-bits-14", "l2_bits 14", [{ edit: "u8", where: file(QCOW.l2Bits), value: 14 }]],
  ["crypt-method-2", "Encryption method 2", [u32(QCOW.crypt, 2)]],
  ["l1-offset-huge", "An L1 table offset of 2^60", [u64(QCOW.l1, 0x10000000, 0)]],
  ["l1-over-header", "An L1 table overlapping the header", [u64(QCOW.l1, 0, 8)]],
  ["l1-past-eof", "An L1 table past the end of the file", [u64(QCOW.l1, 0, 0x10000000)]],
  ["backing-name-too-long", "A backing file name of 1024 bytes", [
    u64(QCOW.backingOffset, 0, 48),
    u32(QCOW.backingSize, 1024),
  ]],
  ["backing-name-past-eof", "A backing file name past the end of the file", [
    u64(QCOW.backingOffset, 0, 0x100000),
    u32(QCOW.backingSize, 16),
  ]],
  ["l2-past-eof", "An L1 entry pointing past the end of the file", [
    u64(48, 0, 0x10000000),
  ]],
];
for (const [name, description, edits] of qcowMalformed) {
  add(vector(
    `qcow-header-${name}`,
    description,
    ["malformed-header", "qcow"],
    [qcowLayer("disk.qcow", MiB, {}, qcowSteps(4 * KiB, MiB))],
    { kind: "damaged", edits },
  ));
}

/** The built-in catalog. */
export const CATALOG: readonly VectorSpec[] = catalog;
