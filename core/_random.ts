/**
 * The one seeded pseudo-random generator the project uses (mulberry32), so that test vectors,
 * workloads, sampled crash states, benchmarks and tests all draw the same sequence from a seed.
 *
 * @module
 */

/**
 * Returns the mulberry32 generator for `seed`: a small, fast source of 32-bit values that gives the
 * same sequence on every machine.
 *
 * @example Same seed, same sequence
 * ```ts
 * import { mulberry32 } from "./_random.ts";
 *
 * const a = mulberry32(1);
 * const b = mulberry32(1);
 * console.log(a() === b()); // true
 * ```
 *
 * @param seed Any number; only its low 32 bits count.
 * @returns A function returning the next value in [0, 2^32).
 */
export function mulberry32(seed: number): () => number {
  let state = seed >>> 0;
  return (): number => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}
