/**
 * The refcount part of a qcow2 check, as QEMU's qcow2_check_refcounts: counting every reference
 * in memory, comparing the counts with the stored refcounts, rebuilding the refcount structure
 * when it cannot be trusted, and checking COPIED flags; each repaired when allowed.
 *
 * @module
 */

import { readU32, readU64, writeU32, writeU64 } from "../../core/bytes.ts";
import { entryOffset, l1ReservedBits } from "./entries.ts";
import {
  CLUSTER_COMPRESSED,
  CLUSTER_NORMAL,
  CLUSTER_UNALLOCATED,
  CLUSTER_ZERO_ALLOC,
  clusterType,
  compressedRange,
  type EntryFormat,
  hex64,
  hexAlt,
  l2ReservedBits,
  offsetInCluster,
  reftableReservedBits,
} from "./check_entries.ts";
import {
  type CheckCounts,
  type CheckImage,
  OL_ACTIVE_L1,
  OL_ACTIVE_L2,
  OL_INACTIVE_L2,
  zeroCounts,
} from "./check_image.ts";
import { type Counts, ReferenceCounts } from "./check_refcount_array.ts";
import { MAX_L1_BYTES } from "./header.ts";
import { readRefcount, writeRefcount } from "./refcount_math.ts";
import { encodeRefcountBlock, planRebuild } from "./repair_layout.ts";

/** What a pass may repair (QEMU's BDRV_FIX_LEAKS and BDRV_FIX_ERRORS). */
export interface Fix {
  leaks: boolean;
  errors: boolean;
}

/** Repair nothing. */
export const NO_FIX: Fix = { leaks: false, errors: false };
const FIX_LEAKS: Fix = { leaks: true, errors: false };

const COPIED = 0x80000000;
const EIO = "Input/output error";

/** One pass over the refcounts: the image, the counts rebuilt from references, and findings. */
export interface Pass {
  image: CheckImage;
  counts: ReferenceCounts;
  format: EntryFormat;
  /** The refcount structure cannot be trusted and must be rebuilt. */
  rebuild: boolean;
  /** The last cluster with a stored or counted reference, from the last comparison. */
  highest: number;
  /** Check errors of the last comparison that came from unreadable refcount blocks. */
  unreadable: number;
  /** Cluster ranges referenced past the end of the file (not counted), which a rebuild avoids. */
  pastEnd: [number, number][];
  /** The last comparison found every stored refcount equal to its count. */
  exact: boolean;
  /** Active L2 tables as read by the counting pass, kept for the COPIED check (bounded). */
  l2Tables: Map<number, Uint8Array>;
}

/** Bytes of active L2 tables the counting pass keeps for the COPIED check. */
const MAX_KEPT_L2_BYTES = 64 * 1024 * 1024;

/** Ranges referenced past the end of the file that a rebuild keeps track of. */
const MAX_PAST_END = 4096;

function message(pass: Pass, line: string): void {
  pass.image.messages.push(line);
}

/** Counts one reference to every cluster `[offset, offset + size)` touches. */
function addReference(
  pass: Pass,
  res: CheckCounts,
  offset: number,
  size: number,
  shownOffset?: string,
): void {
  if (size <= 0) return;
  const cs = pass.image.clusterSize;
  // The last cluster may be partly past the end of the file; anything further is not counted.
  if (offset + size - pass.image.device.size >= cs) {
    message(
      pass,
      "ERROR: counting reference for region exceeding the end of the file by one cluster or more: " +
        `offset ${shownOffset ?? `0x${offset.toString(16)}`} size 0x${size.toString(16)}`,
    );
    res.corruptions++;
    if (pass.pastEnd.length < MAX_PAST_END) {
      pass.pastEnd.push([Math.floor(offset / cs), Math.floor((offset + size - 1) / cs)]);
    }
    return;
  }
  const last = Math.floor((offset + size - 1) / cs);
  for (let cluster = Math.floor(offset / cs); cluster <= last; cluster++) {
    if (!pass.counts.increment(cluster)) {
      message(pass, `ERROR: overflow cluster offset=0x${(cluster * cs).toString(16)}`);
      message(
        pass,
        "Use qemu-img amend to increase the refcount entry width or qemu-img convert to create a clean copy if the image cannot be opened for writing",
      );
      res.corruptions++;
    }
  }
}

/**
 * Turns an unaligned L2 entry that holds no data into a plain zero entry, as QEMU repairs it.
 *
 * @returns "fixed", or "overlap" when the write would hit other metadata.
 */
async function zeroEntry(
  pass: Pass,
  res: CheckCounts,
  l2Offset: number,
  table: Uint8Array,
  index: number,
  active: boolean,
): Promise<"fixed" | "overlap"> {
  const { image } = pass;
  const at = index * image.l2EntryBytes;
  if (image.extendedL2) {
    // Allocated subclusters read as zero from now on.
    const zeroBits = readU32(table, at + 8) | readU32(table, at + 12);
    writeU32(table, at + 8, zeroBits >>> 0);
    writeU32(table, at + 12, 0);
    writeU32(table, at, 0);
    writeU32(table, at + 4, 0);
  } else {
    writeU32(table, at, 0);
    writeU32(table, at + 4, 1);
  }
  const entry = table.slice(at, at + image.l2EntryBytes);
  const written = await image.writeChecked(
    active ? OL_ACTIVE_L2 : OL_INACTIVE_L2,
    l2Offset + at,
    entry,
  );
  if (!written) {
    message(pass, "ERROR: Overlap check failed");
    res.checkErrors++;
    return "overlap";
  }
  await image.device.flush();
  res.corruptions--;
  res.corruptionsFixed++;
  return "fixed";
}

/** How cluster indices come out of standard L2 entries. */
interface Geometry {
  /** log2 of the cluster size. */
  bits: number;
  /** Clusters per 2^32 bytes (the weight of an entry's high word). */
  hiClusters: number;
  /** One past the last cluster wholly inside the file. */
  end: number;
}

/** Allocation figures of a run of data clusters, and the offset that would continue it. */
interface DataRun {
  allocated: number;
  fragmented: number;
  next: number;
}

/**
 * Counts the references of standard L2 entries `[from, to)` that point at a whole, aligned data
 * cluster inside the file without reserved bits, in a tight loop with integer arithmetic only, and
 * tallies their allocation and fragmentation.
 *
 * @returns The index of the first entry it did not count (any other kind, or a count at its
 * maximum), or `to`.
 */
function countDataRun(
  view: DataView,
  from: number,
  to: number,
  counts: Counts,
  max: number,
  geometry: Geometry,
  run: DataRun,
): number {
  const { bits, hiClusters, end } = geometry;
  const size = 2 ** bits;
  const mask = size - 1;
  for (let i = from; i < to; i++) {
    const hi = view.getUint32(i * 8);
    const lo = view.getUint32(i * 8 + 4);
    if ((hi | lo) === 0) continue; // unallocated
    if ((hi & 0x7f000000) !== 0 || (lo & mask) !== 0 || (lo | (hi & 0xffffff)) === 0) return i;
    const cluster = (hi & 0xffffff) * hiClusters + (lo >>> bits);
    if (cluster >= end) return i;
    const value = counts[cluster]!;
    if (value >= max) return i;
    counts[cluster] = value + 1;
    run.allocated++;
    const offset = cluster * size;
    if (run.next !== 0 && offset !== run.next) run.fragmented++;
    run.next = offset + size;
  }
  return to;
}

/** Counts the references of one L2 table and checks its entries. */
async function checkL2(
  pass: Pass,
  res: CheckCounts,
  l2Offset: number,
  fragmentation: boolean,
  fix: Fix,
  active: boolean,
): Promise<string | undefined> {
  const { image } = pass;
  const cs = image.clusterSize;
  const table = await image.read(l2Offset, cs);
  if (active && (pass.l2Tables.size + 1) * cs <= MAX_KEPT_L2_BYTES) {
    pass.l2Tables.set(l2Offset, table);
  }
  const view = new DataView(table.buffer, table.byteOffset, table.byteLength);
  // The common entry (a standard, aligned data cluster inside the file) takes a short path.
  const fast = !image.extendedL2 && !image.dataFile;
  const counts = pass.counts;
  const geometry: Geometry = {
    bits: image.clusterBits,
    hiClusters: 2 ** (32 - image.clusterBits),
    // Clusters wholly inside the file, all covered by the counts.
    end: Math.min(Math.floor(image.device.size / cs), counts.size),
  };
  const run: DataRun = { allocated: 0, fragmented: 0, next: 0 };
  for (let i = 0; i < image.l2Size; i++) {
    if (fast) {
      // Standard data entries inside the file (nearly all of them) are counted in a tight loop.
      i = countDataRun(view, i, image.l2Size, counts.storage, counts.max, geometry, run);
      if (fragmentation) {
        res.allocatedClusters += run.allocated;
        res.fragmentedClusters += run.fragmented;
      }
      run.allocated = 0;
      run.fragmented = 0;
      if (i === image.l2Size) break;
    }
    const at = i * image.l2EntryBytes;
    let hi = view.getUint32(at);
    const lo = view.getUint32(at + 4);
    const bitmapZero = image.extendedL2 ? readU32(table, at + 8) : 0;
    const bitmapAlloc = image.extendedL2 ? readU32(table, at + 12) : 0;
    const type = clusterType(hi, lo, pass.format);
    if (type !== CLUSTER_COMPRESSED && l2ReservedBits(hi, lo)) {
      message(pass, `ERROR found l2 entry with reserved bits set: ${hex64(hi, lo)}`);
      res.corruptions++;
    }
    if (type === CLUSTER_COMPRESSED) {
      if ((hi & COPIED) !== 0) {
        hi = (hi & ~COPIED) >>> 0;
        const where = compressedRange(hi, lo, image.clusterBits);
        message(
          pass,
          `ERROR: coffset=0x${
            hex64(where.offsetHi, lo)
          }: copied flag must never be set for compressed clusters`,
        );
        res.corruptions++;
      }
      if (image.dataFile) {
        message(pass, `ERROR compressed cluster ${i} with data file, entry=0x${hex64(hi, lo)}`);
        res.corruptions++;
        continue;
      }
      if (bitmapZero !== 0 || bitmapAlloc !== 0) {
        message(
          pass,
          `ERROR compressed cluster ${i} with non-zero subcluster allocation bitmap, entry=0x${
            hex64(hi, lo)
          }`,
        );
        res.corruptions++;
        continue;
      }
      const data = compressedRange(hi, lo, image.clusterBits);
      addReference(pass, res, data.offset, data.length, `0x${hex64(data.offsetHi, lo)}`);
      if (fragmentation) {
        res.allocatedClusters++;
        res.compressedClusters++;
        // Compressed clusters share sectors, so QEMU counts every one as fragmented.
        res.fragmentedClusters++;
      }
    } else if (type === CLUSTER_NORMAL || type === CLUSTER_ZERO_ALLOC) {
      const offset = entryOffset(hi, lo);
      if ((bitmapZero & bitmapAlloc) !== 0) {
        res.corruptions++;
        message(
          pass,
          `ERROR offset=${
            offset.toString(16)
          }: Allocated cluster has corrupted subcluster allocation bitmap`,
        );
      }
      if (offsetInCluster(lo & 0xfffffe00, cs) !== 0) {
        res.corruptions++;
        const holdsData = image.extendedL2 ? bitmapAlloc !== 0 : (lo & 1) === 0;
        if (!holdsData) {
          message(
            pass,
            `${fix.errors ? "Repairing" : "ERROR"} offset=${
              offset.toString(16)
            }: Preallocated cluster is not properly aligned; L2 entry corrupted.`,
          );
          if (fix.errors) {
            const outcome = await zeroEntry(pass, res, l2Offset, table, i, active);
            if (outcome === "overlap") return EIO;
            continue; // the entry no longer references a cluster
          }
        } else {
          message(
            pass,
            `ERROR offset=${
              offset.toString(16)
            }: Data cluster is not properly aligned; L2 entry corrupted.`,
          );
        }
      }
      if (fragmentation) {
        res.allocatedClusters++;
        if (run.next !== 0 && offset !== run.next) res.fragmentedClusters++;
        run.next = offset + cs;
      }
      if (!image.dataFile) addReference(pass, res, offset, cs);
    } else if (type === CLUSTER_UNALLOCATED && bitmapAlloc !== 0) {
      res.corruptions++;
      message(pass, "ERROR: Unallocated cluster has non-zero subcluster allocation map");
    }
  }
  return undefined;
}

/** An L1 table to walk. */
interface L1Table {
  /** Its offset (inexact past 2^53). */
  offset: number;
  /** The offset's high and low words, exact. */
  words: [number, number];
  /** Entries. */
  size: number;
  /** The active table (which also counts allocation and fragmentation), or a snapshot's. */
  active: boolean;
}

/** The end of the largest request QEMU's block layer accepts: 2^63 - 2^30. */
const MAX_REQUEST_END = (1n << 63n) - (1n << 30n);

/** Counts the references of an L1 table and of the L2 tables it names. */
async function checkL1(
  pass: Pass,
  res: CheckCounts,
  table: L1Table,
  fix: Fix,
): Promise<string | undefined> {
  const { offset: l1Offset, size: l1Size, active } = table;
  const fragmentation = active;
  if (l1Size === 0) return undefined;
  const { image } = pass;
  addReference(pass, res, l1Offset, l1Size * 8);
  // QEMU cannot even ask to read past 2^63 - 2^30 (its largest request end).
  const [offsetHi, offsetLo] = table.words;
  if (((BigInt(offsetHi) << 32n) | BigInt(offsetLo)) + BigInt(l1Size * 8) > MAX_REQUEST_END) {
    message(pass, "ERROR: I/O error in check_refcounts_l1");
    res.checkErrors++;
    return EIO;
  }
  const l1 = await image.read(l1Offset, l1Size * 8);
  for (let i = 0; i < l1Size; i++) {
    const hi = readU32(l1, i * 8);
    const lo = readU32(l1, i * 8 + 4);
    if (hi === 0 && lo === 0) continue;
    if (l1ReservedBits(hi, lo)) {
      message(pass, `ERROR found L1 entry with reserved bits set: ${hex64(hi, lo)}`);
      res.corruptions++;
    }
    const l2Offset = entryOffset(hi, lo);
    addReference(pass, res, l2Offset, image.clusterSize);
    if (offsetInCluster(lo & 0xfffffe00, image.clusterSize) !== 0) {
      message(
        pass,
        `ERROR l2_offset=${
          l2Offset.toString(16)
        }: Table is not cluster aligned; L1 entry corrupted`,
      );
      res.corruptions++;
    }
    const failure = await checkL2(pass, res, l2Offset, fragmentation, fix, active);
    if (failure !== undefined) return failure;
  }
  return undefined;
}

/** QEMU's limits on persistent bitmaps: their number, directory size, and bytes of bitmap data. */
const MAX_BITMAPS = 65535;
const MAX_BITMAP_DIRECTORY = 1024 * MAX_BITMAPS;
const MAX_BITMAP_BYTES = 0x20000000;

/** Counts the references of the persistent bitmaps: directory, tables and data clusters. */
async function checkBitmaps(pass: Pass, res: CheckCounts): Promise<string | undefined> {
  const { image } = pass;
  const bitmaps = image.bitmaps;
  if (!bitmaps || bitmaps.count === 0) return undefined;
  addReference(pass, res, bitmaps.directoryOffset, bitmaps.directorySize);
  // A directory or table larger than QEMU accepts cannot be loaded.
  const invalid = (): string => {
    res.corruptions++;
    return "Invalid argument";
  };
  if (bitmaps.count > MAX_BITMAPS || bitmaps.directorySize > MAX_BITMAP_DIRECTORY) return invalid();
  const directory = await image.read(bitmaps.directoryOffset, bitmaps.directorySize);
  const tables: [number, number][] = [];
  let at = 0;
  for (let i = 0; i < bitmaps.count; i++) {
    if (at + 24 > directory.length) break;
    const extra = readU32(directory, at + 20);
    const nameSize = (directory[at + 18]! << 8) | directory[at + 19]!;
    tables.push([readU64(directory, at), readU32(directory, at + 8)]);
    at += Math.ceil((24 + extra + nameSize) / 8) * 8;
  }
  if (tables.length !== bitmaps.count || at > directory.length) return invalid();
  for (const [offset, size] of tables) {
    if (size * image.clusterSize > MAX_BITMAP_BYTES) return invalid();
    addReference(pass, res, offset, size * 8);
    const table = await image.read(offset, size * 8);
    for (let i = 0; i < size; i++) {
      const hi = readU32(table, i * 8);
      const lo = readU32(table, i * 8 + 4);
      const entry = entryOffset(hi, lo);
      // Reserved bits 1..8 and 56..63; bit 0 ("all ones") only without an offset.
      const reserved = (hi & 0xff000000) !== 0 || (lo & 0x1fe) !== 0 ||
        (entry !== 0 && ((lo & 1) !== 0 || entry % image.clusterSize !== 0));
      if (reserved) return invalid();
      if (entry !== 0) addReference(pass, res, entry, image.clusterSize);
    }
  }
  return undefined;
}

/** Counts the refcount blocks and checks the refcount table's entries. */
function checkRefblocks(pass: Pass, res: CheckCounts, fix: Fix): void {
  const { image } = pass;
  const cs = image.clusterSize;
  for (let i = 0; i < image.reftableEntries; i++) {
    const lo = image.reftableLo(i);
    if (reftableReservedBits(lo)) {
      message(pass, `ERROR refcount table entry ${i} has reserved bits set`);
      res.corruptions++;
      pass.rebuild = true;
      continue;
    }
    if (offsetInCluster(lo, cs) !== 0) {
      message(
        pass,
        `ERROR refcount block ${i} is not cluster aligned; refcount table entry corrupted`,
      );
      res.corruptions++;
      pass.rebuild = true;
      continue;
    }
    const offset = image.refblockOffset(i);
    const cluster = Math.floor(offset / cs);
    if (cluster >= pass.counts.size) {
      // QEMU grows the file to hold the block; the rebuild makes that unnecessary.
      res.corruptions++;
      message(pass, `${fix.errors ? "Repairing" : "ERROR"} refcount block ${i} is outside image`);
      if (fix.errors) pass.rebuild = true;
      continue;
    }
    if (offset !== 0) {
      addReference(pass, res, offset, cs);
      const count = pass.counts.get(cluster);
      if (count !== 1) {
        message(pass, `ERROR refcount block ${i} refcount=${count}`);
        res.corruptions++;
        pass.rebuild = true;
      }
    }
  }
}

/** Rebuilds the reference counts of every cluster from every reference in the image. */
async function calculate(pass: Pass, res: CheckCounts, fix: Fix): Promise<string | undefined> {
  const { image } = pass;
  addReference(pass, res, 0, image.clusterSize);
  let failure = await checkL1(pass, res, {
    offset: image.l1Offset,
    words: [Math.floor(image.l1Offset / 2 ** 32), image.l1Offset % 2 ** 32],
    size: image.l1Size,
    active: true,
  }, fix);
  if (failure !== undefined) return failure;

  if (image.dataFile && image.snapshots.length > 0) {
    message(pass, `ERROR ${image.snapshots.length} snapshots in image with data file`);
    res.corruptions++;
  }
  for (const snapshot of image.snapshots) {
    const [offsetHi, offsetLo] = snapshot.l1OffsetWords;
    const what = `ERROR snapshot ${snapshot.id} (${snapshot.name})`;
    if (offsetInCluster(offsetLo, image.clusterSize) !== 0) {
      const shown = offsetHi === 0 && offsetLo === 0 ? "0" : `0x${hex64(offsetHi, offsetLo)}`;
      message(
        pass,
        `${what} l1_offset=${shown}: L1 table is not cluster aligned; snapshot table entry corrupted`,
      );
      res.corruptions++;
      continue;
    }
    if (snapshot.l1Size > MAX_L1_BYTES / 8) {
      message(
        pass,
        `${what} l1_size=${
          hexAlt(snapshot.l1Size)
        }: L1 table is too large; snapshot table entry corrupted`,
      );
      res.corruptions++;
      continue;
    }
    failure = await checkL1(pass, res, {
      offset: snapshot.l1Offset,
      words: snapshot.l1OffsetWords,
      size: snapshot.l1Size,
      active: false,
    }, fix);
    if (failure !== undefined) return failure;
  }
  addReference(pass, res, image.snapshotsOffset, image.snapshotsSize);
  addReference(pass, res, image.reftableOffset, image.reftableEntries * 8);
  if (image.crypto && image.crypto.length > 0) {
    addReference(pass, res, image.crypto.offset, image.crypto.length);
  }
  failure = await checkBitmaps(pass, res);
  if (failure !== undefined) return failure;
  checkRefblocks(pass, res, fix);
  return undefined;
}

/**
 * Compares the stored refcounts with the counted references, cluster by cluster, repairing what
 * `fix` allows in the stored refcounts (written back by the caller).
 */
async function compare(pass: Pass, res: CheckCounts, fix: Fix): Promise<void> {
  const { image, counts } = pass;
  const perBlock = image.refcountsPerBlock;
  const order = image.refcountOrder;
  pass.highest = 0;
  pass.unreadable = 0;
  pass.exact = true;
  for (let first = 0; first < counts.size; first += perBlock) {
    const end = Math.min(first + perBlock, counts.size);
    const block = await image.refcountBlock(first / perBlock);
    let from = first;
    if (block && order === 4) {
      // 16-bit refcounts (the usual width): skip quickly over clusters that agree.
      const data = block.data;
      for (; from < end; from++) {
        const p = (from - first) * 2;
        const stored = (data[p]! << 8) | data[p + 1]!;
        const counted = counts.get(from);
        if (stored !== counted) break;
        if (stored > 0) pass.highest = from;
      }
    }
    for (let cluster = from; cluster < end; cluster++) {
      if (block === undefined) {
        pass.exact = false;
        message(pass, `Can't get refcount for cluster ${cluster}: ${EIO}`);
        res.checkErrors++;
        pass.unreadable++;
        continue;
      }
      const stored = block === null ? 0 : readRefcount(block.data, cluster - first, order);
      const counted = counts.get(cluster);
      if (stored > 0 || counted > 0) pass.highest = cluster;
      if (stored === counted) continue;
      pass.exact = false;
      let repair: "leaks" | "corruptions" | undefined;
      if (stored === 0) pass.rebuild = true;
      else if (stored > counted && fix.leaks) repair = "leaks";
      else if (stored < counted && fix.errors) repair = "corruptions";
      const what = repair ? "Repairing" : stored < counted ? "ERROR" : "Leaked";
      const shown = stored > Number.MAX_SAFE_INTEGER
        ? await image.refcountText(cluster)
        : String(stored);
      message(pass, `${what} cluster ${cluster} refcount=${shown} reference=${counted}`);
      if (repair && block) {
        writeRefcount(block.data, cluster - first, order, counted);
        block.dirty = true;
        if (repair === "leaks") res.leaksFixed++;
        else res.corruptionsFixed++;
        continue;
      }
      if (stored < counted) res.corruptions++;
      else res.leaks++;
    }
  }
}

/**
 * Writes a new refcount structure holding the counted references into free clusters at the end
 * of the image (the damaged structure is neither trusted nor reused), then points the header at
 * it with one write. Clusters that tables point to past the end of the file are avoided, so no
 * entry ends up pointing at the new structure.
 */
async function rebuildRefcounts(pass: Pass): Promise<void> {
  const { image, counts } = pass;
  const device = image.device;
  const cs = image.clusterSize;
  let start = Math.max(Math.ceil(device.size / cs), counts.size);
  let layout = planRebuild(counts, start, image.clusterBits, image.refcountOrder);
  for (;;) {
    let clash = -1;
    for (const [first, last] of pass.pastEnd) {
      if (first < layout.endCluster && last >= start && last > clash) clash = last;
    }
    if (clash < 0) break;
    start = clash + 1;
    layout = planRebuild(counts, start, image.clusterBits, image.refcountOrder);
  }
  for (let c = start; c < layout.endCluster; c++) counts.set(c, 1);
  for (const [i, index] of layout.blockIndices.entries()) {
    const block = encodeRefcountBlock(counts, index, image.clusterBits, image.refcountOrder);
    await device.write(block, (layout.firstCluster + i) * cs);
  }
  const table = new Uint8Array(layout.tableClusters * cs);
  layout.table.forEach((offset, i) => writeU64(table, i * 8, offset));
  await device.write(table, layout.tableOffset);
  await device.flush();
  const pointer = new Uint8Array(12);
  writeU64(pointer, 0, layout.tableOffset);
  writeU32(pointer, 8, layout.tableClusters);
  await device.write(pointer, 48);
  await device.flush();
  image.useRefcountTable(layout.tableOffset, layout.table);
}

/** A stored refcount as QEMU prints it: exact, even past 2^53. */
function exactText(image: CheckImage, cluster: number, value: number): Promise<string> | string {
  return value > Number.MAX_SAFE_INTEGER ? image.refcountText(cluster) : String(value);
}

/**
 * Skips standard L2 entries `[from, to)` whose COPIED flag agrees with `counts` (refcount exactly
 * 1 means COPIED), and those that need no COPIED check (unallocated, compressed), in a tight loop.
 *
 * @returns The index of the first entry that needs a closer look, or `to`.
 */
function agreeingCopiedRun(
  view: DataView,
  from: number,
  to: number,
  counts: Counts,
  size: number,
  bits: number,
): number {
  const hiClusters = 2 ** (32 - bits);
  for (let i = from; i < to; i++) {
    const hi = view.getUint32(i * 8);
    const lo = view.getUint32(i * 8 + 4);
    if ((hi & 0x40000000) !== 0 || (hi | lo) === 0) continue;
    const offsetHi = hi & 0x00ffffff;
    if (offsetHi === 0 && lo >>> 9 === 0) return i;
    const cluster = offsetHi * hiClusters + (lo >>> bits);
    if (cluster >= size || (counts[cluster] === 1) !== (hi >= COPIED)) return i;
  }
  return to;
}

/**
 * Checks the COPIED flags of the active L1 and L2 entries against the stored refcounts (exactly
 * 1 means COPIED), repairing them when allowed.
 */
async function checkCopied(pass: Pass, res: CheckCounts, fix: Fix): Promise<string | undefined> {
  const { image } = pass;
  const cs = image.clusterSize;
  // With leaks only, the refcounts are trusted only if nothing else was wrong with them.
  const repair = fix.errors ||
    (fix.leaks && res.checkErrors === 0 && res.corruptions === 0 && res.leaks === 0);
  const what = repair ? "Repairing" : "ERROR";
  for (let i = 0; i < image.l1Size; i++) {
    const hi = readU32(image.l1, i * 8);
    const lo = readU32(image.l1, i * 8 + 4);
    const l2Offset = entryOffset(hi, lo);
    if (l2Offset === 0) continue;
    const l2Cluster = Math.floor(l2Offset / cs);
    const refcount = await image.refcount(l2Cluster);
    if (refcount === undefined) continue;
    if ((refcount === 1) !== ((hi & COPIED) !== 0)) {
      res.corruptions++;
      const shown = await exactText(image, l2Cluster, refcount);
      message(
        pass,
        `${what} OFLAG_COPIED L2 cluster: l1_index=${i} l1_entry=${
          hex64(hi, lo)
        } refcount=${shown}`,
      );
      if (repair) {
        writeU32(image.l1, i * 8, (refcount === 1 ? hi | COPIED : hi & ~COPIED) >>> 0);
        const entry = image.l1.slice(i * 8, i * 8 + 8);
        if (!await image.writeChecked(OL_ACTIVE_L1, image.l1Offset + i * 8, entry)) {
          res.checkErrors++;
          return EIO;
        }
        await image.device.flush();
        res.corruptions--;
        res.corruptionsFixed++;
      }
    }

    const table = pass.l2Tables.get(l2Offset) ?? await image.read(l2Offset, cs);
    const view = new DataView(table.buffer, table.byteOffset, table.byteLength);
    // Stored refcounts equal the counts everywhere: read those instead of the blocks.
    const exact = pass.exact && pass.pastEnd.length === 0 && !image.dataFile;
    const counts = pass.counts;
    const fast = exact && !image.extendedL2;
    const bits = image.clusterBits;
    let dirty = 0;
    for (let j = 0; j < image.l2Size; j++) {
      if (fast) {
        j = agreeingCopiedRun(view, j, image.l2Size, counts.storage, counts.size, bits);
        if (j === image.l2Size) break;
      }
      const at = j * image.l2EntryBytes;
      const entryHi = view.getUint32(at);
      const entryLo = view.getUint32(at + 4);
      if (entryLo === 0 && (entryHi & 0x7fffffff) === 0 && !image.dataFile) continue;
      const type = clusterType(entryHi, entryLo, pass.format);
      if (type !== CLUSTER_NORMAL && type !== CLUSTER_ZERO_ALLOC) continue;
      const cluster = Math.floor(entryOffset(entryHi, entryLo) / cs);
      const count = image.dataFile
        ? 1
        : exact && cluster < counts.size
        ? counts.get(cluster)
        : image.peekRefcount(cluster) ?? await image.refcount(cluster);
      if (count === undefined) continue;
      if ((count === 1) === ((entryHi & COPIED) !== 0)) continue;
      res.corruptions++;
      const shown = await exactText(image, cluster, count);
      const entry = hex64(entryHi, entryLo);
      message(pass, `${what} OFLAG_COPIED data cluster: l2_entry=${entry} refcount=${shown}`);
      if (repair) {
        writeU32(table, at, (count === 1 ? entryHi | COPIED : entryHi & ~COPIED) >>> 0);
        dirty++;
      }
    }
    if (dirty > 0) {
      if (!await image.writeChecked(OL_ACTIVE_L2, l2Offset, table)) {
        message(
          pass,
          `ERROR: Could not write L2 table; metadata overlap check failed: ${EIO}`,
        );
        res.checkErrors++;
        return EIO;
      }
      await image.device.flush();
      res.corruptions -= dirty;
      res.corruptionsFixed += dirty;
    }
  }
  return undefined;
}

/**
 * Checks (and repairs) the refcounts and COPIED flags, as QEMU's qcow2_check_refcounts does.
 *
 * @returns The pass (with the counted references), and the reason the check fails, if it does.
 */
export async function checkRefcounts(
  image: CheckImage,
  res: CheckCounts,
  fix: Fix,
): Promise<{ pass: Pass; failure?: string }> {
  const cs = image.clusterSize;
  const fileClusters = Math.ceil(image.device.size / cs);
  const pass: Pass = {
    image,
    counts: new ReferenceCounts(image.refcountOrder, fileClusters),
    format: { subclusters: image.extendedL2, dataFile: image.dataFile },
    rebuild: false,
    highest: 0,
    unreadable: 0,
    pastEnd: [],
    exact: false,
    l2Tables: new Map(),
  };
  if (fileClusters > 0x7fffffff) {
    res.checkErrors++;
    return { pass, failure: "File too large" };
  }
  res.totalClusters = Math.ceil(image.virtualSize / cs);
  const failed = (failure: string): { pass: Pass; failure: string } => ({ pass, failure });
  let failure = await calculate(pass, res, fix);
  if (failure !== undefined) return failed(failure);

  // A repairing pass compares twice unless it rebuilds: once to see, once to repair.
  const beforeComparing = { ...res };
  await compare(pass, res, NO_FIX);

  if (pass.rebuild && fix.errors) {
    const before = { ...res };
    let freshLeaks = 0;
    message(pass, "Rebuilding refcount structure");
    await rebuildRefcounts(pass);
    // The unreadable blocks are gone with the old structure.
    res.checkErrors -= pass.unreadable;
    res.corruptions = 0;
    res.leaks = 0;
    pass.rebuild = false;
    pass.counts.clear();
    pass.pastEnd = [];
    failure = await calculate(pass, res, NO_FIX);
    if (failure !== undefined) return failed(failure);
    if (fix.leaks) {
      // What the new structure leaks is the old structure: free it. Those repairs are not
      // counted, as in QEMU; leaks that could not be freed are.
      const saved = { ...res };
      Object.assign(res, zeroCounts());
      await compare(pass, res, FIX_LEAKS);
      if (pass.rebuild) message(pass, "ERROR rebuilt refcount structure is still broken");
      freshLeaks = res.leaks;
      Object.assign(res, saved);
      await image.flushRefcounts();
    }
    if (res.corruptions < before.corruptions) {
      res.corruptionsFixed += before.corruptions - res.corruptions;
    }
    if (res.leaks < before.leaks) res.leaksFixed += before.leaks - res.leaks;
    res.leaks += freshLeaks;
  } else if (fix.leaks || fix.errors) {
    if (pass.rebuild) {
      message(pass, "ERROR need to rebuild refcount structures");
      res.checkErrors++;
      return failed(EIO);
    }
    if (res.leaks > 0 || res.corruptions > 0) {
      Object.assign(res, beforeComparing);
      await compare(pass, res, fix);
      await image.flushRefcounts();
    }
  }

  failure = await checkCopied(pass, res, fix);
  if (failure !== undefined) return failed(failure);
  res.imageEndOffset = (pass.highest + 1) * cs;
  return { pass };
}
