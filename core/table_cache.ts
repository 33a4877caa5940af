/**
 * A write-back cache of fixed-size metadata tables (qcow2 L2 tables, refcount blocks).
 *
 * @module
 */

import { QcowError } from "./errors.ts";

/** How a {@linkcode TableCache} reads and writes its tables. */
export interface TableCacheOptions {
  /** Bytes per table. */
  tableSize: number;
  /** Most tables held at once (at least 2). */
  capacity: number;
  /** Fills `table` from the device at `offset`. */
  load: (offset: number, table: Uint8Array) => Promise<void>;
  /** Writes `table` back to the device at `offset`. */
  store: (offset: number, table: Uint8Array) => Promise<void>;
  /** Makes written tables durable (a device flush); called at the end of every flush. */
  sync?: () => Promise<void>;
}

interface Entry {
  table: Uint8Array;
  dirty: boolean;
}

/**
 * Holds recently used tables in memory and writes changed ones back in a controlled order: before
 * any of its tables reaches the device, every cache it depends on is flushed (written and made
 * durable) first. That is how refcount blocks reach the disk before the L2 tables that point at
 * newly counted clusters.
 *
 * Tables handed out stay valid until the next await on this cache: callers change them
 * synchronously and call {@linkcode TableCache.markDirty}.
 *
 * @example
 * ```ts
 * import { TableCache } from "@qcowlab/qcowlab";
 *
 * const disk = new Map<number, Uint8Array>();
 * const cache = new TableCache({
 *   tableSize: 8,
 *   capacity: 4,
 *   load: (offset, table) => Promise.resolve(table.set(disk.get(offset) ?? new Uint8Array(8))),
 *   store: (offset, table) => Promise.resolve(void disk.set(offset, table.slice())),
 * });
 * const table = await cache.get(64);
 * table[0] = 1;
 * cache.markDirty(64);
 * await cache.flush();
 * console.log(disk.get(64)?.[0]); // 1
 * ```
 */
export class TableCache {
  #entries = new Map<number, Entry>();
  #loading = new Map<number, Promise<Uint8Array>>();
  #options: TableCacheOptions;
  #dependencies: TableCache[] = [];
  #dirtyCount = 0;
  /** The most recently used key: hits on it need no reordering. */
  #newest: number | undefined;

  /**
   * Creates an empty cache.
   *
   * @param options Table size, capacity and I/O callbacks.
   */
  constructor(options: TableCacheOptions) {
    if (!(options.capacity >= 2) || !(options.tableSize > 0)) {
      throw new QcowError("INVALID_ARGUMENT", "A table cache needs a capacity of at least 2");
    }
    this.#options = { ...options, capacity: Math.floor(options.capacity) };
  }

  /** Tables held now. */
  get size(): number {
    return this.#entries.size;
  }

  /** Tables changed and not yet written back. */
  get dirtyCount(): number {
    return this.#dirtyCount;
  }

  /** Makes `other` flush before any table of this cache is written. */
  dependOn(other: TableCache): void {
    if (!this.#dependencies.includes(other)) this.#dependencies.push(other);
  }

  /** Drops every dependency set with {@linkcode TableCache.dependOn}. */
  clearDependencies(): void {
    this.#dependencies = [];
  }

  /** The table at `offset` if it is held, marked most recently used; never loads. */
  peek(offset: number): Uint8Array | undefined {
    const entry = this.#entries.get(offset);
    if (entry === undefined) return undefined;
    if (offset !== this.#newest) {
      this.#entries.delete(offset);
      this.#entries.set(offset, entry);
      this.#newest = offset;
    }
    return entry.table;
  }

  /** The table at `offset`, loaded from the device when not held. */
  get(offset: number): Promise<Uint8Array> {
    const held = this.peek(offset);
    if (held !== undefined) return Promise.resolve(held);
    const pending = this.#loading.get(offset);
    if (pending !== undefined) return pending;
    const load = (async (): Promise<Uint8Array> => {
      const table = new Uint8Array(this.#options.tableSize);
      await this.#options.load(offset, table);
      const raced = this.#entries.get(offset);
      if (raced !== undefined) return raced.table;
      await this.#insert(offset, { table, dirty: false });
      return table;
    })();
    this.#loading.set(offset, load);
    return load.finally(() => this.#loading.delete(offset));
  }

  /**
   * Starts a new all-zero table at `offset` without reading the device (for a freshly allocated
   * cluster), marked dirty.
   */
  async create(offset: number): Promise<Uint8Array> {
    const existing = this.#entries.get(offset);
    if (existing !== undefined) {
      existing.table.fill(0);
      this.markDirty(offset);
      return existing.table;
    }
    const table = new Uint8Array(this.#options.tableSize);
    await this.#insert(offset, { table, dirty: true });
    this.#dirtyCount++;
    return table;
  }

  /** Records that the table at `offset` changed and must be written back. */
  markDirty(offset: number): void {
    const entry = this.#entries.get(offset);
    if (entry === undefined) {
      throw new QcowError("INVALID_ARGUMENT", `No cached table at 0x${offset.toString(16)}`);
    }
    if (!entry.dirty) {
      entry.dirty = true;
      this.#dirtyCount++;
    }
  }

  /** Forgets the table at `offset` without writing it (its cluster was freed). */
  discard(offset: number): void {
    const entry = this.#entries.get(offset);
    if (entry === undefined) return;
    if (entry.dirty) this.#dirtyCount--;
    this.#entries.delete(offset);
    if (offset === this.#newest) this.#newest = undefined;
  }

  /** Forgets every table, written back or not (after a failure, to reload from the device). */
  clear(): void {
    this.#entries.clear();
    this.#dirtyCount = 0;
    this.#newest = undefined;
  }

  /** Writes every dirty table back, dependencies first, in ascending offset order. */
  async flush(): Promise<void> {
    if (this.#dirtyCount === 0) return;
    for (const dependency of this.#dependencies) await dependency.flush();
    const dirty = [...this.#entries].filter(([, entry]) => entry.dirty).sort(([a], [b]) => a - b);
    for (const [offset, entry] of dirty) {
      if (!entry.dirty) continue;
      await this.#options.store(offset, entry.table);
      entry.dirty = false;
      this.#dirtyCount--;
    }
    await this.#options.sync?.();
  }

  async #insert(offset: number, entry: Entry): Promise<void> {
    this.#entries.set(offset, entry);
    this.#newest = offset;
    while (this.#entries.size > this.#options.capacity) {
      let victim: number | undefined;
      for (const [key, candidate] of this.#entries) {
        if (key === offset) continue;
        if (!candidate.dirty) {
          victim = key;
          break;
        }
        victim ??= key;
      }
      if (victim === undefined) return;
      const chosen = this.#entries.get(victim)!;
      if (chosen.dirty) {
        for (const dependency of this.#dependencies) await dependency.flush();
        if (!chosen.dirty) continue;
        await this.#options.store(victim, chosen.table);
        chosen.dirty = false;
        this.#dirtyCount--;
      }
      // It may have been used again while being written; only drop it if still clean.
      if (this.#entries.get(victim) === chosen && !chosen.dirty) {
        this.#entries.delete(victim);
        if (victim === this.#newest) this.#newest = undefined;
      }
    }
  }
}
