/**
 * qcow2 refcounts: the refcount table, refcount blocks through a write-back cache, cluster
 * allocation and freeing, and growth of the refcount table.
 *
 * @module
 */

import type { BlockDevice } from "../../core/block_device.ts";
import { readU64, writeU64 } from "../../core/bytes.ts";
import { QcowError } from "../../core/errors.ts";
import { TableCache } from "../../core/table_cache.ts";
import { maxRefcount, readRefcount, refcountsPerBlock, writeRefcount } from "./refcount_math.ts";

/** What {@linkcode Refcounts} needs from its image. */
export interface RefcountsContext {
  /** The image file. */
  device: BlockDevice;
  /** log2 of the cluster size. */
  clusterBits: number;
  /** log2 of the refcount width. */
  refcountOrder: number;
  /** Where the refcount table is. */
  tableOffset: number;
  /** Its size in clusters. */
  tableClusters: number;
  /** Refcount blocks to keep in memory (at least 4). */
  cacheCapacity: number;
  /** Writes metadata (a refcount block, table or entry); the image checks and announces it. */
  writeMetadata: (offset: number, data: Uint8Array, event: string) => Promise<void>;
  /** Points the header at a new refcount table in one write; Refcounts flushes after it. */
  switchTable: (offset: number, clusters: number) => Promise<void>;
  /** Makes every completed write durable; default: the device's flush. */
  sync?: () => Promise<void>;
}

function corrupt(message: string): QcowError {
  return new QcowError("CORRUPT_METADATA", message);
}

/**
 * The refcount structures of an open qcow2 image. All mutating calls must be serialised by the
 * caller (the image's metadata lock).
 */
export class Refcounts {
  #ctx: RefcountsContext;
  #clusterSize: number;
  #perBlock: number;
  #order: number;
  #max: number;
  /** Block offsets by table index (0: no block). */
  #table: number[];
  #tableOffset: number;
  #tableClusters: number;
  /** First cluster index that may be free. */
  #freeHint = 0;
  /** One past the highest cluster index known to be in use or inside the file. */
  #end: number;
  /** Clusters being allocated right now, which block placement must not take. */
  #reserved: [number, number] = [0, 0];
  /** Host byte offset where the next compressed cluster may be packed (0: none open). */
  #byteCursor = 0;
  readonly cache: TableCache;

  private constructor(ctx: RefcountsContext, table: number[]) {
    this.#ctx = ctx;
    this.#clusterSize = 2 ** ctx.clusterBits;
    this.#perBlock = refcountsPerBlock(ctx.clusterBits, ctx.refcountOrder);
    this.#order = ctx.refcountOrder;
    this.#max = maxRefcount(ctx.refcountOrder);
    this.#table = table;
    this.#tableOffset = ctx.tableOffset;
    this.#tableClusters = ctx.tableClusters;
    this.#end = Math.ceil(ctx.device.size / this.#clusterSize);
    this.cache = new TableCache({
      tableSize: this.#clusterSize,
      capacity: Math.max(4, ctx.cacheCapacity),
      load: (offset, block) => this.#loadBlock(offset, block),
      store: (offset, block) => ctx.writeMetadata(offset, block, "refblock_update"),
      // Durable before any L2 table that depends on these counts is written (as QEMU does).
      sync: () => this.#sync(),
    });
  }

  /**
   * Reads the refcount table.
   *
   * @param ctx The image's layout and write hooks.
   * @returns The refcount structures.
   */
  static async load(ctx: RefcountsContext): Promise<Refcounts> {
    const clusterSize = 2 ** ctx.clusterBits;
    const raw = new Uint8Array(ctx.tableClusters * clusterSize);
    ctx.device.event?.("reftable_load");
    await ctx.device.read(raw, ctx.tableOffset);
    const table: number[] = new Array(raw.length / 8);
    for (let i = 0; i < table.length; i++) {
      const entry = readU64(raw, i * 8);
      table[i] = entry - (entry % 512);
    }
    return new Refcounts(ctx, table);
  }

  /** Where the refcount table is now. */
  get tableOffset(): number {
    return this.#tableOffset;
  }

  /** The refcount table's size in clusters. */
  get tableClusters(): number {
    return this.#tableClusters;
  }

  /** Offsets of the refcount blocks in use, by table index (0: none). */
  get blockOffsets(): readonly number[] {
    return this.#table;
  }

  /** One past the highest cluster index in use or inside the file. */
  get endCluster(): number {
    return this.#end;
  }

  /** The refcount of cluster `index`. */
  async get(index: number): Promise<number> {
    const blockOffset = this.#table[Math.floor(index / this.#perBlock)] ?? 0;
    if (blockOffset === 0) return 0;
    const block = this.cache.peek(blockOffset) ?? await this.cache.get(blockOffset);
    return readRefcount(block, index % this.#perBlock, this.#order);
  }

  /**
   * Allocates `count` contiguous free clusters and sets their refcounts to 1 (in the cache).
   *
   * @returns The host offset of the first cluster.
   */
  async allocate(count: number): Promise<number> {
    this.#ctx.device.event?.("cluster_alloc");
    for (;;) {
      const start = await this.#findFree(count, this.#freeHint);
      // New refcount blocks for the run go after it, as QEMU places them.
      this.#reserved = [start, start + count];
      try {
        for (let r = Math.floor(start / this.#perBlock); r * this.#perBlock < start + count; r++) {
          await this.#ensureBlock(r);
        }
      } finally {
        this.#reserved = [0, 0];
      }
      if (await this.#findFree(count, start) !== start) continue;
      await this.update(start, count, 1);
      return start * this.#clusterSize;
    }
  }

  /**
   * Finds room for `bytes` (at most one cluster) of compressed data, packing consecutive
   * compressed clusters into shared host clusters as QEMU does; each host cluster's refcount
   * counts the compressed clusters in it.
   *
   * @returns The host byte offset.
   */
  async allocateBytes(bytes: number): Promise<number> {
    this.#ctx.device.event?.("cluster_alloc_bytes");
    const cs = this.#clusterSize;
    let offset = this.#byteCursor;
    if (offset !== 0 && offset % cs !== 0) {
      const refcount = await this.get(Math.floor(offset / cs));
      // Freed meanwhile, or as shared as the refcount width allows: start a new cluster.
      if (refcount === 0 || refcount >= this.#max) offset = 0;
    }
    if (offset === 0 || offset % cs === 0 || offset % cs + bytes > cs) {
      // Need a fresh cluster, or two if the data straddles: keep them contiguous.
      const fresh = await this.allocate(Math.ceil(bytes / cs));
      this.#byteCursor = fresh + bytes;
      return fresh;
    }
    // The open cluster already has refcount >= 1; count this cluster in it too.
    await this.update(Math.floor(offset / cs), 1, 1);
    this.#byteCursor = offset + bytes;
    return offset;
  }

  /**
   * Adds `delta` to the refcounts of clusters `[first, first + count)`.
   *
   * @throws {QcowError} `CORRUPT_METADATA` when a refcount would leave its range.
   */
  async update(first: number, count: number, delta: number): Promise<void> {
    const end = first + count;
    const cursorCluster = Math.floor(this.#byteCursor / this.#clusterSize);
    for (let index = first; index < end;) {
      const r = Math.floor(index / this.#perBlock);
      let blockOffset = this.#table[r] ?? 0;
      if (blockOffset === 0) {
        if (delta < 0) throw corrupt(`Cannot free cluster ${index}: it has no refcount block`);
        blockOffset = await this.#ensureBlock(r);
      }
      const block = this.cache.peek(blockOffset) ?? await this.cache.get(blockOffset);
      this.cache.markDirty(blockOffset);
      // The rest of the run inside this block, without awaiting (snapshots update millions).
      const stop = Math.min(end, (r + 1) * this.#perBlock);
      if (delta > 0 && stop > this.#end) this.#end = stop;
      const order = this.#order;
      const max = this.#max;
      let freed = -1;
      for (let within = index - r * this.#perBlock; index < stop; index++, within++) {
        // 16-bit entries (the default width) inline; the others through refcount_math.
        const value = (order === 4
          ? (block[within * 2]! << 8) | block[within * 2 + 1]!
          : readRefcount(block, within, order)) + delta;
        if (value < 0) {
          throw corrupt(`Refcount of cluster ${index} would drop below 0`);
        }
        if (value > max) {
          throw corrupt(`Refcount of cluster ${index} would exceed ${max}`);
        }
        if (order === 4) {
          block[within * 2] = value >>> 8;
          block[within * 2 + 1] = value;
        } else {
          writeRefcount(block, within, order, value);
        }
        if (value === 0) {
          if (freed < 0) {
            freed = index;
          }
          // A freed cluster may come back as anything; compressed data must not be packed into it.
          if (index === cursorCluster) {
            this.#byteCursor = 0;
          }
        }
      }
      if (freed >= 0 && freed < this.#freeHint) this.#freeHint = freed;
    }
  }

  /** Drops the refcount of the clusters holding `[offset, offset + bytes)` by one. */
  async free(offset: number, bytes: number): Promise<void> {
    this.#ctx.device.event?.("cluster_free");
    const cs = this.#clusterSize;
    const first = Math.floor(offset / cs);
    const last = Math.floor((offset + bytes - 1) / cs);
    await this.update(first, last - first + 1, -1);
  }

  /** Writes dirty refcount blocks back. */
  flush(): Promise<void> {
    return this.cache.flush();
  }

  async #loadBlock(offset: number, block: Uint8Array): Promise<void> {
    if (offset % this.#clusterSize !== 0 || offset + this.#clusterSize > this.#ctx.device.size) {
      throw corrupt(`Refcount block at 0x${offset.toString(16)} is unaligned or past the end`);
    }
    this.#ctx.device.event?.("refblock_load");
    await this.#ctx.device.read(block, offset);
  }

  /**
   * The refcount block covering cluster `index` as cached right now (read entries with
   * refcount_math's `readRefcount`): null when no block covers it (all its refcounts are 0),
   * undefined when it is not cached (use {@linkcode Refcounts.get}). Valid until the next await.
   */
  peekBlock(index: number): Uint8Array | null | undefined {
    const blockOffset = this.#table[Math.floor(index / this.#perBlock)] ?? 0;
    return blockOffset === 0 ? null : this.cache.peek(blockOffset);
  }

  /** The refcount of `index` if its block is cached or absent, else undefined. */
  #peekRefcount(index: number): number | undefined {
    const blockOffset = this.#table[Math.floor(index / this.#perBlock)] ?? 0;
    if (blockOffset === 0) return 0;
    const block = this.cache.peek(blockOffset);
    return block === undefined
      ? undefined
      : readRefcount(block, index % this.#perBlock, this.#order);
  }

  /** First index >= `from` starting `count` clusters of refcount 0. */
  async #findFree(count: number, from: number): Promise<number> {
    let start = from;
    let run = 0;
    let index = from;
    // Used clusters right at the hint move the hint along for later searches.
    let advancing = from === this.#freeHint;
    const [reservedStart, reservedEnd] = this.#reserved;
    while (run < count) {
      if (index >= this.#end && index >= reservedEnd) return start; // the rest is free
      // Scan the rest of this refcount block without awaiting (a full image has millions).
      const r = Math.floor(index / this.#perBlock);
      const blockOffset = this.#table[r] ?? 0;
      const block = blockOffset === 0
        ? undefined
        : this.cache.peek(blockOffset) ?? await this.cache.get(blockOffset);
      const stop = Math.min((r + 1) * this.#perBlock, Math.max(this.#end, reservedEnd));
      const order = this.#order;
      let hint = -1;
      for (
        let within = index - r * this.#perBlock;
        index < stop && run < count;
        index++, within++
      ) {
        const taken = index >= reservedStart && index < reservedEnd;
        const refcount = taken
          ? 1
          : block === undefined
          ? 0
          : order === 4
          ? (block[within * 2]! << 8) | block[within * 2 + 1]!
          : readRefcount(block, within, order);
        if (refcount === 0) {
          run++;
          advancing = false;
        } else {
          run = 0;
          start = index + 1;
          if (advancing) hint = start;
        }
      }
      if (hint >= 0) this.#freeHint = hint;
    }
    return start;
  }

  /** Makes sure refcount block `r` exists; returns its offset. */
  async #ensureBlock(r: number): Promise<number> {
    for (;;) {
      const existing = this.#table[r] ?? 0;
      if (existing !== 0) return existing;
      if (r >= this.#table.length) {
        await this.#growTable(r);
        continue;
      }
      this.#ctx.device.event?.("refblock_alloc");
      const cluster = await this.#findFree(1, this.#freeHint);
      const home = Math.floor(cluster / this.#perBlock);
      const block = new Uint8Array(this.#clusterSize);
      if (home === r) {
        // The new block describes itself.
        writeRefcount(block, cluster % this.#perBlock, this.#order, 1);
      } else if ((this.#table[home] ?? 0) !== 0) {
        await this.update(cluster, 1, 1);
        // Its refcount must be on disk before anything points at it.
        await this.cache.flush();
      } else {
        await this.#ensureBlock(home);
        continue;
      }
      const offset = cluster * this.#clusterSize;
      await this.#ctx.writeMetadata(offset, block, "refblock_alloc_write");
      const entry = new Uint8Array(8);
      writeU64(entry, 0, offset);
      await this.#ctx.writeMetadata(this.#tableOffset + r * 8, entry, "refblock_alloc_hookup");
      this.#table[r] = offset;
      if (cluster >= this.#end) this.#end = cluster + 1;
      return offset;
    }
  }

  /**
   * Replaces the refcount table by a larger one covering block `needed`, written at the end of
   * the image together with the new blocks that describe it; the header switches to it in one
   * write, then the old table is freed.
   */
  async #growTable(needed: number): Promise<void> {
    this.#ctx.device.event?.("reftable_grow");
    const cs = this.#clusterSize;
    const perBlock = this.#perBlock;
    const perTableCluster = cs / 8;
    await this.cache.flush();
    const start = Math.max(this.#end, Math.ceil(this.#ctx.device.size / cs));
    let entries = Math.max(needed + 1, Math.ceil(this.#table.length * 1.5));
    let newRanges: number[] = [];
    for (let round = 0; round < 64; round++) {
      entries = Math.ceil(entries / perTableCluster) * perTableCluster;
      const tableClusters = entries / perTableCluster;
      const areaEnd = start + newRanges.length + tableClusters;
      const wanted = new Set<number>();
      if ((this.#table[needed] ?? 0) === 0) wanted.add(needed);
      for (let r = Math.floor(start / perBlock); r * perBlock < areaEnd; r++) {
        if ((this.#table[r] ?? 0) === 0) wanted.add(r);
      }
      const sorted = [...wanted].sort((a, b) => a - b);
      const highest = sorted[sorted.length - 1] ?? 0;
      if (sorted.length === newRanges.length && highest < entries) {
        newRanges = sorted;
        break;
      }
      newRanges = sorted;
      entries = Math.max(entries, highest + 1);
    }
    const tableClusters = entries / perTableCluster;
    const tableStart = start + newRanges.length;
    const areaEnd = tableStart + tableClusters;

    // New blocks: each counts the area's clusters that fall in its range.
    const blocks = new Map<number, Uint8Array>();
    newRanges.forEach((r) => blocks.set(r, new Uint8Array(cs)));
    const table = [...this.#table];
    while (table.length < entries) table.push(0);
    newRanges.forEach((r, i) => table[r] = (start + i) * cs);
    for (let c = start; c < areaEnd; c++) {
      const r = Math.floor(c / perBlock);
      const block = blocks.get(r);
      if (block) writeRefcount(block, c % perBlock, this.#order, 1);
      else await this.update(c, 1, 1); // falls in a range whose block already exists
    }
    await this.cache.flush();
    for (const [i, r] of newRanges.entries()) {
      await this.#ctx.writeMetadata(
        (start + i) * cs,
        blocks.get(r)!,
        "refblock_alloc_write_blocks",
      );
    }
    const raw = new Uint8Array(tableClusters * cs);
    table.forEach((offset, i) => writeU64(raw, i * 8, offset));
    await this.#ctx.writeMetadata(tableStart * cs, raw, "refblock_alloc_write_table");
    await this.#sync();
    await this.#ctx.switchTable(tableStart * cs, tableClusters);

    const oldOffset = this.#tableOffset;
    const oldClusters = this.#tableClusters;
    this.#table = table;
    this.#tableOffset = tableStart * cs;
    this.#tableClusters = tableClusters;
    if (areaEnd > this.#end) this.#end = areaEnd;
    // The header switch is durable before the old table can be reused.
    await this.#sync();
    await this.update(oldOffset / cs, oldClusters, -1);
  }

  #sync(): Promise<void> {
    return this.#ctx.sync ? this.#ctx.sync() : this.#ctx.device.flush();
  }
}
