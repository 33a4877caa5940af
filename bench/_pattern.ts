/**
 * Request offset sequences for the benchmark: the one `qemu-img bench` issues, and seeded random
 * ones.
 *
 * @module
 */

import { mulberry32 } from "../core/_random.ts";

/** How `qemu-img bench` wraps its offset at the end of the image. */
export type BenchWrap = "image" | "usable";

/** Parameters of {@linkcode qemuBenchOffsets}, named after `qemu-img bench` options. */
export interface QemuBenchPattern {
  /** Virtual size of the image in bytes. */
  imageSize: number;
  /** Bytes per request (`-s`). */
  requestSize: number;
  /** Requests to issue (`-c`). */
  count: number;
  /** Distance between request offsets (`-S`); default `requestSize`, as in qemu-img. */
  step?: number;
  /** First offset (`-o`); default 0. */
  start?: number;
  /**
   * `"image"`: qemu-img up to 10.0 wraps with `offset %= image_size`; `"usable"`: later versions
   * wrap with `offset %= image_size - bufsize` (and use 0 when the image is no larger than one
   * request). Default `"image"`.
   */
  wrap?: BenchWrap;
}

/**
 * The offsets `qemu-img bench` sends, in submission order. The order does not depend on the
 * queue depth: `bench_cb` advances one shared offset for every request it submits.
 *
 * @example
 * ```ts
 * import { qemuBenchOffsets } from "./_pattern.ts";
 *
 * const offsets = qemuBenchOffsets({ imageSize: 16384, requestSize: 4096, count: 5, step: 12288 });
 * console.log([...offsets]); // [ 0, 12288, 8192, 4096, 0 ]
 * ```
 *
 * @param pattern Image size, request size, count, step, start and wrap rule.
 * @returns One offset per request.
 */
export function qemuBenchOffsets(pattern: QemuBenchPattern): Float64Array {
  const { imageSize, requestSize, count } = pattern;
  const step = pattern.step ?? requestSize;
  const usable = pattern.wrap === "usable";
  const offsets = new Float64Array(count);
  let offset = pattern.start ?? 0;
  for (let i = 0; i < count; i++) {
    offsets[i] = offset;
    offset += step;
    if (usable) offset = imageSize <= requestSize ? 0 : offset % (imageSize - requestSize);
    else offset = imageSize === 0 ? 0 : offset % imageSize;
  }
  return offsets;
}

/**
 * Uniformly random offsets aligned to `align`, each leaving room for an `align`-byte request.
 *
 * @example
 * ```ts
 * import { randomOffsets } from "./_pattern.ts";
 *
 * const offsets = randomOffsets(3, { imageSize: 1 << 20, align: 4096, seed: 7 });
 * console.log(offsets.every((o) => o % 4096 === 0 && o + 4096 <= 1 << 20)); // true
 * ```
 *
 * @param count How many offsets.
 * @param options Image size, alignment and seed.
 * @returns The offsets.
 */
export function randomOffsets(
  count: number,
  options: { imageSize: number; align: number; seed: number },
): Float64Array {
  const blocks = Math.floor(options.imageSize / options.align);
  const next = mulberry32(options.seed);
  const offsets = new Float64Array(count);
  for (let i = 0; i < count; i++) {
    // Two draws give 53 bits, so large images are covered without modulo bias worth noting.
    const r = (next() * 2 ** 21 + (next() >>> 11)) / 2 ** 53;
    offsets[i] = Math.floor(r * blocks) * options.align;
  }
  return offsets;
}
