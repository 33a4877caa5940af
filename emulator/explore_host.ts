/**
 * What each host sector of a crash state holds, as pattern tags, without reading the device: the
 * durable part of the log is replayed into two arrays once per flush, and a state's pending
 * writes are laid over it. Sectors only partly written by some entry are marked unknown and read
 * from the device instead.
 *
 * @module
 */

import type { WriteLogEntry } from "./recording_device.ts";
import { GARBAGE, identifySector, patternSector, SECTOR } from "./workload_pattern.ts";

/** A sector whose contents only the device can tell (partly written by metadata updates). */
export const UNKNOWN: number = -2;

interface EntryTags {
  first: number;
  tags: Int32Array;
  sectors: Uint32Array;
}

/** Tags of the sectors a log entry writes (the first k only, when torn). */
function entryTags(entry: WriteLogEntry & { kind: "write" }): EntryTags {
  const first = Math.floor(entry.offset / SECTOR);
  const last = Math.ceil((entry.offset + entry.data.length) / SECTOR);
  const tags = new Int32Array(last - first);
  const sectors = new Uint32Array(last - first);
  for (let s = first; s < last; s++) {
    const at = s * SECTOR - entry.offset;
    if (at < 0 || at + SECTOR > entry.data.length) {
      tags[s - first] = UNKNOWN;
      continue;
    }
    const tag = identifySector(entry.data, at);
    tags[s - first] = tag;
    if (tag > 0) sectors[s - first] = patternSector(entry.data, at);
  }
  return { first, tags, sectors };
}

/** Host sector tags of the durable part of a log's crash states, and of single states. */
export class HostTags {
  #log: readonly WriteLogEntry[];
  #base: Uint8Array;
  #upTo = -1;
  #tags = new Int32Array(0);
  #sectors = new Uint32Array(0);
  #entries = new Map<number, EntryTags>();
  /** The pending writes' tags, valid where `#stamp` holds the current `#generation`. */
  #overlay = new Int32Array(0);
  #overlaySector = new Uint32Array(0);
  #stamp = new Uint32Array(0);
  #generation = 0;

  /**
   * Starts with nothing replayed.
   *
   * @param base The image bytes before the log.
   * @param log The write log.
   */
  constructor(base: Uint8Array, log: readonly WriteLogEntry[]) {
    this.#base = base;
    this.#log = log;
  }

  #entry(index: number): EntryTags {
    let tags = this.#entries.get(index);
    if (!tags) {
      tags = entryTags(this.#log[index] as WriteLogEntry & { kind: "write" });
      if (this.#entries.size > 256) this.#entries.clear();
      this.#entries.set(index, tags);
    }
    return tags;
  }

  #grow(sectors: number): void {
    if (sectors <= this.#tags.length) return;
    const n = Math.max(sectors, this.#tags.length * 2);
    const tags = new Int32Array(n);
    tags.set(this.#tags);
    const secs = new Uint32Array(n);
    secs.set(this.#sectors);
    this.#tags = tags;
    this.#sectors = secs;
  }

  /** Replays log entries `[0, durable)` (incrementally when moving forward). */
  moveTo(durable: number): void {
    if (durable === this.#upTo) return;
    if (durable < this.#upTo || this.#upTo < 0) {
      const n = Math.floor(this.#base.length / SECTOR);
      this.#tags = new Int32Array(n);
      this.#sectors = new Uint32Array(n);
      for (let s = 0; s < n; s++) {
        const tag = identifySector(this.#base, s * SECTOR);
        this.#tags[s] = tag;
        if (tag > 0) this.#sectors[s] = patternSector(this.#base, s * SECTOR);
      }
      if (this.#base.length % SECTOR !== 0) {
        this.#grow(n + 1);
        this.#tags[n] = UNKNOWN;
      }
      this.#upTo = 0;
    }
    for (let i = this.#upTo; i < durable; i++) {
      const entry = this.#log[i]!;
      if (entry.kind === "write") {
        const e = this.#entry(i);
        this.#grow(e.first + e.tags.length);
        this.#tags.set(e.tags, e.first);
        this.#sectors.set(e.sectors, e.first);
      } else if (entry.kind === "truncate") {
        const from = Math.floor(entry.size / SECTOR);
        if (from < this.#tags.length) {
          this.#tags.fill(0, from);
          if (entry.size % SECTOR !== 0) this.#tags[from] = UNKNOWN;
        }
      }
    }
    this.#upTo = durable;
  }

  /** Lays a state's pending writes over the durable part (see {@linkcode moveTo}). */
  setPending(applied: readonly number[], torn: number | undefined): void {
    this.#generation++;
    const last = applied.length - 1;
    applied.forEach((index, i) => {
      const entry = this.#log[index]!;
      if (entry.kind === "truncate") {
        // Rare (preallocation only): let the device answer for everything past the cut.
        for (let s = Math.floor(entry.size / SECTOR); s < this.#tags.length; s++) {
          this.#put(s, UNKNOWN, 0);
        }
        return;
      }
      if (entry.kind !== "write") return;
      const e = this.#entry(index);
      const count = i === last && torn !== undefined
        ? Math.min(torn, e.tags.length)
        : e.tags.length;
      for (let k = 0; k < count; k++) this.#put(e.first + k, e.tags[k]!, e.sectors[k]!);
    });
  }

  #put(h: number, tag: number, sector: number): void {
    if (h >= this.#stamp.length) {
      const n = Math.max(h + 1, this.#stamp.length * 2, 1024);
      const overlay = new Int32Array(n);
      overlay.set(this.#overlay);
      const sectors = new Uint32Array(n);
      sectors.set(this.#overlaySector);
      const stamp = new Uint32Array(n);
      stamp.set(this.#stamp);
      this.#overlay = overlay;
      this.#overlaySector = sectors;
      this.#stamp = stamp;
    }
    this.#overlay[h] = tag;
    this.#overlaySector[h] = sector;
    this.#stamp[h] = this.#generation;
  }

  /** Records what the device holds at a sector marked unknown. */
  learn(sector: number, bytes: Uint8Array, at: number): void {
    const tag = identifySector(bytes, at);
    this.#put(sector, tag, tag > 0 ? patternSector(bytes, at) : 0);
  }

  /** The tag at host sector `h` (UNKNOWN when only the device can tell), checked against `sector`. */
  tag(h: number, sector: number): number {
    let tag: number;
    let stored: number;
    if (h < this.#stamp.length && this.#stamp[h] === this.#generation) {
      tag = this.#overlay[h]!;
      stored = this.#overlaySector[h]!;
    } else if (h < this.#tags.length) {
      tag = this.#tags[h]!;
      stored = this.#sectors[h]!;
    } else {
      return 0;
    }
    if (tag > 0 && stored !== (sector >>> 0)) return GARBAGE;
    return tag;
  }
}
