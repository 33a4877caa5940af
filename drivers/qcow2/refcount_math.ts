/**
 * Refcount block arithmetic: entries of 1 to 64 bits, packed big-endian, without I/O.
 *
 * @module
 */

/** Refcount entries in one refcount block. */
export function refcountsPerBlock(clusterBits: number, refcountOrder: number): number {
  return 2 ** (clusterBits + 3 - refcountOrder);
}

/** The largest refcount an entry can hold (capped at 2^53 - 1 for 64-bit entries). */
export function maxRefcount(refcountOrder: number): number {
  return refcountOrder >= 6 ? Number.MAX_SAFE_INTEGER : 2 ** (2 ** refcountOrder) - 1;
}

/**
 * Reads entry `index` of a refcount block. Sub-byte entries count from the least significant bit
 * of each byte; wider entries are big-endian.
 */
export function readRefcount(block: Uint8Array, index: number, refcountOrder: number): number {
  switch (refcountOrder) {
    case 0:
      return (block[index >>> 3]! >>> (index & 7)) & 1;
    case 1:
      return (block[index >>> 2]! >>> ((index & 3) * 2)) & 3;
    case 2:
      return (block[index >>> 1]! >>> ((index & 1) * 4)) & 15;
    case 3:
      return block[index]!;
    case 4:
      return (block[index * 2]! << 8) | block[index * 2 + 1]!;
    case 5: {
      const p = index * 4;
      return ((block[p]! << 24) | (block[p + 1]! << 16) | (block[p + 2]! << 8) | block[p + 3]!) >>>
        0;
    }
    default: {
      const p = index * 8;
      let value = 0;
      for (let i = 0; i < 8; i++) value = value * 256 + block[p + i]!;
      return value;
    }
  }
}

/** Writes entry `index` of a refcount block; `value` must fit the entry width. */
export function writeRefcount(
  block: Uint8Array,
  index: number,
  refcountOrder: number,
  value: number,
): void {
  switch (refcountOrder) {
    case 0:
    case 1:
    case 2: {
      const bits = 1 << refcountOrder;
      const perByte = 8 >>> refcountOrder;
      const byte = Math.floor(index / perByte);
      const shift = (index % perByte) * bits;
      const mask = ((1 << bits) - 1) << shift;
      block[byte] = (block[byte]! & ~mask) | ((value << shift) & mask);
      return;
    }
    case 3:
      block[index] = value;
      return;
    case 4:
      block[index * 2] = value >>> 8;
      block[index * 2 + 1] = value;
      return;
    case 5: {
      const p = index * 4;
      block[p] = value >>> 24;
      block[p + 1] = value >>> 16;
      block[p + 2] = value >>> 8;
      block[p + 3] = value;
      return;
    }
    default: {
      const p = index * 8;
      let rest = value;
      for (let i = 7; i >= 0; i--) {
        block[p + i] = rest % 256;
        rest = Math.floor(rest / 256);
      }
    }
  }
}
