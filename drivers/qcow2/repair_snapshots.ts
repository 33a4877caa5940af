/**
 * Rewriting the internal snapshot table, as a repairing check does for version 3 entries that
 * lack the extra data every such entry must have.
 *
 * @module
 */

import { readU32, writeU16, writeU32, writeU64 } from "../../core/bytes.ts";
import type { CheckCounts, CheckImage, CheckSnapshot } from "./check_image.ts";
import type { ReferenceCounts } from "./check_refcount_array.ts";
import { readRefcount, writeRefcount } from "./refcount_math.ts";
import { MAX_SNAPSHOT_TABLE_BYTES, SNAPSHOT_ENTRY_BYTES } from "./snapshots.ts";

/** Extra data QEMU writes for every snapshot: VM state size, disk size, instruction count. */
const EXTRA_DATA = 24;

/**
 * Encodes a snapshot table as QEMU writes it: each entry with at least 24 bytes of extra data
 * (the 64-bit VM state size, the disk size, the instruction count), filled in as QEMU reads
 * entries that lack them: the 32-bit VM state size, the disk's size, and -1.
 *
 * @param snapshots The entries as read.
 * @param virtualSize The disk size for entries without one.
 * @returns The table's bytes.
 */
export function encodeSnapshotTable(snapshots: CheckSnapshot[], virtualSize: number): Uint8Array {
  let size = 0;
  for (const snapshot of snapshots) {
    size = Math.ceil(size / 8) * 8 + SNAPSHOT_ENTRY_BYTES +
      Math.max(EXTRA_DATA, snapshot.extraDataSize) + snapshot.idBytes.length +
      snapshot.nameBytes.length;
  }
  const table = new Uint8Array(size);
  let at = 0;
  for (const snapshot of snapshots) {
    at = Math.ceil(at / 8) * 8;
    const { entry, extraData } = snapshot;
    const extra = new Uint8Array(Math.max(EXTRA_DATA, extraData.length));
    extra.set(extraData);
    // The 64-bit VM state size, else the 32-bit one.
    if (extraData.length < 8) {
      extra.fill(0, 0, 8);
      writeU32(extra, 4, readU32(entry, 32));
    }
    if (extraData.length < 16) writeU64(extra, 8, virtualSize);
    if (extraData.length < 24) extra.fill(0xff, 16, 24);
    table.set(entry.subarray(0, 12), at);
    writeU16(table, at + 12, snapshot.idBytes.length);
    writeU16(table, at + 14, snapshot.nameBytes.length);
    table.set(entry.subarray(16, 32), at + 16);
    // Older readers must see a VM state too large for 32 bits as none rather than truncated.
    if (readU32(extra, 0) === 0) table.set(extra.subarray(4, 8), at + 32);
    writeU32(table, at + 36, extra.length);
    at += SNAPSHOT_ENTRY_BYTES;
    table.set(extra, at);
    at += extra.length;
    table.set(snapshot.idBytes, at);
    at += snapshot.idBytes.length;
    table.set(snapshot.nameBytes, at);
    at += snapshot.nameBytes.length;
  }
  return table;
}

/**
 * Writes the snapshot table anew, as QEMU does when a repairing check found incomplete entries:
 * into the first free clusters (free by the stored refcounts, which the check has just made
 * right, and by the counted references), then the header points at it, then the old table's
 * clusters are freed.
 *
 * @param image The image being repaired.
 * @param counts The references the check counted.
 * @param avoid Cluster ranges table entries point to past the end of the file.
 * @param res Where the outcome is counted.
 * @returns The reason the check fails, or undefined.
 */
export async function rewriteSnapshotTable(
  image: CheckImage,
  counts: ReferenceCounts,
  avoid: [number, number][],
  res: CheckCounts,
): Promise<string | undefined> {
  const fail = (reason: string): string => {
    image.messages.push(`ERROR failed to update the snapshot table: ${reason}`);
    res.checkErrors++;
    return reason;
  };
  const cs = image.clusterSize;
  const table = encodeSnapshotTable(image.snapshots, image.virtualSize);
  if (table.length > MAX_SNAPSHOT_TABLE_BYTES) return fail("File too large");
  const needed = Math.ceil(table.length / cs);

  // First fit, only where refcount blocks exist: growing the refcount structure is not done here.
  const limit = image.reftableEntries * image.refcountsPerBlock;
  const avoided = (cluster: number): boolean =>
    avoid.some(([first, last]) => cluster >= first && cluster <= last);
  let start = 0;
  let run = 0;
  for (let cluster = 1; run < needed; cluster++) {
    if (cluster >= limit) return fail("No space left on device");
    const block = await image.refcountBlock(Math.floor(cluster / image.refcountsPerBlock));
    const free = block !== null && block !== undefined && counts.get(cluster) === 0 &&
      !avoided(cluster) &&
      readRefcount(block.data, cluster % image.refcountsPerBlock, image.refcountOrder) === 0;
    if (!free) {
      run = 0;
      continue;
    }
    if (run === 0) start = cluster;
    run++;
  }
  for (let cluster = start; cluster < start + needed; cluster++) {
    const block = await image.refcountBlock(Math.floor(cluster / image.refcountsPerBlock));
    writeRefcount(block!.data, cluster % image.refcountsPerBlock, image.refcountOrder, 1);
    block!.dirty = true;
  }
  await image.flushRefcounts();
  if (!await image.writeChecked(0, start * cs, table)) return fail("Input/output error");
  await image.device.flush();

  const pointer = new Uint8Array(12);
  writeU32(pointer, 0, image.snapshots.length);
  writeU64(pointer, 4, start * cs);
  await image.device.write(pointer, 60);
  await image.device.flush();

  // Free the old table, unless its clusters have no refcount to take (a table past the end).
  const oldFirst = Math.floor(image.snapshotsOffset / cs);
  const oldEnd = image.snapshotsSize > 0
    ? Math.floor((image.snapshotsOffset + image.snapshotsSize - 1) / cs) + 1
    : oldFirst;
  let freeable = true;
  for (let cluster = oldFirst; cluster < oldEnd; cluster++) {
    const refcount = await image.refcount(cluster);
    if (refcount === undefined || refcount === 0) freeable = false;
  }
  if (freeable) {
    for (let cluster = oldFirst; cluster < oldEnd; cluster++) {
      const block = await image.refcountBlock(Math.floor(cluster / image.refcountsPerBlock));
      const index = cluster % image.refcountsPerBlock;
      const value = readRefcount(block!.data, index, image.refcountOrder);
      writeRefcount(block!.data, index, image.refcountOrder, value - 1);
      block!.dirty = true;
    }
    await image.flushRefcounts();
  } else {
    image.messages.push("qcow2_free_clusters failed: Invalid argument");
  }
  image.snapshotsOffset = start * cs;
  image.snapshotsSize = table.length;
  return undefined;
}
