/**
 * Malformed images: each must fail with a QcowError whose code is stable and whose message names
 * what is wrong, never with a TypeError or RangeError from inside the parser. Images are made by
 * qemu-img and then damaged byte by byte.
 */

import assert from "node:assert/strict";
import { readU32 } from "../core/bytes.ts";
import { QcowError, type QcowErrorCode } from "../core/errors.ts";
import { MemoryDevice } from "../core/memory_device.ts";
import type { Image } from "../drivers/image.ts";
import { mapImage } from "../drivers/map_image.ts";
import { openImage, type OpenImageOptions } from "../drivers/open_image.ts";
import { compressedLocation } from "../drivers/qcow2/entries.ts";
import {
  createQcow2,
  FIELD,
  l2EntryPosition,
  layout,
  qemuImg,
  rebaseUnsafe,
  withTempDir,
  withU32,
  withU64,
  withU64Number,
} from "./_qcow2_fixtures.ts";

const KiB = 1024;
const MiB = 1024 * KiB;

// Every base image is built once; tests damage copies.
const dir = await Deno.makeTempDir({ prefix: "qcowlab-bad-input-" });
/** v3, 64 KiB clusters: data at 0, zero at 128k, compressed at 192k and 256k, data at 320k. */
const V3 = await createQcow2(dir, "v3.qcow2", {
  size: "1M",
  io: [
    "write -P 0x11 0 64k",
    "write -z 128k 64k",
    "write -c -P 0x33 192k 64k",
    "write -c -P 0x44 256k 64k",
    "write -P 0x55 320k 64k",
  ],
});
/** v2, 64 KiB clusters: data at 0, compressed at 64k. */
const V2 = await createQcow2(dir, "v2.qcow2", {
  size: "1M",
  compat: "0.10",
  io: ["write -P 0x11 0 64k", "write -c -P 0x22 64k 64k"],
});
/** 512-byte clusters: one L2 table maps 32 KiB, so 256 KiB need eight. */
const SMALL = await createQcow2(dir, "small.qcow2", {
  size: "256k",
  clusterSize: 512,
  io: ["write -P 0x11 0 4k", "write -P 0x22 64k 4k", "write -c -P 0x33 128k 512"],
});
/** v2 with one internal snapshot taken between two writes. */
const SNAPSHOT = await createQcow2(dir, "snapshot.qcow2", {
  size: "1M",
  compat: "0.10",
  io: ["write -P 0x11 0 64k"],
  snapshots: ["s1"],
  ioAfterSnapshots: ["write -P 0x22 0 64k"],
});
/** 4 KiB clusters: one L2 table maps 2 MiB; data at 0 and 4M, compressed at 6M. */
const MID = await createQcow2(dir, "mid.qcow2", {
  size: "8M",
  clusterSize: 4096,
  io: ["write -P 0x11 0 4k", "write -P 0x22 4M 4k", "write -c -P 0x33 6M 4k"],
});
/** Extended L2: 4 KiB of data at 0, zero subclusters at 8k, a full cluster at 64k. */
const EXTENDED = await createQcow2(dir, "extended.qcow2", {
  size: "1M",
  extendedL2: true,
  io: ["write -P 0x11 0 4k", "write -z 8k 4k", "write -P 0x22 64k 64k"],
});
const LUKS = await createQcow2(dir, "luks.qcow2", {
  size: "1M",
  args: ["--object", "secret,id=sec0,data=secret"],
  options: ["encrypt.format=luks", "encrypt.key-secret=sec0", "encrypt.iter-time=50"],
});
const AES = await createQcow2(dir, "aes.qcow2", {
  size: "1M",
  args: ["--object", "secret,id=sec0,data=secret"],
  options: ["encrypt.format=aes", "encrypt.key-secret=sec0"],
});
const DATA_FILE = await createQcow2(dir, "external.qcow2", {
  size: "1M",
  options: ["data_file=external.raw"],
});
const ZSTD = await createQcow2(dir, "zstd.qcow2", {
  size: "1M",
  options: ["compression_type=zstd"],
});
await Deno.remove(dir, { recursive: true });

function open(bytes: Uint8Array, options: OpenImageOptions = {}): Promise<Image> {
  return openImage(MemoryDevice.from(bytes, { name: "bad.qcow2" }), {
    backing: false,
    ...options,
  });
}

/** Awaits `promise`, which must reject with a QcowError of `code` whose message matches. */
async function rejects(
  promise: Promise<unknown>,
  code: QcowErrorCode,
  pattern: RegExp,
): Promise<QcowError> {
  let caught: unknown;
  try {
    await promise;
  } catch (error) {
    caught = error;
  }
  if (caught === undefined) assert.fail(`expected a QcowError ${code}, but nothing was thrown`);
  if (!(caught instanceof QcowError)) {
    const name = (caught as Error)?.constructor?.name ?? typeof caught;
    assert.fail(`expected a QcowError ${code}, got ${name}: ${(caught as Error)?.stack}`);
  }
  assert.equal(caught.code, code, caught.message);
  assert.match(caught.message, pattern);
  return caught;
}

function openFails(
  bytes: Uint8Array,
  code: QcowErrorCode,
  pattern: RegExp,
  options: OpenImageOptions = {},
): Promise<QcowError> {
  return rejects(open(bytes, options), code, pattern);
}

async function read(image: Image, offset: number, length: number): Promise<Uint8Array> {
  const buffer = new Uint8Array(length);
  await image.read(buffer, offset);
  return buffer;
}

async function assertFilled(image: Image, offset: number, length: number, value: number) {
  const bytes = await read(image, offset, length);
  const wrong = bytes.findIndex((b) => b !== value);
  assert.equal(wrong, -1, `byte ${offset + wrong} is ${bytes[wrong]}, expected ${value}`);
}

/** Writes a 64-bit entry given as a bigint into a copy of `bytes`. */
function withEntry(bytes: Uint8Array, position: number, entry: bigint): Uint8Array {
  return withU64(bytes, position, Number(entry >> 32n), Number(entry & 0xffffffffn));
}

function entryAt(bytes: Uint8Array, position: number): bigint {
  return (BigInt(readU32(bytes, position)) << 32n) | BigInt(readU32(bytes, position + 4));
}

const COMPRESSED = 1n << 62n;

/** Whether qemu-io opens `bytes` read-only and runs `command` on them without an error. */
async function qemuReads(bytes: Uint8Array, command: string): Promise<boolean> {
  return await withTempDir(async (tmp) => {
    await Deno.writeFile(`${tmp}/image.qcow2`, bytes);
    const output = await new Deno.Command("qemu-io", {
      args: ["-r", "-f", "qcow2", "-c", command, "image.qcow2"],
      cwd: tmp,
      stdout: "null",
      stderr: "null",
    }).output();
    return output.success;
  });
}

// ---------------------------------------------------------------- header fields

Deno.test("bad input: a bad magic is refused as BAD_MAGIC", async () => {
  await openFails(withU32(V3, FIELD.magic, 0x514649fc), "BAD_MAGIC", /magic/, { format: "qcow2" });
  // Probing sees no qcow2 magic and opens the bytes as raw, as qemu-img does.
  const image = await open(withU32(V3, FIELD.magic, 0x12345678));
  assert.equal(image.format, "raw");
});

Deno.test("bad input: versions other than 2 and 3 are refused as UNSUPPORTED_VERSION", async () => {
  for (const version of [0, 1, 4, 0xffffffff]) {
    await openFails(
      withU32(V3, FIELD.version, version),
      "UNSUPPORTED_VERSION",
      new RegExp(`version ${version}`),
      { format: "qcow2" },
    );
  }
  // Probed, version 1 is the qcow format, whose reader refuses a qcow2 header's fields.
  await openFails(withU32(V3, FIELD.version, 1), "BAD_HEADER", /./);
});

Deno.test("bad input: cluster_bits outside 9..21 is refused as BAD_HEADER", async () => {
  for (const bits of [0, 8, 22, 31, 0xffffffff]) {
    await openFails(
      withU32(V3, FIELD.clusterBits, bits),
      "BAD_HEADER",
      new RegExp(`cluster_bits is ${bits}`),
    );
  }
});

Deno.test("bad input: a header_length that is too small, unaligned or too large is refused", async () => {
  for (const length of [0, 72, 103]) {
    await openFails(withU32(V3, FIELD.headerLength, length), "BAD_HEADER", /header too short/);
  }
  for (const length of [105, 108, 113]) {
    await openFails(withU32(V3, FIELD.headerLength, length), "BAD_HEADER", /not a multiple of 8/);
  }
  await openFails(
    withU32(V3, FIELD.headerLength, 0x10008),
    "BAD_HEADER",
    /header exceeds cluster size/,
  );
});

Deno.test("bad input: a refcount order above 6 is refused", async () => {
  await openFails(withU32(V3, FIELD.refcountOrder, 7), "BAD_HEADER", /Reference count.*order 7/);
});

Deno.test("bad input: virtual sizes past 2^53 are refused as TOO_LARGE", async () => {
  await openFails(withU64Number(V3, FIELD.size, 2 ** 53), "TOO_LARGE", /Virtual size.*2\^53/);
  await openFails(withU64(V3, FIELD.size, 0xffffffff, 0xffffffff), "TOO_LARGE", /Virtual size/);
  await openFails(withU64(V3, FIELD.size, 0x80000000, 0), "TOO_LARGE", /Virtual size/);
  await openFails(withU64(V2, FIELD.size, 0x40000000, 0), "TOO_LARGE", /Virtual size/);
});

Deno.test("bad input: an absurd size below 2^53 fails on the L1 table that cannot map it", async () => {
  await openFails(
    withU64Number(V3, FIELD.size, 2 ** 53 - 512),
    "BAD_TABLE",
    /L1 table is too small/,
  );
  await openFails(withU64Number(V3, FIELD.size, 2 ** 40), "BAD_TABLE", /needs 2048/);
  // An L1 table big enough for 2^52 bytes with 64 KiB clusters is over QEMU's 32 MiB limit.
  const big = withU32(withU64Number(V3, FIELD.size, 2 ** 52), FIELD.l1Size, 2 ** 23);
  await openFails(big, "BAD_TABLE", /L1 table too large/);
});

Deno.test("bad input: an L1 table too small for the size or over 32 MiB is refused", async () => {
  await openFails(withU32(V3, FIELD.l1Size, 0), "BAD_TABLE", /L1 table is too small: 0 entries/);
  await openFails(withU32(SMALL, FIELD.l1Size, 7), "BAD_TABLE", /7 entries.*needs 8/);
  for (const entries of [4 * 1024 * 1024 + 1, 0xffffffff]) {
    await openFails(withU32(V3, FIELD.l1Size, entries), "BAD_TABLE", /L1 table too large/);
  }
});

Deno.test("bad input: an L1 table offset that is unaligned or past the end is refused", async () => {
  const l1 = layout(V3).header.l1TableOffset;
  await openFails(
    withU64Number(V3, FIELD.l1TableOffset, l1 + 8),
    "BAD_TABLE",
    /L1 table offset 0x30008 is not cluster aligned/,
  );
  await openFails(
    withU64Number(V3, FIELD.l1TableOffset, V3.length + 0x10000),
    "BAD_TABLE",
    /L1 table.*past the end of the file/,
  );
  await openFails(
    withU64(V3, FIELD.l1TableOffset, 0xffffffff, 0xffff0000),
    "BAD_TABLE",
    /L1 table offset 0xffffffffffff0000 is invalid/,
  );
});

Deno.test("bad input: a refcount table that is missing, unaligned, too big or outside is refused", async () => {
  await openFails(
    withU32(V3, FIELD.refcountTableClusters, 0),
    "BAD_TABLE",
    /does not contain a reference count table/,
  );
  await openFails(
    withU64Number(V3, FIELD.refcountTableOffset, 0x10200),
    "BAD_TABLE",
    /Reference count table offset 0x10200 is not cluster aligned/,
  );
  await openFails(
    withU64Number(V3, FIELD.refcountTableOffset, V3.length),
    "BAD_TABLE",
    /Reference count table.*past the end of the file/,
  );
  await openFails(
    withU32(V3, FIELD.refcountTableClusters, 0xffffffff),
    "BAD_TABLE",
    /Reference count table too large/,
  );
  await openFails(
    withU32(V3, FIELD.refcountTableClusters, 8),
    "BAD_TABLE",
    /Reference count table.*past the end of the file/,
  );
});

Deno.test("bad input: a snapshot table that is too long or unaligned is refused", async () => {
  const withSnapshots = (count: number, offset: number) =>
    withU64Number(withU32(V3, FIELD.nbSnapshots, count), FIELD.snapshotsOffset, offset);
  await openFails(withSnapshots(65537, 0x40000), "BAD_TABLE", /Snapshot table too large/);
  await openFails(withSnapshots(1, 0x40008), "BAD_TABLE", /Snapshot table.*not cluster aligned/);
  // QEMU checks the offset even when there are no snapshots.
  await openFails(withSnapshots(0, 0x40008), "BAD_TABLE", /Snapshot table.*not cluster aligned/);
  await openFails(withSnapshots(0, 2 ** 63), "BAD_TABLE", /Snapshot table offset.*invalid/);
});

Deno.test("bad input: a snapshot with more than 1 KiB of extra data is refused", async () => {
  const { header } = layout(SNAPSHOT);
  assert.equal(header.nbSnapshots, 1);
  const extraData = header.snapshotsOffset + 36;
  await openFails(
    withU32(SNAPSHOT, extraData, 1025),
    "BAD_TABLE",
    /Too much extra metadata in snapshot table entry 0/,
  );
  const image = await open(withU32(SNAPSHOT, extraData, 1024));
  await assertFilled(image, 0, 64 * KiB, 0x22);
});

Deno.test("bad input: unknown encryption and compression values are refused as BAD_HEADER", async () => {
  await openFails(withU32(V3, FIELD.cryptMethod, 3), "BAD_HEADER", /encryption method 3/);
  const zstdBit = withU32(V3, FIELD.incompatibleFeatures + 4, 1 << 3);
  const typed = zstdBit.slice();
  typed[FIELD.compressionType] = 7;
  await openFails(typed, "BAD_HEADER", /compression type 7/);
  await openFails(zstdBit, "BAD_HEADER", /feature bit.*zlib/);
});

Deno.test("bad input: a backing file name that is too long or outside the cluster is refused", async () => {
  const named = withU64Number(
    withU32(V3, FIELD.backingFileSize, 4),
    FIELD.backingFileOffset,
    0x800,
  );
  await openFails(withU32(named, FIELD.backingFileSize, 1024), "BAD_HEADER", /name too long/);
  await openFails(
    withU64Number(named, FIELD.backingFileOffset, 0xfffe),
    "BAD_HEADER",
    /backing file offset.*first cluster/,
  );
  await openFails(
    withU64(named, FIELD.backingFileOffset, 0xffffffff, 0xfffffff0),
    "BAD_HEADER",
    /backing file offset/,
  );
});

// ---------------------------------------------------------------- extensions and features

/** Offset of the first extension of a qemu-img v3 image (right after its 112-byte header). */
const FIRST_EXTENSION = 112;

Deno.test("bad input: an extension length past the first cluster is refused as BAD_EXTENSION", async () => {
  for (const length of [0x10000, 0xffffffff, 0x10000 - FIRST_EXTENSION - 7]) {
    await openFails(
      withU32(V3, FIRST_EXTENSION + 4, length),
      "BAD_EXTENSION",
      /Header extension 0x6803f857 is too large.*first cluster/,
    );
  }
  // The end marker's length is checked too, as QEMU does.
  const end = withU32(withU32(V3, FIRST_EXTENSION, 0), FIRST_EXTENSION + 4, 0x20000);
  await openFails(end, "BAD_EXTENSION", /too large/);
});

Deno.test("bad input: an extension running into the backing file name is refused", async () => {
  await withTempDir(async (tmp) => {
    const overlay = await createQcow2(tmp, "overlay.qcow2", { size: "1M", backing: "base.qcow2" });
    const { header } = layout(overlay);
    assert.equal(header.extensions[0]!.type, 0xe2792aca);
    const damaged = withU32(overlay, FIRST_EXTENSION + 4, header.backingFileOffset);
    await openFails(damaged, "BAD_EXTENSION", /too large.*backing file name/);
  });
});

Deno.test("bad input: bitmaps and crypto extensions of the wrong length are refused", async () => {
  const bitmaps = withU32(withU32(V3, FIRST_EXTENSION, 0x23852875), FIRST_EXTENSION + 4, 16);
  await openFails(bitmaps, "BAD_EXTENSION", /Bitmaps extension.*length 16/);
  const crypto = withU32(withU32(V3, FIRST_EXTENSION, 0x0537be77), FIRST_EXTENSION + 4, 8);
  await openFails(crypto, "BAD_EXTENSION", /Crypto extension has length 8/);
});

/** Finds the feature table entry (type, bit) in a qemu-img image; returns its file position. */
function featureEntry(bytes: Uint8Array, type: number, bit: number): number {
  assert.equal(readU32(bytes, FIRST_EXTENSION), 0x6803f857);
  const length = readU32(bytes, FIRST_EXTENSION + 4);
  for (let at = FIRST_EXTENSION + 8; at < FIRST_EXTENSION + 8 + length; at += 48) {
    if (bytes[at] === type && bytes[at + 1] === bit) return at;
  }
  throw new Error(`no feature table entry ${type}/${bit}`);
}

Deno.test("bad input: an unknown incompatible feature is refused, named from the feature table", async () => {
  // Rename the table's "dirty bit" entry to bit 6, then set bit 6.
  const renamed = V3.slice();
  const at = featureEntry(renamed, 0, 0);
  renamed[at + 1] = 6;
  renamed.fill(0, at + 2, at + 48);
  renamed.set(new TextEncoder().encode("shiny new feature"), at + 2);
  const flagged = withU32(renamed, FIELD.incompatibleFeatures + 4, 1 << 6);
  await openFails(
    flagged,
    "UNSUPPORTED_FEATURE",
    /Unsupported qcow2 feature\(s\): shiny new feature/,
  );
});

Deno.test("bad input: an unknown incompatible feature without a name is refused by number", async () => {
  await openFails(
    withU32(V3, FIELD.incompatibleFeatures, 0x80000000),
    "UNSUPPORTED_FEATURE",
    /Unknown incompatible feature: bit 63/,
  );
  await openFails(
    withU32(V3, FIELD.incompatibleFeatures + 4, 1 << 5),
    "UNSUPPORTED_FEATURE",
    /bit 5/,
  );
});

Deno.test("bad input: LUKS is refused, and legacy AES without a passphrase asks for one", async () => {
  await openFails(LUKS, "UNSUPPORTED_FEATURE", /encryption \(LUKS\)/);
  await openFails(AES, "PASSPHRASE_REQUIRED", /encrypted \(AES\).*passphrase/);
  await openFails(withU32(V2, FIELD.cryptMethod, 1), "PASSPHRASE_REQUIRED", /passphrase/);
});

Deno.test("bad input: an external data file is refused, naming it", async () => {
  await openFails(DATA_FILE, "UNSUPPORTED_FEATURE", /external data file \(external\.raw\)/);
  // The incompatible bit alone is enough.
  await openFails(
    withU32(V3, FIELD.incompatibleFeatures + 4, 1 << 2),
    "UNSUPPORTED_FEATURE",
    /external data file/,
  );
});

Deno.test("bad input: the raw external data bit without a data file is refused, as in QEMU", async () => {
  const damaged = withU32(V3, FIELD.autoclearFeatures + 4, 1 << 1);
  assert.equal(await qemuReads(damaged, "read 0 512"), false);
  await openFails(damaged, "BAD_HEADER", /data-file-raw requires a data file/);
});

Deno.test("bad input: zstd compression is refused as not supported yet", async () => {
  await openFails(ZSTD, "UNSUPPORTED_FEATURE", /zstd/);
});

// ---------------------------------------------------------------- mapping metadata

Deno.test("bad input: an unaligned L2 table offset fails the reads it maps, only those", async () => {
  const l1 = layout(MID).header.l1TableOffset;
  // L1 entry 2 maps 4M..6M; point it 512 bytes into its L2 table.
  const entry = entryAt(MID, l1 + 16);
  const image = await open(withEntry(MID, l1 + 16, entry + 0x200n));
  await rejects(
    read(image, 4 * MiB, 512),
    "CORRUPT_METADATA",
    /L2 table offset 0x[0-9a-f]+200 unaligned \(L1 index: 0x2\)/,
  );
  await rejects(mapImage(image), "CORRUPT_METADATA", /L1 index: 0x2/);
  await assertFilled(image, 0, 4 * KiB, 0x11);
  await assertFilled(image, 6 * MiB, 4 * KiB, 0x33);
});

Deno.test("bad input: reserved bits of an L1 entry are ignored, as in QEMU", async () => {
  const l1 = layout(V3).header.l1TableOffset;
  const image = await open(withEntry(V3, l1, entryAt(V3, l1) | 0x7f00_0000_0000_01ffn));
  await assertFilled(image, 0, 64 * KiB, 0x11);
});

Deno.test("bad input: an L2 table past the end of the file fails the reads it maps", async () => {
  const l1 = layout(V3).header.l1TableOffset;
  const far = withEntry(V3, l1, (1n << 63n) | BigInt(V3.length + 0x10000));
  const image = await open(far);
  await rejects(read(image, 0, 512), "CORRUPT_METADATA", /L2 table offset.*past the end/);
  const huge = await open(withEntry(V3, l1, 0x00ff_ffff_ffff_0000n));
  await rejects(read(huge, 0, 512), "CORRUPT_METADATA", /past the end/);
});

Deno.test("bad input: an unaligned data cluster offset fails the reads of that cluster", async () => {
  const position = l2EntryPosition(V3, 0);
  const image = await open(withEntry(V3, position, entryAt(V3, position) + 0x200n));
  await rejects(
    read(image, 100, 10),
    "CORRUPT_METADATA",
    /Cluster allocation offset 0x50200 unaligned/,
  );
  await assertFilled(image, 320 * KiB, 64 * KiB, 0x55);
});

Deno.test("bad input: a data cluster offset past 2^53 is refused as TOO_LARGE", async () => {
  const position = l2EntryPosition(V3, 0);
  const image = await open(withEntry(V3, position, 0x00ff_ffff_ffff_0000n));
  await rejects(read(image, 0, 512), "TOO_LARGE", /Host offset.*2\^53/);
});

Deno.test("bad input: a data cluster past the end of the file reads as zeros, as in QEMU", async () => {
  const position = l2EntryPosition(V3, 0);
  const image = await open(withEntry(V3, position, (1n << 63n) | BigInt(V3.length + 0x100000)));
  await assertFilled(image, 0, 64 * KiB, 0);
});

Deno.test("bad input: compressed data past the end of the file fails only that cluster", async () => {
  const position = l2EntryPosition(V3, 192 * KiB);
  const image = await open(withEntry(V3, position, COMPRESSED | BigInt(V3.length + 512)));
  await rejects(read(image, 192 * KiB, 512), "BAD_COMPRESSED_DATA", /past the end of the file/);
  await assertFilled(image, 256 * KiB, 64 * KiB, 0x44);
  await assertFilled(image, 0, 64 * KiB, 0x11);
  assert.equal((await mapImage(image)).length > 0, true, "mapping does not read compressed data");
});

Deno.test("bad input: compressed data that is not deflate fails only that cluster", async () => {
  for (const [base, guest, other, value] of [[V3, 192, 256, 0x44], [V2, 64, 0, 0x11]] as const) {
    const position = l2EntryPosition(base, guest * KiB);
    const [hi, lo] = [readU32(base, position), readU32(base, position + 4)];
    const { offset } = compressedLocation(hi, lo, 16);
    const damaged = base.slice();
    damaged.fill(0xff, offset, offset + 8); // block type 3 does not exist
    const image = await open(damaged);
    await rejects(
      read(image, guest * KiB + 4096, 100),
      "BAD_COMPRESSED_DATA",
      new RegExp(`0x${offset.toString(16)} is not valid deflate data`),
    );
    await assertFilled(image, other * KiB, 64 * KiB, value);
  }
});

Deno.test("bad input: a zero flag in a version 2 image is corruption, as in QEMU", async () => {
  const position = l2EntryPosition(V2, 0);
  const damaged = withEntry(V2, position, entryAt(V2, position) | 1n);
  assert.equal(await qemuReads(damaged, "read 0 512"), false);
  const image = await open(damaged);
  await rejects(
    read(image, 0, 512),
    "CORRUPT_METADATA",
    /Zero cluster entry found in pre-v3 image \(L2 offset: 0x40000, L2 index: 0x0\)/,
  );
  await rejects(mapImage(image), "CORRUPT_METADATA", /pre-v3/);
  await assertFilled(image, 64 * KiB, 64 * KiB, 0x22);
  // Unallocated with the flag: the same.
  const plain = await open(withEntry(V2, l2EntryPosition(V2, 128 * KiB), 1n));
  await rejects(read(plain, 128 * KiB, 512), "CORRUPT_METADATA", /L2 index: 0x2/);
});

Deno.test("bad input: a compressed stream too short for the cluster is refused", async () => {
  const position = l2EntryPosition(V3, 256 * KiB);
  const [hi, lo] = [readU32(V3, position), readU32(V3, position + 4)];
  const { offset } = compressedLocation(hi, lo, 16);
  // A complete stream holding 10 bytes: stored block, BFINAL, LEN 10.
  const damaged = V3.slice();
  damaged.set([0x01, 10, 0, 0xf5, 0xff, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10], offset);
  const image = await open(damaged);
  await rejects(read(image, 256 * KiB, 512), "BAD_COMPRESSED_DATA", /inflates to 10 bytes/);
  await assertFilled(image, 192 * KiB, 64 * KiB, 0x33);
});

Deno.test("bad input: extended L2 entries with an invalid bitmap fail that cluster only", async () => {
  const position = l2EntryPosition(EXTENDED, 0);
  // Subcluster 0 both allocated and reading as zero.
  const both = withU32(EXTENDED, position + 8, 1);
  const image = await open(both);
  await rejects(read(image, 0, 512), "CORRUPT_METADATA", /Invalid cluster entry.*L2 index: 0x0/);
  await assertFilled(image, 64 * KiB, 64 * KiB, 0x22);
  await rejects(mapImage(image), "CORRUPT_METADATA", /Invalid cluster entry/);

  // Cluster 2 has no host offset but claims allocated subclusters.
  const unallocated = withU32(EXTENDED, position + 2 * 16 + 12, 0x10);
  const second = await open(unallocated);
  await rejects(read(second, 128 * KiB, 512), "CORRUPT_METADATA", /L2 index: 0x2/);
  await assertFilled(second, 0, 4 * KiB, 0x11);
});

// ---------------------------------------------------------------- backing chains

Deno.test("bad input: a missing backing file is BACKING_MISSING naming the path", async () => {
  await withTempDir(async (tmp) => {
    await createQcow2(tmp, "base.qcow2", { size: "1M" });
    await createQcow2(tmp, "overlay.qcow2", { size: "1M", backing: "base.qcow2" });
    await Deno.remove(`${tmp}/base.qcow2`);
    const error = await rejects(openImage(`${tmp}/overlay.qcow2`), "BACKING_MISSING", /no such/);
    assert.ok(error.message.includes(`${tmp}/base.qcow2`), error.message);
    // Not opening the chain still works.
    const alone = await openImage(`${tmp}/overlay.qcow2`, { backing: false });
    await alone.close();
  });
});

Deno.test("bad input: a missing backing device from a resolver is BACKING_MISSING", async () => {
  await withTempDir(async (tmp) => {
    const overlay = await createQcow2(tmp, "overlay.qcow2", { size: "1M", backing: "gone.qcow2" });
    const error = await rejects(
      openImage(MemoryDevice.from(overlay), { resolveBacking: (name) => `${tmp}/${name}` }),
      "BACKING_MISSING",
      /gone\.qcow2/,
    );
    assert.ok(error.message.includes(`${tmp}/gone.qcow2`));
  });
});

Deno.test("bad input: a backing chain that loops is BACKING_LOOP", async () => {
  await withTempDir(async (tmp) => {
    await createQcow2(tmp, "a.qcow2", { size: "1M", backing: "b.qcow2" });
    await createQcow2(tmp, "b.qcow2", { size: "1M", backing: "a.qcow2" });
    await createQcow2(tmp, "self.qcow2", { size: "1M", backing: "a.qcow2" });
    await rebaseUnsafe(tmp, "self.qcow2", "self.qcow2");
    await rejects(openImage(`${tmp}/a.qcow2`), "BACKING_LOOP", /loops.*a\.qcow2/);
    await rejects(openImage(`${tmp}/self.qcow2`), "BACKING_LOOP", /self\.qcow2/);
    // qemu-img refuses the same chain.
    const info = await qemuImg(tmp, ["info", "--backing-chain", "a.qcow2"]);
    assert.equal(info.success, false);
  });
});

Deno.test("bad input: a loop among in-memory images is BACKING_LOOP", async () => {
  await withTempDir(async (tmp) => {
    const a = await createQcow2(tmp, "a.qcow2", { size: "1M", backing: "b.qcow2" });
    const b = await createQcow2(tmp, "b.qcow2", { size: "1M", backing: "a.qcow2" });
    const devices: Record<string, MemoryDevice> = {
      "a.qcow2": MemoryDevice.from(a, { name: "a.qcow2" }),
      "b.qcow2": MemoryDevice.from(b, { name: "b.qcow2" }),
    };
    await rejects(
      openImage(devices["a.qcow2"]!, { resolveBacking: (name) => devices[name]! }),
      "BACKING_LOOP",
      /a\.qcow2 appears twice/,
    );
  });
});

// ---------------------------------------------------------------- truncation

/** Where each region of the V3 image starts (qemu-img's fixed layout for 64 KiB clusters). */
const V3_LAYOUT = {
  refcountTable: 0x10000,
  refcountBlock: 0x20000,
  l1: 0x30000,
  l2: 0x40000,
  data: 0x50000,
  compressed: 0x60000,
  lastData: 0x70000,
};

Deno.test("bad input: the V3 image has the layout the truncation tests assume", () => {
  const { header, l2Offsets } = layout(V3);
  assert.equal(header.refcountTableOffset, V3_LAYOUT.refcountTable);
  assert.equal(header.l1TableOffset, V3_LAYOUT.l1);
  assert.deepEqual(l2Offsets, [V3_LAYOUT.l2]);
  assert.equal(V3.length, 0x80000);
  const position = l2EntryPosition(V3, 192 * KiB);
  const { offset } = compressedLocation(readU32(V3, position), readU32(V3, position + 4), 16);
  assert.equal(offset, V3_LAYOUT.compressed);
});

Deno.test("bad input: files cut inside the header are refused with what is missing", async () => {
  const cases: [number, QcowErrorCode, RegExp][] = [
    [0, "BAD_MAGIC", /too short \(0 bytes\)/],
    [3, "BAD_MAGIC", /too short \(3 bytes\)/],
    [4, "BAD_HEADER", /too short for a qcow2 header \(4 bytes\)/],
    [8, "BAD_HEADER", /too short for a qcow2 header/],
    [71, "BAD_HEADER", /too short for a qcow2 header/],
    [72, "BAD_HEADER", /too short for a version 3 header/],
    [103, "BAD_HEADER", /too short for a version 3 header/],
    [104, "BAD_HEADER", /header extends past the end of the file/],
    [111, "BAD_HEADER", /header extends past the end of the file/],
  ];
  for (const [length, code, pattern] of cases) {
    await openFails(V3.subarray(0, length), code, pattern, { format: "qcow2" });
  }
  await openFails(V2.subarray(0, 71), "BAD_HEADER", /too short for a qcow2 header/);
});

Deno.test("bad input: files cut inside the header extensions are refused as BAD_EXTENSION", async () => {
  for (const length of [112, 115, 120, 200, FIRST_EXTENSION + 8 + readU32(V3, 116) - 1]) {
    await openFails(V3.subarray(0, length), "BAD_EXTENSION", /past the end of the file/);
  }
});

Deno.test("bad input: files cut before the end of a table are refused as BAD_TABLE", async () => {
  const cases: [number, RegExp][] = [
    [4096, /Reference count table.*past the end/],
    [V3_LAYOUT.refcountTable, /Reference count table.*past the end/],
    [V3_LAYOUT.refcountTable + 0x8000, /Reference count table.*past the end/],
    [V3_LAYOUT.refcountBlock + 0x100, /L1 table.*past the end/],
    [V3_LAYOUT.l1, /L1 table.*past the end/],
    [V3_LAYOUT.l1 + 7, /L1 table.*past the end/],
  ];
  for (const [length, pattern] of cases) {
    await openFails(V3.subarray(0, length), "BAD_TABLE", pattern);
  }
});

Deno.test("bad input: files cut inside an L2 table fail the reads it maps", async () => {
  for (const length of [V3_LAYOUT.l1 + 8, V3_LAYOUT.l2, V3_LAYOUT.l2 + 0x8000]) {
    const image = await open(V3.subarray(0, length));
    await rejects(read(image, 0, 512), "CORRUPT_METADATA", /L2 table offset 0x40000.*past the end/);
  }
});

Deno.test("bad input: files cut inside data read zeros past the end, as in QEMU", async () => {
  const image = await open(V3.subarray(0, V3_LAYOUT.lastData + 0x8000));
  await assertFilled(image, 320 * KiB, 32 * KiB, 0x55);
  await assertFilled(image, 352 * KiB, 32 * KiB, 0);
  await assertFilled(image, 0, 64 * KiB, 0x11);
});

Deno.test("bad input: files cut inside compressed data fail those clusters only", async () => {
  const image = await open(V3.subarray(0, V3_LAYOUT.compressed));
  await rejects(read(image, 192 * KiB, 512), "BAD_COMPRESSED_DATA", /0x60000.*past the end/);
  await rejects(read(image, 256 * KiB, 512), "BAD_COMPRESSED_DATA", /past the end/);
  await assertFilled(image, 0, 64 * KiB, 0x11);
  await assertFilled(image, 320 * KiB, 64 * KiB, 0);
});

Deno.test("bad input: a cut compressed stream reads on as zeros, as in QEMU", async () => {
  // QEMU reads what lies past the end of the file as zeros. Twenty bytes of the first stream and
  // zeros happen to decode to a full cluster of 0x33; the second stream is gone entirely.
  const cut = V3.subarray(0, V3_LAYOUT.compressed + 20);
  assert.equal(await qemuReads(cut, "read -P 0x33 192k 64k"), true);
  assert.equal(await qemuReads(cut, "read 256k 512"), false);
  const image = await open(cut);
  await assertFilled(image, 192 * KiB, 64 * KiB, 0x33);
  await rejects(read(image, 256 * KiB, 512), "BAD_COMPRESSED_DATA", /past the end|deflate/);
});

// ---------------------------------------------------------------- what QEMU accepts

Deno.test("bad input: oddities qemu-img accepts open here too", async () => {
  await withTempDir(async (tmp) => {
    const oddities: [string, Uint8Array][] = [
      // A backing file name overlapping the header; it reads as an empty name.
      [
        "overlap",
        withU32(withU64Number(V3, FIELD.backingFileOffset, 0x60), FIELD.backingFileSize, 3),
      ],
      // Two backing format extensions: the second wins.
      ["twice", withU32(withU32(V3, FIRST_EXTENSION, 0xe2792aca), FIRST_EXTENSION + 4, 3)],
      // An extension that fills the rest of the first cluster exactly.
      ["full", withU32(V3, FIRST_EXTENSION + 4, 0x10000 - FIRST_EXTENSION - 8)],
      // A snapshot table past the end of the file: its entries read as zeros.
      [
        "snapshots",
        withU64Number(withU32(V3, FIELD.nbSnapshots, 3), FIELD.snapshotsOffset, 0x700000),
      ],
      // A data file name without the incompatible bit: the data stays in the image.
      ["named", withU32(withU32(V3, FIRST_EXTENSION, 0x44415441), FIRST_EXTENSION + 4, 8)],
    ];
    for (const [name, bytes] of oddities) {
      await Deno.writeFile(`${tmp}/${name}.qcow2`, bytes);
      const info = await qemuImg(tmp, ["info", "-f", "qcow2", `${name}.qcow2`]);
      assert.ok(info.success, `qemu-img refuses ${name}: ${info.stderr}`);
      const image = await open(bytes);
      await assertFilled(image, 0, 64 * KiB, 0x11);
    }
  });
});

Deno.test("bad input: a size that is not a whole number of sectors is rounded down, as in QEMU", async () => {
  await withTempDir(async (tmp) => {
    const odd = withU64Number(V3, FIELD.size, 1024 * 1024 + 100);
    await Deno.writeFile(`${tmp}/odd.qcow2`, odd);
    const info = await qemuImg(tmp, ["info", "--output=json", "odd.qcow2"]);
    assert.equal(JSON.parse(info.stdout)["virtual-size"], 1024 * 1024);
    const image = await open(odd);
    assert.equal(image.size, 1024 * 1024);
    assert.equal(image.info()["virtual-size"], 1024 * 1024);
    await rejects(read(image, 1024 * 1024, 100), "OUT_OF_RANGE", /past the end/);
    const tiny = await open(withU64Number(V3, FIELD.size, 511));
    assert.equal(tiny.size, 0);
  });
});

Deno.test("bad input: every damaged image still closes cleanly after a failed read", async () => {
  const position = l2EntryPosition(EXTENDED, 0);
  const image = await open(withU32(EXTENDED, position + 8, 1));
  await rejects(read(image, 0, 512), "CORRUPT_METADATA", /Invalid/);
  await image.close();
  await rejects(read(image, 0, 512), "CLOSED", /closed/);
});
