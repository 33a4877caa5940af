/**
 * A small least-recently-used cache.
 *
 * @module
 */

/**
 * A map with a fixed capacity that forgets its least recently used entry when full.
 *
 * @example
 * ```ts
 * import { LruCache } from "@qcowlab/qcowlab";
 *
 * const cache = new LruCache<number, string>(2);
 * cache.set(1, "a");
 * cache.set(2, "b");
 * cache.get(1);
 * cache.set(3, "c"); // forgets 2, the least recently used
 * console.log(cache.has(2)); // false
 * ```
 */
export class LruCache<K, V> {
  #map = new Map<K, V>();
  #capacity: number;
  /** The most recently used key, so repeated hits skip the reordering. */
  #newest: K | undefined;

  /**
   * Creates an empty cache.
   *
   * @param capacity Most entries held at once; at least 1.
   */
  constructor(capacity: number) {
    this.#capacity = Math.max(1, Math.floor(capacity));
  }

  /** Most entries held at once. */
  get capacity(): number {
    return this.#capacity;
  }

  /** Entries held now. */
  get size(): number {
    return this.#map.size;
  }

  /** Returns the value for `key` and marks it most recently used. */
  get(key: K): V | undefined {
    const value = this.#map.get(key);
    if (value !== undefined && key !== this.#newest) {
      this.#map.delete(key);
      this.#map.set(key, value);
      this.#newest = key;
    }
    return value;
  }

  /** Whether `key` is held, without touching its recency. */
  has(key: K): boolean {
    return this.#map.has(key);
  }

  /**
   * Stores a value and marks it most recently used.
   *
   * @returns The entry evicted to make room, if any.
   */
  set(key: K, value: V): [K, V] | undefined {
    this.#map.delete(key);
    this.#map.set(key, value);
    this.#newest = key;
    if (this.#map.size > this.#capacity) {
      const oldest = this.#map.entries().next().value as [K, V];
      this.#map.delete(oldest[0]);
      return oldest;
    }
    return undefined;
  }

  /** Forgets `key`. */
  delete(key: K): boolean {
    if (key === this.#newest) this.#newest = undefined;
    return this.#map.delete(key);
  }

  /** Forgets everything. */
  clear(): void {
    this.#newest = undefined;
    this.#map.clear();
  }
}
