/**
 * Big-endian integer helpers over `Uint8Array`s. 64-bit values are JavaScript numbers built as
 * `hi * 2 ** 32 + lo`: exact up to 2^53, which callers check where it matters.
 *
 * @module
 */

/** Reads an unsigned 16-bit big-endian integer. */
export function readU16(bytes: Uint8Array, offset: number): number {
  return (bytes[offset]! << 8) | bytes[offset + 1]!;
}

/** Reads an unsigned 32-bit big-endian integer. */
export function readU32(bytes: Uint8Array, offset: number): number {
  return ((bytes[offset]! << 24) | (bytes[offset + 1]! << 16) | (bytes[offset + 2]! << 8) |
    bytes[offset + 3]!) >>> 0;
}

/**
 * Reads an unsigned 64-bit big-endian integer. Above 2^53 - 1 the result is rounded (possibly
 * down) but never below 2^53, so `Number.isSafeInteger` tells exact results from inexact ones.
 */
export function readU64(bytes: Uint8Array, offset: number): number {
  return readU32(bytes, offset) * 2 ** 32 + readU32(bytes, offset + 4);
}

/** Reads an unsigned 64-bit big-endian integer as a bigint (for feature masks). */
export function readU64Big(bytes: Uint8Array, offset: number): bigint {
  return (BigInt(readU32(bytes, offset)) << 32n) | BigInt(readU32(bytes, offset + 4));
}

/** Writes an unsigned 16-bit big-endian integer. */
export function writeU16(bytes: Uint8Array, offset: number, value: number): void {
  bytes[offset] = value >>> 8;
  bytes[offset + 1] = value;
}

/** Writes an unsigned 32-bit big-endian integer. */
export function writeU32(bytes: Uint8Array, offset: number, value: number): void {
  bytes[offset] = value >>> 24;
  bytes[offset + 1] = value >>> 16;
  bytes[offset + 2] = value >>> 8;
  bytes[offset + 3] = value;
}

/** Writes an unsigned 64-bit big-endian integer given as an exact number (at most 2^53). */
export function writeU64(bytes: Uint8Array, offset: number, value: number): void {
  const hi = Math.floor(value / 2 ** 32);
  writeU32(bytes, offset, hi);
  writeU32(bytes, offset + 4, value - hi * 2 ** 32);
}

/** Whether every byte of `bytes` is zero. */
export function isZero(bytes: Uint8Array): boolean {
  const aligned = bytes.byteOffset % 4 === 0 ? bytes.length >>> 2 : 0;
  if (aligned > 0) {
    const words = new Uint32Array(bytes.buffer, bytes.byteOffset, aligned);
    for (let i = 0; i < words.length; i++) if (words[i] !== 0) return false;
  }
  for (let i = aligned << 2; i < bytes.length; i++) if (bytes[i] !== 0) return false;
  return true;
}

/** Decodes a NUL-terminated or full-length byte string as UTF-8. */
export function readString(bytes: Uint8Array): string {
  const end = bytes.indexOf(0);
  return new TextDecoder().decode(end < 0 ? bytes : bytes.subarray(0, end));
}
