/**
 * Internal snapshots of an open qcow2 image: list, create, apply (revert), delete, read a
 * snapshot without applying it, and the saved VM state. {@linkcode Qcow2Image} exposes these as
 * methods; this module holds their logic, working on the image through a {@linkcode SnapshotHost}.
 *
 * Metadata is updated in QEMU's order, so that a crash in the middle leaves an image that a
 * repairing check turns into the state before or after the operation:
 *
 * - create: the snapshot's L1 table is written to new clusters; the refcounts of everything the
 *   active L1 table references are raised and made durable; COPIED flags are cleared in the
 *   active L2 and L1 tables; a new snapshot table is written, the header switched to it in one
 *   write, and the old table freed.
 * - apply: the refcounts of everything the snapshot references are raised and made durable; the
 *   active L1 table is overwritten with the snapshot's; the refcounts of what the old active table
 *   referenced are dropped; COPIED flags are set again where a refcount came down to 1.
 * - delete: the snapshot table without the entry is written and switched to; the refcounts of
 *   what the snapshot referenced are dropped and its L1 table freed; COPIED flags are updated.
 *
 * @module
 */

import type { BlockDevice } from "../../core/block_device.ts";
import type { DriverEvent } from "../../core/driver_event.ts";
import { readU32, writeU32, writeU64 } from "../../core/bytes.ts";
import { QcowError } from "../../core/errors.ts";
import type { Image } from "../image.ts";
import {
  compressedLocation,
  COPIED_HI,
  entryCompressed,
  entryOffset,
  hostHi,
  hostLo,
} from "./entries.ts";
import { l2Entries, MAX_L1_BYTES, type Qcow2Header, sizeToL1 } from "./header.ts";
import type { Refcounts } from "./refcounts.ts";
import { readRefcount, refcountsPerBlock } from "./refcount_math.ts";
import {
  MAX_SNAPSHOT_EXTRA_DATA,
  MAX_SNAPSHOT_TABLE_BYTES,
  SNAPSHOT_ENTRY_BYTES,
} from "./snapshots.ts";
import {
  alignEntry,
  decodeSnapshotTable,
  encodeSnapshotEntries,
  findSnapshot,
  findSnapshotByName,
  MAX_SNAPSHOT_COUNT,
  nextSnapshotId,
  NO_ICOUNT,
  snapshotBytes,
  type SnapshotEntry,
  snapshotText,
} from "./snapshot_table.ts";
import {
  REGION_ACTIVE_L1,
  REGION_ACTIVE_L2,
  REGION_HEADER,
  REGION_INACTIVE_L2,
} from "./overlap.ts";

/** One internal snapshot, as {@linkcode Qcow2Image.listSnapshots} reports it. */
export interface SnapshotInfo {
  /** The snapshot's id (QEMU numbers them "1", "2", ...). */
  id: string;
  /** The snapshot's name (qemu-img's TAG). */
  name: string;
  /** Bytes of saved VM state (0 for disk-only snapshots). */
  vmStateSize: number;
  /** Creation time, seconds since the epoch. */
  dateSec: number;
  /** Creation time, nanoseconds within the second. */
  dateNsec: number;
  /** The guest clock at the snapshot, in nanoseconds. */
  vmClockNsec: bigint;
  /** The guest instruction count, or undefined when not recorded. */
  icount: bigint | undefined;
  /** The virtual disk size when the snapshot was taken. */
  diskSize: number;
  /** Where the snapshot's L1 table is. */
  l1TableOffset: number;
  /** Entries in the snapshot's L1 table. */
  l1Size: number;
}

/** Options for {@linkcode Qcow2Image.createSnapshot}. */
export interface SnapshotCreateOptions {
  /** The id; default: one more than the largest numeric id, as QEMU picks it. */
  id?: string;
  /** Saved VM state to keep with the snapshot (opaque bytes); default none. */
  vmState?: Uint8Array;
  /** Creation time in milliseconds since the epoch; default now. */
  date?: number;
  /** The guest clock in nanoseconds; default 0, as qemu-img records. */
  vmClockNsec?: bigint;
  /** The guest instruction count; default 0, as qemu-img records; null records none. */
  icount?: bigint | null;
}

/** How {@linkcode Qcow2Image.applySnapshot} and friends find a snapshot. */
export interface SnapshotLookupOptions {
  /**
   * "id-or-name" (the default): the first snapshot with that id, else the first with that name,
   * as `qemu-img snapshot -a` looks; "name": by name only, as `qemu-img snapshot -d` looks; "id":
   * by id only.
   */
  match?: "id-or-name" | "name" | "id";
}

/** Options for {@linkcode Qcow2Image.snapshotView}. */
export interface SnapshotViewOptions extends SnapshotLookupOptions {
  /**
   * The view's virtual size: default the snapshot's disk size. `qemu-img convert -l` reads a
   * snapshot with the image's current size instead (zeros or backing data past the snapshot's
   * disk, its data past the current size cut off).
   */
  size?: number;
}

/**
 * What the snapshot operations need from the image: its device and layout, its active L1 table,
 * refcounts and write paths. The image builds one per call; callers hold its exclusive lock.
 */
export interface SnapshotHost {
  /** The image file. */
  device: BlockDevice;
  /** Flushes the device through the image, which keeps track of what is durable. */
  sync(): Promise<void>;
  /** The live header (the operations update the snapshot, size and L1 fields they change). */
  header: Qcow2Header;
  /** Whether L2 entries are extended (16 bytes). */
  extended: boolean;
  /** The refcounts (writable images only). */
  refcounts: Refcounts | undefined;
  /** The virtual size now. */
  size(): number;
  /** Records a new virtual size (after its header field is written). */
  setSize(size: number): void;
  /** The in-memory active L1 table (changed in place; replaced when it grows). */
  l1(): Uint8Array;
  /** Grows the active L1 table to at least `entries` (crash safe on its own). */
  growL1(entries: number): Promise<void>;
  /** Writes cached L2 tables back and forgets them, so tables can be read from the device. */
  dropL2Cache(): Promise<void>;
  /**
   * Writes metadata through the overlap checks, ignoring regions in the `own` bit mask; `event`
   * is announced to the device when it is a {@linkcode DriverEvent} (QEMU has none for the
   * snapshot table and header writes, which use names of their own).
   */
  writeMetadata(
    offset: number,
    data: Uint8Array,
    event: DriverEvent | SnapshotWrite,
    own: number,
  ): Promise<void>;
  /** Rebuilds the overlap map from the tables on disk. */
  rebuildOverlap(): Promise<void>;
  /** A read-only image over `header` and `l1` (a snapshot's), sharing the backing chain. */
  openView(header: Qcow2Header, l1: Uint8Array): Image;
}

/** Names for the snapshot operations' writes that QEMU announces no blkdebug event for. */
type SnapshotWrite = "snapshot_table_write" | "snapshot_header_update" | "snapshot_size_update";

function corrupt(message: string): QcowError {
  return new QcowError("CORRUPT_METADATA", message);
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

const L2_OWN = (1 << REGION_ACTIVE_L2) | (1 << REGION_INACTIVE_L2);

/** Reads `bytes` at `offset`; what lies past the end of the file reads as zeros, as in QEMU. */
async function readZeroFilled(
  device: BlockDevice,
  offset: number,
  bytes: number,
): Promise<Uint8Array> {
  const data = new Uint8Array(bytes);
  const available = Math.min(bytes, device.size - offset);
  if (available > 0) await device.read(data.subarray(0, available), offset);
  return data;
}

/** The snapshot table of the image, decoded, with its size in bytes. */
export async function readSnapshots(
  host: Pick<SnapshotHost, "device" | "header" | "size">,
): Promise<{ entries: SnapshotEntry[]; size: number }> {
  const { device, header } = host;
  const count = header.nbSnapshots;
  if (count === 0) return { entries: [], size: 0 };
  const cap = MAX_SNAPSHOT_TABLE_BYTES + SNAPSHOT_ENTRY_BYTES + MAX_SNAPSHOT_EXTRA_DATA +
    2 * 0xffff;
  let length = Math.min(cap, Math.max(64 * 1024, count * 64));
  for (;;) {
    const table = await readZeroFilled(device, header.snapshotsOffset, length);
    const needed = measureTable(table, count);
    if (needed <= table.length || length >= cap) {
      return decodeSnapshotTable(table, count, host.size());
    }
    length = Math.min(cap, Math.max(needed, length * 2));
  }
}

/** Bytes the first `count` entries need, as far as `table` tells (more once it is read). */
function measureTable(table: Uint8Array, count: number): number {
  let at = 0;
  for (let i = 0; i < count; i++) {
    at = alignEntry(at);
    if (at + SNAPSHOT_ENTRY_BYTES > table.length) return at + SNAPSHOT_ENTRY_BYTES;
    const extra = readU32(table, at + 36);
    if (extra > MAX_SNAPSHOT_EXTRA_DATA) return at; // the decoder reports it
    at += SNAPSHOT_ENTRY_BYTES + extra + ((table[at + 12]! << 8) | table[at + 13]!) +
      ((table[at + 14]! << 8) | table[at + 15]!);
    if (at > table.length) return at;
  }
  return at;
}

function toInfo(entry: SnapshotEntry): SnapshotInfo {
  return {
    id: snapshotText(entry.idBytes),
    name: snapshotText(entry.nameBytes),
    vmStateSize: entry.vmStateSize,
    dateSec: entry.dateSec,
    dateNsec: entry.dateNsec,
    vmClockNsec: entry.vmClockNsec,
    icount: entry.icount === NO_ICOUNT ? undefined : entry.icount,
    diskSize: entry.diskSize,
    l1TableOffset: entry.l1TableOffset,
    l1Size: entry.l1Size,
  };
}

/** Lists the snapshots in table order. */
export async function listSnapshots(host: SnapshotHost): Promise<SnapshotInfo[]> {
  return (await readSnapshots(host)).entries.map(toInfo);
}

function lookup(
  entries: readonly SnapshotEntry[],
  ref: string,
  options: SnapshotLookupOptions,
): number {
  const match = options.match ?? "id-or-name";
  if (match === "name") return findSnapshotByName(entries, ref);
  if (match === "id") {
    const bytes = snapshotBytes(ref);
    return entries.findIndex((e) => snapshotText(e.idBytes) === snapshotText(bytes));
  }
  return findSnapshot(entries, ref);
}

function notFound(ref: string): QcowError {
  return new QcowError("NOT_FOUND", `Snapshot '${ref}' not found`);
}

/** Reads a snapshot's L1 table, checking where it lies first. */
async function readSnapshotL1(host: SnapshotHost, entry: SnapshotEntry): Promise<Uint8Array> {
  const cs = 2 ** host.header.clusterBits;
  const what = `Snapshot '${snapshotText(entry.nameBytes)}'`;
  if (entry.l1Size === 0) return new Uint8Array(0);
  if (entry.l1TableOffset % cs !== 0) {
    throw corrupt(`${what} has an unaligned L1 table offset ${hex(entry.l1TableOffset)}`);
  }
  if (entry.l1Size * 8 > MAX_L1_BYTES) {
    throw corrupt(`${what} has an L1 table that is too large (${entry.l1Size} entries)`);
  }
  if (entry.l1TableOffset + entry.l1Size * 8 > host.device.size) {
    throw corrupt(`${what} has its L1 table past the end of the file`);
  }
  const l1 = new Uint8Array(entry.l1Size * 8);
  await host.device.read(l1, entry.l1TableOffset);
  return l1;
}

/** The L2 table offset in L1 entry `i`, checked; 0 for none. */
function l2At(host: SnapshotHost, l1: Uint8Array, i: number): number {
  const offset = entryOffset(readU32(l1, i * 8), readU32(l1, i * 8 + 4));
  if (offset === 0) return 0;
  const cs = 2 ** host.header.clusterBits;
  if (offset % cs !== 0 || offset + cs > host.device.size) {
    throw corrupt(`L2 table offset ${hex(offset)} is unaligned or past the end (L1 index ${i})`);
  }
  return offset;
}

async function readL2(host: SnapshotHost, offset: number): Promise<Uint8Array> {
  const table = new Uint8Array(2 ** host.header.clusterBits);
  host.device.event?.("l2_load");
  await host.device.read(table, offset);
  return table;
}

/**
 * Adds `addend` to the refcount of every cluster `l1` references: each L2 table, and each
 * cluster mapped in it (qcow2 counts one reference per L1 table, so a shared L2 table's clusters
 * are counted once per table that shares it).
 */
async function addReferences(
  host: SnapshotHost,
  l1: Uint8Array,
  addend: 1 | -1,
  keep?: Map<number, Uint8Array>,
): Promise<void> {
  const refcounts = host.refcounts!;
  const bits = host.header.clusterBits;
  const cs = 2 ** bits;
  const stride = host.extended ? 16 : 8;
  for (let i = 0; i < l1.length / 8; i++) {
    const l2 = l2At(host, l1, i);
    if (l2 === 0) continue;
    const table = await readL2(host, l2);
    // Runs of contiguous clusters are counted in one call.
    let runStart = -1;
    let runLength = 0;
    const flushRun = async (): Promise<void> => {
      if (runLength > 0) await refcounts.update(runStart, runLength, addend);
      runLength = 0;
    };
    for (let e = 0; e < table.length; e += stride) {
      const hi = readU32(table, e);
      const lo = readU32(table, e + 4);
      if (hi === 0 && lo === 0) continue;
      if (entryCompressed(hi)) {
        await flushRun();
        const { offset, length } = compressedLocation(hi, lo, bits);
        const first = Math.floor(offset / cs);
        const last = Math.floor((offset + length - 1) / cs);
        await refcounts.update(first, last - first + 1, addend);
        continue;
      }
      const at = entryOffset(hi, lo);
      if (at === 0) continue;
      if (at % cs !== 0) {
        throw corrupt(`Cluster allocation offset ${hex(at)} unaligned (L2 offset ${hex(l2)})`);
      }
      const cluster = at / cs;
      if (runLength > 0 && cluster === runStart + runLength) {
        runLength++;
      } else {
        await flushRun();
        runStart = cluster;
        runLength = 1;
      }
    }
    await flushRun();
    await refcounts.update(l2 / cs, 1, addend);
    if (keep !== undefined && keep.size * cs < KEEP_BYTES) keep.set(l2, table);
  }
}

/** L2 tables a snapshot create keeps in memory between its two passes, at most. */
const KEEP_BYTES = 64 * 1024 * 1024;

/**
 * Clears the COPIED flags of the first `entries` active L1 entries and of their L2 tables (right
 * after a new snapshot took a reference to all of them), L2 tables first, then the L1 table,
 * without flushing: the caller makes them durable before the snapshot table points at anything.
 * Tables in `kept` are the ones just read (unchanged since).
 */
async function clearCopied(
  host: SnapshotHost,
  entries: number,
  kept: Map<number, Uint8Array>,
): Promise<void> {
  const stride = host.extended ? 16 : 8;
  const l1 = host.l1();
  let l1Changed = false;
  for (let i = 0; i < entries; i++) {
    const l2 = l2At(host, l1, i);
    if (l2 === 0) continue;
    const table = kept.get(l2) ?? await readL2(host, l2);
    let changed = false;
    for (let e = 0; e < table.length; e += stride) {
      const hi = table[e]!;
      if ((hi & 0x80) === 0 || (hi & 0x40) !== 0) continue; // not COPIED, or compressed
      table[e] = hi & 0x7f;
      changed = true;
    }
    if (changed) await host.writeMetadata(l2, table, "l2_update", L2_OWN);
    const hi = readU32(l1, i * 8);
    if ((hi & COPIED_HI) !== 0) {
      writeU32(l1, i * 8, (hi & ~COPIED_HI) >>> 0);
      l1Changed = true;
    }
  }
  if (l1Changed) {
    await host.writeMetadata(host.header.l1TableOffset, l1, "l1_update", 1 << REGION_ACTIVE_L1);
  }
}

/**
 * Sets the COPIED flag in the active L1 and L2 tables exactly where the (in-memory) refcount is
 * 1, writing the tables that change, without flushing. Callers run it after the last reference
 * that went away is gone on disk, so a refcount not yet durable is at worst a leak, and commit
 * the refcounts and these tables together.
 */
async function syncCopied(host: SnapshotHost): Promise<void> {
  const refcounts = host.refcounts!;
  const cs = 2 ** host.header.clusterBits;
  const order = host.header.refcountOrder;
  const perBlock = refcountsPerBlock(host.header.clusterBits, order);
  const stride = host.extended ? 16 : 8;
  const l1 = host.l1();
  let l1Changed = false;
  for (let i = 0; i < l1.length / 8; i++) {
    const l2 = l2At(host, l1, i);
    if (l2 === 0) continue;
    const table = await readL2(host, l2);
    let changed = false;
    // The refcount block of the last cluster looked at, while no await intervened.
    let memoIndex = -1;
    let memo: Uint8Array | null | undefined;
    for (let e = 0; e < table.length; e += stride) {
      const hi = readU32(table, e);
      if (entryCompressed(hi)) continue;
      const at = entryOffset(hi, readU32(table, e + 4));
      if (at === 0) continue;
      const cluster = Math.floor(at / cs);
      const r = Math.floor(cluster / perBlock);
      if (r !== memoIndex) {
        memo = refcounts.peekBlock(cluster);
        memoIndex = r;
      }
      let count: number;
      if (memo === undefined) {
        count = await refcounts.get(cluster);
        memoIndex = -1;
      } else if (memo === null) {
        count = 0;
      } else {
        const w = cluster - r * perBlock;
        count = order === 4 ? (memo[w * 2]! << 8) | memo[w * 2 + 1]! : readRefcount(memo, w, order);
      }
      const copied = count === 1;
      const want = (copied ? hi | COPIED_HI : hi & ~COPIED_HI) >>> 0;
      if (want !== hi) {
        writeU32(table, e, want);
        changed = true;
      }
    }
    if (changed) await host.writeMetadata(l2, table, "l2_update", L2_OWN);
    const hi = readU32(l1, i * 8);
    const copied = (await refcounts.get(l2 / cs)) === 1;
    const want = (copied ? hi | COPIED_HI : hi & ~COPIED_HI) >>> 0;
    if (want !== hi) {
      writeU32(l1, i * 8, want);
      l1Changed = true;
    }
  }
  if (l1Changed) {
    await host.writeMetadata(host.header.l1TableOffset, l1, "l1_update", 1 << REGION_ACTIVE_L1);
  }
}

/** An L1 table's entries without their COPIED flags (as a snapshot keeps them). */
function withoutCopied(l1: Uint8Array): Uint8Array {
  const copy = l1.slice();
  for (let p = 0; p < copy.length; p += 8) writeU32(copy, p, (readU32(copy, p) & ~COPIED_HI) >>> 0);
  return copy;
}

/** Writes cached metadata and forgets cached L2 tables: the operations read the device. */
async function prepare(host: SnapshotHost): Promise<void> {
  if (host.refcounts === undefined) {
    throw new QcowError("READ_ONLY", `Image ${host.device.name} is read-only`);
  }
  // Dirty tables are written (and synced) in their dependency order; guest data written in
  // place needs no barrier: a snapshot shares whatever the cluster holds.
  await host.dropL2Cache();
  await host.refcounts.flush();
}

/** Makes refcount changes durable. */
async function commitRefcounts(host: SnapshotHost): Promise<void> {
  const refcounts = host.refcounts!;
  // Writing dirty refcount blocks ends with a flush of the device already.
  if (refcounts.cache.dirtyCount > 0) await refcounts.flush();
  else await host.sync();
}

/**
 * Writes `entries` as the new snapshot table in new clusters, points the header at it in one
 * write, then frees the old table. With `pending`, metadata written before (and not yet made
 * durable) is made durable together with the new table, before the header switches.
 */
async function writeSnapshotTable(
  host: SnapshotHost,
  entries: SnapshotEntry[],
  oldSize: number,
  pending = false,
): Promise<void> {
  const refcounts = host.refcounts!;
  const { header } = host;
  const cs = 2 ** header.clusterBits;
  const table = encodeSnapshotEntries(entries);
  let offset = 0;
  if (entries.length > 0) {
    offset = await refcounts.allocate(Math.ceil(table.length / cs));
    await host.writeMetadata(offset, table, "snapshot_table_write", 0);
  }
  // The table and the refcounts of its clusters, durable before the header points at them.
  if (entries.length > 0 || pending) await commitRefcounts(host);
  const fields = new Uint8Array(12);
  writeU32(fields, 0, entries.length);
  writeU64(fields, 4, offset);
  await host.writeMetadata(60, fields, "snapshot_header_update", 1 << REGION_HEADER);
  await host.sync();
  const oldOffset = header.snapshotsOffset;
  const hadTable = header.nbSnapshots > 0 && oldSize > 0;
  header.nbSnapshots = entries.length;
  header.snapshotsOffset = offset;
  // Freeing the old table may wait for the next commit (or the image's flush): until then a
  // crash can only leak it.
  if (hadTable) await refcounts.free(oldOffset, oldSize);
}

/** The virtual offset where VM state is kept for an image of `diskSize` bytes. */
function vmStateOffset(host: SnapshotHost, diskSize: number): number {
  const bits = host.header.clusterBits;
  return sizeToL1(diskSize, bits, host.extended) * 2 ** bits * l2Entries(bits, host.extended);
}

/**
 * Writes `state` into fresh clusters mapped by fresh L2 tables, from L1 index `first` on, into
 * `l1` (a snapshot's table, which alone references them).
 */
async function storeVmState(
  host: SnapshotHost,
  l1: Uint8Array,
  first: number,
  state: Uint8Array,
): Promise<void> {
  const refcounts = host.refcounts!;
  const cs = 2 ** host.header.clusterBits;
  const perTable = l2Entries(host.header.clusterBits, host.extended);
  const stride = host.extended ? 16 : 8;
  const clusters = Math.ceil(state.length / cs);
  for (let t = 0; t * perTable < clusters; t++) {
    const table = new Uint8Array(cs);
    const n = Math.min(perTable, clusters - t * perTable);
    for (let k = 0; k < n; k++) {
      const start = (t * perTable + k) * cs;
      const data = new Uint8Array(cs);
      data.set(state.subarray(start, Math.min(start + cs, state.length)));
      const at = await refcounts.allocate(1);
      await host.writeMetadata(at, data, "vmstate_save", 0);
      writeU32(table, k * stride, (hostHi(at) | COPIED_HI) >>> 0);
      writeU32(table, k * stride + 4, hostLo(at));
      if (host.extended) writeU32(table, k * stride + 12, 0xffffffff);
    }
    const l2 = await refcounts.allocate(1);
    await host.writeMetadata(l2, table, "l2_alloc_write", 0);
    writeU32(l1, (first + t) * 8, (hostHi(l2) | COPIED_HI) >>> 0);
    writeU32(l1, (first + t) * 8 + 4, hostLo(l2));
  }
}

/**
 * Creates a snapshot of the active state.
 *
 * @returns The new snapshot.
 */
export async function createSnapshot(
  host: SnapshotHost,
  name: string,
  options: SnapshotCreateOptions = {},
): Promise<SnapshotInfo> {
  const nameBytes = snapshotBytes(name);
  if (nameBytes.length > 0xffff) {
    throw new QcowError("INVALID_ARGUMENT", "A snapshot name takes at most 65535 bytes");
  }
  await prepare(host);
  const { header } = host;
  const refcounts = host.refcounts!;
  const cs = 2 ** header.clusterBits;
  const { entries, size: oldSize } = await readSnapshots(host);
  if (entries.length >= MAX_SNAPSHOT_COUNT) {
    throw new QcowError("TOO_LARGE", `Maximum number of snapshots (${MAX_SNAPSHOT_COUNT}) reached`);
  }
  const id = options.id ?? nextSnapshotId(entries);
  const idBytes = snapshotBytes(id);
  if (id === "" || idBytes.length > 0xffff) {
    throw new QcowError("INVALID_ARGUMENT", "A snapshot id must be 1 to 65535 bytes");
  }
  if (entries.some((e) => snapshotText(e.idBytes) === snapshotText(idBytes))) {
    throw new QcowError("INVALID_ARGUMENT", `A snapshot with id '${id}' already exists`);
  }
  const state = options.vmState ?? new Uint8Array(0);
  const diskSize = host.size();
  const active = host.l1();
  const activeEntries = active.length / 8;
  // With VM state, the snapshot gets its own tables for it past the disk's L1 entries.
  const vmFirst = sizeToL1(diskSize, header.clusterBits, host.extended);
  const vmTables = Math.ceil(
    Math.ceil(state.length / cs) / l2Entries(header.clusterBits, host.extended),
  );
  const l1Size = state.length > 0 ? Math.max(activeEntries, vmFirst + vmTables) : activeEntries;
  if (l1Size * 8 > MAX_L1_BYTES) {
    throw new QcowError("TOO_LARGE", `The snapshot's L1 table would need ${l1Size} entries`);
  }
  // The active entries the snapshot shares (all of them, or those before the VM state).
  const shared = withoutCopied(
    state.length > 0 ? active.subarray(0, Math.min(activeEntries, vmFirst) * 8) : active,
  );
  const l1 = new Uint8Array(l1Size * 8);
  l1.set(shared);
  const date = options.date ?? Date.now();
  const entry: SnapshotEntry = {
    l1TableOffset: 0,
    l1Size,
    idBytes,
    nameBytes,
    dateSec: Math.floor(date / 1000),
    dateNsec: Math.floor(date % 1000) * 1_000_000,
    vmClockNsec: options.vmClockNsec ?? 0n,
    vmStateSize: state.length,
    diskSize,
    icount: options.icount === null ? NO_ICOUNT : options.icount ?? 0n,
    unknownExtraData: new Uint8Array(0),
    extraDataSize: 24,
  };
  // Fails now rather than after the refcounts changed.
  encodeSnapshotEntries([...entries, entry]);

  const kept = new Map<number, Uint8Array>();
  try {
    if (state.length > 0) await storeVmState(host, l1, vmFirst, state);
    if (l1Size > 0) {
      entry.l1TableOffset = await refcounts.allocate(Math.ceil((l1Size * 8) / cs));
      await host.writeMetadata(entry.l1TableOffset, l1, "l1_update", 0);
    }
    await addReferences(host, shared, 1, kept);
  } catch (error) {
    // Nothing points at the new clusters yet: forget the unwritten counts, keep the image as it was.
    refcounts.cache.clear();
    throw overflow(error, header.refcountOrder);
  }
  await commitRefcounts(host);
  await clearCopied(host, shared.length / 8, kept);
  kept.clear();
  await writeSnapshotTable(host, [...entries, entry], oldSize, true);
  await host.rebuildOverlap();
  return toInfo(entry);
}

/**
 * A refcount that would pass its width's maximum (a snapshot too many for narrow refcounts) as
 * the caller's mistake rather than corruption; other errors unchanged.
 */
function overflow(error: unknown, refcountOrder: number): unknown {
  if (!(error instanceof QcowError) || !/would exceed/.test(error.message)) return error;
  return new QcowError(
    "INVALID_ARGUMENT",
    `Cannot share clusters with one more snapshot: ${error.message} (refcount_bits=${
      2 ** refcountOrder
    })`,
    { cause: error },
  );
}

/** Finds a snapshot or fails with `NOT_FOUND`. */
async function find(
  host: SnapshotHost,
  ref: string,
  options: SnapshotLookupOptions,
): Promise<{ entries: SnapshotEntry[]; size: number; index: number }> {
  const { entries, size } = await readSnapshots(host);
  const index = lookup(entries, ref, options);
  if (index < 0) throw notFound(ref);
  return { entries, size, index };
}

/** Reverts the active state to a snapshot's (the snapshot stays). */
export async function applySnapshot(
  host: SnapshotHost,
  ref: string,
  options: SnapshotLookupOptions = {},
): Promise<SnapshotInfo> {
  await prepare(host);
  const { header } = host;
  const { entries, index } = await find(host, ref, options);
  const entry = entries[index]!;
  const snapshotL1 = await readSnapshotL1(host, entry);
  if (entry.diskSize !== host.size()) {
    if (header.version < 3) {
      throw new QcowError(
        "UNSUPPORTED_FEATURE",
        "Can't resize a v2 image which has snapshots",
      );
    }
    // As QEMU, the disk takes the snapshot's size first.
    await host.growL1(sizeToL1(entry.diskSize, header.clusterBits, host.extended));
    const field = new Uint8Array(8);
    writeU64(field, 0, entry.diskSize);
    await host.writeMetadata(24, field, "snapshot_size_update", 1 << REGION_HEADER);
    await host.sync();
    header.size = entry.diskSize;
    host.setSize(Math.floor(entry.diskSize / 512) * 512);
  }
  await host.growL1(entry.l1Size);
  const old = host.l1().slice();
  try {
    await addReferences(host, snapshotL1, 1);
  } catch (error) {
    host.refcounts!.cache.clear();
    throw overflow(error, header.refcountOrder);
  }
  await commitRefcounts(host);
  const active = host.l1();
  const next = new Uint8Array(active.length);
  next.set(withoutCopied(snapshotL1));
  await replaceActiveL1(host, next);
  active.set(next);
  // The old active state is gone on disk: what follows can only leak if interrupted.
  await addReferences(host, old, -1);
  await syncCopied(host);
  await commitRefcounts(host);
  await host.rebuildOverlap();
  return toInfo(entry);
}

/**
 * Makes `next` the active L1 table on disk. A table within one sector is overwritten in place, as
 * QEMU does; a larger one is written to new clusters and the header switched to it with one write,
 * so a write torn between sectors cannot leave a table that is half the old state and half the
 * new one.
 */
async function replaceActiveL1(host: SnapshotHost, next: Uint8Array): Promise<void> {
  const { header } = host;
  if (next.length <= 512) {
    await host.writeMetadata(header.l1TableOffset, next, "l1_update", 1 << REGION_ACTIVE_L1);
    await host.sync();
    return;
  }
  const cs = 2 ** header.clusterBits;
  const bytes = Math.ceil(next.length / cs) * cs;
  const old = header.l1TableOffset;
  const offset = await host.refcounts!.allocate(bytes / cs);
  await commitRefcounts(host);
  await host.writeMetadata(offset, next, "l1_grow_write_table", 1 << REGION_ACTIVE_L1);
  await host.sync();
  const fields = new Uint8Array(12);
  writeU32(fields, 0, header.l1Size);
  writeU64(fields, 4, offset);
  await host.writeMetadata(36, fields, "l1_grow_activate_table", 1 << REGION_HEADER);
  await host.sync();
  header.l1TableOffset = offset;
  // The old table can only leak from here; the caller commits the refcounts.
  await host.refcounts!.free(old, bytes);
}

/** Deletes a snapshot, dropping its references (clusters only it used become free). */
export async function deleteSnapshot(
  host: SnapshotHost,
  ref: string,
  options: SnapshotLookupOptions = {},
): Promise<SnapshotInfo> {
  await prepare(host);
  const cs = 2 ** host.header.clusterBits;
  const { entries, size, index } = await find(host, ref, options);
  const entry = entries[index]!;
  const snapshotL1 = await readSnapshotL1(host, entry);
  const rest = entries.filter((_, i) => i !== index);
  await writeSnapshotTable(host, rest, size);
  // From here a crash only leaks clusters.
  await addReferences(host, snapshotL1, -1);
  if (entry.l1Size > 0) {
    await host.refcounts!.free(entry.l1TableOffset, Math.ceil((entry.l1Size * 8) / cs) * cs);
  }
  await syncCopied(host);
  await commitRefcounts(host);
  await host.rebuildOverlap();
  return toInfo(entry);
}

/** A read-only image of a snapshot's contents (its disk size, its tables). */
export async function snapshotView(
  host: SnapshotHost,
  ref: string,
  options: SnapshotViewOptions = {},
): Promise<Image> {
  const size = options.size ?? -1;
  if (
    options.size !== undefined && !(Number.isSafeInteger(size) && size >= 0 && size % 512 === 0)
  ) {
    throw new QcowError("INVALID_ARGUMENT", `A view size must be a multiple of 512, got ${size}`);
  }
  const { entries, index } = await find(host, ref, options);
  const entry = entries[index]!;
  const l1 = await readSnapshotL1(host, entry);
  const viewSize = options.size ?? entry.diskSize;
  const needed = sizeToL1(viewSize, host.header.clusterBits, host.extended);
  const table = new Uint8Array(Math.max(needed, entry.l1Size) * 8);
  table.set(l1);
  return host.openView(
    { ...host.header, size: viewSize, l1Size: table.length / 8, l1TableOffset: 0 },
    table,
  );
}

/** The VM state saved with a snapshot (empty when it has none). */
export async function readSnapshotVmState(
  host: SnapshotHost,
  ref: string,
  options: SnapshotLookupOptions = {},
): Promise<Uint8Array> {
  const { entries, index } = await find(host, ref, options);
  const entry = entries[index]!;
  const state = new Uint8Array(entry.vmStateSize);
  if (state.length === 0) return state;
  const start = vmStateOffset(host, entry.diskSize);
  const l1 = await readSnapshotL1(host, entry);
  const needed = sizeToL1(start + state.length, host.header.clusterBits, host.extended);
  const table = new Uint8Array(Math.max(needed, entry.l1Size) * 8);
  table.set(l1);
  const viewSize = Math.ceil((start + state.length) / 512) * 512;
  const view = host.openView(
    { ...host.header, size: viewSize, l1Size: table.length / 8, l1TableOffset: 0 },
    table,
  );
  try {
    await view.read(state, start);
  } finally {
    await view.close();
  }
  return state;
}
