/**
 * qcowlab's own structural check of a closed qcow2 image, stricter than `qemu-img check`: every
 * reference (header, refcount table and blocks, L1, L2 tables, data and compressed byte ranges) is
 * counted again and each cluster's stored refcount must equal the count exactly.
 *
 * @module
 */

import { AssertionError } from "node:assert/strict";
import type { BlockDevice } from "../core/block_device.ts";
import { readU32 } from "../core/bytes.ts";
import {
  compressedLocation,
  entryCompressed,
  entryCopied,
  entryOffset,
  l1ReservedBits,
} from "../drivers/qcow2/entries.ts";
import {
  INCOMPAT_CORRUPT,
  INCOMPAT_DIRTY,
  INCOMPAT_EXTENDED_L2,
  l2Entries,
  parseQcow2Header,
  peekClusterBits,
  sizeToL1,
} from "../drivers/qcow2/header.ts";
import { readRefcount, refcountsPerBlock } from "../drivers/qcow2/refcount_math.ts";

/** Options for {@linkcode assertStructure}. */
export interface StructureOptions {
  /** Names the image in the failure message. */
  label?: string;
  /** Problems listed in the failure message; default 20. */
  maxProblems?: number;
}

/** What {@linkcode assertStructure} found in a sound image. */
export interface StructureSummary {
  /** 2 or 3. */
  version: number;
  /** Bytes per cluster. */
  clusterSize: number;
  /** Bits per refcount entry. */
  refcountBits: number;
  /** Bytes in the image file. */
  fileSize: number;
  /** Clusters the file spans (the last one may be partial). */
  fileClusters: number;
  /** Clusters with a stored refcount above 0 (equal to the clusters referenced). */
  allocatedClusters: number;
  /** Header, refcount table, refcount block, L1 and L2 clusters. */
  metadataClusters: number;
  /** Refcount blocks in use. */
  refcountBlocks: number;
  /** Clusters of the refcount table. */
  refcountTableClusters: number;
  /** Entries of the L1 table. */
  l1Entries: number;
  /** L2 tables in use. */
  l2Tables: number;
  /** L2 entries with a host cluster that is not compressed (normal or zero with a cluster). */
  dataClusters: number;
  /** L2 entries flagged as reading zeros (standard entries), or with any zero subcluster. */
  zeroEntries: number;
  /** Compressed L2 entries. */
  compressedClusters: number;
  /** Host clusters that hold compressed data. */
  compressedHostClusters: number;
  /** Host clusters holding more than one compressed cluster. */
  sharedHostClusters: number;
  /** The highest stored refcount. */
  maxRefcount: number;
}

/** Who refers to one host cluster. */
interface Referrers {
  /** References counted (each one is a refcount unit). */
  count: number;
  /** Whether a non-compressed structure refers to it (such a cluster may not be shared). */
  exclusive: boolean;
  /** The first referrer, for messages. */
  first: string;
}

const hex = (n: number): string => `0x${n.toString(16)}`;

/** Reads `[offset, offset + length)` of the device; bytes past its end read as zeros. */
async function readPadded(
  device: BlockDevice,
  offset: number,
  length: number,
): Promise<Uint8Array> {
  const buffer = new Uint8Array(length);
  const available = Math.max(0, Math.min(length, device.size - offset));
  if (available > 0) await device.read(buffer.subarray(0, available), offset);
  return buffer;
}

/**
 * Walks the qcow2 image held on `device` (closed by whoever wrote it) and fails with every problem
 * it finds, listed: a stored refcount different from the references counted (a leak or a
 * corruption), a COPIED flag that disagrees with a refcount of 1 (or is set on a compressed entry),
 * an unaligned offset or one outside the file, two references to one cluster (except compressed
 * clusters sharing a host cluster), a reserved bit set, a dirty or corrupt image.
 *
 * Internal snapshots, bitmaps and encryption are outside what it knows, and fail too.
 *
 * @param device The image file.
 * @param options A label and how many problems to list.
 * @returns Counts describing the image.
 * @throws {AssertionError} Naming the problems.
 */
export async function assertStructure(
  device: BlockDevice,
  options: StructureOptions = {},
): Promise<StructureSummary> {
  const problems: string[] = [];
  const problem = (message: string): void => void problems.push(message);
  const fileSize = device.size;

  const clusterBits = peekClusterBits(await readPadded(device, 0, 104));
  const cs = 2 ** clusterBits;
  const header = parseQcow2Header(await readPadded(device, 0, Math.min(cs, fileSize)));
  const extended = (header.incompatibleFeatures & INCOMPAT_EXTENDED_L2) !== 0n;
  const v3 = header.version >= 3;
  const order = header.refcountOrder;
  const fileClusters = Math.ceil(fileSize / cs);

  if ((header.incompatibleFeatures & INCOMPAT_DIRTY) !== 0n) problem("the dirty bit is set");
  if ((header.incompatibleFeatures & INCOMPAT_CORRUPT) !== 0n) problem("the corrupt bit is set");
  if (header.nbSnapshots !== 0) problem("internal snapshots are not checked here");
  if (header.bitmaps !== undefined) problem("bitmaps are not checked here");
  if (header.cryptMethod !== 0 || header.crypto !== undefined) problem("encryption is not checked");
  if (header.backingFileOffset + header.backingFileSize > cs) {
    problem("the backing file name lies outside the first cluster");
  }

  const referrers = new Map<number, Referrers>();
  let highestReferenced = 0;
  /** Counts one reference to every cluster touched by `[offset, offset + bytes)`. */
  const reference = (offset: number, bytes: number, what: string, compressed = false): void => {
    const first = Math.floor(offset / cs);
    const last = Math.floor((offset + bytes - 1) / cs);
    for (let c = first; c <= last; c++) {
      const seen = referrers.get(c);
      if (seen === undefined) {
        referrers.set(c, { count: 1, exclusive: !compressed, first: what });
        highestReferenced = Math.max(highestReferenced, c);
        continue;
      }
      if (seen.exclusive || !compressed) {
        problem(`cluster ${c} (${hex(c * cs)}) is referenced twice: by ${seen.first} and ${what}`);
      }
      seen.count++;
      seen.exclusive ||= !compressed;
    }
  };
  /**
   * Checks a metadata table is cluster aligned, clear of the header and its `bytes` inside the file
   * (the rest of its last cluster may lie past the end, as QEMU leaves a small L1 table), and
   * counts its clusters.
   */
  const placeTable = (offset: number, bytes: number, what: string): boolean => {
    if (offset % cs !== 0) {
      problem(`${what} at ${hex(offset)} is not cluster aligned`);
      return false;
    }
    if (offset < cs) {
      problem(`${what} at ${hex(offset)} overlaps the header`);
      return false;
    }
    if (offset + bytes > fileSize) {
      problem(`${what} at ${hex(offset)} (${bytes} bytes) ends past the end of the file`);
      return false;
    }
    reference(offset, Math.ceil(bytes / cs) * cs, what);
    return true;
  };

  reference(0, cs, "the header");

  // Refcount table and blocks.
  const tableBytes = header.refcountTableClusters * cs;
  const blocks: (Uint8Array | undefined)[] = [];
  let refcountBlocks = 0;
  if (placeTable(header.refcountTableOffset, tableBytes, "the refcount table")) {
    const table = await readPadded(device, header.refcountTableOffset, tableBytes);
    for (let r = 0; r < tableBytes / 8; r++) {
      const hi = readU32(table, r * 8);
      const lo = readU32(table, r * 8 + 4);
      if ((lo & 0x1ff) !== 0) problem(`refcount table entry ${r} has reserved bits set`);
      const offset = hi * 2 ** 32 + ((lo & 0xfffffe00) >>> 0);
      if (offset === 0) continue;
      if (placeTable(offset, cs, `refcount block ${r}`)) {
        blocks[r] = await readPadded(device, offset, cs);
        refcountBlocks++;
      }
    }
  }
  const perBlock = refcountsPerBlock(clusterBits, order);
  const storedRefcount = (c: number): number => {
    const block = blocks[Math.floor(c / perBlock)];
    return block === undefined ? 0 : readRefcount(block, c % perBlock, order);
  };

  // L1 and L2 tables, and the clusters they map.
  const copiedFlags: [cluster: number, copied: boolean, what: string][] = [];
  const needed = sizeToL1(header.size, clusterBits, extended);
  if (header.l1Size < needed) problem(`L1 has ${header.l1Size} entries; the size needs ${needed}`);
  const entries = l2Entries(clusterBits, extended);
  const entryBytes = extended ? 16 : 8;
  let l2Tables = 0;
  let dataClusters = 0;
  let zeroEntries = 0;
  let compressedClusters = 0;
  const compressedHosts = new Set<number>();
  let l1: Uint8Array = new Uint8Array(0);
  if (header.l1Size > 0) {
    const l1Bytes = header.l1Size * 8;
    if (placeTable(header.l1TableOffset, l1Bytes, "the L1 table")) {
      l1 = await readPadded(device, header.l1TableOffset, l1Bytes);
    }
  }
  for (let i = 0; i < l1.length / 8; i++) {
    const hi = readU32(l1, i * 8);
    const lo = readU32(l1, i * 8 + 4);
    if (l1ReservedBits(hi, lo)) problem(`L1 entry ${i} has reserved bits set`);
    const l2Offset = entryOffset(hi, lo);
    if (l2Offset === 0) {
      if (entryCopied(hi)) problem(`L1 entry ${i} has COPIED set without an L2 table`);
      continue;
    }
    const what = `the L2 table of L1 entry ${i}`;
    if (!placeTable(l2Offset, cs, what)) continue;
    l2Tables++;
    copiedFlags.push([l2Offset / cs, entryCopied(hi), `L1 entry ${i}`]);
    const l2 = await readPadded(device, l2Offset, cs);
    for (let j = 0; j < entries; j++) {
      const e = j * entryBytes;
      const ehi = readU32(l2, e);
      const elo = readU32(l2, e + 4);
      const bitmapZero = extended ? readU32(l2, e + 8) : 0;
      const bitmapAlloc = extended ? readU32(l2, e + 12) : 0;
      const where = `L2 entry ${j} of L1 entry ${i} (virtual ${
        hex((i * entries + j) * cs)
      }, table ${hex(l2Offset)})`;
      if (entryCompressed(ehi)) {
        compressedClusters++;
        if (entryCopied(ehi)) problem(`${where}: COPIED set on a compressed cluster`);
        if (bitmapZero !== 0 || bitmapAlloc !== 0) {
          problem(`${where}: compressed cluster with a subcluster bitmap`);
        }
        const { offset, length } = compressedLocation(ehi, elo, clusterBits);
        if (offset < cs || offset >= fileSize) {
          problem(`${where}: compressed data at ${hex(offset)} lies outside the file`);
          continue;
        }
        reference(offset, length, `compressed ${where}`, true);
        const firstHost = Math.floor(offset / cs);
        const lastHost = Math.floor((offset + length - 1) / cs);
        for (let c = firstHost; c <= lastHost; c++) compressedHosts.add(c);
        continue;
      }
      if ((elo & 0x1fe) !== 0 || (ehi & 0x3f000000) !== 0) {
        problem(`${where}: reserved bits set`);
      }
      const zeroFlag = (elo & 1) !== 0;
      if (zeroFlag && (!v3 || extended)) {
        problem(
          `${where}: bit 0 set, which is reserved ${extended ? "with extended L2" : "in v2"}`,
        );
      }
      const host = entryOffset(ehi, elo);
      if (extended) {
        if ((bitmapZero & bitmapAlloc) !== 0) {
          problem(`${where}: subclusters both allocated and zero`);
        }
        if (host === 0 && bitmapAlloc !== 0) {
          problem(`${where}: allocated subclusters without a host cluster`);
        }
        if (bitmapZero !== 0) zeroEntries++;
      } else if (zeroFlag) {
        zeroEntries++;
      }
      if (host === 0) {
        if (entryCopied(ehi)) problem(`${where}: COPIED set without a host cluster`);
        continue;
      }
      if (host % cs !== 0) {
        problem(`${where}: host offset ${hex(host)} is not cluster aligned`);
        continue;
      }
      // A data cluster may end past the end of the file (the rest reads as zeros), but must start
      // inside it; metadata may not even overlap the header.
      if (host < cs || host >= fileSize) {
        problem(`${where}: host cluster ${hex(host)} lies outside the file`);
        continue;
      }
      reference(host, cs, `data of ${where}`);
      dataClusters++;
      copiedFlags.push([host / cs, entryCopied(ehi), where]);
    }
  }

  // Stored refcounts against the references counted, for every entry of every block.
  let allocatedClusters = 0;
  let maxRefcount = 0;
  const compare = (c: number, stored: number): void => {
    if (stored > 0) allocatedClusters++;
    if (stored > maxRefcount) maxRefcount = stored;
    const counted = referrers.get(c)?.count ?? 0;
    if (stored > counted) problem(`Leaked cluster ${c} refcount=${stored} reference=${counted}`);
    else if (stored < counted) {
      problem(`ERROR cluster ${c} refcount=${stored} reference=${counted}`);
    }
  };
  const scanEnd = Math.max(fileClusters, highestReferenced + 1);
  for (let r = 0; r < blocks.length; r++) {
    const block = blocks[r];
    if (block === undefined) continue;
    const first = r * perBlock;
    // Entry by entry where clusters can be in use; past that, whole bytes must be zero.
    const until = Math.min(perBlock, Math.max(0, Math.ceil((scanEnd - first) / 8) * 8));
    for (let i = 0; i < until; i++) compare(first + i, readRefcount(block, i, order));
    const tailByte = (until * 2 ** order) / 8;
    for (let b = tailByte; b < block.length; b++) {
      if (block[b] === 0) continue;
      const i = Math.floor((b * 8) / 2 ** order);
      compare(first + i, readRefcount(block, i, order));
      break;
    }
  }
  for (const [c, seen] of referrers) {
    if (blocks[Math.floor(c / perBlock)] === undefined) {
      problem(`ERROR cluster ${c} refcount=0 reference=${seen.count} (no refcount block)`);
    }
  }
  for (const [c, copied, what] of copiedFlags) {
    const stored = storedRefcount(c);
    if (copied !== (stored === 1)) {
      problem(`${what}: COPIED is ${copied ? "set" : "clear"} but the refcount is ${stored}`);
    }
  }

  if (problems.length > 0) {
    const max = options.maxProblems ?? 20;
    const label = options.label ?? device.name;
    const listed = problems.slice(0, max).map((p) => `  - ${p}`).join("\n");
    const more = problems.length > max ? `\n  ... and ${problems.length - max} more` : "";
    throw new AssertionError({
      message: `${label}: ${problems.length} structural problem(s):\n${listed}${more}`,
    });
  }
  let sharedHostClusters = 0;
  for (const c of compressedHosts) if (referrers.get(c)!.count > 1) sharedHostClusters++;
  const metadataClusters = 1 + header.refcountTableClusters + refcountBlocks + l2Tables +
    Math.ceil((header.l1Size * 8) / cs);
  return {
    version: header.version,
    clusterSize: cs,
    refcountBits: 2 ** order,
    fileSize,
    fileClusters,
    allocatedClusters,
    metadataClusters,
    refcountBlocks,
    refcountTableClusters: header.refcountTableClusters,
    l1Entries: header.l1Size,
    l2Tables,
    dataClusters,
    zeroEntries,
    compressedClusters,
    compressedHostClusters: compressedHosts.size,
    sharedHostClusters,
    maxRefcount,
  };
}
