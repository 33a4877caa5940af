/**
 * The state a qcow2 consistency check works on: the header, the active L1 table and the refcount
 * table as stored, read straight from the device the way QEMU opens an image for `qemu-img check`
 * (dirty and corrupt images included, bytes past the end of the file reading as zeros), plus the
 * stored refcounts, QEMU's metadata overlap check and its corruption signal.
 *
 * @module
 */

import { REGION_NAMES } from "./overlap.ts";
import type { BlockDevice } from "../../core/block_device.ts";
import { readU32, writeU32, writeU64 } from "../../core/bytes.ts";
import { QcowError } from "../../core/errors.ts";
import { entryOffset } from "./entries.ts";
import { hex64, hexAlt, offsetInCluster } from "./check_entries.ts";
import {
  type BitmapsExtension,
  describeFeatures,
  INCOMPAT_CORRUPT,
  INCOMPAT_DATA_FILE,
  INCOMPAT_EXTENDED_L2,
  INCOMPAT_KNOWN,
  parseQcow2Header,
  peekClusterBits,
  type Qcow2Header,
  validateTables,
} from "./header.ts";
import { maxRefcount, readRefcount, refcountsPerBlock } from "./refcount_math.ts";

/** Autoclear bit 0: the bitmaps extension is valid. */
const AUTOCLEAR_BITMAPS = 1n;

/** The image header (the first cluster). */
export const OL_MAIN_HEADER = 1 << 0;
/** The active L1 table. */
export const OL_ACTIVE_L1 = 1 << 1;
/** L2 tables named by the active L1 table. */
export const OL_ACTIVE_L2 = 1 << 2;
/** The refcount table. */
export const OL_REFCOUNT_TABLE = 1 << 3;
/** Refcount blocks. */
export const OL_REFCOUNT_BLOCK = 1 << 4;
/** The snapshot table. */
export const OL_SNAPSHOT_TABLE = 1 << 5;
/** Snapshots' L1 tables. */
export const OL_INACTIVE_L1 = 1 << 6;
/** Snapshots' L2 tables. */
export const OL_INACTIVE_L2 = 1 << 7;
/** The persistent bitmap directory. */
export const OL_BITMAP_DIRECTORY = 1 << 8;
/** QEMU's default ("cached") checks: everything but snapshots' L2 tables. */
const OL_CACHED = 0x1ff & ~OL_INACTIVE_L2;

/** One internal snapshot, as far as a check needs it. */
export interface CheckSnapshot {
  /** Offset of its L1 table (not necessarily aligned: the check says so; inexact past 2^53). */
  l1Offset: number;
  /** The L1 table offset's high and low words, exact. */
  l1OffsetWords: [number, number];
  /** Entries in its L1 table. */
  l1Size: number;
  /** Its ID string. */
  id: string;
  /** Its name. */
  name: string;
  /** Bytes of extra data in its table entry. */
  extraDataSize: number;
  /** The entry's fixed part as stored. */
  entry: Uint8Array;
  /** Its extra data as stored. */
  extraData: Uint8Array;
  /** Its ID and name as stored, up to the first NUL. */
  idBytes: Uint8Array;
  nameBytes: Uint8Array;
}

/** A refcount block held in memory. */
export interface RefcountBlock {
  /** Its contents. */
  data: Uint8Array;
  /** Whether `data` was changed and must be written back. */
  dirty: boolean;
}

/** The counters of a check, named as QEMU's `BdrvCheckResult` names them. */
export interface CheckCounts {
  checkErrors: number;
  corruptions: number;
  leaks: number;
  corruptionsFixed: number;
  leaksFixed: number;
  imageEndOffset: number;
  totalClusters: number;
  allocatedClusters: number;
  fragmentedClusters: number;
  compressedClusters: number;
}

/** Counters all at 0. */
export function zeroCounts(): CheckCounts {
  return {
    checkErrors: 0,
    corruptions: 0,
    leaks: 0,
    corruptionsFixed: 0,
    leaksFixed: 0,
    imageEndOffset: 0,
    totalClusters: 0,
    allocatedClusters: 0,
    fragmentedClusters: 0,
    compressedClusters: 0,
  };
}

/** Refcount blocks kept in memory before dirty ones are written back. */
const BLOCK_CACHE = 64;

/**
 * A qcow2 image opened for checking. Everything here is read at open except refcount blocks,
 * which are read (and, when repairing, written) through a small cache.
 */
export class CheckImage {
  readonly device: BlockDevice;
  readonly header: Qcow2Header;
  readonly clusterBits: number;
  readonly clusterSize: number;
  readonly refcountOrder: number;
  /** The largest refcount the image's entries hold. */
  readonly refcountMax: number;
  /** Refcount entries per block. */
  readonly refcountsPerBlock: number;
  readonly extendedL2: boolean;
  readonly dataFile: boolean;
  /** Bytes per L2 entry: 8, or 16 with extended L2. */
  readonly l2EntryBytes: number;
  /** Entries per L2 table. */
  readonly l2Size: number;
  /** The virtual size rounded down to whole sectors, as QEMU sees it. */
  readonly virtualSize: number;
  readonly l1Offset: number;
  readonly l1Size: number;
  /** The active L1 table as read at open (big-endian entries); repairs update it. */
  readonly l1: Uint8Array;
  /** The valid bitmaps extension (absent when the autoclear bit says the bitmaps are stale). */
  readonly bitmaps?: BitmapsExtension;
  readonly crypto?: { offset: number; length: number };
  /** Where the diagnostics go. */
  readonly messages: string[];
  /** Whether the check may write (a repairing check). */
  readonly writable: boolean;
  /** The snapshot table as the check read it. */
  snapshotsOffset = 0;
  snapshotsSize = 0;
  snapshots: CheckSnapshot[] = [];
  #reftableOffset: number;
  #reftable: Uint8Array;
  #incompatible: bigint;
  #signaled = false;
  #blocks = new Map<number, RefcountBlock>();
  /** Refcount blocks were written since the last flush. */
  #unflushed = false;
  /** The block {@linkcode peekRefcount} used last, while it stays cached. */
  #lastIndex = -1;
  #lastBlock: Uint8Array | undefined;

  private constructor(
    device: BlockDevice,
    header: Qcow2Header,
    l1: Uint8Array,
    reftable: Uint8Array,
    messages: string[],
    writable: boolean,
  ) {
    this.device = device;
    this.header = header;
    this.clusterBits = header.clusterBits;
    this.clusterSize = 2 ** header.clusterBits;
    this.refcountOrder = header.refcountOrder;
    this.refcountMax = maxRefcount(header.refcountOrder);
    this.refcountsPerBlock = refcountsPerBlock(header.clusterBits, header.refcountOrder);
    this.extendedL2 = (header.incompatibleFeatures & INCOMPAT_EXTENDED_L2) !== 0n;
    this.dataFile = (header.incompatibleFeatures & INCOMPAT_DATA_FILE) !== 0n;
    this.l2EntryBytes = this.extendedL2 ? 16 : 8;
    this.l2Size = this.clusterSize / this.l2EntryBytes;
    this.virtualSize = Math.floor(header.size / 512) * 512;
    this.l1Offset = header.l1TableOffset;
    this.l1Size = header.l1Size;
    this.l1 = l1;
    this.#reftableOffset = header.refcountTableOffset;
    this.#reftable = reftable;
    this.#incompatible = header.incompatibleFeatures;
    this.messages = messages;
    this.writable = writable;
    if (header.bitmaps && (header.autoclearFeatures & AUTOCLEAR_BITMAPS) !== 0n) {
      this.bitmaps = header.bitmaps;
    }
    if (header.crypto) this.crypto = header.crypto;
  }

  /**
   * Opens an image for checking: parses and validates the header as QEMU does when `qemu-img
   * check` opens it. The snapshot table is left to the check, which reads it itself.
   *
   * @param device The image file.
   * @param messages Where diagnostics go.
   * @param options Whether the check repairs, and whether to leave out warnings about the image
   * already given.
   * @returns The image.
   * @throws {QcowError} When QEMU could not open the image either.
   */
  static async open(
    device: BlockDevice,
    messages: string[],
    options: { writable: boolean; quiet?: boolean },
  ): Promise<CheckImage> {
    const writable = options.writable;
    const head = new Uint8Array(Math.min(104, device.size));
    await device.read(head, 0);
    const clusterBits = peekClusterBits(head);
    const first = new Uint8Array(Math.min(2 ** clusterBits, device.size));
    await device.read(first, 0);
    // In check mode QEMU ignores the snapshot fields at open; the check reads and judges them.
    first.fill(0, 60, 72);
    const header = parseQcow2Header(first);
    const unknown = header.incompatibleFeatures & ~INCOMPAT_KNOWN;
    if (unknown !== 0n) {
      throw new QcowError(
        "UNSUPPORTED_FEATURE",
        `Unsupported qcow2 feature(s): ${describeFeatures(header, unknown)}`,
      );
    }
    // The check never decrypts, but QEMU cannot open a LUKS image without its header.
    if (header.cryptMethod === 2 && !header.crypto) {
      throw new QcowError("BAD_HEADER", "Missing CRYPTO header for crypt method 2");
    }
    if (header.cryptMethod !== 2 && header.crypto) {
      throw new QcowError(
        "BAD_EXTENSION",
        "CRYPTO header extension only expected with LUKS encryption method",
      );
    }
    // In check mode QEMU opens images whose L1 or refcount table lies past the end of the file
    // (those bytes read as zeros), or that have no refcount table at all, and lets the check
    // report what that breaks: only its limits on the tables' sizes and offsets apply.
    validateTables(
      { ...header, refcountTableClusters: Math.max(1, header.refcountTableClusters) },
      2 ** 63,
    );
    const l1 = await readPadded(device, header.l1TableOffset, header.l1Size * 8);
    const reftable = await readPadded(
      device,
      header.refcountTableOffset,
      header.refcountTableClusters * 2 ** header.clusterBits,
    );
    const opened = new CheckImage(device, header, l1, reftable, messages, writable);
    if (header.bitmaps && !opened.bitmaps && !options.quiet) {
      messages.push(
        "qemu-img: warning: a program lacking bitmap support modified this file, so all bitmaps are now considered inconsistent",
        "Some clusters may be leaked, run 'qemu-img check -r' on the image file to fix.",
      );
    }
    return opened;
  }

  /**
   * Reads `length` bytes at `offset`; what lies past the end of the file reads as zeros.
   *
   * @returns A new buffer.
   */
  read(offset: number, length: number): Promise<Uint8Array> {
    return readPadded(this.device, offset, length);
  }

  /** Offset of the refcount table in use. */
  get reftableOffset(): number {
    return this.#reftableOffset;
  }

  /** Entries of the refcount table in use. */
  get reftableEntries(): number {
    return this.#reftable.length / 8;
  }

  /** High word of refcount table entry `index`. */
  reftableHi(index: number): number {
    return readU32(this.#reftable, index * 8);
  }

  /** Low word of refcount table entry `index`. */
  reftableLo(index: number): number {
    return readU32(this.#reftable, index * 8 + 4);
  }

  /** Refcount block offset of entry `index` (reserved bits 0..8 dropped; may be inexact past 2^53). */
  refblockOffset(index: number): number {
    const lo = this.reftableLo(index);
    return this.reftableHi(index) * 2 ** 32 + ((lo & 0xfffffe00) >>> 0);
  }

  /** Incompatible feature bits as the image has them now. */
  get incompatibleFeatures(): bigint {
    return this.#incompatible;
  }

  /**
   * Refcount block `index` as QEMU reads it: null past the refcount table or without a block;
   * undefined (after signalling corruption) when the block's offset is unaligned. Changing the
   * returned block's data and setting `dirty` stores refcounts (see {@linkcode flushRefcounts}).
   */
  async refcountBlock(index: number): Promise<RefcountBlock | null | undefined> {
    if (index >= this.reftableEntries) return null;
    const offset = this.refblockOffset(index);
    if (offset === 0) return null;
    const lo = this.reftableLo(index) & 0xfffffe00;
    if (offsetInCluster(lo, this.clusterSize) !== 0) {
      const shown = `0x${hex64(this.reftableHi(index), lo)}`;
      await this.signalCorruption(
        true,
        `Refblock offset ${shown} unaligned (reftable index: ${hexAlt(index)})`,
      );
      return undefined;
    }
    return await this.#block(offset);
  }

  /**
   * The stored refcount of `cluster` when it is known without reading a block (its block is
   * absent or cached), else undefined.
   */
  peekRefcount(cluster: number): number | undefined {
    const index = Math.floor(cluster / this.refcountsPerBlock);
    if (index === this.#lastIndex) {
      return readRefcount(
        this.#lastBlock!,
        cluster - index * this.refcountsPerBlock,
        this.refcountOrder,
      );
    }
    if (index >= this.reftableEntries) return 0;
    const offset = this.refblockOffset(index);
    if (offset === 0) return 0;
    const block = this.#blocks.get(offset);
    if (block === undefined || offsetInCluster(this.reftableLo(index), this.clusterSize) !== 0) {
      return undefined;
    }
    this.#lastIndex = index;
    this.#lastBlock = block.data;
    return readRefcount(block.data, cluster % this.refcountsPerBlock, this.refcountOrder);
  }

  /**
   * The stored refcount of `cluster` in decimal, exact even for 64-bit refcounts past 2^53 (which
   * {@linkcode refcount} rounds).
   */
  async refcountText(cluster: number): Promise<string> {
    const value = await this.refcount(cluster);
    if (value === undefined || value <= Number.MAX_SAFE_INTEGER) return String(value);
    const block = await this.refcountBlock(Math.floor(cluster / this.refcountsPerBlock));
    const at = (cluster % this.refcountsPerBlock) * 8;
    const exact = (BigInt(readU32(block!.data, at)) << 32n) | BigInt(readU32(block!.data, at + 4));
    return exact.toString();
  }

  /** The stored refcount of `cluster`, or undefined when its block is unreadable. */
  async refcount(cluster: number): Promise<number | undefined> {
    const known = this.peekRefcount(cluster);
    if (known !== undefined) return known;
    const block = await this.refcountBlock(Math.floor(cluster / this.refcountsPerBlock));
    if (block === undefined) return undefined;
    if (block === null) return 0;
    return readRefcount(block.data, cluster % this.refcountsPerBlock, this.refcountOrder);
  }

  /** Writes changed refcount blocks back and makes them durable. */
  async flushRefcounts(): Promise<void> {
    for (const [offset, block] of this.#blocks) {
      if (!block.dirty) continue;
      await this.device.write(block.data, offset);
      block.dirty = false;
      this.#unflushed = true;
    }
    if (this.#unflushed) await this.device.flush();
    this.#unflushed = false;
  }

  async #block(offset: number): Promise<RefcountBlock> {
    let block = this.#blocks.get(offset);
    if (block) {
      this.#blocks.delete(offset);
      this.#blocks.set(offset, block);
      return block;
    }
    if (this.#blocks.size >= BLOCK_CACHE) {
      const [oldest, evicted] = this.#blocks.entries().next().value!;
      if (evicted.dirty) {
        await this.device.write(evicted.data, oldest);
        this.#unflushed = true;
      }
      this.#blocks.delete(oldest);
      this.#lastIndex = -1;
    }
    block = { data: await this.read(offset, this.clusterSize), dirty: false };
    this.#blocks.set(offset, block);
    return block;
  }

  /**
   * Switches to a new refcount table (already written and pointed to by the header) and forgets
   * the cached blocks of the old one.
   */
  useRefcountTable(offset: number, table: number[]): void {
    const raw = new Uint8Array(table.length * 8);
    table.forEach((entry, i) => writeU64(raw, i * 8, entry));
    this.#reftableOffset = offset;
    this.#reftable = raw;
    this.#blocks.clear();
    this.#lastIndex = -1;
  }

  /**
   * QEMU's metadata overlap check with its default ("cached") set of structures, minus `ignore`.
   *
   * @returns The bit (`OL_*`) of the first structure `[offset, offset + size)` overlaps, or 0.
   */
  overlap(ignore: number, offset: number, size: number): number {
    const check = OL_CACHED & ~ignore;
    if (size === 0) return 0;
    const cs = this.clusterSize;
    if ((check & OL_MAIN_HEADER) !== 0 && offset < cs) return OL_MAIN_HEADER;
    const start = Math.floor(offset / cs) * cs;
    const end = start + Math.ceil((offset - start + size) / cs) * cs;
    const hits = (at: number, bytes: number): boolean => at < end && start < at + bytes;
    if ((check & OL_ACTIVE_L1) !== 0 && this.l1Size > 0 && hits(this.l1Offset, this.l1Size * 8)) {
      return OL_ACTIVE_L1;
    }
    if ((check & OL_REFCOUNT_TABLE) !== 0 && hits(this.#reftableOffset, this.#reftable.length)) {
      return OL_REFCOUNT_TABLE;
    }
    if (
      (check & OL_SNAPSHOT_TABLE) !== 0 && this.snapshotsSize > 0 &&
      hits(this.snapshotsOffset, this.snapshotsSize)
    ) {
      return OL_SNAPSHOT_TABLE;
    }
    if ((check & OL_INACTIVE_L1) !== 0) {
      for (const snapshot of this.snapshots) {
        if (snapshot.l1Size > 0 && hits(snapshot.l1Offset, snapshot.l1Size * 8)) {
          return OL_INACTIVE_L1;
        }
      }
    }
    if ((check & OL_ACTIVE_L2) !== 0) {
      for (let i = 0; i < this.l1Size; i++) {
        const l2 = entryOffset(readU32(this.l1, i * 8), readU32(this.l1, i * 8 + 4));
        if (l2 !== 0 && hits(l2, cs)) return OL_ACTIVE_L2;
      }
    }
    if ((check & OL_REFCOUNT_BLOCK) !== 0) {
      for (let i = 0; i < this.reftableEntries; i++) {
        const block = this.refblockOffset(i);
        if (block !== 0 && hits(block, cs)) return OL_REFCOUNT_BLOCK;
      }
    }
    if ((check & OL_BITMAP_DIRECTORY) !== 0 && this.bitmaps) {
      const { directoryOffset, directorySize } = this.bitmaps;
      if (hits(directoryOffset, directorySize)) return OL_BITMAP_DIRECTORY;
    }
    return 0;
  }

  /**
   * Writes metadata after QEMU's overlap check. A write that would hit other metadata is refused
   * as QEMU refuses it: the image is marked corrupt and nothing is written.
   *
   * @returns Whether the data was written.
   */
  async writeChecked(ignore: number, offset: number, data: Uint8Array): Promise<boolean> {
    const hit = this.overlap(ignore, offset, data.length);
    if (hit !== 0) {
      const name = REGION_NAMES[Math.log2(hit)]!;
      await this.signalCorruption(
        true,
        `Preventing invalid write on metadata (overlaps with ${name})`,
      );
      return false;
    }
    await this.device.write(data, offset);
    return true;
  }

  /**
   * Reports corruption found while using the image as QEMU does: once, and on a writable image
   * by setting the corrupt bit ("fatal"); later reports are suppressed.
   */
  async signalCorruption(fatal: boolean, message: string): Promise<void> {
    const marks = fatal && this.writable;
    const corrupt = (this.#incompatible & INCOMPAT_CORRUPT) !== 0n;
    if (this.#signaled && (!marks || corrupt)) return;
    if (marks) {
      this.messages.push(
        `qcow2: Marking image as corrupt: ${message}; further corruption events will be suppressed`,
      );
      await this.setIncompatibleFeatures(this.#incompatible | INCOMPAT_CORRUPT);
    } else {
      this.messages.push(
        `qcow2: Image is corrupt: ${message}; further non-fatal corruption events will be suppressed`,
      );
    }
    this.#signaled = true;
  }

  /**
   * Writes the incompatible feature bits (version 3 only: version 2 headers have none) and makes
   * them durable.
   */
  async setIncompatibleFeatures(bits: bigint): Promise<void> {
    this.#incompatible = bits;
    if (this.header.version < 3) return;
    const field = new Uint8Array(8);
    writeU32(field, 0, Number(bits >> 32n));
    writeU32(field, 4, Number(bits & 0xffffffffn));
    await this.device.write(field, 72);
    await this.device.flush();
  }
}

/**
 * Reads `length` bytes at `offset` of `device`; what lies past its end reads as zeros, as QEMU
 * reads past the end of an image file.
 *
 * @returns A new buffer.
 */
export async function readPadded(
  device: BlockDevice,
  offset: number,
  length: number,
): Promise<Uint8Array> {
  const out = new Uint8Array(length);
  if (offset < device.size && length > 0) {
    await device.read(out.subarray(0, Math.min(length, device.size - offset)), offset);
  }
  return out;
}
