import assert from "node:assert/strict";
import {
  CLUSTER_COMPRESSED,
  CLUSTER_NORMAL,
  CLUSTER_UNALLOCATED,
  CLUSTER_ZERO_ALLOC,
  CLUSTER_ZERO_PLAIN,
  clusterType,
  compressedRange,
  hex64,
  hexAlt,
  l2ReservedBits,
  offsetInCluster,
  reftableReservedBits,
} from "./check_entries.ts";

const STANDARD = { subclusters: false, dataFile: false };
const EXTENDED = { subclusters: true, dataFile: false };
const DATA_FILE = { subclusters: false, dataFile: true };

Deno.test("clusterType() classifies standard entries as QEMU does", () => {
  assert.equal(clusterType(0, 0, STANDARD), CLUSTER_UNALLOCATED);
  assert.equal(clusterType(0x80000000, 0x50000, STANDARD), CLUSTER_NORMAL);
  assert.equal(clusterType(0, 1, STANDARD), CLUSTER_ZERO_PLAIN);
  assert.equal(clusterType(0x80000000, 0x50001, STANDARD), CLUSTER_ZERO_ALLOC);
  assert.equal(clusterType(0x40000005, 0x1234, STANDARD), CLUSTER_COMPRESSED);
  // COPIED alone is not an allocation.
  assert.equal(clusterType(0x80000000, 0, STANDARD), CLUSTER_UNALLOCATED);
  // An offset in the high word counts.
  assert.equal(clusterType(0x00000001, 0, STANDARD), CLUSTER_NORMAL);
});

Deno.test("clusterType() ignores the zero flag with subclusters", () => {
  assert.equal(clusterType(0, 1, EXTENDED), CLUSTER_UNALLOCATED);
  assert.equal(clusterType(0, 0x50001, EXTENDED), CLUSTER_NORMAL);
});

Deno.test("clusterType() reads offset 0 with COPIED as data in an external data file", () => {
  assert.equal(clusterType(0x80000000, 0, DATA_FILE), CLUSTER_NORMAL);
  assert.equal(clusterType(0, 0, DATA_FILE), CLUSTER_UNALLOCATED);
});

Deno.test("l2ReservedBits() checks bits 1..8 and 56..61 only", () => {
  assert.equal(l2ReservedBits(0x80000000, 0x50001), false);
  assert.equal(l2ReservedBits(0x80000000, 0x50100), true);
  assert.equal(l2ReservedBits(0x81000000, 0x50000), true);
  assert.equal(l2ReservedBits(0x40000000, 0), false);
  assert.equal(reftableReservedBits(0x20000), false);
  assert.equal(reftableReservedBits(0x20001), true);
});

Deno.test("offsetInCluster() works from the low word", () => {
  assert.equal(offsetInCluster(0x50200, 65536), 0x200);
  assert.equal(offsetInCluster(0xfffe0000, 65536), 0);
  assert.equal(offsetInCluster(0x600, 512), 0);
});

Deno.test("hex64() and hexAlt() print like C's PRIx64 and %#x", () => {
  assert.equal(hex64(0x80000000, 0x50000), "8000000000050000");
  assert.equal(hex64(0, 0x70000), "70000");
  assert.equal(hex64(0, 0), "0");
  assert.equal(hexAlt(0), "0");
  assert.equal(hexAlt(0x200000), "0x200000");
});

Deno.test("compressedRange() decodes offsets past 2^53 exactly", () => {
  // 64 KiB clusters: 54 offset bits, so the high word keeps 22 of them; 2 more sectors.
  const hi = 0x40000000 | (2 << 22) | 0x26636f;
  const range = compressedRange(hi, 0x756e7473, 16);
  assert.equal(hex64(range.offsetHi, 0x756e7473), "26636f756e7473");
  assert.equal(range.length, 3 * 512 - 0x73);
  const small = compressedRange(0x40000000 | (1 << 22), 0x50200, 16);
  assert.equal(small.offset, 0x50200);
  assert.equal(small.length, 1024);
});
