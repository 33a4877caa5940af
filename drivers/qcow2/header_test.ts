import assert from "node:assert/strict";
import { writeU32, writeU64 } from "../../core/bytes.ts";
import { QcowError } from "../../core/errors.ts";
import {
  describeFeatures,
  divCeil,
  EXT_BACKING_FORMAT,
  EXT_BITMAPS,
  EXT_CRYPTO,
  EXT_DATA_FILE,
  EXT_FEATURE_TABLE,
  INCOMPAT_COMPRESSION,
  INCOMPAT_DIRTY,
  INCOMPAT_EXTENDED_L2,
  l2Entries,
  MAX_L1_BYTES,
  parseQcow2Header,
  peekClusterBits,
  type Qcow2Header,
  QCOW_MAGIC,
  sizeToL1,
  validateTables,
} from "./header.ts";

interface Extension {
  type: number;
  data: Uint8Array;
}

interface HeaderFields {
  version?: number;
  clusterBits?: number;
  size?: number;
  cryptMethod?: number;
  l1Size?: number;
  l1TableOffset?: number;
  refcountTableOffset?: number;
  refcountTableClusters?: number;
  nbSnapshots?: number;
  snapshotsOffset?: number;
  incompatible?: bigint;
  compatible?: bigint;
  autoclear?: bigint;
  refcountOrder?: number;
  headerLength?: number;
  compressionType?: number;
  extensions?: Extension[];
  /** Stored after the end-of-extensions marker, as QEMU does. */
  backing?: string;
  /** Length of the returned buffer; one cluster by default. */
  length?: number;
}

function writeBig(bytes: Uint8Array, offset: number, value: bigint): void {
  writeU32(bytes, offset, Number(value >> 32n));
  writeU32(bytes, offset + 4, Number(value & 0xffffffffn));
}

/** Builds the first cluster of an image: header, extensions, end marker, backing name. */
function build(fields: HeaderFields = {}): Uint8Array {
  const version = fields.version ?? 3;
  const clusterBits = fields.clusterBits ?? 16;
  const bytes = new Uint8Array(fields.length ?? 2 ** clusterBits);
  writeU32(bytes, 0, QCOW_MAGIC);
  writeU32(bytes, 4, version);
  writeU32(bytes, 20, clusterBits);
  writeU64(bytes, 24, fields.size ?? 1024 * 1024);
  writeU32(bytes, 32, fields.cryptMethod ?? 0);
  writeU32(bytes, 36, fields.l1Size ?? 1);
  writeU64(bytes, 40, fields.l1TableOffset ?? 3 * 2 ** clusterBits);
  writeU64(bytes, 48, fields.refcountTableOffset ?? 2 ** clusterBits);
  writeU32(bytes, 56, fields.refcountTableClusters ?? 1);
  writeU32(bytes, 60, fields.nbSnapshots ?? 0);
  writeU64(bytes, 64, fields.snapshotsOffset ?? 0);
  const headerLength = version === 2 ? 72 : fields.headerLength ?? 112;
  if (version !== 2) {
    writeBig(bytes, 72, fields.incompatible ?? 0n);
    writeBig(bytes, 80, fields.compatible ?? 0n);
    writeBig(bytes, 88, fields.autoclear ?? 0n);
    writeU32(bytes, 96, fields.refcountOrder ?? 4);
    writeU32(bytes, 100, headerLength);
    if (headerLength > 104) bytes[104] = fields.compressionType ?? 0;
  }
  let at = headerLength;
  for (const extension of fields.extensions ?? []) {
    writeU32(bytes, at, extension.type);
    writeU32(bytes, at + 4, extension.data.length);
    bytes.set(extension.data, at + 8);
    at += 8 + Math.ceil(extension.data.length / 8) * 8;
  }
  at += 8; // end marker (all zero)
  if (fields.backing !== undefined) {
    const name = new TextEncoder().encode(fields.backing);
    writeU64(bytes, 8, at);
    writeU32(bytes, 16, name.length);
    bytes.set(name, at);
  }
  return bytes;
}

function text(value: string): Uint8Array {
  return new TextEncoder().encode(value);
}

function featureTable(entries: { type: number; bit: number; name: string }[]): Extension {
  const data = new Uint8Array(entries.length * 48);
  entries.forEach((entry, i) => {
    data[i * 48] = entry.type;
    data[i * 48 + 1] = entry.bit;
    data.set(text(entry.name), i * 48 + 2);
  });
  return { type: EXT_FEATURE_TABLE, data };
}

function throwsQcow(fn: () => unknown, code: string, pattern: RegExp): void {
  assert.throws(fn, (error: unknown) => {
    assert.ok(error instanceof QcowError, `expected a QcowError, got ${error}`);
    assert.equal(error.code, code, error.message);
    assert.match(error.message, pattern);
    return true;
  });
}

Deno.test("parseQcow2Header() reads a version 2 header with version 3 fields at their defaults", () => {
  const header = parseQcow2Header(build({ version: 2, size: 5 * 2 ** 30, l1Size: 10 }));
  assert.equal(header.version, 2);
  assert.equal(header.clusterBits, 16);
  assert.equal(header.size, 5 * 2 ** 30);
  assert.equal(header.l1Size, 10);
  assert.equal(header.l1TableOffset, 0x30000);
  assert.equal(header.refcountTableOffset, 0x10000);
  assert.equal(header.refcountTableClusters, 1);
  assert.equal(header.headerLength, 72);
  assert.equal(header.refcountOrder, 4);
  assert.equal(header.incompatibleFeatures, 0n);
  assert.equal(header.compatibleFeatures, 0n);
  assert.equal(header.autoclearFeatures, 0n);
  assert.equal(header.compressionType, 0);
  assert.equal(header.backingFile, undefined);
  assert.deepEqual(header.extensions, []);
});

Deno.test("parseQcow2Header() ignores version 3 fields that a version 2 header does not have", () => {
  const bytes = build({ version: 2 });
  writeU32(bytes, 72, 0xffffffff); // would be incompatible features in v3
  writeU32(bytes, 76, 0); // but it is an extension header here: type 0xffffffff, length 0
  writeU32(bytes, 96, 9); // would be a bad refcount order in v3
  const header = parseQcow2Header(bytes);
  assert.equal(header.incompatibleFeatures, 0n);
  assert.equal(header.refcountOrder, 4);
  assert.deepEqual(header.extensions.map((e) => e.type), [0xffffffff]);
});

Deno.test("parseQcow2Header() reads every field of a version 3 header", () => {
  const header = parseQcow2Header(build({
    clusterBits: 12,
    size: 2 ** 40,
    l1Size: 4,
    l1TableOffset: 0x5000,
    refcountTableOffset: 0x1000,
    refcountTableClusters: 2,
    nbSnapshots: 3,
    snapshotsOffset: 0x8000,
    incompatible: INCOMPAT_DIRTY,
    compatible: 1n,
    autoclear: 2n,
    refcountOrder: 6,
  }));
  assert.equal(header.version, 3);
  assert.equal(header.clusterBits, 12);
  assert.equal(header.size, 2 ** 40);
  assert.equal(header.l1Size, 4);
  assert.equal(header.l1TableOffset, 0x5000);
  assert.equal(header.refcountTableOffset, 0x1000);
  assert.equal(header.refcountTableClusters, 2);
  assert.equal(header.nbSnapshots, 3);
  assert.equal(header.snapshotsOffset, 0x8000);
  assert.equal(header.incompatibleFeatures, INCOMPAT_DIRTY);
  assert.equal(header.compatibleFeatures, 1n);
  assert.equal(header.autoclearFeatures, 2n);
  assert.equal(header.refcountOrder, 6);
  assert.equal(header.headerLength, 112);
});

Deno.test("parseQcow2Header() reads feature words with the top bit set as exact bigints", () => {
  const header = parseQcow2Header(build({ autoclear: 1n << 63n, compatible: (1n << 40n) | 1n }));
  assert.equal(header.autoclearFeatures, 1n << 63n);
  assert.equal(header.compatibleFeatures, (1n << 40n) | 1n);
});

Deno.test("parseQcow2Header() reads the compression type only when header_length covers it", () => {
  const zstd = build({ incompatible: INCOMPAT_COMPRESSION, compressionType: 1 });
  assert.equal(parseQcow2Header(zstd).compressionType, 1);
  const short = build({ headerLength: 104 });
  short[104] = 1; // an extension type byte, not the compression type
  assert.equal(parseQcow2Header(short).compressionType, 0);
});

Deno.test("parseQcow2Header() keeps header bytes past the known fields", () => {
  const bytes = build({ headerLength: 128 });
  bytes.set([1, 2, 3], 112);
  const header = parseQcow2Header(bytes);
  assert.equal(header.headerLength, 128);
  assert.deepEqual([...header.unknownHeaderBytes], [
    1,
    2,
    3,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
    0,
  ]);
});

Deno.test("parseQcow2Header() accepts cluster_bits from 9 to 21", () => {
  for (let bits = 9; bits <= 21; bits++) {
    assert.equal(parseQcow2Header(build({ clusterBits: bits, length: 4096 })).clusterBits, bits);
  }
});

Deno.test("peekClusterBits() refuses a bad magic, naming the magic", () => {
  const bytes = build();
  bytes[3] = 0xfc;
  throwsQcow(() => peekClusterBits(bytes), "BAD_MAGIC", /magic/);
  throwsQcow(() => peekClusterBits(new Uint8Array(0)), "BAD_MAGIC", /qcow2/);
});

Deno.test("peekClusterBits() refuses a file too short to hold a header", () => {
  throwsQcow(() => peekClusterBits(build().subarray(0, 2)), "BAD_MAGIC", /too short/);
  throwsQcow(() => peekClusterBits(build().subarray(0, 40)), "BAD_HEADER", /too short/);
  throwsQcow(() => parseQcow2Header(build().subarray(0, 100)), "BAD_HEADER", /too short/);
});

Deno.test("peekClusterBits() refuses versions other than 2 and 3", () => {
  for (const version of [0, 1, 4, 0xffffffff]) {
    const bytes = build();
    writeU32(bytes, 4, version);
    throwsQcow(() => peekClusterBits(bytes), "UNSUPPORTED_VERSION", new RegExp(`${version}`));
  }
});

Deno.test("peekClusterBits() refuses cluster_bits outside 9..21", () => {
  for (const bits of [0, 8, 22, 63, 0x80000009]) {
    const bytes = build({ length: 4096 });
    writeU32(bytes, 20, bits);
    throwsQcow(() => peekClusterBits(bytes), "BAD_HEADER", /cluster size.*cluster_bits/);
  }
});

Deno.test("parseQcow2Header() refuses a header_length below 104, unaligned, or past the cluster", () => {
  throwsQcow(() => parseQcow2Header(build({ headerLength: 72 })), "BAD_HEADER", /too short/);
  throwsQcow(() => parseQcow2Header(build({ headerLength: 100 })), "BAD_HEADER", /too short/);
  throwsQcow(() => parseQcow2Header(build({ headerLength: 108 })), "BAD_HEADER", /multiple of 8/);
  throwsQcow(
    () => parseQcow2Header(build({ clusterBits: 9, headerLength: 520 })),
    "BAD_HEADER",
    /exceeds cluster size/,
  );
  throwsQcow(
    () => parseQcow2Header(build({ headerLength: 512 }).subarray(0, 256)),
    "BAD_HEADER",
    /end of the file/,
  );
});

Deno.test("parseQcow2Header() refuses a refcount order above 6", () => {
  throwsQcow(() => parseQcow2Header(build({ refcountOrder: 7 })), "BAD_HEADER", /order 7/);
});

Deno.test("parseQcow2Header() refuses a virtual size at or past 2^53", () => {
  throwsQcow(() => parseQcow2Header(build({ size: 2 ** 53 })), "TOO_LARGE", /2\^53/);
  const huge = build();
  writeU32(huge, 24, 0xffffffff);
  throwsQcow(() => parseQcow2Header(huge), "TOO_LARGE", /Virtual size/);
  assert.equal(parseQcow2Header(build({ size: 2 ** 53 - 512 })).size, 2 ** 53 - 512);
});

Deno.test("parseQcow2Header() refuses unknown encryption and compression methods", () => {
  throwsQcow(() => parseQcow2Header(build({ cryptMethod: 3 })), "BAD_HEADER", /encryption/);
  throwsQcow(
    () => parseQcow2Header(build({ incompatible: INCOMPAT_COMPRESSION, compressionType: 2 })),
    "BAD_HEADER",
    /compression type 2/,
  );
});

Deno.test("parseQcow2Header() refuses a compression type that disagrees with its feature bit", () => {
  throwsQcow(
    () => parseQcow2Header(build({ compressionType: 1 })),
    "BAD_HEADER",
    /feature bit is clear/,
  );
  throwsQcow(
    () => parseQcow2Header(build({ incompatible: INCOMPAT_COMPRESSION })),
    "BAD_HEADER",
    /zlib/,
  );
});

Deno.test("parseQcow2Header() refuses extended L2 entries with clusters under 16 KiB", () => {
  throwsQcow(
    () => parseQcow2Header(build({ clusterBits: 13, incompatible: INCOMPAT_EXTENDED_L2 })),
    "BAD_HEADER",
    /Extended L2/,
  );
  const header = parseQcow2Header(build({ clusterBits: 14, incompatible: INCOMPAT_EXTENDED_L2 }));
  assert.equal(header.incompatibleFeatures, INCOMPAT_EXTENDED_L2);
});

Deno.test("parseQcow2Header() reads the backing file name stored after the extensions", () => {
  const header = parseQcow2Header(build({
    backing: "base image.qcow2",
    extensions: [{ type: EXT_BACKING_FORMAT, data: text("qcow2") }],
  }));
  assert.equal(header.backingFile, "base image.qcow2");
  assert.equal(header.backingFormat, "qcow2");
  assert.equal(header.backingFileSize, 16);
});

Deno.test("parseQcow2Header() reads a backing file name in a version 2 header", () => {
  const header = parseQcow2Header(build({ version: 2, backing: "/abs/base.raw" }));
  assert.equal(header.backingFile, "/abs/base.raw");
  assert.equal(header.backingFileOffset, 80);
});

Deno.test("parseQcow2Header() refuses a backing file name longer than 1023 bytes", () => {
  const bytes = build({ backing: "b" });
  writeU32(bytes, 16, 1024);
  throwsQcow(() => parseQcow2Header(bytes), "BAD_HEADER", /Backing file name too long/);
});

Deno.test("parseQcow2Header() refuses a backing file name outside the first cluster", () => {
  const bytes = build({ clusterBits: 9, backing: "b" });
  writeU64(bytes, 8, 510);
  writeU32(bytes, 16, 10);
  throwsQcow(() => parseQcow2Header(bytes), "BAD_HEADER", /backing file offset.*first cluster/);
  writeU64(bytes, 8, 2 ** 52);
  throwsQcow(() => parseQcow2Header(bytes), "BAD_HEADER", /backing file offset/);
});

Deno.test("parseQcow2Header() says when a backing file name is cut off by the end of the file", () => {
  const bytes = build({ backing: "base.qcow2" });
  throwsQcow(
    () => parseQcow2Header(bytes.subarray(0, 125)),
    "BAD_HEADER",
    /backing file name.*end of the file/,
  );
});

Deno.test("parseQcow2Header() reads a backing file name that overlaps the header, as QEMU does", () => {
  const bytes = build({ extensions: [{ type: 0x12345678, data: text("unknown") }] });
  writeU64(bytes, 8, 1);
  writeU32(bytes, 16, 2); // bytes 1 and 2 of the magic: "FI"
  const header = parseQcow2Header(bytes);
  assert.equal(header.backingFile, "FI");
  assert.deepEqual(header.extensions, [], "extensions end where the backing file name starts");
});

Deno.test("parseQcow2Header() keeps unknown extensions and stops at the end marker", () => {
  const bytes = build({
    extensions: [
      { type: 0x12345678, data: text("abc") },
      { type: 0x0badcafe, data: new Uint8Array(0) },
    ],
  });
  // An extension after the end marker is not read.
  writeU32(bytes, 112 + 16 + 8 + 8, 0x11111111);
  writeU32(bytes, 112 + 16 + 8 + 12, 4);
  const header = parseQcow2Header(bytes);
  assert.deepEqual(header.extensions, [
    { type: 0x12345678, data: text("abc") },
    { type: 0x0badcafe, data: new Uint8Array(0) },
  ]);
});

Deno.test("parseQcow2Header() reads the feature name table", () => {
  const header = parseQcow2Header(build({
    extensions: [featureTable([
      { type: 0, bit: 0, name: "dirty bit" },
      { type: 1, bit: 0, name: "lazy refcounts" },
      { type: 2, bit: 1, name: "raw external data" },
      { type: 0, bit: 9, name: "x".repeat(46) },
    ])],
  }));
  assert.deepEqual(header.featureNames, [
    { type: 0, bit: 0, name: "dirty bit" },
    { type: 1, bit: 0, name: "lazy refcounts" },
    { type: 2, bit: 1, name: "raw external data" },
    { type: 0, bit: 9, name: "x".repeat(46) },
  ]);
});

Deno.test("parseQcow2Header() reads the bitmaps, crypto and data file extensions", () => {
  const bitmaps = new Uint8Array(24);
  writeU32(bitmaps, 0, 2);
  writeU64(bitmaps, 8, 4096);
  writeU64(bitmaps, 16, 0x70000);
  const crypto = new Uint8Array(16);
  writeU64(crypto, 0, 0x20000);
  writeU64(crypto, 8, 0x1000);
  const header = parseQcow2Header(build({
    extensions: [
      { type: EXT_DATA_FILE, data: text("data.raw") },
      { type: EXT_CRYPTO, data: crypto },
      { type: EXT_BITMAPS, data: bitmaps },
    ],
  }));
  assert.equal(header.dataFile, "data.raw");
  assert.deepEqual(header.crypto, { offset: 0x20000, length: 0x1000 });
  assert.deepEqual(header.bitmaps, { count: 2, directorySize: 4096, directoryOffset: 0x70000 });
});

Deno.test("parseQcow2Header() refuses bitmaps and crypto extensions of the wrong length", () => {
  throwsQcow(
    () =>
      parseQcow2Header(build({ extensions: [{ type: EXT_BITMAPS, data: new Uint8Array(16) }] })),
    "BAD_EXTENSION",
    /Bitmaps extension.*16/,
  );
  throwsQcow(
    () => parseQcow2Header(build({ extensions: [{ type: EXT_CRYPTO, data: new Uint8Array(8) }] })),
    "BAD_EXTENSION",
    /Crypto extension.*8/,
  );
});

Deno.test("parseQcow2Header() lets a repeated extension replace the earlier one, as QEMU does", () => {
  const header = parseQcow2Header(build({
    extensions: [
      { type: EXT_BACKING_FORMAT, data: text("qcow2") },
      { type: EXT_BACKING_FORMAT, data: text("raw") },
    ],
  }));
  assert.equal(header.backingFormat, "raw");
  assert.equal(header.extensions.length, 2);
});

Deno.test("parseQcow2Header() refuses an extension longer than what is left of the first cluster", () => {
  const bytes = build({ clusterBits: 12, extensions: [{ type: 0x1234, data: text("abc") }] });
  writeU32(bytes, 116, 4096 - 120 + 1);
  throwsQcow(() => parseQcow2Header(bytes), "BAD_EXTENSION", /0x1234.*first cluster/);
  writeU32(bytes, 116, 4096 - 120);
  assert.equal(parseQcow2Header(bytes).extensions[0]!.data.length, 4096 - 120);
});

Deno.test("parseQcow2Header() refuses an extension that runs into the backing file name", () => {
  const bytes = build({ backing: "base", extensions: [{ type: 0x1234, data: text("abc") }] });
  writeU32(bytes, 116, 17);
  throwsQcow(() => parseQcow2Header(bytes), "BAD_EXTENSION", /backing file name/);
  writeU32(bytes, 116, 16);
  assert.equal(parseQcow2Header(bytes).extensions[0]!.data.length, 16);
});

Deno.test("parseQcow2Header() refuses an extension cut off by the end of the file", () => {
  const bytes = build({ extensions: [featureTable([{ type: 0, bit: 0, name: "dirty bit" }])] });
  throwsQcow(
    () => parseQcow2Header(bytes.subarray(0, 140)),
    "BAD_EXTENSION",
    /0x6803f857.*end of the file/,
  );
});

Deno.test("parseQcow2Header() refuses an end marker with a length past the cluster, as QEMU does", () => {
  const bytes = build();
  writeU32(bytes, 116, 0x10000);
  throwsQcow(() => parseQcow2Header(bytes), "BAD_EXTENSION", /too large/);
});

Deno.test("describeFeatures() names bits from the feature table and numbers the others", () => {
  const header = parseQcow2Header(build({
    extensions: [featureTable([
      { type: 0, bit: 5, name: "fancy feature" },
      { type: 1, bit: 6, name: "a compatible one" },
    ])],
  }));
  assert.equal(describeFeatures(header, 1n << 5n), "fancy feature");
  assert.equal(
    describeFeatures(header, (1n << 6n) | (1n << 63n)),
    "Unknown incompatible feature: bit 6, Unknown incompatible feature: bit 63",
  );
  assert.equal(describeFeatures(header, 1n << 6n, 1), "a compatible one");
  assert.equal(describeFeatures(header, 0n), "");
});

Deno.test("l2Entries() and sizeToL1() follow the cluster size and entry width", () => {
  assert.equal(l2Entries(16, false), 8192);
  assert.equal(l2Entries(16, true), 4096);
  assert.equal(l2Entries(9, false), 64);
  assert.equal(sizeToL1(0, 16, false), 0);
  assert.equal(sizeToL1(1, 16, false), 1);
  assert.equal(sizeToL1(2 ** 29, 16, false), 1);
  assert.equal(sizeToL1(2 ** 29 + 1, 16, false), 2);
  assert.equal(sizeToL1(2 ** 29, 16, true), 2);
  assert.equal(sizeToL1(2 ** 53 - 1, 9, false), 2 ** 38);
  assert.equal(divCeil(7, 2), 4);
});

function validHeader(fields: HeaderFields = {}): Qcow2Header {
  return parseQcow2Header(build(fields));
}

const FILE = 0x50000;

Deno.test("validateTables() accepts the tables of a fresh image", () => {
  validateTables(validHeader(), FILE);
  validateTables(validHeader({ size: 0, l1Size: 0, l1TableOffset: 0 }), FILE);
});

Deno.test("validateTables() refuses a missing, oversized, unaligned or truncated refcount table", () => {
  throwsQcow(
    () => validateTables(validHeader({ refcountTableClusters: 0 }), FILE),
    "BAD_TABLE",
    /reference count table/,
  );
  throwsQcow(
    () => validateTables(validHeader({ refcountTableClusters: 129 }), 2 ** 30),
    "BAD_TABLE",
    /Reference count table too large/,
  );
  throwsQcow(
    () => validateTables(validHeader({ refcountTableOffset: 0x10200 }), FILE),
    "BAD_TABLE",
    /Reference count table offset 0x10200 is not cluster aligned/,
  );
  throwsQcow(
    () => validateTables(validHeader({ refcountTableOffset: 0x50000 }), FILE),
    "BAD_TABLE",
    /Reference count table.*past the end of the file/,
  );
});

Deno.test("validateTables() refuses an L1 table that is too large, too small, unaligned or outside", () => {
  throwsQcow(
    () => validateTables(validHeader({ l1Size: MAX_L1_BYTES / 8 + 1, size: 0 }), 2 ** 40),
    "BAD_TABLE",
    /L1 table too large/,
  );
  throwsQcow(
    () => validateTables(validHeader({ l1Size: 1, size: 2 ** 29 + 1 }), FILE),
    "BAD_TABLE",
    /L1 table is too small/,
  );
  throwsQcow(
    () => validateTables(validHeader({ l1Size: 0 }), FILE),
    "BAD_TABLE",
    /L1 table is too small/,
  );
  throwsQcow(
    () => validateTables(validHeader({ l1TableOffset: 0x30008 }), FILE),
    "BAD_TABLE",
    /L1 table offset 0x30008 is not cluster aligned/,
  );
  throwsQcow(
    () => validateTables(validHeader({ l1TableOffset: 0x50000 }), FILE),
    "BAD_TABLE",
    /L1 table.*past the end of the file/,
  );
  throwsQcow(
    () => validateTables(validHeader({ l1TableOffset: 2 ** 52 }), FILE),
    "BAD_TABLE",
    /L1 table.*past the end of the file/,
  );
});

Deno.test("validateTables() refuses more than 65536 snapshots", () => {
  throwsQcow(
    () => validateTables(validHeader({ nbSnapshots: 65537, snapshotsOffset: 0x40000 }), FILE),
    "BAD_TABLE",
    /Snapshot table too large \(65537 snapshots\)/,
  );
  validateTables(validHeader({ nbSnapshots: 65536, snapshotsOffset: 0x40000 }), FILE);
});

Deno.test("validateTables() refuses an unaligned snapshot table offset, even with no snapshots", () => {
  for (const count of [0, 1]) {
    throwsQcow(
      () => validateTables(validHeader({ nbSnapshots: count, snapshotsOffset: 0x40100 }), FILE),
      "BAD_TABLE",
      /Snapshot table offset 0x40100 is not cluster aligned/,
    );
  }
});

Deno.test("validateTables() accepts a snapshot table past the end of the file, as QEMU does", () => {
  validateTables(validHeader({ nbSnapshots: 1, snapshotsOffset: 0x100000 }), FILE);
});

Deno.test("validateTables() checks the alignment of an empty L1 table but not its place", () => {
  validateTables(validHeader({ size: 0, l1Size: 0, l1TableOffset: 0x7770000 }), FILE);
  throwsQcow(
    () => validateTables(validHeader({ size: 0, l1Size: 0, l1TableOffset: 0x30008 }), FILE),
    "BAD_TABLE",
    /L1 table offset 0x30008 is not cluster aligned/,
  );
});

Deno.test("validateTables() refuses table offsets at or past 2^63", () => {
  const bytes = build();
  writeU32(bytes, 48, 0x80000000);
  throwsQcow(
    () => validateTables(parseQcow2Header(bytes), 2 ** 53),
    "BAD_TABLE",
    /Reference count table offset 0x8000000000010000 is invalid/,
  );
});

Deno.test("validateTables() refuses snapshots it cannot address, past 2^53", () => {
  const bytes = build({ nbSnapshots: 1 });
  writeU32(bytes, 64, 0x00200000);
  throwsQcow(
    () => validateTables(parseQcow2Header(bytes), FILE),
    "BAD_TABLE",
    /Snapshot table offset 0x20000000000000 is beyond 2\^53/,
  );
  writeU32(bytes, 60, 0);
  validateTables(parseQcow2Header(bytes), FILE);
});

Deno.test("parseQcow2Header() checks table alignment exactly, even past 2^53", () => {
  // 0x40000000557e019d is unaligned, but as a number it rounds to a multiple of 64 KiB.
  const bytes = build();
  writeU32(bytes, 64, 0x40000000);
  writeU32(bytes, 68, 0x557e019d);
  throwsQcow(
    () => parseQcow2Header(bytes),
    "BAD_TABLE",
    /Snapshot table offset 0x40000000557e019d is not cluster aligned/,
  );
  writeU32(bytes, 68, 0x557e0000);
  assert.equal(parseQcow2Header(bytes).snapshotsOffset, 0x40000000557e0000);
  for (const [at, what] of [[40, "L1 table"], [48, "Reference count table"]] as const) {
    const unaligned = build();
    writeU32(unaligned, at + 4, 0x10200);
    throwsQcow(
      () => parseQcow2Header(unaligned),
      "BAD_TABLE",
      new RegExp(`${what} offset 0x10200`),
    );
  }
});
