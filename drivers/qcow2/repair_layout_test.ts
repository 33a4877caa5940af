import assert from "node:assert/strict";
import { ReferenceCounts } from "./check_refcount_array.ts";
import { readRefcount, refcountsPerBlock } from "./refcount_math.ts";
import { encodeRefcountBlock, planRebuild } from "./repair_layout.ts";

/** Applies a plan the way a repair does and checks that the structure describes everything. */
function applyAndVerify(
  counts: ReferenceCounts,
  start: number,
  clusterBits: number,
  order: number,
): ReturnType<typeof planRebuild> {
  const layout = planRebuild(counts, start, clusterBits, order);
  for (let c = layout.firstCluster; c < layout.endCluster; c++) counts.set(c, 1);
  const perBlock = refcountsPerBlock(clusterBits, order);
  const blocks = new Map<number, Uint8Array>();
  for (const index of layout.blockIndices) {
    blocks.set(index, encodeRefcountBlock(counts, index, clusterBits, order));
  }
  for (let c = 0; c < counts.size; c++) {
    const count = counts.get(c);
    const index = Math.floor(c / perBlock);
    const block = blocks.get(index);
    if (count === 0) continue;
    assert.ok(block, `cluster ${c} has no refcount block`);
    assert.equal(
      layout.table[index],
      (layout.firstCluster + layout.blockIndices.indexOf(index)) *
        2 ** clusterBits,
    );
    assert.equal(readRefcount(block, c % perBlock, order), count, `refcount of cluster ${c}`);
  }
  assert.equal(layout.table.length, layout.tableClusters * 2 ** clusterBits / 8);
  return layout;
}

Deno.test("planRebuild() puts one block and the table after the end", () => {
  const counts = new ReferenceCounts(4, 9);
  for (const c of [0, 1, 2, 3, 4, 5, 7, 8]) counts.set(c, 1);
  const layout = applyAndVerify(counts, 9, 16, 4);
  assert.deepEqual(layout.blockIndices, [0]);
  assert.equal(layout.firstCluster, 9);
  assert.equal(layout.tableOffset, 10 * 65536);
  assert.equal(layout.tableClusters, 1);
  assert.equal(layout.endCluster, 11);
  assert.equal(counts.get(9), 1);
  assert.equal(counts.get(10), 1);
});

Deno.test("planRebuild() skips ranges without references", () => {
  // 512-byte clusters with 64-bit refcounts: 64 clusters per block.
  const counts = new ReferenceCounts(6, 1000);
  counts.set(0, 1);
  counts.set(900, 3);
  const layout = applyAndVerify(counts, 1000, 9, 6);
  // Blocks 0 and 14 for the references, 15 for the new clusters at 1000..1002.
  assert.deepEqual(layout.blockIndices, [0, 14, 15]);
  assert.equal(layout.tableClusters, 1);
});

Deno.test("planRebuild() grows blocks and table until they describe themselves", () => {
  // 512-byte clusters, 64-bit refcounts: a table cluster holds 64 entries, a block 64 clusters.
  // References up to cluster 64 * 64 need a second table cluster, whose blocks need more.
  const counts = new ReferenceCounts(6, 4100);
  for (let c = 0; c < 4100; c++) counts.set(c, 1);
  const layout = applyAndVerify(counts, 4100, 9, 6);
  assert.equal(layout.tableClusters, 2);
  assert.equal(layout.blockIndices.length, Math.ceil(layout.endCluster / 64));
});

Deno.test("planRebuild() handles 1-bit refcounts", () => {
  const counts = new ReferenceCounts(0, 40000);
  for (let c = 0; c < 40000; c += 7) counts.set(c, 1);
  const layout = applyAndVerify(counts, 40000, 12, 0);
  assert.deepEqual(layout.blockIndices, [0, 1]);
});

Deno.test("encodeRefcountBlock() packs sub-byte refcounts from the least significant bit", () => {
  const counts = new ReferenceCounts(1, 8);
  counts.set(0, 1);
  counts.set(1, 3);
  counts.set(5, 2);
  const block = encodeRefcountBlock(counts, 0, 9, 1);
  assert.equal(block[0], 0b00001101);
  assert.equal(block[1], 0b00001000);
  assert.equal(block.length, 512);
});
