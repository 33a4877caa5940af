/**
 * The self-describing sector pattern crash exploration writes: every 512-byte sector says which
 * request wrote it and for which virtual sector, so a sector read back after a crash can be
 * identified without keeping copies of the data.
 *
 * Layout of one sector: bytes 0-3 the tag (little-endian, never 0), bytes 4-7 the virtual sector
 * number (modulo 2^32), bytes 8-511 one fill byte derived from both, so compressed writes shrink.
 *
 * @module
 */

/** Sector size the pattern works in. */
export const SECTOR: number = 512;

/** {@linkcode identifySector}'s answer for a sector that is neither zeros nor a valid pattern. */
export const GARBAGE: number = -1;

function fillByte(tag: number, sector: number): number {
  return (Math.imul(tag, 31) + Math.imul(sector, 7) + 0x5b) & 0xff;
}

/**
 * Fills `out` (a whole number of sectors) with the pattern of `tag` for the virtual sectors
 * starting at `firstSector`.
 *
 * @example
 * ```ts
 * import { fillPattern, identifySector } from "@qcowlab/qcowlab/emulator";
 *
 * const data = new Uint8Array(1024);
 * fillPattern(data, 5, 100);
 * console.log(identifySector(data, 512)); // 5
 * ```
 *
 * @param out Where to write; its length must be a multiple of 512.
 * @param tag The tag, at least 1.
 * @param firstSector The virtual sector of `out`'s first byte.
 */
export function fillPattern(out: Uint8Array, tag: number, firstSector: number): void {
  for (let at = 0, sector = firstSector; at + SECTOR <= out.length; at += SECTOR, sector++) {
    const s = sector >>> 0;
    out.fill(fillByte(tag, s), at + 8, at + SECTOR);
    out[at] = tag & 0xff;
    out[at + 1] = (tag >>> 8) & 0xff;
    out[at + 2] = (tag >>> 16) & 0xff;
    out[at + 3] = (tag >>> 24) & 0xff;
    out[at + 4] = s & 0xff;
    out[at + 5] = (s >>> 8) & 0xff;
    out[at + 6] = (s >>> 16) & 0xff;
    out[at + 7] = (s >>> 24) & 0xff;
  }
}

/**
 * The virtual sector number (modulo 2^32) a pattern sector at `at` was written for; meaningful only
 * when {@linkcode identifySector} gave a tag of 1 or more.
 */
export function patternSector(bytes: Uint8Array, at: number): number {
  return (bytes[at + 4]! | (bytes[at + 5]! << 8) | (bytes[at + 6]! << 16) |
    (bytes[at + 7]! << 24)) >>>
    0;
}

/**
 * Identifies the sector at `bytes[at .. at + 512)`: 0 for all zeros, the tag of a valid pattern
 * sector (see {@linkcode patternSector} for its sector number), or {@linkcode GARBAGE}.
 *
 * @param bytes The bytes.
 * @param at Where the sector starts.
 * @returns The tag, 0 or -1.
 */
export function identifySector(bytes: Uint8Array, at: number): number {
  const tag =
    (bytes[at]! | (bytes[at + 1]! << 8) | (bytes[at + 2]! << 16) | (bytes[at + 3]! << 24)) >>>
    0;
  if (tag === 0) {
    for (let i = at + 4; i < at + SECTOR; i++) if (bytes[i] !== 0) return GARBAGE;
    return 0;
  }
  if (tag > 0x7fffffff) return GARBAGE;
  const fill = fillByte(tag, patternSector(bytes, at));
  for (let i = at + 8; i < at + SECTOR; i++) if (bytes[i] !== fill) return GARBAGE;
  return tag;
}
