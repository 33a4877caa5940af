/**
 * The qcow2 header and its extensions: parsing and validation, without I/O.
 *
 * @module
 */

import { readString, readU32, readU64, readU64Big } from "../../core/bytes.ts";
import { QcowError } from "../../core/errors.ts";

/** `QFI\xfb`, the first four bytes of every qcow2 (and qcow) image. */
export const QCOW_MAGIC = 0x514649fb;
/** Smallest and largest cluster_bits QEMU accepts. */
export const MIN_CLUSTER_BITS = 9;
/** Largest cluster_bits: 2 MiB clusters. */
export const MAX_CLUSTER_BITS = 21;
/** QEMU refuses active L1 tables above 32 MiB. */
export const MAX_L1_BYTES = 32 * 1024 * 1024;
/** QEMU refuses refcount tables above 8 MiB. */
export const MAX_REFTABLE_BYTES = 8 * 1024 * 1024;
/** QEMU refuses more snapshots than this. */
export const MAX_SNAPSHOTS = 65536;
/** Longest backing file name QEMU accepts. */
export const MAX_BACKING_NAME = 1023;
/** Offsets and sizes must stay below this to be exact in a JavaScript number. */
export const MAX_SAFE_OFFSET = 2 ** 53;

/** Incompatible feature bits. */
export const INCOMPAT_DIRTY = 1n << 0n;
/** The image is marked corrupt. */
export const INCOMPAT_CORRUPT = 1n << 1n;
/** Guest data lives in an external file. */
export const INCOMPAT_DATA_FILE = 1n << 2n;
/** The compression_type header field is in use. */
export const INCOMPAT_COMPRESSION = 1n << 3n;
/** L2 entries are 128 bits wide with subcluster bitmaps. */
export const INCOMPAT_EXTENDED_L2 = 1n << 4n;
/** Every incompatible bit this library knows. */
export const INCOMPAT_KNOWN = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE |
  INCOMPAT_COMPRESSION | INCOMPAT_EXTENDED_L2;
/** Compatible feature bit: refcount updates may be deferred while the image is dirty. */
export const COMPAT_LAZY_REFCOUNTS = 1n << 0n;
/** Autoclear feature bit: the external data file is a valid raw image by itself. */
export const AUTOCLEAR_DATA_FILE_RAW = 1n << 1n;

/** Header extension types. */
export const EXT_END = 0x00000000;
/** Backing file format name. */
export const EXT_BACKING_FORMAT = 0xe2792aca;
/** Feature name table. */
export const EXT_FEATURE_TABLE = 0x6803f857;
/** Persistent dirty bitmaps. */
export const EXT_BITMAPS = 0x23852875;
/** Full disk encryption header pointer. */
export const EXT_CRYPTO = 0x0537be77;
/** External data file name. */
export const EXT_DATA_FILE = 0x44415441;

/** One header extension as stored. */
export interface Qcow2Extension {
  /** The extension's type magic. */
  type: number;
  /** Its payload (without padding). */
  data: Uint8Array;
}

/** One entry of the feature name table. */
export interface FeatureName {
  /** 0 incompatible, 1 compatible, 2 autoclear. */
  type: number;
  /** Bit number within that feature word. */
  bit: number;
  /** Human-readable name. */
  name: string;
}

/** The bitmaps extension. */
export interface BitmapsExtension {
  /** Number of bitmaps in the directory. */
  count: number;
  /** Size of the bitmap directory in bytes. */
  directorySize: number;
  /** Offset of the bitmap directory. */
  directoryOffset: number;
}

/** Every field of a qcow2 header, its extensions, and the backing file name. */
export interface Qcow2Header {
  /** 2 or 3. */
  version: number;
  /** Offset of the backing file name, 0 for none. */
  backingFileOffset: number;
  /** Length of the backing file name. */
  backingFileSize: number;
  /** log2 of the cluster size. */
  clusterBits: number;
  /** Virtual size in bytes. */
  size: number;
  /** 0 none, 1 AES, 2 LUKS. */
  cryptMethod: number;
  /** Entries in the active L1 table. */
  l1Size: number;
  /** Offset of the active L1 table. */
  l1TableOffset: number;
  /** Offset of the refcount table. */
  refcountTableOffset: number;
  /** Clusters of the refcount table. */
  refcountTableClusters: number;
  /** Number of internal snapshots. */
  nbSnapshots: number;
  /** Offset of the snapshot table. */
  snapshotsOffset: number;
  /** Incompatible feature bits. */
  incompatibleFeatures: bigint;
  /** Compatible feature bits. */
  compatibleFeatures: bigint;
  /** Autoclear feature bits. */
  autoclearFeatures: bigint;
  /** log2 of the refcount width in bits. */
  refcountOrder: number;
  /** Header length in bytes (72 for v2). */
  headerLength: number;
  /** 0 zlib, 1 zstd. */
  compressionType: number;
  /** Header bytes past the fields this library knows, kept for rewriting. */
  unknownHeaderBytes: Uint8Array;
  /** Every extension in stored order, known or not. */
  extensions: Qcow2Extension[];
  /** Backing file name, if any. */
  backingFile?: string;
  /** Backing format from its extension, if any. */
  backingFormat?: string;
  /** Feature name table entries. */
  featureNames: FeatureName[];
  /** The bitmaps extension, if present. */
  bitmaps?: BitmapsExtension;
  /** The crypto header pointer, if present. */
  crypto?: { offset: number; length: number };
  /** The external data file name, if present. */
  dataFile?: string;
}

function bad(message: string): QcowError {
  return new QcowError("BAD_HEADER", message);
}

/**
 * Reads the fixed fields far enough to know the cluster size, so the caller can read the whole
 * first cluster. Fails on bad magic or version.
 *
 * @param head At least the first 104 bytes of the image (fewer if the file is shorter).
 * @returns log2 of the cluster size.
 */
export function peekClusterBits(head: Uint8Array): number {
  if (head.length < 4) {
    throw new QcowError(
      "BAD_MAGIC",
      `Image is too short (${head.length} bytes) to hold the qcow2 magic`,
    );
  }
  if (readU32(head, 0) !== QCOW_MAGIC) {
    throw new QcowError("BAD_MAGIC", "Image is not in qcow2 format (bad magic)");
  }
  if (head.length < 72) throw bad(`Image is too short for a qcow2 header (${head.length} bytes)`);
  const version = readU32(head, 4);
  if (version !== 2 && version !== 3) {
    throw new QcowError("UNSUPPORTED_VERSION", `Unsupported qcow2 version ${version}`);
  }
  const clusterBits = readU32(head, 20);
  if (clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) {
    throw bad(
      `Unsupported cluster size: cluster_bits is ${clusterBits}, must be ${MIN_CLUSTER_BITS}..${MAX_CLUSTER_BITS}`,
    );
  }
  return clusterBits;
}

/**
 * Parses and checks a qcow2 header with its extensions and backing file name. The checks here
 * need only the first cluster; {@linkcode validateTables} checks offsets against the file size.
 *
 * @param first The first cluster of the image, or the whole file if it is shorter.
 * @returns The parsed header.
 */
export function parseQcow2Header(first: Uint8Array): Qcow2Header {
  const clusterBits = peekClusterBits(first);
  const clusterSize = 2 ** clusterBits;
  const version = readU32(first, 4);
  const v3 = version === 3;
  if (v3 && first.length < 104) throw bad("Image is too short for a version 3 header");
  const headerLength = v3 ? readU32(first, 100) : 72;
  if (v3) {
    if (headerLength < 104) throw bad(`qcow2 header too short (header_length ${headerLength})`);
    if (headerLength % 8 !== 0) throw bad(`header_length ${headerLength} is not a multiple of 8`);
    if (headerLength > clusterSize) throw bad("qcow2 header exceeds cluster size");
    if (headerLength > first.length) throw bad("qcow2 header extends past the end of the file");
  }
  const refcountOrder = v3 ? readU32(first, 96) : 4;
  if (refcountOrder > 6) {
    throw bad(`Reference count entry width too large (order ${refcountOrder})`);
  }

  const header: Qcow2Header = {
    version,
    backingFileOffset: readU64(first, 8),
    backingFileSize: readU32(first, 16),
    clusterBits,
    size: readU64(first, 24),
    cryptMethod: readU32(first, 32),
    l1Size: readU32(first, 36),
    l1TableOffset: readU64(first, 40),
    refcountTableOffset: readU64(first, 48),
    refcountTableClusters: readU32(first, 56),
    nbSnapshots: readU32(first, 60),
    snapshotsOffset: readU64(first, 64),
    incompatibleFeatures: v3 ? readU64Big(first, 72) : 0n,
    compatibleFeatures: v3 ? readU64Big(first, 80) : 0n,
    autoclearFeatures: v3 ? readU64Big(first, 88) : 0n,
    refcountOrder,
    headerLength,
    compressionType: v3 && headerLength > 104 ? first[104]! : 0,
    unknownHeaderBytes: v3 && headerLength > 112
      ? first.slice(112, headerLength)
      : new Uint8Array(0),
    extensions: [],
    featureNames: [],
  };

  if (header.size >= MAX_SAFE_OFFSET) {
    throw new QcowError(
      "TOO_LARGE",
      `Virtual size ${header.size} is beyond 2^53 bytes, which this library cannot address`,
    );
  }
  if (header.cryptMethod > 2) throw bad(`Unsupported encryption method ${header.cryptMethod}`);
  if (header.compressionType > 1) {
    throw bad(`Unknown compression type ${header.compressionType}`);
  }
  const compressionBit = (header.incompatibleFeatures & INCOMPAT_COMPRESSION) !== 0n;
  if (header.compressionType !== 0 && !compressionBit) {
    throw bad("Compression type is not zlib but the compression type feature bit is clear");
  }
  if (header.compressionType === 0 && compressionBit) {
    throw bad("Compression type feature bit is set with the default (zlib) compression type");
  }
  if ((header.incompatibleFeatures & INCOMPAT_EXTENDED_L2) !== 0n && clusterBits < 14) {
    throw bad("Extended L2 entries need clusters of at least 16 KiB");
  }

  // Extensions run from the end of the header to the backing file name or the cluster's end. A
  // name that overlaps the header leaves no room for extensions; QEMU accepts that, so do we.
  let end = clusterSize;
  if (header.backingFileOffset !== 0) {
    const offset = header.backingFileOffset;
    const length = header.backingFileSize;
    if (length > MAX_BACKING_NAME) throw bad(`Backing file name too long (${length} bytes)`);
    if (offset + length > clusterSize) {
      throw bad(
        `Invalid backing file offset ${offset}: the name (${length} bytes) does not lie inside the first cluster`,
      );
    }
    if (offset + length > first.length) {
      throw bad(
        `The backing file name at ${offset} (${length} bytes) runs past the end of the file (${first.length} bytes)`,
      );
    }
    end = offset;
    header.backingFile = readString(first.subarray(offset, offset + length));
  }
  parseExtensions(first, headerLength, end, header);
  // Cluster sizes are at most 2^21, so the low word alone decides alignment, exactly, even for
  // offsets too large to be exact as numbers.
  for (const [what, at] of TABLE_OFFSET_FIELDS) {
    if (readU32(first, at + 4) % clusterSize !== 0) {
      const hi = readU32(first, at).toString(16);
      const lo = readU32(first, at + 4).toString(16);
      const value = hi === "0" ? lo : `${hi}${lo.padStart(8, "0")}`;
      throw new QcowError("BAD_TABLE", `${what} offset 0x${value} is not cluster aligned`);
    }
  }
  return header;
}

const TABLE_OFFSET_FIELDS: [string, number][] = [
  ["L1 table", 40],
  ["Reference count table", 48],
  ["Snapshot table", 64],
];

function badExtension(message: string): QcowError {
  return new QcowError("BAD_EXTENSION", message);
}

/**
 * Reads extensions from `start` up to `end` (the backing file name or the end of the first
 * cluster). Like QEMU, even the end marker's length must fit, and a later extension of a known
 * type replaces an earlier one.
 */
function parseExtensions(first: Uint8Array, start: number, end: number, header: Qcow2Header): void {
  const limit = end < 2 ** header.clusterBits ? "the backing file name" : "the first cluster";
  let at = start;
  while (at < end) {
    if (at + 8 > end) {
      throw badExtension(`Header extension at ${at} runs into ${limit}`);
    }
    if (at + 8 > first.length) {
      throw badExtension(
        `Header extension at ${at} lies past the end of the file (${first.length} bytes)`,
      );
    }
    const type = readU32(first, at);
    const length = readU32(first, at + 4);
    const name = `0x${type.toString(16)}`;
    at += 8;
    if (length > end - at) {
      throw badExtension(
        `Header extension ${name} is too large (${length} bytes): it runs into ${limit}`,
      );
    }
    if (length > first.length - at) {
      throw badExtension(
        `Header extension ${name} (${length} bytes) runs past the end of the file (${first.length} bytes)`,
      );
    }
    if (type === EXT_END) return;
    const data = first.slice(at, at + length);
    at += Math.ceil(length / 8) * 8;
    header.extensions.push({ type, data });
    decodeExtension(type, data, header);
  }
}

function decodeExtension(type: number, data: Uint8Array, header: Qcow2Header): void {
  const hex = `0x${type.toString(16)}`;
  switch (type) {
    case EXT_BACKING_FORMAT:
      if (data.length > 1023) {
        throw new QcowError("BAD_EXTENSION", `Backing format extension too long (${data.length})`);
      }
      header.backingFormat = readString(data);
      break;
    case EXT_FEATURE_TABLE:
      for (let i = 0; i + 48 <= data.length; i += 48) {
        header.featureNames.push({
          type: data[i]!,
          bit: data[i + 1]!,
          name: readString(data.subarray(i + 2, i + 48)),
        });
      }
      break;
    case EXT_BITMAPS:
      if (data.length !== 24) {
        throw new QcowError("BAD_EXTENSION", `Bitmaps extension ${hex} has length ${data.length}`);
      }
      header.bitmaps = {
        count: readU32(data, 0),
        directorySize: readU64(data, 8),
        directoryOffset: readU64(data, 16),
      };
      break;
    case EXT_CRYPTO:
      if (data.length !== 16) {
        throw new QcowError("BAD_EXTENSION", `Crypto extension has length ${data.length}`);
      }
      header.crypto = { offset: readU64(data, 0), length: readU64(data, 8) };
      break;
    case EXT_DATA_FILE:
      header.dataFile = readString(data);
      break;
  }
}

/** Names the incompatible feature bits in `mask`, using the image's feature table. */
export function describeFeatures(header: Qcow2Header, mask: bigint, type = 0): string {
  const names: string[] = [];
  for (let bit = 0; bit < 64; bit++) {
    if ((mask & (1n << BigInt(bit))) === 0n) continue;
    const entry = header.featureNames.find((f) => f.type === type && f.bit === bit);
    names.push(entry && entry.name ? entry.name : `Unknown incompatible feature: bit ${bit}`);
  }
  return names.join(", ");
}

/** Ceiling division of non-negative numbers. */
export function divCeil(a: number, b: number): number {
  return Math.ceil(a / b);
}

/** Entries in one L2 table. */
export function l2Entries(clusterBits: number, extendedL2: boolean): number {
  return 2 ** clusterBits / (extendedL2 ? 16 : 8);
}

/** L1 entries needed to map `size` virtual bytes. */
export function sizeToL1(size: number, clusterBits: number, extendedL2: boolean): number {
  return divCeil(size, 2 ** clusterBits * l2Entries(clusterBits, extendedL2));
}

/**
 * Checks where a table lies: cluster aligned always (QEMU checks even empty tables), and, when
 * `mustFit`, inside the file.
 */
function checkTable(
  what: string,
  offset: number,
  bytes: number,
  clusterSize: number,
  fileSize: number,
  mustFit: boolean,
): void {
  // Offsets past 2^53 are rounded, but never from aligned to unaligned; parseQcow2Header has
  // checked the exact low bits.
  if (offset % clusterSize !== 0) {
    throw new QcowError(
      "BAD_TABLE",
      `${what} offset 0x${offset.toString(16)} is not cluster aligned`,
    );
  }
  if (offset + bytes >= 2 ** 63) {
    throw new QcowError("BAD_TABLE", `${what} offset 0x${offset.toString(16)} is invalid`);
  }
  if (mustFit && offset + bytes > fileSize) {
    throw new QcowError(
      "BAD_TABLE",
      `${what} at 0x${
        offset.toString(16)
      } (${bytes} bytes) lies past the end of the file (${fileSize} bytes)`,
    );
  }
}

/**
 * Checks the header's tables against QEMU's limits and the file's size: the L1 and refcount tables
 * must be aligned, inside the file, and no larger than QEMU allows; the snapshot table must be
 * aligned and addressable. (QEMU reads bytes past the end of the file as zeros; for the snapshot
 * table this library does the same, see `checkSnapshotTable`.)
 *
 * @param header A parsed header.
 * @param fileSize Size of the image file in bytes.
 */
export function validateTables(header: Qcow2Header, fileSize: number): void {
  const clusterSize = 2 ** header.clusterBits;
  const extended = (header.incompatibleFeatures & INCOMPAT_EXTENDED_L2) !== 0n;

  if (header.refcountTableClusters === 0) {
    throw new QcowError("BAD_TABLE", "Image does not contain a reference count table");
  }
  const reftableBytes = header.refcountTableClusters * clusterSize;
  if (reftableBytes > MAX_REFTABLE_BYTES) {
    throw new QcowError("BAD_TABLE", `Reference count table too large (${reftableBytes} bytes)`);
  }
  checkTable(
    "Reference count table",
    header.refcountTableOffset,
    reftableBytes,
    clusterSize,
    fileSize,
    true,
  );

  if (header.l1Size > MAX_L1_BYTES / 8) {
    throw new QcowError("BAD_TABLE", `Active L1 table too large (${header.l1Size} entries)`);
  }
  const needed = sizeToL1(header.size, header.clusterBits, extended);
  if (header.l1Size < needed) {
    throw new QcowError(
      "BAD_TABLE",
      `L1 table is too small: ${header.l1Size} entries for a size that needs ${needed}`,
    );
  }
  const l1Bytes = header.l1Size * 8;
  checkTable("L1 table", header.l1TableOffset, l1Bytes, clusterSize, fileSize, l1Bytes > 0);

  if (header.nbSnapshots > MAX_SNAPSHOTS) {
    throw new QcowError("BAD_TABLE", `Snapshot table too large (${header.nbSnapshots} snapshots)`);
  }
  checkTable("Snapshot table", header.snapshotsOffset, 0, clusterSize, fileSize, false);
  if (header.nbSnapshots > 0 && header.snapshotsOffset >= MAX_SAFE_OFFSET) {
    throw new QcowError(
      "BAD_TABLE",
      `Snapshot table offset 0x${
        header.snapshotsOffset.toString(16)
      } is beyond 2^53, which this library cannot address`,
    );
  }
}
