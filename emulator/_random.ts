/**
 * A small seeded pseudo-random generator, so sampled crash states are reproducible.
 *
 * @module
 */

import { mulberry32 } from "../core/_random.ts";

/** Returns a generator of floats in [0, 1) determined by the seeds (mulberry32 over a mixed seed). */
export function seededRandom(...seeds: number[]): () => number {
  let state = 0x9e3779b9;
  for (const seed of seeds) {
    state = Math.imul(state ^ (seed >>> 0), 0x85ebca6b);
    state = Math.imul(state ^ (state >>> 13), 0xc2b2ae35);
    state ^= Math.floor(seed / 2 ** 32);
    state ^= state >>> 16;
  }
  const next = mulberry32(state);
  return (): number => next() / 2 ** 32;
}
