import assert from "node:assert/strict";
import { ReferenceCounts } from "./check_refcount_array.ts";

Deno.test("ReferenceCounts saturates at the image's refcount maximum", () => {
  const one = new ReferenceCounts(0, 4);
  assert.equal(one.max, 1);
  assert.equal(one.increment(2), true);
  assert.equal(one.increment(2), false);
  assert.equal(one.get(2), 1);
  const sixteen = new ReferenceCounts(4, 4);
  for (let i = 0; i < 65535; i++) sixteen.increment(0);
  assert.equal(sixteen.increment(0), false);
  assert.equal(sixteen.get(0), 65535);
  const wide = new ReferenceCounts(6, 1);
  wide.set(0, 2 ** 40);
  assert.equal(wide.increment(0), true);
  assert.equal(wide.get(0), 2 ** 40 + 1);
});

Deno.test("ReferenceCounts grows to the highest cluster referenced, never shrinks", () => {
  const counts = new ReferenceCounts(4, 3);
  assert.equal(counts.size, 3);
  assert.equal(counts.get(1000), 0);
  counts.increment(1000);
  assert.equal(counts.size, 1001);
  assert.equal(counts.get(1000), 1);
  counts.cover(10);
  assert.equal(counts.size, 1001);
  counts.clear();
  assert.equal(counts.size, 1001);
  assert.equal(counts.get(1000), 0);
});

Deno.test("ReferenceCounts.anyIn() finds counts in a range", () => {
  const counts = new ReferenceCounts(3, 100);
  counts.set(50, 2);
  assert.equal(counts.anyIn(0, 50), false);
  assert.equal(counts.anyIn(0, 51), true);
  assert.equal(counts.anyIn(51, 1000), false);
});

Deno.test("ReferenceCounts.storage is the array behind the counts, replaced when they grow", () => {
  const counts = new ReferenceCounts(4, 20);
  const storage = counts.storage;
  assert.ok(storage instanceof Uint16Array);
  storage[3] = 7;
  assert.equal(counts.get(3), 7);
  counts.cover(1000);
  assert.notEqual(counts.storage, storage);
  assert.equal(counts.storage[3], 7);
  assert.ok(new ReferenceCounts(6, 4).storage instanceof Float64Array);
});
