import assert from "node:assert/strict";
import {
  OverlapMap,
  overlapMask,
  REGION_ACTIVE_L1,
  REGION_ACTIVE_L2,
  REGION_HEADER,
  REGION_INACTIVE_L2,
  REGION_REFCOUNT_BLOCK,
} from "./overlap.ts";

Deno.test("OverlapMap: names the first region a range touches, per cluster", () => {
  const map = new OverlapMap(16, "cached");
  map.add(REGION_HEADER, 0, 65536);
  map.add(REGION_ACTIVE_L1, 3 * 65536, 8);
  map.add(REGION_ACTIVE_L2, 5 * 65536, 65536);
  assert.equal(map.check(100, 10), "qcow2_header");
  assert.equal(map.check(65536, 65536), undefined);
  assert.equal(map.check(65536, 2 * 65536 + 1), "active L1 table");
  assert.equal(map.check(3 * 65536 + 4096, 512), "active L1 table");
  assert.equal(map.check(5 * 65536, 8, 1 << REGION_ACTIVE_L2), undefined);
  assert.equal(map.check(5 * 65536, 8), "active L2 table");
  map.remove(REGION_ACTIVE_L2, 5 * 65536, 65536);
  assert.equal(map.check(5 * 65536, 8), undefined);
  map.clear(REGION_ACTIVE_L1);
  assert.equal(map.check(3 * 65536, 8), undefined);
  assert.equal(map.has(REGION_HEADER, 0), true);
});

Deno.test("OverlapMap: two kinds in one cluster are kept apart", () => {
  const map = new OverlapMap(9, "all");
  map.add(REGION_ACTIVE_L2, 1024, 512);
  map.add(REGION_INACTIVE_L2, 1024, 512);
  assert.equal(map.check(1024, 1), "active L2 table");
  assert.equal(map.check(1024, 1, 1 << REGION_ACTIVE_L2), "inactive L2 table");
  map.remove(REGION_ACTIVE_L2, 1024, 512);
  assert.equal(map.check(1024, 1), "inactive L2 table");
});

Deno.test("OverlapMap: templates choose what is tracked", () => {
  assert.equal(overlapMask("none"), 0);
  const none = new OverlapMap(16, "none");
  none.add(REGION_HEADER, 0, 65536);
  assert.equal(none.enabled, false);
  assert.equal(none.check(0, 1), undefined);
  const constant = new OverlapMap(16, "constant");
  constant.add(REGION_ACTIVE_L2, 65536, 65536);
  constant.add(REGION_REFCOUNT_BLOCK, 2 * 65536, 65536);
  assert.equal(constant.check(65536, 2 * 65536), undefined);
  const cached = new OverlapMap(16, "cached");
  cached.add(REGION_INACTIVE_L2, 65536, 65536);
  assert.equal(cached.tracks(REGION_INACTIVE_L2), false);
  assert.equal(cached.check(65536, 1), undefined);
  const all = new OverlapMap(16, "all");
  all.add(REGION_INACTIVE_L2, 65536, 65536);
  assert.equal(all.check(65536, 1), "inactive L2 table");
  assert.throws(() => overlapMask("some" as never), RangeError);
});
