/**
 * A structural check of qcow (version 1) images. QEMU has none (`qemu-img check` exits 63 for
 * qcow); this one goes beyond qemu-img.
 *
 * @module
 */

import type { BlockDevice } from "../../core/block_device.ts";
import { readU32, readU64 } from "../../core/bytes.ts";
import { alignUp, decodeEntry, MAX_EXACT_OFFSET } from "./entries.ts";
import { parseQcowHeader, QCOW_HEADER_SIZE, qcowL1Entries, validateQcowLayout } from "./header.ts";

/** One problem found by {@linkcode checkQcow}. */
export interface QcowCheckError {
  /** What kind of problem. */
  kind: "past-end" | "unaligned" | "overlap" | "header-overlap" | "invalid";
  /** One sentence. */
  message: string;
}

/** What {@linkcode checkQcow} found. */
export interface QcowCheckReport {
  /** Structural errors: the image cannot be trusted where they point. */
  errors: QcowCheckError[];
  /** L2 tables referenced by the L1 table. */
  l2Tables: number;
  /** Uncompressed data clusters. */
  dataClusters: number;
  /** Compressed clusters. */
  compressedClusters: number;
  /** Bytes of the file. */
  fileSize: number;
  /** Where the last byte used by the header, tables or data ends. */
  usedEnd: number;
  /**
   * Bytes past `usedEnd` rounded up to a cluster: space appended and never linked (what a crash
   * between an append and the metadata update leaves behind).
   */
  leakedTailBytes: number;
  /** Whole clusters before `usedEnd` that nothing refers to. */
  leakedClusters: number;
}

interface Extent {
  start: number;
  end: number;
  what: string;
}

/** Most problems listed; the rest are counted in one last message. */
const MAX_ERRORS = 1000;

/**
 * Checks a qcow image's structure: every L2 table and cluster must lie inside the file, tables
 * and uncompressed clusters must be cluster aligned (QEMU always appends them so), nothing may
 * overlap the header, the L1 table or anything else, and space that nothing refers to is counted
 * as leaked. qcow has no refcounts, so there is nothing to repair: leaked space is harmless and
 * structural errors need the data copied out (`convert`). Header errors throw as when opening.
 *
 * @example Checking an image in memory
 * ```ts
 * import { checkQcow, createQcow, MemoryDevice } from "@qcowlab/qcowlab";
 *
 * const device = new MemoryDevice();
 * await createQcow(device, { size: 1 << 20 });
 * const report = await checkQcow(device);
 * console.log(report.errors.length, report.leakedTailBytes); // 0 0
 * ```
 *
 * @param device The image.
 * @returns The report.
 * @throws {QcowError} What opening the image would throw for a bad header or L1 table.
 */
export async function checkQcow(device: BlockDevice): Promise<QcowCheckReport> {
  const head = new Uint8Array(Math.min(QCOW_HEADER_SIZE, device.size));
  await device.read(head, 0);
  const header = parseQcowHeader(head);
  const fileSize = device.size;
  validateQcowLayout(header, fileSize);
  const cs = 2 ** header.clusterBits;
  const tableBytes = 8 * 2 ** header.l2Bits;
  const errors: QcowCheckError[] = [];
  let dropped = 0;
  const report = (kind: QcowCheckError["kind"], message: string): void => {
    if (errors.length < MAX_ERRORS) errors.push({ kind, message });
    else dropped++;
  };
  const extents: Extent[] = [{ start: 0, end: QCOW_HEADER_SIZE, what: "the header" }];
  if (header.backingFileOffset !== 0) {
    extents.push({
      start: header.backingFileOffset,
      end: header.backingFileOffset + header.backingFileSize,
      what: "the backing file name",
    });
  }
  const l1Entries = qcowL1Entries(header);
  // qemu-img writes the L1 table padded to whole sectors: the padding is part of it.
  const l1End = header.l1TableOffset + l1Entries * 8;
  extents.push({
    start: header.l1TableOffset,
    end: Math.max(l1End, Math.min(fileSize, alignUp(l1End, 512))),
    what: "the L1 table",
  });
  const l1 = new Uint8Array(l1Entries * 8);
  await device.read(l1, header.l1TableOffset);
  const table = new Uint8Array(tableBytes);
  let l2Tables = 0;
  let dataClusters = 0;
  let compressedClusters = 0;

  const place = (start: number, length: number, what: string, aligned: boolean): boolean => {
    if (start >= MAX_EXACT_OFFSET) {
      report("invalid", `${what} has an invalid offset 0x${start.toString(16)}`);
      return false;
    }
    if (start < QCOW_HEADER_SIZE) {
      report("header-overlap", `${what} at 0x${start.toString(16)} overlaps the header`);
      return false;
    }
    if (aligned && start % cs !== 0) {
      report("unaligned", `${what} at 0x${start.toString(16)} is not cluster aligned`);
    }
    if (start + length > fileSize) {
      report(
        "past-end",
        `${what} at 0x${start.toString(16)} (${length} bytes) lies past the end of the file`,
      );
      return false;
    }
    extents.push({ start, end: start + length, what });
    return true;
  };

  for (let i = 0; i < l1Entries; i++) {
    const l2Offset = readU64(l1, i * 8);
    if (l2Offset === 0) continue;
    l2Tables++;
    if (!place(l2Offset, tableBytes, `L2 table ${i}`, true)) continue;
    await device.read(table, l2Offset);
    for (let j = 0; j < tableBytes / 8; j++) {
      const entry = decodeEntry(
        readU32(table, j * 8),
        readU32(table, j * 8 + 4),
        header.clusterBits,
      );
      if (entry.kind === "unallocated") continue;
      const virtual = (i * (tableBytes / 8) + j) * cs;
      const name = `${
        entry.kind === "data" ? "Cluster" : "Compressed cluster"
      } for virtual offset 0x${virtual.toString(16)}`;
      if (entry.kind === "data") {
        dataClusters++;
        place(entry.offset, cs, name, true);
      } else {
        compressedClusters++;
        if (entry.length === 0) report("invalid", `${name} has a length of 0`);
        else place(entry.offset, entry.length, name, false);
      }
    }
  }

  extents.sort((a, b) => a.start - b.start || a.end - b.end);
  let usedEnd = 0;
  let last: Extent | undefined;
  let leakedClusters = 0;
  for (const extent of extents) {
    if (last !== undefined && extent.start < last.end) {
      report(
        "overlap",
        `${extent.what} at 0x${extent.start.toString(16)} overlaps ${last.what} at 0x${
          last.start.toString(16)
        }`,
      );
    } else if (extent.start > usedEnd) {
      // Whole clusters in the gap that nothing uses.
      leakedClusters += Math.max(
        0,
        Math.floor(extent.start / cs) - Math.ceil(usedEnd / cs),
      );
    }
    if (last === undefined || extent.end > last.end) last = extent;
    usedEnd = Math.max(usedEnd, extent.end);
  }
  if (dropped > 0) report("invalid", `... and ${dropped} more errors`);
  return {
    errors,
    l2Tables,
    dataClusters,
    compressedClusters,
    fileSize,
    usedEnd,
    leakedTailBytes: Math.max(0, fileSize - usedEnd),
    leakedClusters,
  };
}
