/**
 * Writing the header extensions of a qcow2 first cluster, shared by the encoder of new headers and
 * the one of amended headers: the extension framing and QEMU's feature name table.
 *
 * @module
 */

import { writeU32 } from "../../core/bytes.ts";

/** The names QEMU writes into the feature name table, in its order: [type, bit, name]. */
const FEATURE_NAMES: [number, number, string][] = [
  [0, 0, "dirty bit"],
  [0, 1, "corrupt bit"],
  [0, 2, "external data file"],
  [0, 3, "compression type"],
  [0, 4, "extended L2 entries"],
  [1, 0, "lazy refcounts"],
  [2, 0, "bitmaps"],
  [2, 1, "raw external data"],
];

/** Bytes per entry of the feature name table. */
const FEATURE_ENTRY = 48;

/**
 * The data of the feature name table extension as QEMU writes it: one 48-byte entry (type, bit,
 * NUL-padded name) per feature it knows.
 *
 * @returns A new array.
 */
export function featureNameTable(): Uint8Array {
  const encoder = new TextEncoder();
  const table = new Uint8Array(FEATURE_NAMES.length * FEATURE_ENTRY);
  FEATURE_NAMES.forEach(([type, bit, name], i) => {
    table[i * FEATURE_ENTRY] = type;
    table[i * FEATURE_ENTRY + 1] = bit;
    table.set(encoder.encode(name), i * FEATURE_ENTRY + 2);
  });
  return table;
}

/**
 * Writes one header extension (type, length, then `data` padded with zeros to 8 bytes) into
 * `first` at `at`, unless it and the end marker after it would not fit in `first`.
 *
 * @param first The header cluster (zero-filled where nothing was written).
 * @param at Where the extension starts.
 * @param type The extension's type.
 * @param data Its data.
 * @returns The offset after it, or undefined (nothing written) when it does not fit.
 */
export function putExtension(
  first: Uint8Array,
  at: number,
  type: number,
  data: Uint8Array,
): number | undefined {
  const padded = Math.ceil(data.length / 8) * 8;
  if (at + 8 + padded + 8 > first.length) return undefined;
  writeU32(first, at, type);
  writeU32(first, at + 4, data.length);
  first.set(data, at + 8);
  return at + 8 + padded;
}
