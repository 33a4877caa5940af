/**
 * Changing the refcount width of a qcow2 image (`amend -o refcount_bits=N`): a new refcount
 * structure with the new width is written into free clusters, then the header switches to it in
 * one write.
 *
 * @module
 */

import { writeU32, writeU64 } from "../../core/bytes.ts";
import type { BlockDevice } from "../../core/block_device.ts";
import { QcowError } from "../../core/errors.ts";
import { CheckImage, zeroCounts } from "./check_image.ts";
import { checkRefcounts, NO_FIX } from "./check_refcounts.ts";
import { readSnapshotTable } from "./check_snapshots.ts";
import { maxRefcount, writeRefcount } from "./refcount_math.ts";
import { planRefcountOrderChange } from "./amend_layout.ts";
import { encodeRefcountBlock } from "./repair_layout.ts";

/** Where the new refcount table is. */
export interface NewRefcountTable {
  /** Its offset. */
  offset: number;
  /** Its size in clusters. */
  clusters: number;
}

/**
 * Rewrites the refcount structure of a clean version 3 image with `2^order`-bit entries. The
 * refcounts are counted from every reference (as a check counts them), so clusters an earlier
 * crash leaked come out free. The new blocks and table are placed as QEMU places them (see
 * {@linkcode planRefcountOrderChange}) and counted in the old structure first; then the header
 * switches to them in one write, and the old structure is free: a crash at any moment leaves a
 * consistent image, at worst leaking the new clusters.
 *
 * @param device The image file, writable.
 * @param order log2 of the new refcount width, 0..6.
 * @returns Where the new refcount table is.
 * @throws {QcowError} `INVALID_ARGUMENT` when a refcount does not fit in the new width,
 * `CORRUPT_METADATA` when the image's refcounts are not consistent.
 */
export async function changeRefcountOrder(
  device: BlockDevice,
  order: number,
): Promise<NewRefcountTable> {
  const messages: string[] = [];
  const image = await CheckImage.open(device, messages, { writable: false, quiet: true });
  const res = zeroCounts();
  const snapshotFailure = await readSnapshotTable(image, res, false);
  const counted = snapshotFailure === undefined
    ? await checkRefcounts(image, res, NO_FIX)
    : undefined;
  const failure = snapshotFailure ?? counted?.failure;
  if (
    counted === undefined || failure !== undefined || res.corruptions > 0 || res.checkErrors > 0
  ) {
    throw new QcowError(
      "CORRUPT_METADATA",
      `Cannot change the refcount width of ${device.name}: its refcounts are not consistent ` +
        `(${res.corruptions} corruption(s), ${res.checkErrors} check error(s)); run check -r all first`,
    );
  }
  const pass = counted.pass;
  const counts = pass.counts;
  const cs = image.clusterSize;
  const max = maxRefcount(order);
  for (let c = 0; c < counts.size; c++) {
    const value = counts.get(c);
    if (value > max) {
      throw new QcowError(
        "INVALID_ARGUMENT",
        `Cannot decrease refcount entry width to ${2 ** order} bits: Cluster at offset ` +
          `0x${(c * cs).toString(16)} has a refcount of ${value}`,
      );
    }
  }
  // The new structure goes where QEMU puts it: first fit, the old structure still in use.
  const layout = planRefcountOrderChange(counts, order, image.clusterBits);
  const fresh = [...layout.blocks.values()];
  for (let i = 0; i < layout.tableClusters; i++) fresh.push(layout.tableCluster + i);
  // As QEMU does, the new clusters are first allocated in the old structure (where its blocks
  // cover them): a crash before the switch leaks them instead of leaving stray data.
  for (const c of fresh) {
    const block = await image.refcountBlock(Math.floor(c / image.refcountsPerBlock));
    if (!block) continue;
    writeRefcount(block.data, c % image.refcountsPerBlock, image.refcountOrder, 1);
    block.dirty = true;
  }
  await image.flushRefcounts();
  // The old structure is free once the header points at the new one.
  const oldTableClusters = Math.ceil(image.reftableEntries * 8 / cs);
  const oldTable = Math.floor(image.reftableOffset / cs);
  for (let c = oldTable; c < oldTable + oldTableClusters; c++) counts.set(c, 0);
  for (let i = 0; i < image.reftableEntries; i++) {
    const block = image.refblockOffset(i);
    if (block !== 0) counts.set(Math.floor(block / cs), 0);
  }
  const table = new Uint8Array(layout.tableClusters * cs);
  for (const [index, cluster] of layout.blocks) {
    await device.write(encodeRefcountBlock(counts, index, image.clusterBits, order), cluster * cs);
    writeU64(table, index * 8, cluster * cs);
  }
  const tableOffset = layout.tableCluster * cs;
  await device.write(table, tableOffset);
  await device.flush();
  // One write switches table and width together (bytes 48..99 of the header).
  const fields = new Uint8Array(52);
  await device.read(fields, 48);
  writeU64(fields, 0, tableOffset);
  writeU32(fields, 8, layout.tableClusters);
  writeU32(fields, 48, order);
  await device.write(fields, 48);
  await device.flush();
  return { offset: tableOffset, clusters: layout.tableClusters };
}
