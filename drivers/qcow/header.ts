/**
 * The qcow (version 1) header: parsing, checking and encoding, without I/O.
 *
 * @module
 */

import { readString, readU32, readU64, writeU32, writeU64 } from "../../core/bytes.ts";
import { QcowError } from "../../core/errors.ts";
import { l1EntriesFor, MAX_EXACT_OFFSET } from "./entries.ts";

/** "QFI\xfb", shared with qcow2. */
export const QCOW_MAGIC = 0x514649fb;
/** Bytes of the fixed header. */
export const QCOW_HEADER_SIZE = 48;
/** Smallest and largest cluster_bits QEMU accepts. */
export const MIN_QCOW_CLUSTER_BITS = 9;
/** Largest cluster_bits QEMU accepts. */
export const MAX_QCOW_CLUSTER_BITS = 16;
/** Smallest l2_bits QEMU accepts (a 512-byte L2 table). */
export const MIN_QCOW_L2_BITS = 6;
/** Largest l2_bits QEMU accepts (a 64 KiB L2 table). */
export const MAX_QCOW_L2_BITS = 13;
/** Longest backing file name QEMU reads. */
export const MAX_QCOW_BACKING_NAME = 1023;
/** No encryption. */
export const QCOW_CRYPT_NONE = 0;
/** Legacy AES-128-CBC. */
export const QCOW_CRYPT_AES = 1;
/** QEMU refuses an L1 table of more than INT_MAX bytes; this library keeps it to 32 MiB. */
export const MAX_QCOW_L1_BYTES = 32 * 1024 * 1024;

/** The fields of a qcow header. */
export interface QcowHeader {
  /** Where the backing file name lies (0: none). */
  backingFileOffset: number;
  /** Bytes of the backing file name. */
  backingFileSize: number;
  /** Modification time QEMU once stored (unused, kept as read). */
  mtime: number;
  /** Virtual size in bytes as stored (QEMU uses whole 512-byte sectors of it). */
  size: number;
  /** log2 of the cluster size, 9..16. */
  clusterBits: number;
  /** log2 of the entries in an L2 table, 6..13. */
  l2Bits: number;
  /** 0 none, 1 AES. */
  cryptMethod: number;
  /** Where the L1 table lies. */
  l1TableOffset: number;
}

function bad(message: string): QcowError {
  return new QcowError("BAD_HEADER", message);
}

/**
 * Parses the fixed header and checks every field that needs no file size: magic, version,
 * cluster and L2 sizes, the virtual size and the encryption method.
 *
 * @param head The first 48 bytes of the image (fewer if the file is shorter).
 * @returns The header.
 * @throws {QcowError} `BAD_MAGIC`, `UNSUPPORTED_VERSION`, `BAD_HEADER` or `TOO_LARGE`.
 */
export function parseQcowHeader(head: Uint8Array): QcowHeader {
  if (head.length < 8 || readU32(head, 0) !== QCOW_MAGIC) {
    throw new QcowError("BAD_MAGIC", "Image is not in qcow format (bad magic)");
  }
  const version = readU32(head, 4);
  if (version !== 1) {
    throw new QcowError("UNSUPPORTED_VERSION", `Unsupported qcow version ${version}`);
  }
  if (head.length < QCOW_HEADER_SIZE) {
    throw bad(`Image is too short for a qcow header (${head.length} bytes)`);
  }
  const header: QcowHeader = {
    backingFileOffset: readU64(head, 8),
    backingFileSize: readU32(head, 16),
    mtime: readU32(head, 20),
    size: readU64(head, 24),
    clusterBits: head[32]!,
    l2Bits: head[33]!,
    cryptMethod: readU32(head, 36),
    l1TableOffset: readU64(head, 40),
  };
  if (header.size <= 1) throw bad("Image size is too small (must be at least 2 bytes)");
  if (header.size >= MAX_EXACT_OFFSET) {
    throw new QcowError(
      "TOO_LARGE",
      `Virtual size ${header.size} is beyond 2^53 bytes, which this library cannot address`,
    );
  }
  if (header.clusterBits < MIN_QCOW_CLUSTER_BITS || header.clusterBits > MAX_QCOW_CLUSTER_BITS) {
    throw bad(
      `Cluster size must be between 512 and 64k (cluster_bits is ${header.clusterBits}, must be 9..16)`,
    );
  }
  if (header.l2Bits < MIN_QCOW_L2_BITS || header.l2Bits > MAX_QCOW_L2_BITS) {
    throw bad(
      `L2 table size must be between 512 and 64k (l2_bits is ${header.l2Bits}, must be 6..13)`,
    );
  }
  if (header.cryptMethod !== QCOW_CRYPT_NONE && header.cryptMethod !== QCOW_CRYPT_AES) {
    throw bad(`Invalid encryption method ${header.cryptMethod} in qcow header`);
  }
  if (header.l1TableOffset >= MAX_EXACT_OFFSET) {
    throw new QcowError(
      "BAD_TABLE",
      `L1 table offset 0x${header.l1TableOffset.toString(16)} is beyond 2^53`,
    );
  }
  return header;
}

/** Entries of the L1 table a header implies. */
export function qcowL1Entries(header: QcowHeader): number {
  return l1EntriesFor(header.size, header.clusterBits, header.l2Bits);
}

/** The virtual size QEMU exposes: whole 512-byte sectors of the stored size. */
export function qcowVirtualSize(header: QcowHeader): number {
  return Math.floor(header.size / 512) * 512;
}

/**
 * Checks the L1 table and the backing file name against the file's size.
 *
 * @param header A parsed header.
 * @param fileSize Bytes in the image file.
 * @throws {QcowError} `BAD_TABLE` for an L1 table that is too large, overlaps the header or lies
 * past the end of the file; `BAD_HEADER` for a backing file name that is too long or outside the
 * file.
 */
export function validateQcowLayout(header: QcowHeader, fileSize: number): void {
  const l1Bytes = qcowL1Entries(header) * 8;
  if (l1Bytes > MAX_QCOW_L1_BYTES) {
    throw new QcowError("BAD_TABLE", `Image too large: its L1 table would be ${l1Bytes} bytes`);
  }
  if (header.l1TableOffset < QCOW_HEADER_SIZE) {
    throw new QcowError(
      "BAD_TABLE",
      `L1 table offset 0x${header.l1TableOffset.toString(16)} overlaps the header`,
    );
  }
  if (header.l1TableOffset + l1Bytes > fileSize) {
    throw new QcowError(
      "BAD_TABLE",
      `L1 table at 0x${
        header.l1TableOffset.toString(16)
      } (${l1Bytes} bytes) lies past the end of the file (${fileSize} bytes)`,
    );
  }
  if (header.backingFileOffset !== 0) {
    if (header.backingFileSize > MAX_QCOW_BACKING_NAME) throw bad("Backing file name too long");
    if (header.backingFileOffset + header.backingFileSize > fileSize) {
      throw bad(
        `Backing file name at 0x${
          header.backingFileOffset.toString(16)
        } lies past the end of the file`,
      );
    }
  }
}

/** Decodes a backing file name read from the image. */
export function decodeBackingName(bytes: Uint8Array): string {
  return readString(bytes);
}

/**
 * Encodes the 48-byte header.
 *
 * @param header The fields.
 * @returns The bytes.
 */
export function encodeQcowHeader(header: QcowHeader): Uint8Array {
  const out = new Uint8Array(QCOW_HEADER_SIZE);
  writeU32(out, 0, QCOW_MAGIC);
  writeU32(out, 4, 1);
  writeU64(out, 8, header.backingFileOffset);
  writeU32(out, 16, header.backingFileSize);
  writeU32(out, 20, header.mtime);
  writeU64(out, 24, header.size);
  out[32] = header.clusterBits;
  out[33] = header.l2Bits;
  writeU32(out, 36, header.cryptMethod);
  writeU64(out, 40, header.l1TableOffset);
  return out;
}
