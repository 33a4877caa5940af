/**
 * The states a disk can be left in by a crash, built from a write log.
 *
 * @module
 */

import type { BlockDevice } from "../core/block_device.ts";
import { QcowError } from "../core/errors.ts";
import { PageStore, PageStoreDevice } from "./_page_store.ts";
import { seededRandom } from "./_random.ts";
import type { WriteLogEntry } from "./recording_device.ts";

/** Bytes of a sector, the unit a torn write is cut at. */
export const SECTOR_SIZE = 512;

/** Options for {@linkcode enumerateCrashStates}. */
export interface CrashStateOptions {
  /** Seed for the states sampled when a crash point has too many to list; default 0. */
  seed?: number;
  /** At most this many states per crash point (the in-order state always counts); default 64. */
  maxStatesPerPoint?: number;
  /**
   * Also the states where only some of the writes since the last flush reached the disk (a disk
   * cache may persist any of them); default false: only the in-order prefixes.
   */
  subsets?: boolean;
  /**
   * Also the states where the last write reached the disk torn: only its first k 512-byte sectors;
   * default false.
   */
  torn?: boolean;
  /**
   * Also the states where an earlier pending write that overlaps entry `c - 1` reached the disk
   * after it (its bytes win where they overlap), as a cache that reorders writes may leave;
   * default false.
   */
  reorder?: boolean;
}

/**
 * One disk state a crash can leave. Log entries `[0, durable)` reached the disk (a flush completed
 * after them); of the writes in `[durable, crashPoint)`, exactly those in `applied` reached it, in
 * that order, the last one cut to its first `torn` sectors when `torn` is set.
 */
export interface CrashState {
  /** Stable id, such as `17`, `17:t3` or `17:s12,14-16`: {@linkcode crashStateFromId} rebuilds it. */
  readonly id: string;
  /** Log entries `[0, crashPoint)` were issued when the crash happened. */
  readonly crashPoint: number;
  /** Entries before this index are durable: it is just past the last flush before the crash. */
  readonly durable: number;
  /** Indices of the pending writes (and truncations) that reached the disk, in the order applied. */
  readonly applied: readonly number[];
  /** When set, the last applied write kept only its first `torn` sectors. */
  readonly torn?: number;
}

/**
 * Lists crash states of a write log, streaming (nothing is kept between crash points beyond a
 * few ids). For every crash point `c` (entries `[0, c)` issued) it yields the in-order state
 * (id `"c"`); with `torn`, the states where entry `c - 1` was torn; with `subsets`, the states where
 * only some of the writes issued since the last flush reached the disk; with `reorder`, the states
 * where an earlier pending write overlapping entry `c - 1` landed after it. Subsets are listed once:
 * at the crash point of their last write. When a point has more states than `maxStatesPerPoint`,
 * a sample chosen by `seed` is listed instead.
 *
 * @example Every prefix of a small log
 * ```ts
 * import { enumerateCrashStates, type WriteLogEntry } from "@qcowlab/qcowlab/emulator";
 *
 * const log: WriteLogEntry[] = [
 *   { kind: "write", offset: 0, data: new Uint8Array(512), event: undefined },
 *   { kind: "write", offset: 512, data: new Uint8Array(512), event: undefined },
 *   { kind: "flush", event: undefined },
 * ];
 * console.log([...enumerateCrashStates(log)].map((state) => state.id)); // [ "0", "1", "2", "3" ]
 * console.log([...enumerateCrashStates(log, { subsets: true })].length); // 5
 * ```
 *
 * @param log A write log, such as {@linkcode RecordingDevice.log}.
 * @param options Which variants to list, how many, and the sampling seed.
 * @returns The states, generated lazily.
 */
export function enumerateCrashStates(
  log: readonly WriteLogEntry[],
  options: CrashStateOptions = {},
): Iterable<CrashState> {
  const max = options.maxStatesPerPoint ?? 64;
  if (!Number.isSafeInteger(max) || max < 1) {
    throw new QcowError(
      "INVALID_ARGUMENT",
      `maxStatesPerPoint must be a positive integer, got ${max}`,
    );
  }
  const seed = options.seed ?? 0;
  if (!Number.isSafeInteger(seed)) {
    throw new QcowError("INVALID_ARGUMENT", `seed must be an integer, got ${seed}`);
  }
  return generate(
    log,
    max,
    seed,
    options.subsets ?? false,
    options.torn ?? false,
    options.reorder ?? false,
  );
}

function* generate(
  log: readonly WriteLogEntry[],
  max: number,
  seed: number,
  subsets: boolean,
  torn: boolean,
  reorder: boolean,
): Generator<CrashState> {
  let durable = 0;
  let pending: number[] = [];
  yield makeState(0, 0, [], undefined);
  for (let c = 1; c <= log.length; c++) {
    const entry = log[c - 1]!;
    if (entry.kind === "flush") {
      durable = c;
      pending = [];
      yield makeState(c, durable, [], undefined);
      continue;
    }
    pending.push(c - 1);
    yield makeState(c, durable, pending, undefined);
    let budget = max - 1;
    if (torn && entry.kind === "write") {
      const sectors = sectorCount(entry.offset, entry.data.length);
      const share = subsets && pending.length > 1 ? Math.ceil(budget / 4) : budget;
      const cuts = pickCuts(sectors - 1, share, seededRandom(seed, c, 1));
      for (const k of cuts) yield makeState(c, durable, pending, k);
      budget -= cuts.length;
    }
    if (reorder && entry.kind === "write" && budget > 0) {
      // Earlier pending writes overlapping this one, latest first: each may land after it.
      for (let i = pending.length - 2; i >= 0 && budget > 0; i--) {
        const other = log[pending[i]!]!;
        if (other.kind !== "write" || !overlaps(other, entry)) continue;
        const order = pending.filter((_, j) => j !== i);
        order.push(pending[i]!);
        yield makeState(c, durable, order, undefined);
        budget--;
      }
    }
    if (subsets && pending.length > 1 && budget > 0) {
      const others = pending.slice(0, -1);
      for (const chosen of pickSubsets(others, budget, seededRandom(seed, c, 2))) {
        yield makeState(c, durable, [...chosen, c - 1], undefined);
      }
    }
  }
}

function overlaps(a: { offset: number; data: Uint8Array }, b: typeof a): boolean {
  return a.offset < b.offset + b.data.length && b.offset < a.offset + a.data.length;
}

/** Ks in [1, count] for torn variants: all when they fit, else both ends and a seeded sample. */
function pickCuts(count: number, budget: number, random: () => number): number[] {
  if (count <= 0 || budget <= 0) return [];
  if (count <= budget) return Array.from({ length: count }, (_, i) => i + 1);
  const picked = new Set<number>([1]);
  if (budget > 1) picked.add(count);
  while (picked.size < budget) picked.add(1 + Math.floor(random() * count));
  return [...picked].sort((a, b) => a - b);
}

/** Proper subsets of `others` (the full set is the in-order state), exhaustive or sampled. */
function* pickSubsets(
  others: readonly number[],
  budget: number,
  random: () => number,
): Generator<number[]> {
  const m = others.length;
  if (m < 31 && 2 ** m - 1 <= budget) {
    for (let mask = 0; mask < 2 ** m - 1; mask++) {
      yield others.filter((_, i) => (mask >>> i) & 1);
    }
    return;
  }
  const seen = new Set<string>();
  for (let attempt = 0; attempt < budget * 4 && seen.size < budget; attempt++) {
    const chosen = others.filter(() => random() < 0.5);
    if (chosen.length === m) continue;
    const key = chosen.join(",");
    if (seen.has(key)) continue;
    seen.add(key);
    yield chosen;
  }
}

function makeState(
  crashPoint: number,
  durable: number,
  applied: readonly number[],
  torn: number | undefined,
): CrashState {
  const inOrder = applied.length === crashPoint - durable &&
    applied.every((index, i) => index === durable + i);
  let id = String(crashPoint);
  if (!inOrder) id += ":s" + formatList(applied);
  if (torn !== undefined) id += ":t" + torn;
  const state = { id, crashPoint, durable, applied: applied.slice() };
  return torn === undefined ? state : { ...state, torn };
}

function sectorCount(offset: number, length: number): number {
  if (length === 0) return 0;
  return Math.floor((offset + length - 1) / SECTOR_SIZE) - Math.floor(offset / SECTOR_SIZE) + 1;
}

function formatList(indices: readonly number[]): string {
  const parts: string[] = [];
  let i = 0;
  while (i < indices.length) {
    let j = i;
    while (j + 1 < indices.length && indices[j + 1] === indices[j]! + 1) j++;
    parts.push(j > i ? `${indices[i]}-${indices[j]}` : String(indices[i]));
    i = j + 1;
  }
  return parts.join(",");
}

function badId(id: string, why: string): QcowError {
  return new QcowError("INVALID_ARGUMENT", `Bad crash state id "${id}": ${why}`);
}

function parseIndex(text: string, id: string): number {
  if (!/^(0|[1-9][0-9]*)$/.test(text)) throw badId(id, `"${text}" is not an index`);
  const value = Number(text);
  if (!Number.isSafeInteger(value)) throw badId(id, `"${text}" is too large`);
  return value;
}

/**
 * Rebuilds the crash state with a given id (as listed by {@linkcode enumerateCrashStates}) from
 * the same log. Ids `c:s<list>` may also name any order of pending writes, such as `9:s8,6`.
 *
 * @example
 * ```ts
 * import { crashStateFromId, type WriteLogEntry } from "@qcowlab/qcowlab/emulator";
 *
 * const log: WriteLogEntry[] = [
 *   { kind: "write", offset: 0, data: new Uint8Array(4096), event: "write_aio" },
 *   { kind: "write", offset: 8192, data: new Uint8Array(1024), event: "l2_update" },
 * ];
 * const state = crashStateFromId(log, "2:s1:t1");
 * console.log(state.crashPoint, state.applied, state.torn); // 2 [ 1 ] 1
 * ```
 *
 * @param log The log the id was listed from.
 * @param id The state's id.
 * @returns The state.
 * @throws {QcowError} `INVALID_ARGUMENT` when the id is malformed or does not fit the log.
 */
export function crashStateFromId(log: readonly WriteLogEntry[], id: string): CrashState {
  if (typeof id !== "string") throw badId(String(id), "not a string");
  const parts = id.split(":");
  const crashPoint = parseIndex(parts[0]!, id);
  if (crashPoint > log.length) {
    throw badId(id, `crash point ${crashPoint} is past the end of the log (${log.length} entries)`);
  }
  let durable = 0;
  for (let i = crashPoint - 1; i >= 0; i--) {
    if (log[i]!.kind === "flush") {
      durable = i + 1;
      break;
    }
  }
  let applied: number[] | undefined;
  let torn: number | undefined;
  for (const part of parts.slice(1)) {
    if (part.startsWith("s") && applied === undefined && torn === undefined) {
      applied = [];
      for (const item of part.slice(1) === "" ? [] : part.slice(1).split(",")) {
        const range = item.split("-");
        if (range.length > 2) throw badId(id, `"${item}" is not an index or a range`);
        const from = parseIndex(range[0]!, id);
        const to = range.length === 2 ? parseIndex(range[1]!, id) : from;
        if (to < from) throw badId(id, `range "${item}" runs backwards`);
        for (let i = from; i <= to; i++) applied.push(i);
      }
      const seen = new Set<number>();
      for (const index of applied) {
        if (index < durable || index >= crashPoint || log[index]!.kind === "flush") {
          throw badId(
            id,
            `entry ${index} is not a write issued after the last flush (${durable}) and before ${crashPoint}`,
          );
        }
        if (seen.has(index)) throw badId(id, `entry ${index} is listed twice`);
        seen.add(index);
      }
    } else if (part.startsWith("t") && torn === undefined) {
      torn = parseIndex(part.slice(1), id);
    } else {
      throw badId(id, `unexpected part "${part}"`);
    }
  }
  if (applied === undefined) {
    applied = [];
    for (let i = durable; i < crashPoint; i++) applied.push(i);
  }
  if (torn !== undefined) {
    const last = applied.length > 0 ? log[applied[applied.length - 1]!]! : undefined;
    if (last?.kind !== "write") throw badId(id, "only a write can be torn");
    const sectors = sectorCount(last.offset, last.data.length);
    if (torn < 1 || torn >= sectors) {
      throw badId(id, `a write of ${sectors} sectors can only be torn after 1 to ${sectors - 1}`);
    }
  }
  // The id is rebuilt from the parts, so equal states get equal ids however they were spelt.
  return makeState(crashPoint, durable, applied, torn);
}

interface StoreCache {
  base: Uint8Array;
  length: number;
  /** Flat stores holding entries [0, key) applied, most recently used last. */
  checkpoints: Map<number, PageStore>;
  /** The last in-order state built: entries [durable, point) over checkpoint `durable`. */
  prefix?: { durable: number; point: number; store: PageStore };
}

const MAX_CHECKPOINTS = 8;
const caches = new WeakMap<readonly WriteLogEntry[], StoreCache>();

function cacheOf(base: Uint8Array, log: readonly WriteLogEntry[]): StoreCache {
  let cache = caches.get(log);
  if (!cache || cache.base !== base || cache.length !== log.length) {
    cache = { base, length: log.length, checkpoints: new Map([[0, PageStore.over(base)]]) };
    caches.set(log, cache);
  }
  return cache;
}

/**
 * A frozen store holding entries [0, point) in order, where entries [0, durable) are a cached
 * checkpoint; the states of one flush interval are listed in order, so each one usually costs a
 * copy of the previous one's small page map plus its last write.
 */
function prefixStore(
  base: Uint8Array,
  log: readonly WriteLogEntry[],
  durable: number,
  point: number,
): PageStore {
  const cache = cacheOf(base, log);
  const last = cache.prefix;
  if (last && last.durable === durable && last.point === point) return last.store;
  let store: PageStore;
  if (last && last.durable === durable && last.point === point - 1) {
    store = last.store.fork();
    applyEntry(store, log[point - 1]!, undefined);
  } else {
    store = durableStore(base, log, durable).layer();
    for (let i = durable; i < point; i++) applyEntry(store, log[i]!, undefined);
  }
  cache.prefix = { durable, point, store };
  return store;
}

/** A frozen store holding the base with log entries [0, index) applied, built incrementally. */
function durableStore(base: Uint8Array, log: readonly WriteLogEntry[], index: number): PageStore {
  const cache = cacheOf(base, log);
  const hit = cache.checkpoints.get(index);
  if (hit) {
    cache.checkpoints.delete(index);
    cache.checkpoints.set(index, hit);
    return hit;
  }
  let from = 0;
  for (const key of cache.checkpoints.keys()) if (key <= index && key > from) from = key;
  const store = cache.checkpoints.get(from)!.fork();
  for (let i = from; i < index; i++) applyEntry(store, log[i]!, undefined);
  cache.checkpoints.set(index, store);
  if (cache.checkpoints.size > MAX_CHECKPOINTS + 1) {
    for (const key of cache.checkpoints.keys()) {
      if (key !== 0) {
        cache.checkpoints.delete(key);
        break;
      }
    }
  }
  return store;
}

function applyEntry(store: PageStore, entry: WriteLogEntry, torn: number | undefined): void {
  if (entry.kind === "write") {
    let data = entry.data;
    if (torn !== undefined) {
      const end = (Math.floor(entry.offset / SECTOR_SIZE) + torn) * SECTOR_SIZE;
      data = data.subarray(0, Math.max(0, Math.min(data.length, end - entry.offset)));
    }
    store.write(data, entry.offset);
  } else if (entry.kind === "truncate") {
    store.truncate(entry.size);
  }
}

/**
 * A device holding the disk contents of a crash state: `base` (the disk before the log started)
 * with the state's writes applied. Nothing is copied up front: the durable part is shared between
 * states (built once per flush and cached with the log) and the device keeps copies of only the
 * 4 KiB pages its own writes touch. The device is writable (a repair may write to it) and leaves
 * `base` and the log unchanged. `base` and the log must not change while devices built from them
 * are in use.
 *
 * @example Crashing half-way through a log
 * ```ts
 * import { MemoryDevice } from "@qcowlab/qcowlab";
 * import { crashDevice, crashStateFromId, RecordingDevice } from "@qcowlab/qcowlab/emulator";
 *
 * const base = new Uint8Array(1024);
 * const disk = new RecordingDevice(MemoryDevice.from(base));
 * await disk.write(new Uint8Array(512).fill(1), 0);
 * await disk.write(new Uint8Array(512).fill(2), 512);
 * const device = crashDevice(base, disk.log, crashStateFromId(disk.log, "1"));
 * const bytes = new Uint8Array(1024);
 * await device.read(bytes, 0);
 * console.log(bytes[0], bytes[512]); // 1 0
 * ```
 *
 * @param base The disk contents before the first logged entry.
 * @param log The write log.
 * @param state A state of that log.
 * @returns A fresh device in that state.
 */
export function crashDevice(
  base: Uint8Array,
  log: readonly WriteLogEntry[],
  state: CrashState,
): BlockDevice {
  if (state.crashPoint > log.length || state.durable > state.crashPoint) {
    throw new QcowError("INVALID_ARGUMENT", `Crash state ${state.id} does not fit this log`);
  }
  const last = state.applied.length - 1;
  state.applied.forEach((index) => {
    if (!log[index] || index < state.durable || index >= state.crashPoint) {
      throw new QcowError("INVALID_ARGUMENT", `Crash state ${state.id} does not fit this log`);
    }
  });
  const inOrder = state.applied.length === state.crashPoint - state.durable &&
    state.applied.every((index, i) => index === state.durable + i);
  let store: PageStore;
  if (inOrder && state.torn === undefined) {
    store = prefixStore(base, log, state.durable, state.crashPoint).layer();
  } else if (inOrder && last >= 0) {
    store = prefixStore(base, log, state.durable, state.crashPoint - 1).layer();
    applyEntry(store, log[state.applied[last]!]!, state.torn);
  } else {
    store = durableStore(base, log, state.durable).layer();
    state.applied.forEach((index, i) => {
      applyEntry(store, log[index]!, i === last ? state.torn : undefined);
    });
  }
  return new PageStoreDevice(store, `crash:${state.id}`);
}
