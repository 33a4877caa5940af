/**
 * The crash-safety invariants and the model of what a workload's image must read back after a
 * crash, apart from any I/O: the explorer observes a crash state, this file judges it.
 *
 * @module
 */

import type { CheckResult } from "../drivers/qcow2/check.ts";
import type { OpRecord } from "./workload_run.ts";
import type { WorkloadImage } from "./workload.ts";
import { BACKING_TAG, workloadClusterSize } from "./workload.ts";
import { GARBAGE, SECTOR } from "./workload_pattern.ts";

/** The invariants, as the issue names them. */
export const INVARIANTS: readonly ["a", "b", "c", "d", "e", "f", "g"] = [
  "a",
  "b",
  "c",
  "d",
  "e",
  "f",
  "g",
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
  g: "a snapshot op leaves the state before or after it",
};

/**
 * Why a state passed (b) only by the documented exception: its check before repair found nothing
 * but OFLAG_COPIED mismatches, in the crash window of a snapshot operation (QEMU's order of
 * writes leaves the same; `check -r all` fixes them and nothing else is wrong).
 */
export const ALLOWED_OFLAG_COPIED: string = "oflag-copied";

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
  /** Corruptions that are OFLAG_COPIED mismatches (counted from the check's messages). */
  copied: number;
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
    copied: result.messages.filter((m) => /^ERROR OFLAG_COPIED /.test(m)).length,
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
  /** Names of the internal snapshots once open, in table order (formats with snapshots). */
  snapshots?: string[];
}

/** How one crash state fared. */
export interface StateVerdict {
  /** Per invariant: true passed, false failed, undefined not applicable. */
  results: Partial<Record<InvariantName, boolean>>;
  /** What failed, one line each. */
  failures: { invariant: InvariantName; message: string }[];
  /** Set when an invariant passed only by a documented exception ({@linkcode ALLOWED_OFLAG_COPIED}). */
  allowed?: string;
}

/** Tells the tag read at a host byte offset for virtual sector `sector` (GARBAGE if wrong). */
export type HostTag = (host: number, sector: number) => number;

interface Effect {
  from: number;
  to: number;
  value: number;
  /** Per-sector tags instead of one value (applying a snapshot): `tags[s]` for sector s. */
  tags?: Int32Array;
}

function applyEffect(tags: Int32Array, e: Effect): void {
  if (e.tags) tags.set(e.tags.subarray(e.from, e.to), e.from);
  else tags.fill(e.value, e.from, e.to);
}

function effectValue(e: Effect, s: number): number {
  return e.tags ? e.tags[s]! : e.value;
}

interface OpModel {
  start: number;
  end: number;
  flush: boolean;
  /** A request that failed: its effects are allowed, never required, from then on. */
  failed: boolean;
  effects: Effect[];
  resize: number | undefined;
  /** A snapshot request: what it does to which snapshot. */
  snapshot?: { kind: "create" | "apply" | "delete"; name: string };
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
  #leaksStay: boolean;
  #hasSnapshots = false;
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
    // qcow has no refcounts: leaked space cannot be reclaimed by a repair.
    this.#leaksStay = image.format === "qcow";
    const cs = workloadClusterSize(image);
    const v2Backing = image.compat === "0.10" && image.backingSize !== undefined;
    let max = image.size;
    for (const record of ops) {
      if (record.op.op === "resize") max = Math.max(max, record.op.size);
      if (record.op.op.startsWith("snapshot_")) this.#hasSnapshots = true;
    }
    this.#sectors = max / SECTOR;
    // With snapshots, what the disk holds after each request, to know what a snapshot keeps.
    const running = this.#hasSnapshots ? this.#initialTags() : undefined;
    const taken = new Map<string, { tags: Int32Array; size: number }>();
    let size = image.size;
    for (const record of ops) {
      const op = record.op;
      const failed = record.failed !== undefined;
      const effects: Effect[] = [];
      let resize: number | undefined;
      let snapshot: OpModel["snapshot"];
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
          // qcow has no discard (a no-op, as in QEMU).
          if (v2Backing || image.format === "qcow") break;
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
          break;
        case "snapshot_create":
          snapshot = { kind: "create", name: op.name };
          if (!failed) taken.set(op.name, { tags: running!.slice(), size });
          break;
        case "snapshot_apply": {
          snapshot = { kind: "apply", name: op.name };
          const kept = taken.get(op.name);
          if (!kept) break;
          // The whole disk takes the snapshot's contents and size (zeros past that size).
          const tags = kept.tags.slice();
          tags.fill(0, kept.size / SECTOR);
          effects.push({ from: 0, to: this.#sectors, value: -1, tags });
          resize = kept.size;
          if (!failed) size = kept.size;
          break;
        }
        case "snapshot_delete":
          snapshot = { kind: "delete", name: op.name };
          if (!failed) taken.delete(op.name);
          break;
      }
      if (running && !failed) { for (const e of effects) applyEffect(running, e); }
      const model: OpModel = {
        start: record.start,
        end: record.end,
        failed,
        // Snapshot requests end with a device flush, as QEMU's do.
        flush: (op.op === "flush" || op.op === "close" || snapshot !== undefined) && !failed,
        effects,
        resize,
      };
      if (snapshot) model.snapshot = snapshot;
      this.#ops.push(model);
    }
  }

  #initialTags(): Int32Array {
    const tags = new Int32Array(this.#sectors);
    tags.fill(BACKING_TAG, 0, Math.min(this.#backingSectors, this.#sectors));
    return tags;
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
    const fresh = tags ? tags.slice() : this.#initialTags();
    for (let i = from + 1; i <= flush; i++) {
      const op = this.#ops[i]!;
      if (op.failed) continue;
      for (const e of op.effects) applyEffect(fresh, e);
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
    const tags = this.#initialTags();
    for (let i = 0; i <= index && i < this.#ops.length; i++) {
      const op = this.#ops[i]!;
      if (op.failed) continue;
      for (const e of op.effects) applyEffect(tags, e);
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
    const flush = this.lastFlush(c);
    // Failed requests stay uncertain for good; the others are pending until a flush completes.
    const pending: OpModel[] = this.#ops.slice(0, flush + 1).filter((op) => op.failed);
    for (let i = flush + 1; i < this.#ops.length; i++) {
      const op = this.#ops[i]!;
      if (!this.#issued(op, c)) break;
      pending.push(op);
    }
    const snapshotPending = pending.some((op) => op.snapshot !== undefined && !op.failed);
    let allowed: string | undefined;
    results.a = true;
    if (!obs.open.ok && !obs.open.typed) fail("a", `open failed untyped: ${obs.open.message}`);
    if (!this.#lazy) {
      results.b = true;
      const cb = obs.checkBefore;
      if (cb.corruptions > 0 || cb.checkErrors > 0 || cb.failure !== undefined) {
        if (
          snapshotPending && cb.corruptions === cb.copied && cb.checkErrors === 0 &&
          cb.failure === undefined
        ) {
          allowed = ALLOWED_OFLAG_COPIED;
        } else {
          fail(
            "b",
            `check before repair: ${cb.corruptions} corruptions, ${cb.checkErrors} check errors` +
              (cb.failure ? ` (${cb.failure})` : ""),
          );
        }
      }
    }
    results.c = true;
    const ca = obs.checkAfter;
    if (ca.status !== 0 && !(ca.status === 3 && this.#leaksStay)) {
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
    if (this.#hasSnapshots && obs.open.ok) this.#judgeSnapshots(flush, pending, obs, results, fail);
    this.#judgeData(flush, pending, obs, hostTag, results, fail);
    const verdict: StateVerdict = { results, failures };
    if (allowed !== undefined && results.b !== false) verdict.allowed = allowed;
    return verdict;
  }

  /** The snapshot names after the requests up to `index`, in table order. */
  snapshotsAfter(index: number): string[] {
    const names: string[] = [];
    for (let i = 0; i <= index && i < this.#ops.length; i++) {
      const op = this.#ops[i]!;
      if (op.failed || !op.snapshot) continue;
      if (op.snapshot.kind === "create") names.push(op.snapshot.name);
      else if (op.snapshot.kind === "delete") names.splice(names.indexOf(op.snapshot.name), 1);
    }
    return names;
  }

  /** (g), its listing part: the snapshot table is the one before or after each pending request. */
  #judgeSnapshots(
    flush: number,
    pending: OpModel[],
    obs: StateObservation,
    results: Partial<Record<InvariantName, boolean>>,
    fail: (invariant: InvariantName, message: string) => void,
  ): void {
    // A snapshot request that failed (injected faults) leaves its table uncertain: not judged.
    if (obs.snapshots === undefined || this.#ops.some((op) => op.failed && op.snapshot)) return;
    results.g = true;
    const names = this.snapshotsAfter(flush);
    const allowed = [names.join("/")];
    for (const op of pending) {
      if (!op.snapshot) continue;
      if (op.snapshot.kind === "create") names.push(op.snapshot.name);
      else if (op.snapshot.kind === "delete") names.splice(names.indexOf(op.snapshot.name), 1);
      allowed.push(names.join("/"));
    }
    const seen = obs.snapshots.join("/");
    if (!allowed.includes(seen)) {
      fail(
        "g",
        `snapshots [${obs.snapshots.join(", ")}] are none of ${
          allowed.map((a) => `[${a.split("/").filter((n) => n).join(", ")}]`).join(", ")
        }`,
      );
    }
  }

  #judgeData(
    flush: number,
    pending: OpModel[],
    obs: StateObservation,
    hostTag: HostTag,
    results: Partial<Record<InvariantName, boolean>>,
    fail: (invariant: InvariantName, message: string) => void,
  ): void {
    const ack = this.#ackState(flush);
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
      for (const e of pendingEffects) {
        if (s >= e.from && s < e.to && effectValue(e, s) === t) return true;
      }
      return false;
    };
    // (g), its data part: a snapshot being applied shows all of its contents or none of them.
    const applying = pending.findLast((op) => op.snapshot?.kind === "apply" && !op.failed);
    const applied = applying?.effects[0];
    const before = applied
      ? pendingEffects.filter((e) => !applying!.effects.includes(e))
      : pendingEffects;
    let oldAt = -1;
    let newAt = -1;
    const atomic = (s: number, t: number): void => {
      const next = effectValue(applied!, s);
      let old = s < this.#sectors ? t === ack.tags[s] : t === 0;
      for (const e of before) {
        if (old) break;
        if (s >= e.from && s < e.to && effectValue(e, s) === t) old = true;
      }
      if (old && t !== next && oldAt < 0) oldAt = s;
      if (!old && t === next && newAt < 0) newAt = s;
    };
    let reported = 0;
    const check = (s: number, t: number): void => {
      if (applied) atomic(s, t);
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
        if (!applied && prefix[end]! - prefix[run.start]! === 0) continue;
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
    if (applied && results.g !== undefined && oldAt >= 0 && newAt >= 0) {
      fail(
        "g",
        `a snapshot apply is half done: sector ${oldAt} reads the contents from before it, ` +
          `sector ${newAt} the snapshot's`,
      );
    }
  }
}

function describeTag(tag: number): string {
  if (tag === GARBAGE) return "unrecognized data";
  if (tag === 0) return "zeros";
  if (tag === BACKING_TAG) return "the backing file";
  return `the data of request #${tag - 2}`;
}
