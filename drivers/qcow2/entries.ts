/**
 * Decoding of L1 and L2 entries: the pure arithmetic of qcow2 mapping.
 *
 * An entry is handled as two unsigned 32-bit words (`hi`, `lo`) so no BigInt is needed.
 *
 * @module
 */

/** No data in this image: read the backing file, or zeros. */
export const KIND_UNALLOCATED = 0;
/** Reads as zeros (possibly with a preallocated host cluster). */
export const KIND_ZERO = 1;
/** Data at a host offset. */
export const KIND_DATA = 2;
/** A compressed cluster. */
export const KIND_COMPRESSED = 3;
/** A combination of bits that the format forbids. */
export const KIND_INVALID = 4;

/** Bits 9..55 of an entry as a host offset: the whole of `lo` above bit 8 and `hi` below bit 24. */
export function entryOffset(hi: number, lo: number): number {
  return (hi & 0x00ffffff) * 2 ** 32 + ((lo & 0xfffffe00) >>> 0);
}

/** Whether bit 63 (COPIED) is set. */
export function entryCopied(hi: number): boolean {
  return (hi & 0x80000000) !== 0;
}

/** Whether bit 62 (compressed) is set. */
export function entryCompressed(hi: number): boolean {
  return (hi & 0x40000000) !== 0;
}

/** Reserved bits of an L1 entry that must be zero: 0..8 and 56..62. */
export function l1ReservedBits(hi: number, lo: number): boolean {
  return (lo & 0x1ff) !== 0 || (hi & 0x7f000000) !== 0;
}

/**
 * Classifies a standard (64-bit) L2 entry.
 *
 * @returns One of the `KIND_*` constants.
 */
export function standardKind(hi: number, lo: number): number {
  if (entryCompressed(hi)) return KIND_COMPRESSED;
  if ((lo & 1) !== 0) return KIND_ZERO;
  return entryOffset(hi, lo) === 0 ? KIND_UNALLOCATED : KIND_DATA;
}

/**
 * Classifies one subcluster of an extended L2 entry.
 *
 * @param hi High word of the entry's first 64 bits.
 * @param lo Low word of the entry's first 64 bits.
 * @param bitmapHi High word of the subcluster bitmap ("reads as zero" bits).
 * @param bitmapLo Low word of the subcluster bitmap ("allocated" bits).
 * @param sub Subcluster index, 0..31.
 * @returns One of the `KIND_*` constants.
 */
export function subclusterKind(
  hi: number,
  lo: number,
  bitmapHi: number,
  bitmapLo: number,
  sub: number,
): number {
  if (entryCompressed(hi)) return KIND_COMPRESSED;
  const bit = 1 << sub;
  if (entryOffset(hi, lo) !== 0) {
    if ((bitmapHi & bitmapLo) !== 0) return KIND_INVALID;
    if ((bitmapHi & bit) !== 0) return KIND_ZERO;
    return (bitmapLo & bit) !== 0 ? KIND_DATA : KIND_UNALLOCATED;
  }
  if (bitmapLo !== 0) return KIND_INVALID;
  return (bitmapHi & bit) !== 0 ? KIND_ZERO : KIND_UNALLOCATED;
}

/** Where a compressed cluster's data lies. */
export interface CompressedLocation {
  /** Byte offset of the compressed stream in the image file. */
  offset: number;
  /** Bytes to read (may reach past the end of the file, which callers clamp). */
  length: number;
}

/**
 * Decodes a compressed cluster descriptor: with x = 70 - cluster_bits, bits 0..x-1 hold the byte
 * offset and bits x..61 the number of additional 512-byte sectors.
 *
 * @param hi High word of the entry.
 * @param lo Low word of the entry.
 * @param clusterBits log2 of the cluster size.
 * @returns The location of the compressed data.
 */
export function compressedLocation(
  hi: number,
  lo: number,
  clusterBits: number,
): CompressedLocation {
  const shiftHi = 70 - clusterBits - 32; // x - 32; x is 49..61 so this is 17..29
  const body = hi & 0x3fffffff;
  const offsetHi = body & ((1 << shiftHi) - 1);
  const sectors = body >>> shiftHi;
  const offset = offsetHi * 2 ** 32 + lo;
  return { offset, length: (sectors + 1) * 512 - (offset % 512) };
}

/** Bit 63 of an entry's high word: COPIED. */
export const COPIED_HI = 0x80000000;
/** Bit 62 of an entry's high word: compressed. */
export const COMPRESSED_HI = 0x40000000;

/** High word of an entry pointing at `host`, with COPIED set. */
export function hostHi(host: number): number {
  return (COPIED_HI | Math.floor(host / 2 ** 32)) >>> 0;
}

/** Low word of an entry pointing at `host` (bits 9..31 of the offset). */
export function hostLo(host: number): number {
  return (host % 2 ** 32) >>> 0;
}

/**
 * Encodes a compressed cluster descriptor for `length` bytes at byte offset `offset`: the offset in
 * bits 0..x-1 and the count of additional 512-byte sectors in bits x..61, x = 70 - cluster_bits.
 *
 * @returns The entry's high and low words (bit 62 set, COPIED clear).
 */
export function compressedEntry(
  offset: number,
  length: number,
  clusterBits: number,
): [number, number] {
  const sectors = Math.floor((offset + length - 1) / 512) - Math.floor(offset / 512);
  const shiftHi = 70 - clusterBits - 32;
  const hi = COMPRESSED_HI | (sectors << shiftHi) | Math.floor(offset / 2 ** 32);
  return [hi >>> 0, (offset % 2 ** 32) >>> 0];
}
