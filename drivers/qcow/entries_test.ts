import assert from "node:assert/strict";
import {
  alignUp,
  decodeEntry,
  encodeCompressed,
  l1EntriesFor,
  l1Index,
  l2Index,
  l2Span,
} from "./entries.ts";

Deno.test("decodeEntry() reads unallocated, data and compressed entries", () => {
  assert.deepEqual(decodeEntry(0, 0, 12), { kind: "unallocated" });
  assert.deepEqual(decodeEntry(0, 0x3000, 12), { kind: "data", offset: 0x3000 });
  assert.deepEqual(decodeEntry(0x12, 0x200, 9), { kind: "data", offset: 0x12 * 2 ** 32 + 0x200 });
  // cluster_bits 12: the length sits in bits 51..62, i.e. bits 19..30 of the high word.
  const hi = (0x80000000 | (1234 << 19) | 0x5) >>> 0;
  assert.deepEqual(decodeEntry(hi, 0x10, 12), {
    kind: "compressed",
    offset: 5 * 2 ** 32 + 0x10,
    length: 1234,
  });
});

Deno.test("encodeCompressed() round-trips through decodeEntry() for every cluster size", () => {
  for (let bits = 9; bits <= 16; bits++) {
    for (const [offset, length] of [[48, 1], [0x123456789, 2 ** bits - 1], [2 ** 40 + 7, 100]]) {
      const [hi, lo] = encodeCompressed(offset!, length!, bits);
      assert.deepEqual(
        decodeEntry(hi, lo, bits),
        { kind: "compressed", offset, length },
        `${bits}`,
      );
    }
  }
});

Deno.test("l1Index() and l2Index() split a virtual offset; l1EntriesFor() rounds up", () => {
  assert.equal(l2Span(12, 9), 2 * 1024 * 1024);
  assert.equal(l1Index(2 * 1024 * 1024 + 4096 * 3 + 5, 12, 9), 1);
  assert.equal(l2Index(2 * 1024 * 1024 + 4096 * 3 + 5, 12, 9), 3);
  assert.equal(l1EntriesFor(1, 12, 9), 1);
  assert.equal(l1EntriesFor(2 * 1024 * 1024, 12, 9), 1);
  assert.equal(l1EntriesFor(2 * 1024 * 1024 + 1, 12, 9), 2);
  assert.equal(alignUp(560, 4096), 4096);
  assert.equal(alignUp(8192, 4096), 8192);
});
