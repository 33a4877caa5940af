/**
 * Turning a version 3 image's zero clusters into something version 2 can hold, as QEMU does
 * before a downgrade.
 *
 * @module
 */

import { readU32, writeU32, writeU64 } from "../../core/bytes.ts";
import type { BlockDevice } from "../../core/block_device.ts";
import { QcowError } from "../../core/errors.ts";
import {
  CLUSTER_ZERO_ALLOC,
  CLUSTER_ZERO_PLAIN,
  clusterType,
  type EntryFormat,
} from "./check_entries.ts";
import { entryOffset, hostHi, hostLo } from "./entries.ts";
import { Refcounts } from "./refcounts.ts";

/** An L1 table to walk. */
export interface L1Location {
  /** Its offset. */
  offset: number;
  /** Its entries. */
  size: number;
}

/** What {@linkcode expandZeroClusters} needs to know of the image. */
export interface ExpandZeroContext {
  /** log2 of the cluster size. */
  clusterBits: number;
  /** log2 of the refcount width. */
  refcountOrder: number;
  /** The refcount table. */
  reftableOffset: number;
  reftableClusters: number;
  /** Whether the image has a backing file (zero clusters then hide its data). */
  hasBacking: boolean;
  /** The active L1 table first, then the snapshots' tables. */
  l1Tables: L1Location[];
  /** Where the snapshot table is, if there is one. */
  snapshotTable?: { offset: number; size: number };
}

const COPIED = 0x80000000;
const FORMAT: EntryFormat = { subclusters: false, dataFile: false };

function corrupt(message: string): QcowError {
  return new QcowError("CORRUPT_METADATA", message);
}

/** The clusters that hold metadata, named as QEMU's overlap check names them. */
async function metadataClusters(
  device: BlockDevice,
  ctx: ExpandZeroContext,
  blocks: readonly number[],
): Promise<Map<number, string>> {
  const cs = 2 ** ctx.clusterBits;
  const map = new Map<number, string>([[0, "qcow2_header"]]);
  const add = (offset: number, bytes: number, name: string): void => {
    for (let c = Math.floor(offset / cs); c * cs < offset + bytes; c++) map.set(c, name);
  };
  add(ctx.reftableOffset, ctx.reftableClusters * cs, "refcount table");
  for (const block of blocks) if (block !== 0) add(block, cs, "refcount block");
  for (const [i, { offset, size }] of ctx.l1Tables.entries()) {
    if (size === 0) continue;
    add(offset, size * 8, i === 0 ? "active L1 table" : "inactive L1 table");
    const l1 = new Uint8Array(size * 8);
    await device.read(l1, offset);
    for (let e = 0; e < size; e++) {
      const l2 = entryOffset(readU32(l1, e * 8), readU32(l1, e * 8 + 4));
      if (l2 !== 0) add(l2, cs, i === 0 ? "active L2 table" : "inactive L2 table");
    }
  }
  if (ctx.snapshotTable) add(ctx.snapshotTable.offset, ctx.snapshotTable.size, "snapshot table");
  return map;
}

/**
 * Rewrites every zero cluster of every L1 table (active and snapshots') as QEMU does before a
 * downgrade to version 2: without a backing file, an unallocated zero cluster becomes a plain
 * unallocated one (it reads as zeros either way); with one, it gets a new cluster filled with
 * zeros; a zero cluster that has a host cluster gets zeros written there and keeps it. Each L2
 * table is written after its new clusters' zeros and refcounts are durable, so a crash can only
 * leak clusters.
 *
 * @param device The image file, writable.
 * @param ctx The image's layout.
 * @returns How many entries were rewritten.
 * @throws {QcowError} `CORRUPT_METADATA` on unaligned tables or offsets.
 */
export async function expandZeroClusters(
  device: BlockDevice,
  ctx: ExpandZeroContext,
): Promise<number> {
  const cs = 2 ** ctx.clusterBits;
  const refcounts = await Refcounts.load({
    device,
    clusterBits: ctx.clusterBits,
    refcountOrder: ctx.refcountOrder,
    tableOffset: ctx.reftableOffset,
    tableClusters: ctx.reftableClusters,
    cacheCapacity: 16,
    writeMetadata: (offset, data) => device.write(data, offset),
    switchTable: async (offset, clusters) => {
      const fields = new Uint8Array(12);
      writeU64(fields, 0, offset);
      writeU32(fields, 8, clusters);
      await device.write(fields, 48);
    },
  });
  const zeros = new Uint8Array(cs);
  const seen = new Set<number>();
  const metadata = await metadataClusters(device, ctx, refcounts.blockOffsets);
  let rewritten = 0;
  for (const { offset: l1Offset, size } of ctx.l1Tables) {
    if (size === 0) continue;
    const l1 = new Uint8Array(size * 8);
    await device.read(l1, l1Offset);
    for (let i = 0; i < size; i++) {
      const l2Offset = entryOffset(readU32(l1, i * 8), readU32(l1, i * 8 + 4));
      if (l2Offset === 0 || seen.has(l2Offset)) continue;
      seen.add(l2Offset);
      if (l2Offset % cs !== 0) {
        throw corrupt(`L2 table offset 0x${l2Offset.toString(16)} unaligned (L1 index: ${i})`);
      }
      const l2Refcount = await refcounts.get(l2Offset / cs);
      const table = new Uint8Array(cs);
      await device.read(table, l2Offset);
      let dirty = false;
      for (let j = 0; j < cs / 8; j++) {
        const hi = readU32(table, j * 8);
        const lo = readU32(table, j * 8 + 4);
        const type = clusterType(hi, lo, FORMAT);
        if (type !== CLUSTER_ZERO_PLAIN && type !== CLUSTER_ZERO_ALLOC) continue;
        let host: number;
        if (type === CLUSTER_ZERO_PLAIN) {
          if (!ctx.hasBacking) {
            writeU32(table, j * 8, 0);
            writeU32(table, j * 8 + 4, 0);
            dirty = true;
            rewritten++;
            continue;
          }
          host = await refcounts.allocate(1);
          // A shared L2 table's clusters are as shared as the table.
          if (l2Refcount > 1) await refcounts.update(host / cs, 1, l2Refcount - 1);
        } else {
          host = entryOffset(hi, lo);
          if (host % cs !== 0) {
            throw corrupt(
              `Cluster allocation offset 0x${host.toString(16)} unaligned (L2 offset: ` +
                `0x${l2Offset.toString(16)}, L2 index: 0x${j.toString(16)})`,
            );
          }
        }
        // QEMU's overlap check: zeros never go over metadata, whatever an entry says.
        const hit = metadata.get(host / cs);
        if (hit !== undefined) {
          throw corrupt(
            `Preventing invalid write on metadata (overlaps with ${hit}): zero cluster at ` +
              `0x${host.toString(16)} (L2 offset: 0x${l2Offset.toString(16)}, L2 index: 0x${
                j.toString(16)
              })`,
          );
        }
        await device.write(zeros, host);
        // hostHi sets COPIED: keep it only where the table (and so the cluster) is not shared.
        const newHi = l2Refcount === 1 ? hostHi(host) : (hostHi(host) & ~COPIED) >>> 0;
        writeU32(table, j * 8, newHi);
        writeU32(table, j * 8 + 4, hostLo(host));
        dirty = true;
        rewritten++;
      }
      if (!dirty) continue;
      // The zeros and the new refcounts first: the table must not point at clusters that are
      // not yet counted or hold stale data.
      await refcounts.flush();
      await device.flush();
      await device.write(table, l2Offset);
      await device.flush();
    }
  }
  await refcounts.flush();
  await device.flush();
  return rewritten;
}
