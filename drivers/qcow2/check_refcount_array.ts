/**
 * The refcounts a check rebuilds in memory from every reference in an image, without I/O.
 *
 * @module
 */

import { maxRefcount } from "./refcount_math.ts";

/** The typed array that holds counts as wide as the image's refcounts. */
export type Counts = Uint8Array | Uint16Array | Uint32Array | Float64Array;

function allocate(refcountOrder: number, length: number): Counts {
  if (refcountOrder <= 3) return new Uint8Array(length);
  if (refcountOrder === 4) return new Uint16Array(length);
  if (refcountOrder === 5) return new Uint32Array(length);
  return new Float64Array(length);
}

/**
 * Reference counts per cluster, as wide as the image's refcounts so they saturate where the image's
 * would: a reference past the maximum is an overflow, as in QEMU. `size` is the number of
 * clusters covered; it only grows, to the highest cluster referenced plus one.
 */
export class ReferenceCounts {
  #order: number;
  #counts: Counts;
  #size: number;
  /** The largest count an entry holds (the image's maximum refcount). */
  readonly max: number;

  /**
   * Creates counts of zero for `size` clusters.
   *
   * @param refcountOrder log2 of the image's refcount width, 0..6.
   * @param size Clusters covered at first (the image file's size in clusters).
   */
  constructor(refcountOrder: number, size: number) {
    this.#order = refcountOrder;
    this.max = maxRefcount(refcountOrder);
    this.#counts = allocate(refcountOrder, Math.max(size, 16));
    this.#size = size;
  }

  /** Clusters covered. */
  get size(): number {
    return this.#size;
  }

  /** The count of `cluster` (0 past the end). */
  get(cluster: number): number {
    return cluster < this.#size ? this.#counts[cluster]! : 0;
  }

  /** Sets the count of `cluster`, covering it first if needed. */
  set(cluster: number, value: number): void {
    this.cover(cluster + 1);
    this.#counts[cluster] = value;
  }

  /**
   * Adds one reference to `cluster`, covering it first if needed.
   *
   * @returns false, changing nothing, when the count is already at its maximum.
   */
  increment(cluster: number): boolean {
    this.cover(cluster + 1);
    const value = this.#counts[cluster]!;
    if (value >= this.max) return false;
    this.#counts[cluster] = value + 1;
    return true;
  }

  /** Grows the covered range to `size` clusters (never shrinks it). */
  cover(size: number): void {
    if (size <= this.#size) return;
    if (size > this.#counts.length) {
      const grown = allocate(this.#order, Math.max(size, this.#counts.length * 2));
      grown.set(this.#counts);
      this.#counts = grown;
    }
    this.#size = size;
  }

  /**
   * The array behind the counts, indexed by cluster, for tight loops that stay below `size`. It is
   * replaced when the covered range grows: fetch it again after {@linkcode cover}.
   */
  get storage(): Counts {
    return this.#counts;
  }

  /** Sets every count to 0, keeping the covered range. */
  clear(): void {
    this.#counts.fill(0);
  }

  /** Whether any cluster in `[first, end)` has a count. */
  anyIn(first: number, end: number): boolean {
    const stop = Math.min(end, this.#size);
    for (let c = first; c < stop; c++) if (this.#counts[c] !== 0) return true;
    return false;
  }
}
