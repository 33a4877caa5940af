/**
 * The pure arithmetic of qcow (version 1) mapping: table indexes and L2 entry encoding.
 *
 * A qcow L2 entry is a 64-bit big-endian word. With bit 63 clear it is the host offset of an
 * uncompressed cluster (0: unallocated). With bit 63 set, the bits from `63 - cluster_bits` up to
 * 62 hold the compressed length in bytes and the bits below them the host offset of the stream.
 * Entries are handled as two unsigned 32-bit words (`hi`, `lo`), so no BigInt is needed.
 *
 * @module
 */

/** The largest offset handled exactly. */
export const MAX_EXACT_OFFSET = 2 ** 53;

/** What an L2 entry says about its cluster. */
export type QcowEntry =
  | { kind: "unallocated" }
  | { kind: "data"; offset: number }
  | { kind: "compressed"; offset: number; length: number };

/** Bytes of virtual disk one L2 table maps. */
export function l2Span(clusterBits: number, l2Bits: number): number {
  return 2 ** (clusterBits + l2Bits);
}

/** L1 entries needed for `size` virtual bytes. */
export function l1EntriesFor(size: number, clusterBits: number, l2Bits: number): number {
  return Math.ceil(size / l2Span(clusterBits, l2Bits));
}

/** The L1 index of a virtual offset. */
export function l1Index(offset: number, clusterBits: number, l2Bits: number): number {
  return Math.floor(offset / l2Span(clusterBits, l2Bits));
}

/** The L2 index of a virtual offset. */
export function l2Index(offset: number, clusterBits: number, l2Bits: number): number {
  return Math.floor(offset / 2 ** clusterBits) % 2 ** l2Bits;
}

/** Rounds `value` up to a multiple of `alignment` (a power of two up to 2^31 or any integer). */
export function alignUp(value: number, alignment: number): number {
  return Math.ceil(value / alignment) * alignment;
}

/**
 * Decodes an L2 entry.
 *
 * @param hi The entry's high 32 bits.
 * @param lo The entry's low 32 bits.
 * @param clusterBits log2 of the cluster size.
 * @returns The decoded entry; offsets at or past 2^53 come back as they are (callers refuse them).
 */
export function decodeEntry(hi: number, lo: number, clusterBits: number): QcowEntry {
  if ((hi & 0x80000000) === 0) {
    const offset = hi * 2 ** 32 + lo;
    return offset === 0 ? { kind: "unallocated" } : { kind: "data", offset };
  }
  // The length field starts at bit 63 - cluster_bits, that is bit 31 - cluster_bits of `hi`.
  const split = 31 - clusterBits;
  const offset = (hi & (2 ** split - 1)) * 2 ** 32 + lo;
  const length = (hi >>> split) & (2 ** clusterBits - 1);
  return { kind: "compressed", offset, length };
}

/**
 * Encodes a compressed-cluster entry.
 *
 * @param offset Host offset of the compressed stream (below 2^(63 - clusterBits)).
 * @param length Bytes of the stream (below the cluster size).
 * @param clusterBits log2 of the cluster size.
 * @returns The entry's high and low 32 bits.
 */
export function encodeCompressed(
  offset: number,
  length: number,
  clusterBits: number,
): [hi: number, lo: number] {
  const split = 31 - clusterBits;
  const offsetHi = Math.floor(offset / 2 ** 32);
  const hi = (0x80000000 | (length * 2 ** split) | offsetHi) >>> 0;
  return [hi, offset - offsetHi * 2 ** 32];
}
