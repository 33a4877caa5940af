import assert from "node:assert/strict";
import { forEachPiece } from "./_pieces.ts";

function pieces(offset: number, length: number, size: number): number[][] {
  const seen: number[][] = [];
  forEachPiece(
    offset,
    length,
    size,
    (index, within, done, n) => seen.push([index, within, done, n]),
  );
  return seen;
}

Deno.test("forEachPiece() cuts a range at piece boundaries, in order", () => {
  assert.deepEqual(pieces(4000, 200, 4096), [[0, 4000, 0, 96], [1, 0, 96, 104]]);
  assert.deepEqual(pieces(4096, 8192, 4096), [[1, 0, 0, 4096], [2, 0, 4096, 4096]]);
  assert.deepEqual(pieces(10, 5, 512), [[0, 10, 0, 5]]);
});

Deno.test("forEachPiece() visits nothing for an empty range", () => {
  assert.deepEqual(pieces(123, 0, 512), []);
});

Deno.test("forEachPiece() covers every byte once, past 2^32", () => {
  const offset = 2 ** 40 - 700;
  const seen = pieces(offset, 5000, 1024);
  let next = offset;
  for (const [index, within, done, n] of seen) {
    assert.equal(index! * 1024 + within!, next);
    assert.equal(done, next - offset);
    assert.ok(n! > 0 && within! + n! <= 1024);
    next += n!;
  }
  assert.equal(next, offset + 5000);
});
