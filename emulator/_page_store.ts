/**
 * Copy-on-write page maps over a base image, the storage behind crash-state devices.
 *
 * @module
 */

import type { BlockDevice } from "../core/block_device.ts";
import { QcowError } from "../core/errors.ts";
import { assertInside, assertOffset, assertWriteRange } from "../core/_checks.ts";
import { forEachPiece } from "../core/_pieces.ts";
import { settle } from "../core/_settle.ts";

/** Bytes per page of an overlay. */
export const PAGE_SIZE = 4096;

/**
 * Bytes laid over a parent (another store or the base array) in 4 KiB pages. A page not held here
 * reads from the parent, unless it starts at or past `limit`: a shrink cut the parent off there.
 * A store only changes pages it owns, so stores forked from it or layered on it stay valid.
 */
export class PageStore {
  readonly #base: Uint8Array;
  readonly #parent: PageStore | undefined;
  readonly #pages: Map<number, Uint8Array>;
  readonly #owned = new WeakSet<Uint8Array>();
  #limit: number;
  #size: number;

  private constructor(
    base: Uint8Array,
    parent: PageStore | undefined,
    pages: Map<number, Uint8Array>,
    limit: number,
    size: number,
  ) {
    this.#base = base;
    this.#parent = parent;
    this.#pages = pages;
    this.#limit = limit;
    this.#size = size;
  }

  /** A store holding nothing over `base`. */
  static over(base: Uint8Array): PageStore {
    return new PageStore(base, undefined, new Map(), base.length, base.length);
  }

  /** A store layered on this one, which it must not outlive changes of (this one is frozen). */
  layer(): PageStore {
    return new PageStore(this.#base, this, new Map(), this.#size, this.#size);
  }

  /**
   * A copy sharing this store's pages (copied on first change) and its parent; costs one copy of
   * this store's page map, so fork stores that hold few pages.
   */
  fork(): PageStore {
    return new PageStore(this.#base, this.#parent, new Map(this.#pages), this.#limit, this.#size);
  }

  get size(): number {
    return this.#size;
  }

  /** Number of pages held by this store itself. */
  get pageCount(): number {
    return this.#pages.size;
  }

  /** The page's bytes (possibly shorter than a page, the rest zero), or undefined for zeros. */
  view(index: number): Uint8Array | undefined {
    const page = this.#pages.get(index);
    if (page) return page;
    const start = index * PAGE_SIZE;
    if (start >= this.#limit) return undefined;
    if (this.#parent) return this.#parent.view(index);
    if (start >= this.#base.length) return undefined;
    return this.#base.subarray(start, Math.min(start + PAGE_SIZE, this.#base.length));
  }

  read(buffer: Uint8Array, offset: number): void {
    forEachPiece(offset, buffer.length, PAGE_SIZE, (index, within, done, n) => {
      const page = this.view(index);
      const available = page ? Math.max(0, Math.min(n, page.length - within)) : 0;
      if (available > 0) buffer.set(page!.subarray(within, within + available), done);
      if (available < n) buffer.fill(0, done + available, done + n);
    });
  }

  write(data: Uint8Array, offset: number): void {
    forEachPiece(offset, data.length, PAGE_SIZE, (index, within, done, n) => {
      this.#own(index).set(data.subarray(done, done + n), within);
    });
    if (data.length > 0 && offset + data.length > this.#size) this.#size = offset + data.length;
  }

  truncate(size: number): void {
    if (size < this.#size) {
      const within = size % PAGE_SIZE;
      if (within !== 0) this.#own(Math.floor(size / PAGE_SIZE)).fill(0, within);
      for (const index of [...this.#pages.keys()]) {
        if (index * PAGE_SIZE >= size) this.#pages.delete(index);
      }
      if (size < this.#limit) this.#limit = size;
    }
    this.#size = size;
  }

  #own(index: number): Uint8Array {
    const held = this.#pages.get(index);
    if (held && this.#owned.has(held)) return held;
    const page = new Uint8Array(PAGE_SIZE);
    const current = held ?? this.view(index);
    if (current) page.set(current);
    this.#pages.set(index, page);
    this.#owned.add(page);
    return page;
  }
}

/** A read-write {@linkcode BlockDevice} over a {@linkcode PageStore}. */
export class PageStoreDevice implements BlockDevice {
  readonly #store: PageStore;
  readonly #name: string;
  #closed = false;

  constructor(store: PageStore, name: string) {
    this.#store = store;
    this.#name = name;
  }

  get size(): number {
    return this.#store.size;
  }

  get readOnly(): boolean {
    return false;
  }

  get name(): string {
    return this.#name;
  }

  /** Pages this device holds itself (what it cost on top of the shared state). */
  get pageCount(): number {
    return this.#store.pageCount;
  }

  read(buffer: Uint8Array, offset: number): Promise<void> {
    return settle(() => {
      this.#assertOpen();
      assertInside(offset, buffer.length, this.#store.size, this.#name);
      this.#store.read(buffer, offset);
    });
  }

  write(data: Uint8Array, offset: number): Promise<void> {
    return settle(() => {
      this.#assertOpen();
      assertWriteRange(offset, data.length, this.#name);
      this.#store.write(data, offset);
    });
  }

  flush(): Promise<void> {
    return settle(() => this.#assertOpen());
  }

  truncate(size: number): Promise<void> {
    return settle(() => {
      this.#assertOpen();
      assertOffset(size, "Size");
      this.#store.truncate(size);
    });
  }

  close(): Promise<void> {
    this.#closed = true;
    return Promise.resolve();
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  #assertOpen(): void {
    if (this.#closed) throw new QcowError("CLOSED", `Device ${this.#name} is closed`);
  }
}
