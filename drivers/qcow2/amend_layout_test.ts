import assert from "node:assert/strict";
import { planRefcountOrderChange } from "./amend_layout.ts";
import { ReferenceCounts } from "./check_refcount_array.ts";

function countsOf(used: number[], size: number): ReferenceCounts {
  const counts = new ReferenceCounts(4, size);
  for (const c of used) counts.set(c, 1);
  return counts;
}

Deno.test("planRefcountOrderChange() takes the first free clusters: blocks, then the table", () => {
  // Clusters 0..5 in use, 6 free: the block goes to 6, the table to 7.
  const counts = countsOf([0, 1, 2, 3, 4, 5], 6);
  const layout = planRefcountOrderChange(counts, 3, 16);
  assert.deepEqual([...layout.blocks], [[0, 6]]);
  assert.equal(layout.tableCluster, 7);
  assert.equal(layout.tableClusters, 1);
  assert.equal(counts.get(6), 1);
  assert.equal(counts.get(7), 1);
});

Deno.test("planRefcountOrderChange() reuses holes and places a block for every range in use", () => {
  // 512-byte clusters, 1-bit refcounts: 4096 clusters per block. In use: 0, 2, 5000, 9000.
  const counts = countsOf([0, 2, 5000, 9000], 9001);
  const layout = planRefcountOrderChange(counts, 0, 9);
  assert.deepEqual([...layout.blocks], [[0, 1], [1, 3], [2, 4]]);
  assert.equal(layout.tableCluster, 5);
  assert.equal(layout.tableClusters, 1);
});

Deno.test("planRefcountOrderChange() walks again when its own clusters need a new block", () => {
  // 512-byte clusters, 64-bit refcounts: 64 clusters per block. Clusters 0..63 in use: the new
  // block lands at 64, which needs a second block (at 65); the table follows.
  const used = Array.from({ length: 64 }, (_, i) => i);
  const counts = countsOf(used, 64);
  const layout = planRefcountOrderChange(counts, 6, 9);
  assert.deepEqual([...layout.blocks], [[0, 64], [1, 65]]);
  // The table was placed after the first walk (at 65) and moved when block 1 took that cluster.
  assert.equal(layout.tableCluster, 66);
  assert.equal(counts.get(65), 1);
});
