import assert from "node:assert/strict";
import { mulberry32 } from "./_random.ts";

Deno.test("mulberry32() gives the reference sequence for seed 1", () => {
  const next = mulberry32(1);
  assert.deepEqual([next(), next(), next(), next()], [
    2693262067,
    11749833,
    2265367787,
    4213581821,
  ]);
});

Deno.test("mulberry32() uses only the low 32 bits of the seed", () => {
  const a = mulberry32(2 ** 32 + 5);
  const b = mulberry32(5);
  assert.deepEqual([a(), a()], [b(), b()]);
});

Deno.test("mulberry32() returns 32-bit values", () => {
  const next = mulberry32(123);
  for (let i = 0; i < 100; i++) {
    const v = next();
    assert.ok(Number.isInteger(v) && v >= 0 && v < 2 ** 32);
  }
});
