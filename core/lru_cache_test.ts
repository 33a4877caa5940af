import assert from "node:assert/strict";
import fc from "fast-check";
import { LruCache } from "./lru_cache.ts";

Deno.test("LruCache evicts the least recently set entry and returns it", () => {
  const cache = new LruCache<number, string>(2);
  assert.equal(cache.set(1, "a"), undefined);
  assert.equal(cache.set(2, "b"), undefined);
  assert.deepEqual(cache.set(3, "c"), [1, "a"]);
  assert.equal(cache.size, 2);
  assert.equal(cache.has(1), false);
  assert.equal(cache.get(1), undefined);
  assert.deepEqual(cache.set(4, "d"), [2, "b"]);
  assert.equal(cache.get(3), "c");
  assert.equal(cache.get(4), "d");
});

Deno.test("LruCache.get() makes an entry the most recently used", () => {
  const cache = new LruCache<string, number>(3);
  cache.set("a", 1);
  cache.set("b", 2);
  cache.set("c", 3);
  assert.equal(cache.get("a"), 1);
  assert.deepEqual(cache.set("d", 4), ["b", 2]);
  assert.deepEqual(cache.set("e", 5), ["c", 3]);
  assert.deepEqual(cache.set("f", 6), ["a", 1]);
});

Deno.test("LruCache.has() does not change the eviction order", () => {
  const cache = new LruCache<string, number>(2);
  cache.set("a", 1);
  cache.set("b", 2);
  assert.equal(cache.has("a"), true);
  assert.deepEqual(cache.set("c", 3), ["a", 1]);
});

Deno.test("LruCache.set() on a held key replaces the value without evicting", () => {
  const cache = new LruCache<string, number>(2);
  cache.set("a", 1);
  cache.set("b", 2);
  assert.equal(cache.set("a", 10), undefined);
  assert.equal(cache.size, 2);
  assert.equal(cache.get("a"), 10);
  assert.deepEqual(cache.set("c", 3), ["b", 2]);
});

Deno.test("LruCache rounds its capacity down and keeps at least one entry", () => {
  assert.equal(new LruCache(2.9).capacity, 2);
  assert.equal(new LruCache(0).capacity, 1);
  assert.equal(new LruCache(-5).capacity, 1);
  const one = new LruCache<number, number>(0);
  assert.equal(one.set(1, 1), undefined);
  assert.deepEqual(one.set(2, 2), [1, 1]);
  assert.equal(one.get(2), 2);
});

Deno.test("LruCache.delete() and clear() forget entries", () => {
  const cache = new LruCache<number, string>(3);
  cache.set(1, "a");
  cache.set(2, "b");
  assert.equal(cache.delete(1), true);
  assert.equal(cache.delete(1), false);
  assert.equal(cache.size, 1);
  cache.set(3, "c");
  assert.equal(cache.set(4, "d"), undefined);
  cache.clear();
  assert.equal(cache.size, 0);
  assert.equal(cache.get(2), undefined);
});

Deno.test("LruCache matches a list-ordered model under random use", () => {
  const op = fc.oneof(
    fc.record({ kind: fc.constant("set" as const), key: fc.nat(9), value: fc.nat() }),
    fc.record({ kind: fc.constant("get" as const), key: fc.nat(9) }),
    fc.record({ kind: fc.constant("delete" as const), key: fc.nat(9) }),
  );
  fc.assert(fc.property(fc.integer({ min: 1, max: 5 }), fc.array(op), (capacity, ops) => {
    const cache = new LruCache<number, number>(capacity);
    // Least recently used first.
    let model: [number, number][] = [];
    for (const step of ops) {
      const at = model.findIndex(([key]) => key === step.key);
      if (step.kind === "set") {
        if (at >= 0) model.splice(at, 1);
        model.push([step.key, step.value]);
        const expected = model.length > capacity ? model.shift() : undefined;
        assert.deepEqual(cache.set(step.key, step.value), expected);
      } else if (step.kind === "get") {
        const entry = at >= 0 ? model.splice(at, 1)[0] : undefined;
        if (entry) model.push(entry);
        assert.equal(cache.get(step.key), entry?.[1]);
      } else {
        if (at >= 0) model = model.filter(([key]) => key !== step.key);
        assert.equal(cache.delete(step.key), at >= 0);
      }
      assert.equal(cache.size, model.length);
    }
  }));
});
