/**
 * Where a refcount width change puts the new refcount blocks and table, as QEMU places them,
 * without I/O.
 *
 * @module
 */

import type { ReferenceCounts } from "./check_refcount_array.ts";
import { refcountsPerBlock } from "./refcount_math.ts";

/** The new refcount structure's place. */
export interface RefcountOrderLayout {
  /** The cluster of each new refcount block, by its index in the new table. */
  blocks: Map<number, number>;
  /** First cluster of the new table. */
  tableCluster: number;
  /** Clusters of the new table. */
  tableClusters: number;
}

/**
 * Places a refcount structure with `2^order`-bit entries for `counts` the way QEMU's refcount
 * order change allocates it: walking the clusters in use in order, each new block that has no
 * place yet takes the first free cluster (first fit, from a hint that only moves back when
 * clusters are freed); after a walk that placed blocks, the table is (re)allocated as the first
 * free run of the clusters it needs; walks repeat until one places nothing. The clusters taken
 * are counted in `counts` (with 1).
 *
 * @param counts The refcounts in use: the clusters of the old structure counted too.
 * @param order log2 of the new refcount width.
 * @param clusterBits log2 of the cluster size.
 * @returns Where the new blocks and table go.
 */
export function planRefcountOrderChange(
  counts: ReferenceCounts,
  order: number,
  clusterBits: number,
): RefcountOrderLayout {
  const perBlock = refcountsPerBlock(clusterBits, order);
  const perTableCluster = 2 ** clusterBits / 8;
  let hint = 0;
  const allocate = (n: number): number => {
    let start = hint;
    for (;;) {
      let run = 0;
      while (run < n && counts.get(start + run) === 0) run++;
      if (run === n) break;
      start += run + 1;
    }
    for (let c = start; c < start + n; c++) counts.set(c, 1);
    hint = start + n;
    return start;
  };
  const blocks = new Map<number, number>();
  let tableCluster = -1;
  let tableClusters = 0;
  for (;;) {
    let placed = false;
    for (let c = 0; c < counts.size; c++) {
      if (counts.get(c) === 0) continue;
      const index = Math.floor(c / perBlock);
      if (blocks.has(index)) {
        // Nothing else to find in this block's range.
        c = (index + 1) * perBlock - 1;
        continue;
      }
      blocks.set(index, allocate(1));
      placed = true;
    }
    if (!placed) break;
    const highest = Math.max(...blocks.keys());
    if (tableCluster >= 0) {
      for (let c = tableCluster; c < tableCluster + tableClusters; c++) counts.set(c, 0);
      if (tableCluster < hint) hint = tableCluster;
    }
    tableClusters = Math.ceil((highest + 1) / perTableCluster);
    tableCluster = allocate(tableClusters);
  }
  return { blocks, tableCluster, tableClusters };
}
