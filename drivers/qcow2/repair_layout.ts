/**
 * Where a repair puts a rebuilt refcount structure, and what its blocks hold, without I/O.
 *
 * @module
 */

import type { ReferenceCounts } from "./check_refcount_array.ts";
import { refcountsPerBlock, writeRefcount } from "./refcount_math.ts";

/** A new refcount table and blocks, placed in free clusters at the end of the image. */
export interface RebuildLayout {
  /** First cluster of the new structures: the blocks, then the table. */
  firstCluster: number;
  /** Indices (in the new table) of the blocks, in the order they are placed. */
  blockIndices: number[];
  /** Offset of the new refcount table. */
  tableOffset: number;
  /** Clusters of the new refcount table. */
  tableClusters: number;
  /** One past the last new cluster. */
  endCluster: number;
  /** The new table's entries: block offsets by index, 0 for none. */
  table: number[];
}

/**
 * Plans a refcount structure describing `counts` and itself: one block for every range of
 * clusters with a nonzero count, and a table just large enough, placed from `firstCluster` on
 * (blocks first). New blocks may be needed for the clusters the structure itself takes, which may
 * make the table grow; the plan repeats until nothing changes. The new clusters are not counted
 * in `counts`: the caller does that once it settles on the plan.
 *
 * @param counts The refcounts the structure must hold.
 * @param firstCluster The first free cluster at the end of the image.
 * @param clusterBits log2 of the cluster size.
 * @param refcountOrder log2 of the refcount width.
 * @returns The layout.
 */
export function planRebuild(
  counts: ReferenceCounts,
  firstCluster: number,
  clusterBits: number,
  refcountOrder: number,
): RebuildLayout {
  const clusterSize = 2 ** clusterBits;
  const perBlock = refcountsPerBlock(clusterBits, refcountOrder);
  const perTableCluster = clusterSize / 8;
  const used = new Set<number>();
  for (let r = 0; r * perBlock < counts.size; r++) {
    if (counts.anyIn(r * perBlock, (r + 1) * perBlock)) used.add(r);
  }
  const tableClustersFor = (blocks: Set<number>): number => {
    let highest = -1;
    for (const r of blocks) if (r > highest) highest = r;
    return Math.max(1, Math.ceil((highest + 1) / perTableCluster));
  };

  let blocks = new Set(used);
  let tableClusters = tableClustersFor(blocks);
  for (;;) {
    const end = firstCluster + blocks.size + tableClusters;
    const needed = new Set(used);
    for (let r = Math.floor(firstCluster / perBlock); r * perBlock < end; r++) needed.add(r);
    const neededTable = tableClustersFor(needed);
    if (needed.size === blocks.size && neededTable === tableClusters) break;
    blocks = needed;
    tableClusters = Math.max(tableClusters, neededTable);
  }

  const blockIndices = [...blocks].sort((a, b) => a - b);
  const table: number[] = new Array(tableClusters * perTableCluster).fill(0);
  blockIndices.forEach((r, i) => table[r] = (firstCluster + i) * clusterSize);
  const tableCluster = firstCluster + blockIndices.length;
  return {
    firstCluster,
    blockIndices,
    tableOffset: tableCluster * clusterSize,
    tableClusters,
    endCluster: tableCluster + tableClusters,
    table,
  };
}

/**
 * Encodes refcount block `index` from `counts`.
 *
 * @param counts The refcounts.
 * @param index The block's index in the refcount table.
 * @param clusterBits log2 of the cluster size.
 * @param refcountOrder log2 of the refcount width.
 * @returns A new cluster-sized block.
 */
export function encodeRefcountBlock(
  counts: ReferenceCounts,
  index: number,
  clusterBits: number,
  refcountOrder: number,
): Uint8Array {
  const perBlock = refcountsPerBlock(clusterBits, refcountOrder);
  const block = new Uint8Array(2 ** clusterBits);
  const first = index * perBlock;
  const end = Math.min(first + perBlock, counts.size);
  for (let c = first; c < end; c++) {
    const value = counts.get(c);
    if (value !== 0) writeRefcount(block, c - first, refcountOrder, value);
  }
  return block;
}
