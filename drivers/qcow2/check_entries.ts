/**
 * How a consistency check reads table entries: QEMU's cluster types, reserved bits and the way
 * its messages print 64-bit values. Entries are two unsigned 32-bit words (`hi`, `lo`).
 *
 * @module
 */

/** No host cluster. */
export const CLUSTER_UNALLOCATED = 0;
/** Reads as zeros, no host cluster. */
export const CLUSTER_ZERO_PLAIN = 1;
/** Reads as zeros, with a host cluster kept allocated. */
export const CLUSTER_ZERO_ALLOC = 2;
/** Data in a host cluster. */
export const CLUSTER_NORMAL = 3;
/** Compressed data at a byte offset. */
export const CLUSTER_COMPRESSED = 4;

/** How an image stores its L2 entries, as far as classifying them goes. */
export interface EntryFormat {
  /** 128-bit entries with subcluster bitmaps. */
  subclusters: boolean;
  /** Guest data lives in an external data file. */
  dataFile: boolean;
}

/**
 * The type QEMU gives an L2 entry (its first 64 bits): compressed first, then the zero flag
 * (ignored with subclusters), then whether bits 9..55 hold an offset. With an external data file,
 * offset 0 with COPIED set is a normal cluster.
 *
 * @returns One of the `CLUSTER_*` constants.
 */
export function clusterType(hi: number, lo: number, format: EntryFormat): number {
  if ((hi & 0x40000000) !== 0) return CLUSTER_COMPRESSED;
  const hasOffset = (hi & 0x00ffffff) !== 0 || (lo & 0xfffffe00) !== 0;
  if ((lo & 1) !== 0 && !format.subclusters) {
    return hasOffset ? CLUSTER_ZERO_ALLOC : CLUSTER_ZERO_PLAIN;
  }
  if (!hasOffset) {
    return format.dataFile && (hi & 0x80000000) !== 0 ? CLUSTER_NORMAL : CLUSTER_UNALLOCATED;
  }
  return CLUSTER_NORMAL;
}

/** Where a compressed cluster's data lies, exactly even past 2^53. */
export interface CompressedRange {
  /** Byte offset of the data (inexact past 2^53). */
  offset: number;
  /** The offset's high word; its low word is the entry's. */
  offsetHi: number;
  /** Bytes the descriptor covers. */
  length: number;
}

/**
 * Decodes a compressed cluster descriptor (x = 70 - cluster_bits: the offset in bits 0..x-1, the
 * count of additional 512-byte sectors in bits x..61), keeping the offset's words exact.
 */
export function compressedRange(hi: number, lo: number, clusterBits: number): CompressedRange {
  const shift = 70 - clusterBits - 32;
  const body = hi & 0x3fffffff;
  const offsetHi = body & ((1 << shift) - 1);
  const sectors = body >>> shift;
  return {
    offset: offsetHi * 2 ** 32 + (lo >>> 0),
    offsetHi,
    length: (sectors + 1) * 512 - (lo & 511),
  };
}

/** Whether a standard (uncompressed) L2 entry sets reserved bits 1..8 or 56..61. */
export function l2ReservedBits(hi: number, lo: number): boolean {
  return (hi & 0x3f000000) !== 0 || (lo & 0x1fe) !== 0;
}

/** Whether a refcount table entry sets reserved bits 0..8. */
export function reftableReservedBits(lo: number): boolean {
  return (lo & 0x1ff) !== 0;
}

/**
 * The byte offset of `offset` inside its cluster, computed from the low word alone so offsets too
 * large to be exact as numbers still give the exact answer (clusters are at most 2 MiB).
 */
export function offsetInCluster(lo: number, clusterSize: number): number {
  return lo & (clusterSize - 1);
}

/** A 64-bit value in hexadecimal without prefix, as C's `%" PRIx64 "` prints it. */
export function hex64(hi: number, lo: number): string {
  if (hi === 0) return (lo >>> 0).toString(16);
  return (hi >>> 0).toString(16) + (lo >>> 0).toString(16).padStart(8, "0");
}

/** A non-negative number in hexadecimal, as C's `%#x` prints it: "0x" before it unless it is 0. */
export function hexAlt(value: number): string {
  return value === 0 ? "0" : `0x${value.toString(16)}`;
}
