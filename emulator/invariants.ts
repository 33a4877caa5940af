/**
 * The crash-safety invariants and the model of what a workload's image must read back after a
 * crash, apart from any I/O: the explorer observes a crash state, this file judges it.
 *
 * @module
 */

import type { CheckResult } from "../drivers/qcow2/check.ts";
import type { OpRecord } from "./workload_run.ts";
import type { WorkloadImage } from "./workload.ts";
import { BACKING_TAG } from "./workload.ts";
import { GARBAGE, SECTOR } from "./workload_pattern.ts";

/** The invariants, as the issue names them. */
export const INVARIANTS: readonly ["a", "b", "c", "d", "e", "f"] = [
  "a",
  "b",
  "c",
  "d",
  "e",
  "f",
] as const;

/** One invariant's letter. */
export type InvariantName = typeof INVARIANTS[number];

/** What each invariant asserts. */
export const INVARIANT_TEXT: Readonly<Record<InvariantName, string>> = {
  a: "open succeeds or fails with a typed error",
  b: "no corruption before repair (without lazy refcounts)",
  c: "check is clean after repair",
  d: "flushed data reads back exactly",
  e: "unflushed sectors read old or new content",
  f: "no corrupt bit set by a crash",
};

/** The parts of a check result the invariants look at. */
export interface CheckSummary {
  /** qemu-img check's exit status (0 clean, 1 failed, 2 corruptions, 3 leaks). */
  status: number;
  /** Corruptions found (left, after a repair). */
  corruptions: number;
  /** Leaks found (left, after a repair). */
  leaks: number;
  /** Check errors. */
  checkErrors: number;
  /** Why the check failed or threw, if it did. */
  failure?: string;
}

/** Summarizes a check result. */
export function summarizeCheck(result: CheckResult, status: number): CheckSummary {
  const summary: CheckSummary = {
    status,
    corruptions: result.corruptions ?? 0,
    leaks: result.leaks ?? 0,
    checkErrors: result["check-errors"],
  };
  if (result.failure !== undefined) summary.failure = result.failure;
  return summary;
}

/** Kinds of {@linkcode ObservedRun}. */
export const RUN_UNALLOCATED: number = 0;
/** Reads as zeros by metadata. */
export const RUN_ZERO: number = 1;
/** Stored at `host`. */
export const RUN_DATA: number = 2;
/** Tags given explicitly in `tags` (compressed clusters, or everything for the full verifier). */
export const RUN_TAGS: number = 3;

/** A range of virtual sectors with one way of being stored. */
export interface ObservedRun {
  /** First virtual sector. */
  start: number;
  /** Sectors. */
  length: number;
  /** RUN_UNALLOCATED, RUN_ZERO, RUN_DATA or RUN_TAGS. */
  kind: number;
  /** Host byte offset of the first sector (RUN_DATA). */
  host: number;
  /** The tag read for each sector (RUN_TAGS). */
  tags?: Int32Array;
}

/** What opening, reading and checking one crash state found. */
export interface StateObservation {
  /** Header bits of the crashed image, before anything touched it. */
  flagsBefore: { dirty: boolean; corrupt: boolean };
  /** Check without repair of the crashed image. */
  checkBefore: CheckSummary;
  /** The writable open (with its automatic repair of a dirty image). */
  open: { ok: true } | { ok: false; typed: boolean; message: string };
  /** Virtual size once open. */
  size: number;
  /** How the virtual disk `[0, size)` is stored, in order. */
  runs: ObservedRun[];
  /** Whether the driver marked the image corrupt while it was read. */
  markedCorrupt: boolean;
  /** Check after `check -r all`. */
  checkAfter: CheckSummary;
  /** Header bits after the repair. */
  flagsAfter: { dirty: boolean; corrupt: boolean };
}

/** How one crash state fared. */
export interface StateVerdict {
  /** Per invariant: true passed, false failed, undefined not applicable. */
  results: Partial<Record<InvariantName, boolean>>;
  /** What failed, one line each. */
  failures: { invariant: InvariantName; message: string }[];
}

/** Tells the tag read at a host byte offset for virtual sector `sector` (GARBAGE if wrong). */
export type HostTag = (host: number, sector: number) => number;

interface Effect {
  from: number;
  to: number;
  value: number;
}

interface OpModel {
  start: number;
  end: number;
  flush: boolean;
  /** A request that failed: its effects are allowed, never required, from then on. */
  failed: boolean;
  effects: Effect[];
  resize: number | undefined;
}

interface AckState {
  tags: Int32Array;
  size: number;
  /** Prefix counts of sectors whose acknowledged tag differs from the initial contents. */
  changed: Int32Array;
  /** Prefix counts of sectors whose acknowledged tag is not zero. */
  nonzero: Int32Array;
}

const MAX_ACK_CACHE = 3;

/**
 * The model of a recorded workload: what every sector reads after each request, which requests a
 * crash point has issued and completed, and the invariants judged against an observation.
 *
 * @example
 * ```ts
 * import { generateWorkload, recordWorkload, WorkloadModel } from "@qcowlab/qcowlab/emulator";
 *
 * const run = await recordWorkload(generateWorkload({ seed: 1, ops: 5, image: { size: 1 << 20 } }));
 * const model = new WorkloadModel(run.workload.image, run.ops);
 * console.log(model.sectors >= 2048); // true
 * ```
 */
export class WorkloadModel {
  #ops: OpModel[] = [];
  #initialSize: number;
  #backingSectors: number;
  #sectors: number;
  #lazy: boolean;
  #ack = new Map<number, AckState>();

  /**
   * Builds the model.
   *
   * @param image The image options of the workload.
   * @param ops The requests as recorded (see {@linkcode recordWorkload}).
   * @param lazy Whether the format keeps refcounts behind (lazy refcounts); default from `image`.
   */
  constructor(image: WorkloadImage, ops: readonly OpRecord[], lazy?: boolean) {
    this.#initialSize = image.size;
    this.#backingSectors = Math.ceil((image.backingSize ?? 0) / SECTOR);
    this.#lazy = lazy ?? ((image.compat ?? "1.1") === "1.1" && image.lazyRefcounts === true);
    const cs = image.clusterSize ?? 65536;
    const v2Backing = image.compat === "0.10" && image.backingSize !== undefined;
    let size = image.size;
    let max = size;
    for (const record of ops) {
      const op = record.op;
      const effects: Effect[] = [];
      let resize: number | undefined;
      switch (op.op) {
        case "write":
        case "write_compressed":
          effects.push({
            from: op.offset / SECTOR,
            to: Math.ceil((op.offset + op.length) / SECTOR),
            value: record.tag,
          });
          break;
        case "write_zeroes":
          effects.push({
            from: Math.floor(op.offset / SECTOR),
            to: Math.ceil((op.offset + op.length) / SECTOR),
            value: 0,
          });
          break;
        case "discard": {
          if (v2Backing) break;
          // Only whole clusters are discarded (the last may end at the end of the disk).
          const first = Math.ceil(op.offset / cs) * cs;
          for (let at = first; at < op.offset + op.length; at += cs) {
            const end = Math.min(at + cs, size);
            if (end > op.offset + op.length) break;
            effects.push({ from: at / SECTOR, to: end / SECTOR, value: 0 });
          }
          break;
        }
        case "resize":
          resize = op.size;
          size = op.size;
          max = Math.max(max, size);
          break;
      }
      this.#ops.push({
        start: record.start,
        end: record.end,
        failed: record.failed !== undefined,
        flush: (op.op === "flush" || op.op === "close") && record.failed === undefined,
        effects,
        resize,
      });
    }
    this.#sectors = max / SECTOR;
  }

  /** Virtual sectors the largest size of the workload has. */
  get sectors(): number {
    return this.#sectors;
  }

  /** What a sector holds before any request. */
  initialTag(sector: number): number {
    return sector < this.#backingSectors ? BACKING_TAG : 0;
  }

  /** The last flush (or close) request completed by crash point `c`, or -1. */
  lastFlush(c: number): number {
    let found = -1;
    for (let i = 0; i < this.#ops.length; i++) {
      const op = this.#ops[i]!;
      if (op.end > c) break;
      if (op.flush) found = i;
    }
    return found;
  }

  #issued(op: OpModel, c: number): boolean {
    return op.start < c || (op.start === op.end && op.end <= c);
  }

  #ackState(flush: number): AckState {
    const hit = this.#ack.get(flush);
    if (hit) {
      this.#ack.delete(flush);
      this.#ack.set(flush, hit);
      return hit;
    }
    let from = -1;
    let tags: Int32Array | undefined;
    let size = this.#initialSize;
    for (const [key, state] of this.#ack) {
      if (key <= flush && key > from) {
        from = key;
        tags = state.tags;
        size = state.size;
      }
    }
    const fresh = new Int32Array(this.#sectors);
    if (tags) fresh.set(tags);
    else for (let s = 0; s < this.#backingSectors && s < this.#sectors; s++) fresh[s] = BACKING_TAG;
    for (let i = from + 1; i <= flush; i++) {
      const op = this.#ops[i]!;
      if (op.failed) continue;
      for (const e of op.effects) fresh.fill(e.value, e.from, e.to);
      if (op.resize !== undefined) size = op.resize;
    }
    const changed = new Int32Array(this.#sectors + 1);
    const nonzero = new Int32Array(this.#sectors + 1);
    for (let s = 0; s < this.#sectors; s++) {
      const t = fresh[s]!;
      changed[s + 1] = changed[s]! + (t !== this.initialTag(s) ? 1 : 0);
      nonzero[s + 1] = nonzero[s]! + (t !== 0 ? 1 : 0);
    }
    const state = { tags: fresh, size, changed, nonzero };
    this.#ack.set(flush, state);
    if (this.#ack.size > MAX_ACK_CACHE) this.#ack.delete(this.#ack.keys().next().value!);
    return state;
  }

  /**
   * The tags every virtual sector must read after the requests up to and including `index`
   * completed (all sectors of the largest size; those past the size at that point read 0).
   */
  contentsAfter(index: number): { tags: Int32Array; size: number } {
    let size = this.#initialSize;
    const tags = new Int32Array(this.#sectors);
    for (let s = 0; s < this.#backingSectors && s < this.#sectors; s++) tags[s] = BACKING_TAG;
    for (let i = 0; i <= index && i < this.#ops.length; i++) {
      const op = this.#ops[i]!;
      if (op.failed) continue;
      for (const e of op.effects) tags.fill(e.value, e.from, e.to);
      if (op.resize !== undefined) size = op.resize;
    }
    return { tags, size };
  }

  /**
   * Judges a crash state.
   *
   * @param c The crash point: log entries `[0, c)` were issued.
   * @param obs What the explorer observed.
   * @param hostTag Identifies the data at a host offset (for RUN_DATA runs).
   * @returns The verdict.
   */
  judge(c: number, obs: StateObservation, hostTag: HostTag): StateVerdict {
    const results: Partial<Record<InvariantName, boolean>> = {};
    const failures: { invariant: InvariantName; message: string }[] = [];
    const fail = (invariant: InvariantName, message: string): void => {
      if (results[invariant] !== false) failures.push({ invariant, message });
      results[invariant] = false;
    };
    results.a = true;
    if (!obs.open.ok && !obs.open.typed) fail("a", `open failed untyped: ${obs.open.message}`);
    if (!this.#lazy) {
      results.b = true;
      const cb = obs.checkBefore;
      if (cb.corruptions > 0 || cb.checkErrors > 0 || cb.failure !== undefined) {
        fail(
          "b",
          `check before repair: ${cb.corruptions} corruptions, ${cb.checkErrors} check errors` +
            (cb.failure ? ` (${cb.failure})` : ""),
        );
      }
    }
    results.c = true;
    if (obs.checkAfter.status !== 0) {
      const ca = obs.checkAfter;
      fail(
        "c",
        `check after repair exits ${ca.status}: ${ca.corruptions} corruptions, ${ca.leaks} leaks, ` +
          `${ca.checkErrors} check errors` + (ca.failure ? ` (${ca.failure})` : ""),
      );
    }
    results.f = true;
    if (obs.flagsBefore.corrupt) fail("f", "the crashed image has the corrupt bit set");
    if (obs.markedCorrupt) fail("f", "the driver marked the crashed image corrupt while reading");
    if (obs.flagsAfter.corrupt) fail("f", "the corrupt bit is set after the repair");
    this.#judgeData(c, obs, hostTag, results, fail);
    return { results, failures };
  }

  #judgeData(
    c: number,
    obs: StateObservation,
    hostTag: HostTag,
    results: Partial<Record<InvariantName, boolean>>,
    fail: (invariant: InvariantName, message: string) => void,
  ): void {
    const flush = this.lastFlush(c);
    const ack = this.#ackState(flush);
    // Failed requests stay uncertain for good; the others are pending until a flush completes.
    const pending: OpModel[] = this.#ops.slice(0, flush + 1).filter((op) => op.failed);
    for (let i = flush + 1; i < this.#ops.length; i++) {
      const op = this.#ops[i]!;
      if (!this.#issued(op, c)) break;
      pending.push(op);
    }
    const pendingEffects = pending.flatMap((op) => op.effects);
    results.d = true;
    if (pendingEffects.length > 0) results.e = true;
    if (!obs.open.ok) {
      fail("d", `the image cannot be read back: ${obs.open.message}`);
      if (pendingEffects.length > 0) fail("e", "the image cannot be read back");
      return;
    }
    const sizes = [
      ack.size,
      ...pending.flatMap((op) => op.resize === undefined ? [] : [op.resize]),
    ];
    if (!sizes.includes(obs.size)) {
      fail("d", `virtual size ${obs.size} is none of ${sizes.join(", ")}`);
    }
    const touched = (s: number): boolean => pendingEffects.some((e) => s >= e.from && s < e.to);
    const allowed = (s: number, t: number): boolean => {
      if (s < this.#sectors ? t === ack.tags[s] : t === 0) return true;
      for (const e of pendingEffects) if (s >= e.from && s < e.to && e.value === t) return true;
      return false;
    };
    let reported = 0;
    const check = (s: number, t: number): void => {
      if (allowed(s, t)) return;
      const invariant = touched(s) ? "e" : "d";
      if (results[invariant] === false && reported > 0) return;
      reported++;
      const expected = s < this.#sectors ? ack.tags[s] : 0;
      fail(
        invariant,
        `sector ${s} (offset ${s * SECTOR}) reads ${describeTag(t)}, expected ${
          describeTag(expected!)
        }` +
          (invariant === "e" ? " or a pending write" : ""),
      );
    };
    const limit = Math.min(this.#sectors, obs.size / SECTOR);
    for (const run of obs.runs) {
      const end = Math.min(run.start + run.length, limit);
      if (run.kind === RUN_UNALLOCATED || run.kind === RUN_ZERO) {
        const prefix = run.kind === RUN_ZERO ? ack.nonzero : ack.changed;
        if (prefix[end]! - prefix[run.start]! === 0) continue;
        for (let s = run.start; s < end; s++) {
          check(s, run.kind === RUN_ZERO ? 0 : this.initialTag(s));
        }
      } else if (run.kind === RUN_DATA) {
        for (let s = run.start; s < end; s++) {
          check(s, hostTag(run.host + (s - run.start) * SECTOR, s));
        }
      } else {
        for (let s = run.start; s < end; s++) check(s, run.tags![s - run.start]!);
      }
    }
  }
}

function describeTag(tag: number): string {
  if (tag === GARBAGE) return "unrecognized data";
  if (tag === 0) return "zeros";
  if (tag === BACKING_TAG) return "the backing file";
  return `the data of request #${tag - 2}`;
}
