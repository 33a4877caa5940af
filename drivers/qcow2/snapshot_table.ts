/**
 * The qcow2 internal snapshot table as pure functions: decoding and encoding entries (every
 * field, the extra data, ids and names), the table's layout and QEMU's limits.
 *
 * @module
 */

import { readU16, readU32, readU64, writeU16, writeU32, writeU64 } from "../../core/bytes.ts";
import { QcowError } from "../../core/errors.ts";
import {
  MAX_SNAPSHOT_EXTRA_DATA,
  MAX_SNAPSHOT_TABLE_BYTES,
  SNAPSHOT_ENTRY_BYTES,
} from "./snapshots.ts";

/** QEMU refuses more snapshots than this. */
export const MAX_SNAPSHOT_COUNT = 65536;
/** Extra data QEMU knows and writes: 64-bit VM state size, disk size, instruction count. */
export const KNOWN_EXTRA_DATA = 24;
/** Extra data every version 3 entry must have: the 64-bit VM state size and the disk size. */
export const V3_MIN_EXTRA_DATA = 16;
/** The instruction count that means "none" (all ones). */
export const NO_ICOUNT: bigint = 0xffff_ffff_ffff_ffffn;

/** One internal snapshot as stored in the snapshot table. */
export interface SnapshotEntry {
  /** Offset of the snapshot's L1 table. */
  l1TableOffset: number;
  /** Entries in the snapshot's L1 table. */
  l1Size: number;
  /** The snapshot's id (usually a decimal number), as bytes up to the first NUL. */
  idBytes: Uint8Array;
  /** The snapshot's name (tag), as bytes up to the first NUL. */
  nameBytes: Uint8Array;
  /** Creation time: seconds since the epoch. */
  dateSec: number;
  /** Creation time: nanoseconds within the second. */
  dateNsec: number;
  /** The guest's clock when the snapshot was taken, in nanoseconds (64 bits). */
  vmClockNsec: bigint;
  /** Bytes of saved VM state. */
  vmStateSize: number;
  /** The virtual disk size when the snapshot was taken. */
  diskSize: number;
  /** The guest instruction count, {@linkcode NO_ICOUNT} when not recorded. */
  icount: bigint;
  /** Extra data past the 24 bytes QEMU knows, kept as it was read. */
  unknownExtraData: Uint8Array;
  /** The extra data size stored in the entry (what was read; encoding writes its own). */
  extraDataSize: number;
}

/** Where a decoded table ended. */
export interface DecodedSnapshotTable {
  /** The entries, in table order. */
  entries: SnapshotEntry[];
  /** The table's size in bytes: the end of the last entry. */
  size: number;
}

const decoder = new TextDecoder();
const encoder = new TextEncoder();

/** The text of a snapshot id or name (invalid UTF-8 is replaced). */
export function snapshotText(bytes: Uint8Array): string {
  // ASCII (nearly every id and name) without the decoder, which costs more per call.
  let ascii = "";
  for (let i = 0; i < bytes.length; i++) {
    const byte = bytes[i]!;
    if (byte >= 0x80) return decoder.decode(bytes);
    ascii += String.fromCharCode(byte);
  }
  return ascii;
}

/** The bytes of `text` as an id or name: UTF-8, up to the first NUL as C reads it. */
export function snapshotBytes(text: string): Uint8Array {
  return cString(encoder.encode(text));
}

/** The bytes up to the first NUL. */
function cString(bytes: Uint8Array): Uint8Array {
  const end = bytes.indexOf(0);
  return end < 0 ? bytes : bytes.subarray(0, end);
}

const EMPTY = new Uint8Array(0);

/** A copy of the C string in `table[start, end)` (entries must not share the table's buffer). */
function copyCString(table: Uint8Array, start: number, end: number): Uint8Array {
  if (end === start) return EMPTY;
  return cString(table.subarray(start, end)).slice();
}

/**
 * Decodes the snapshot table held in `table` (the bytes from the table's offset on, zeros past
 * the end of the file), `count` entries, each starting at an 8-byte boundary.
 *
 * @param table The bytes of the table (at least up to the end of the last entry).
 * @param count Number of entries (the header's `nb_snapshots`).
 * @param diskSize The disk size for entries whose extra data does not record it.
 * @returns The entries and the table's size.
 * @throws {QcowError} `BAD_TABLE` for an entry with more than 1 KiB of extra data, a table over
 *   64 MiB or more than 65536 entries, or bytes missing from `table`.
 */
export function decodeSnapshotTable(
  table: Uint8Array,
  count: number,
  diskSize: number,
): DecodedSnapshotTable {
  if (count > MAX_SNAPSHOT_COUNT) {
    throw new QcowError("BAD_TABLE", `Snapshot table too large (${count} snapshots)`);
  }
  const entries: SnapshotEntry[] = [];
  let at = 0;
  const need = (bytes: number, i: number): void => {
    if (at + bytes > table.length) {
      throw new QcowError("BAD_TABLE", `Snapshot table entry ${i} is cut short`);
    }
  };
  for (let i = 0; i < count; i++) {
    at = alignEntry(at);
    need(SNAPSHOT_ENTRY_BYTES, i);
    const extraDataSize = readU32(table, at + 36);
    if (extraDataSize > MAX_SNAPSHOT_EXTRA_DATA) {
      throw new QcowError(
        "BAD_TABLE",
        `Too much extra metadata in snapshot table entry ${i} (${extraDataSize} bytes, at most ${MAX_SNAPSHOT_EXTRA_DATA})`,
      );
    }
    const idLength = readU16(table, at + 12);
    const nameLength = readU16(table, at + 14);
    need(SNAPSHOT_ENTRY_BYTES + extraDataSize + idLength + nameLength, i);
    const extraAt = at + SNAPSHOT_ENTRY_BYTES;
    const stringsAt = extraAt + extraDataSize;
    entries.push({
      l1TableOffset: readU64(table, at),
      l1Size: readU32(table, at + 8),
      idBytes: copyCString(table, stringsAt, stringsAt + idLength),
      nameBytes: copyCString(table, stringsAt + idLength, stringsAt + idLength + nameLength),
      dateSec: readU32(table, at + 16),
      dateNsec: readU32(table, at + 20),
      vmClockNsec: readU64Big(table, at + 24),
      vmStateSize: extraDataSize >= 8 ? readU64(table, extraAt) : readU32(table, at + 32),
      diskSize: extraDataSize >= 16 ? readU64(table, extraAt + 8) : diskSize,
      icount: extraDataSize >= 24 ? readU64Big(table, extraAt + 16) : NO_ICOUNT,
      unknownExtraData: extraDataSize > KNOWN_EXTRA_DATA
        ? table.slice(extraAt + KNOWN_EXTRA_DATA, stringsAt)
        : EMPTY,
      extraDataSize,
    });
    at = stringsAt + idLength + nameLength;
    if (at > MAX_SNAPSHOT_TABLE_BYTES) {
      throw new QcowError("BAD_TABLE", `Snapshot table is too big at entry ${i}`);
    }
  }
  return { entries, size: at };
}

function readU64Big(bytes: Uint8Array, offset: number): bigint {
  const hi = readU32(bytes, offset);
  const lo = readU32(bytes, offset + 4);
  if (hi === 0) return BigInt(lo);
  if (hi === 0xffffffff && lo === 0xffffffff) return NO_ICOUNT;
  return (BigInt(hi) << 32n) | BigInt(lo);
}

/** The offset of an entry that would start at `at`: entries start at 8-byte boundaries. */
export function alignEntry(at: number): number {
  return Math.ceil(at / 8) * 8;
}

/** Bytes one entry takes as QEMU writes it (before the next entry's alignment). */
export function encodedEntrySize(entry: SnapshotEntry): number {
  return SNAPSHOT_ENTRY_BYTES + KNOWN_EXTRA_DATA + entry.unknownExtraData.length +
    entry.idBytes.length + entry.nameBytes.length;
}

/** The size of the table {@linkcode encodeSnapshotEntries} writes for `entries`. */
export function snapshotTableSize(entries: readonly SnapshotEntry[]): number {
  let size = 0;
  for (const entry of entries) size = alignEntry(size) + encodedEntrySize(entry);
  return size;
}

/**
 * Encodes a snapshot table as QEMU writes it: every entry with the 24 bytes of extra data QEMU
 * knows (64-bit VM state size, disk size, instruction count) followed by any unknown extra data
 * it was read with, the 32-bit VM state size set only when the size fits, entries at 8-byte
 * boundaries.
 *
 * @param entries The snapshots, in table order.
 * @returns The table's bytes.
 * @throws {QcowError} `INVALID_ARGUMENT` beyond QEMU's limits (65536 entries, 1 KiB of extra
 *   data, ids and names up to 65535 bytes, a table up to 64 MiB).
 */
export function encodeSnapshotEntries(entries: readonly SnapshotEntry[]): Uint8Array {
  if (entries.length > MAX_SNAPSHOT_COUNT) {
    throw new QcowError(
      "INVALID_ARGUMENT",
      `Too many snapshots (${entries.length}, at most ${MAX_SNAPSHOT_COUNT})`,
    );
  }
  const size = snapshotTableSize(entries);
  if (size > MAX_SNAPSHOT_TABLE_BYTES) {
    throw new QcowError(
      "INVALID_ARGUMENT",
      `The snapshot table would take ${size} bytes (at most ${MAX_SNAPSHOT_TABLE_BYTES})`,
    );
  }
  const table = new Uint8Array(size);
  let at = 0;
  for (const entry of entries) {
    at = alignEntry(at);
    const extraSize = KNOWN_EXTRA_DATA + entry.unknownExtraData.length;
    if (extraSize > MAX_SNAPSHOT_EXTRA_DATA) {
      throw new QcowError(
        "INVALID_ARGUMENT",
        `Snapshot extra data of ${extraSize} bytes exceeds ${MAX_SNAPSHOT_EXTRA_DATA}`,
      );
    }
    if (entry.idBytes.length > 0xffff || entry.nameBytes.length > 0xffff) {
      throw new QcowError("INVALID_ARGUMENT", "Snapshot ids and names take at most 65535 bytes");
    }
    writeU64(table, at, entry.l1TableOffset);
    writeU32(table, at + 8, entry.l1Size);
    writeU16(table, at + 12, entry.idBytes.length);
    writeU16(table, at + 14, entry.nameBytes.length);
    writeU32(table, at + 16, entry.dateSec);
    writeU32(table, at + 20, entry.dateNsec);
    writeU64Big(table, at + 24, entry.vmClockNsec);
    // Older readers see a VM state too large for 32 bits as none rather than truncated.
    writeU32(table, at + 32, entry.vmStateSize <= 0xffffffff ? entry.vmStateSize : 0);
    writeU32(table, at + 36, extraSize);
    const extraAt = at + SNAPSHOT_ENTRY_BYTES;
    writeU64(table, extraAt, entry.vmStateSize);
    writeU64(table, extraAt + 8, entry.diskSize);
    writeU64Big(table, extraAt + 16, entry.icount);
    table.set(entry.unknownExtraData, extraAt + KNOWN_EXTRA_DATA);
    at = extraAt + extraSize;
    table.set(entry.idBytes, at);
    at += entry.idBytes.length;
    table.set(entry.nameBytes, at);
    at += entry.nameBytes.length;
  }
  return table;
}

function writeU64Big(bytes: Uint8Array, offset: number, value: bigint): void {
  const v = BigInt.asUintN(64, value);
  writeU32(bytes, offset, Number(v >> 32n));
  writeU32(bytes, offset + 4, Number(v & 0xffffffffn));
}

/**
 * The id QEMU gives a new snapshot: one more than the largest id read as a decimal number (as
 * C's `strtoul` reads it: leading blanks, digits, anything after them ignored; no digits is 0).
 *
 * @param entries The existing snapshots.
 * @returns The new id.
 */
export function nextSnapshotId(entries: readonly SnapshotEntry[]): string {
  let max = 0n;
  for (const entry of entries) {
    const match = /^[ \t\n\v\f\r]*\+?([0-9]+)/.exec(snapshotText(entry.idBytes));
    const id = match ? BigInt(match[1]!) : 0n;
    if (id > max) max = id;
  }
  return BigInt.asUintN(64, max + 1n).toString();
}

/**
 * The index of the first snapshot whose id is `idOrName`, else of the first whose name is, as
 * `qemu-img snapshot -a` and `convert -l` look snapshots up.
 *
 * @returns The index, or -1.
 */
export function findSnapshot(entries: readonly SnapshotEntry[], idOrName: string): number {
  const bytes = snapshotBytes(idOrName);
  const byId = entries.findIndex((entry) => equalBytes(entry.idBytes, bytes));
  return byId >= 0 ? byId : findSnapshotByName(entries, idOrName);
}

/** The index of the first snapshot named `name` (as `qemu-img snapshot -d` looks), or -1. */
export function findSnapshotByName(entries: readonly SnapshotEntry[], name: string): number {
  const bytes = snapshotBytes(name);
  return entries.findIndex((entry) => equalBytes(entry.nameBytes, bytes));
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
