/**
 * Crash exploration: every crash state of a recorded workload, observed and judged against the
 * invariants, with the observations of states that look the same to the driver reused.
 *
 * @module
 */

import { QcowError } from "../core/errors.ts";
import {
  crashDevice,
  type CrashState,
  crashStateFromId,
  type CrashStateOptions,
  enumerateCrashStates,
} from "./crash_states.ts";
import { type ExploreFormat, exploreFormat } from "./explore_format.ts";
import { HostTags, UNKNOWN } from "./explore_host.ts";
import { CompressedTags, observeState, ReadTracker } from "./explore_observe.ts";
import {
  type InvariantName,
  INVARIANTS,
  RUN_DATA,
  type StateObservation,
  type StateVerdict,
  WorkloadModel,
} from "./invariants.ts";
import type { RecordedRun } from "./workload_run.ts";
import { workloadClusterSize } from "./workload.ts";
import type { WriteLogEntry } from "./recording_device.ts";
import { SECTOR } from "./workload_pattern.ts";

/** Options for {@linkcode Explorer}. */
export interface ExploreOptions extends CrashStateOptions {
  /** At most this many states, spread evenly over the workload's states; default all. */
  states?: number;
  /** Verify only this shard's share of the states: `{ index, count }`, index from 0. */
  shard?: { index: number; count: number };
  /**
   * "fast" (default): judge data through the mapping and the log, reusing observations of states
   * the driver cannot tell apart; "full": read every state's whole virtual disk through the
   * driver, nothing reused (slow; the reference the fast path is tested against).
   */
  verifier?: "fast" | "full";
  /** Called after each state with the number done and the number to do. */
  onProgress?: (done: number, total: number) => void;
  /** Keep the details of at most this many violating states; default 20. */
  maxViolations?: number;
  /** Stop at the first violating state (of one of the listed invariants); default false. */
  stopAtFirst?: boolean | readonly InvariantName[];
}

/** A crash state that broke invariants. */
export interface Violation {
  /** The state's id (see {@linkcode crashStateFromId}). */
  stateId: string;
  /** Its crash point. */
  crashPoint: number;
  /** What failed. */
  failures: { invariant: InvariantName; message: string }[];
}

/** Pass counts of one invariant. */
export interface InvariantCount {
  /** States it applied to. */
  checked: number;
  /** States that passed it. */
  passed: number;
}

/** The outcome of exploring one workload. */
export interface ExploreResult {
  /** States verified. */
  states: number;
  /** Per invariant. */
  invariants: Record<InvariantName, InvariantCount>;
  /** States with at least one failure. */
  violatingStates: number;
  /** Details of the first violating states. */
  violations: Violation[];
  /** States whose observation was reused. */
  reused: number;
  /**
   * States that passed (b) only by the documented exception: nothing but OFLAG_COPIED
   * mismatches before repair, in a snapshot operation's crash window (see `ALLOWED_OFLAG_COPIED`).
   */
  allowedCopied: number;
}

/** An empty count table. */
export function emptyCounts(): Record<InvariantName, InvariantCount> {
  return Object.fromEntries(INVARIANTS.map((n) => [n, { checked: 0, passed: 0 }])) as Record<
    InvariantName,
    InvariantCount
  >;
}

interface MemoGroup {
  ranges: Float64Array;
  /** Observations by key with the exact device size. */
  exact: Map<string, StateObservation>;
  /** Observations by key with the device size in clusters (see `sizeBlind`). */
  bucket: Map<string, StateObservation>;
  /** End of the last range read. */
  maxEnd: number;
  /** Prefix counts of the log entries touching `ranges`. */
  before: Int32Array;
}

const MAX_MEMO = 256;
const MAX_GROUPS = 64;

/**
 * Explores the crash states of a recorded workload.
 *
 * @example Exploring a small workload
 * ```ts
 * import { Explorer, generateWorkload, recordWorkload } from "@qcowlab/qcowlab/emulator";
 *
 * const run = await recordWorkload(generateWorkload({ seed: 2, ops: 8, image: { size: 4 << 20 } }));
 * const result = await new Explorer(run).explore();
 * console.log(result.states > 0, result.violatingStates); // true 0
 * ```
 */
export class Explorer {
  #run: RecordedRun;
  #options: ExploreOptions;
  #format: ExploreFormat;
  #model: WorkloadModel;
  #host: HostTags;
  #memo: MemoGroup[] = [];
  #sizes: Float64Array | undefined;
  #clusterSize: number;
  #diffs = new Map<number, Uint8Array>();
  #diffDurable = -1;
  #observeSeconds = 0;
  #compressed = new CompressedTags();
  #memoSize = 0;
  #reused = 0;

  /**
   * Prepares to explore a recorded workload.
   *
   * @param run A recorded workload (see {@linkcode recordWorkload}).
   * @param options Which states, how many, which shard, which verifier.
   */
  constructor(run: RecordedRun, options: ExploreOptions = {}) {
    this.#run = run;
    this.#options = options;
    this.#format = exploreFormat(run.workload.image.format);
    this.#model = new WorkloadModel(
      run.workload.image,
      run.ops,
      this.#format.lazy(run.workload.image),
    );
    this.#host = new HostTags(run.base, run.log);
    this.#clusterSize = workloadClusterSize(run.workload.image);
    const shard = options.shard;
    if (
      shard &&
      (!Number.isInteger(shard.count) || shard.count < 1 || !Number.isInteger(shard.index) ||
        shard.index < 0 || shard.index >= shard.count)
    ) {
      throw new QcowError("INVALID_ARGUMENT", `Bad shard ${shard.index}/${shard.count}`);
    }
  }

  /** Seconds spent observing states whose observation could not be reused. */
  get observeSeconds(): number {
    return this.#observeSeconds;
  }

  /** How many states so far reused another state's observation. */
  get reused(): number {
    return this.#reused;
  }

  /** The model the states are judged against. */
  get model(): WorkloadModel {
    return this.#model;
  }

  /** The states this explorer verifies, in order (after sampling and sharding). */
  *states(): Generator<CrashState> {
    const options: CrashStateOptions = {};
    if (this.#options.seed !== undefined) options.seed = this.#options.seed;
    if (this.#options.maxStatesPerPoint !== undefined) {
      options.maxStatesPerPoint = this.#options.maxStatesPerPoint;
    }
    if (this.#options.subsets !== undefined) options.subsets = this.#options.subsets;
    if (this.#options.torn !== undefined) options.torn = this.#options.torn;
    const log = this.#run.log;
    let total = 0;
    for (const _ of enumerateCrashStates(log, options)) total++;
    const want = Math.min(total, this.#options.states ?? total);
    const shard = this.#options.shard ?? { index: 0, count: 1 };
    const from = Math.floor(shard.index * want / shard.count);
    const to = Math.floor((shard.index + 1) * want / shard.count);
    let i = 0;
    let j = 0;
    for (const state of enumerateCrashStates(log, options)) {
      // State i is the j-th chosen when the even spread of `want` over `total` steps past it.
      if (Math.floor((i + 1) * want / total) > Math.floor(i * want / total)) {
        if (j >= from && j < to) yield state;
        j++;
        if (j >= to) return;
      }
      i++;
    }
  }

  /** Counts the states {@linkcode states} yields. */
  count(): number {
    let n = 0;
    for (const _ of this.states()) n++;
    return n;
  }

  /** Verifies every chosen state. */
  async explore(): Promise<ExploreResult> {
    const total = this.#options.onProgress ? this.count() : 0;
    const invariants = emptyCounts();
    const violations: Violation[] = [];
    let states = 0;
    let violatingStates = 0;
    let allowedCopied = 0;
    const keep = this.#options.maxViolations ?? 20;
    for (const state of this.states()) {
      const verdict = await this.verify(state);
      states++;
      if (verdict.allowed !== undefined) allowedCopied++;
      for (const name of INVARIANTS) {
        const result = verdict.results[name];
        if (result === undefined) continue;
        invariants[name].checked++;
        if (result) invariants[name].passed++;
      }
      if (verdict.failures.length > 0) {
        violatingStates++;
        if (violations.length < keep) {
          violations.push({
            stateId: state.id,
            crashPoint: state.crashPoint,
            failures: verdict.failures,
          });
        }
        const stop = this.#options.stopAtFirst;
        if (stop === true || (stop && verdict.failures.some((f) => stop.includes(f.invariant)))) {
          break;
        }
      }
      this.#options.onProgress?.(states, total);
    }
    return {
      states,
      invariants,
      violatingStates,
      violations,
      reused: this.#reused,
      allowedCopied,
    };
  }

  /** Verifies the state with the given id. */
  verifyId(id: string): Promise<StateVerdict> {
    return this.verify(crashStateFromId(this.#run.log, id));
  }

  /** Verifies one state. */
  async verify(state: CrashState): Promise<StateVerdict> {
    const run = this.#run;
    if ((this.#options.verifier ?? "fast") === "full") {
      const device = crashDevice(run.base, run.log, state);
      const obs = await observeState(this.#format, device, run.backing, "everything");
      return this.#model.judge(state.crashPoint, obs, () => 0);
    }
    const obs = await this.#observe(state);
    const host = this.#host;
    host.moveTo(state.durable);
    host.setPending(state.applied, state.torn);
    // Sectors partly written by some entry: ask the device.
    let device: ReturnType<typeof crashDevice> | undefined;
    const sector = new Uint8Array(SECTOR);
    for (const r of obs.runs) {
      if (r.kind !== RUN_DATA) continue;
      for (let k = 0; k < r.length; k++) {
        const h = r.host / SECTOR + k;
        if (host.tag(h, r.start + k) !== UNKNOWN) continue;
        device ??= crashDevice(run.base, run.log, state);
        if ((h + 1) * SECTOR <= device.size) await device.read(sector, h * SECTOR);
        else sector.fill(0);
        host.learn(h, sector, 0);
      }
    }
    return this.#model.judge(
      state.crashPoint,
      obs,
      (offset, s) => host.tag(offset / SECTOR, s),
    );
  }

  /** The observation of a state, reused when the driver would read the same bytes. */
  async #observe(state: CrashState): Promise<StateObservation> {
    const run = this.#run;
    const size = this.#sizeOf(state);
    await this.#prepareDiffs(state);
    const bucket = Math.ceil(size / this.#clusterSize);
    for (const group of this.#memo) {
      const rest = this.#key(state, group);
      const hit = group.exact.get(`${size}|${rest}`) ??
        (group.maxEnd < size ? group.bucket.get(`${bucket}|${rest}`) : undefined);
      if (hit) {
        this.#reused++;
        return hit;
      }
    }
    const started = performance.now();
    const device = crashDevice(run.base, run.log, state);
    const tracker = new ReadTracker(device);
    const obs = await observeState(
      this.#format,
      tracker,
      run.backing,
      "mapping",
      this.#compressed,
    );
    this.#observeSeconds += (performance.now() - started) / 1000;
    const ranges = tracker.merged();
    if (this.#memoSize >= MAX_MEMO) {
      this.#memo = [];
      this.#memoSize = 0;
    }
    let group = this.#memo.find((g) => sameRanges(g.ranges, ranges));
    if (!group) {
      group = {
        ranges,
        exact: new Map(),
        bucket: new Map(),
        before: this.#overlapCounts(ranges),
        maxEnd: ranges.length > 0 ? ranges[ranges.length - 1]! : 0,
      };
      this.#memo.push(group);
      if (this.#memo.length > MAX_GROUPS) this.#memo.shift();
    }
    const rest = this.#key(state, group);
    group.exact.set(`${size}|${rest}`, obs);
    if (group.maxEnd < size && sizeBlind(obs)) group.bucket.set(`${bucket}|${rest}`, obs);
    this.#memoSize++;
    return obs;
  }

  /** The device size of a state, from the log alone. */
  #sizeOf(state: CrashState): number {
    let sizes = this.#sizes;
    if (!sizes) {
      const log = this.#run.log;
      sizes = new Float64Array(log.length + 1);
      let size = this.#run.base.length;
      sizes[0] = size;
      log.forEach((entry, i) => {
        if (entry.kind === "write" && entry.data.length > 0) {
          size = Math.max(size, entry.offset + entry.data.length);
        } else if (entry.kind === "truncate") size = entry.size;
        sizes![i + 1] = size;
      });
      this.#sizes = sizes;
    }
    let size = sizes[state.durable]!;
    const last = state.applied.length - 1;
    state.applied.forEach((index, i) => {
      const entry = this.#run.log[index]!;
      if (entry.kind === "truncate") size = entry.size;
      else if (entry.kind === "write" && entry.data.length > 0) {
        let end = entry.offset + entry.data.length;
        if (i === last && state.torn !== undefined) {
          end = Math.min(end, (Math.floor(entry.offset / SECTOR) + state.torn) * SECTOR);
        }
        if (end > entry.offset) size = Math.max(size, end);
      }
    });
    return size;
  }

  /** For each log index i, how many of the entries [0, i) touch `ranges`. */
  #overlapCounts(ranges: Float64Array): Int32Array {
    const log = this.#run.log;
    const counts = new Int32Array(log.length + 1);
    log.forEach((entry, i) => {
      counts[i + 1] = counts[i]! + (this.#touches(entry, ranges) ? 1 : 0);
    });
    return counts;
  }

  #touches(entry: WriteLogEntry, ranges: Float64Array): boolean {
    if (entry.kind === "write") {
      return overlaps(ranges, entry.offset, entry.offset + entry.data.length);
    }
    return entry.kind === "truncate";
  }

  /**
   * What decides the bytes of a group's ranges in a state: the durable entries touching them
   * (always the first n such entries of the log, so n says which), and, sector by sector, the
   * pending writes that leave them different from the durable contents: the last whole-sector
   * writer when its bytes differ from the durable ones (so a torn write cut past its last change
   * equals the whole write), every writer of a sector some write only partly covers. The device
   * size is added by the caller: exactly, or as a number of clusters where that is enough (see
   * `sizeBlind`).
   */
  #key(state: CrashState, group: MemoGroup): string {
    let key = `${group.before[state.durable]}`;
    const log = this.#run.log;
    const writers = new Map<number, number[]>();
    const last = state.applied.length - 1;
    for (let i = 0; i <= last; i++) {
      const index = state.applied[i]!;
      const entry = log[index]!;
      if (entry.kind === "truncate") {
        key += `,T${index}`;
        continue;
      }
      if (
        entry.kind !== "write" ||
        !overlaps(group.ranges, entry.offset, entry.offset + entry.data.length)
      ) {
        continue;
      }
      let end = entry.offset + entry.data.length;
      if (i === last && state.torn !== undefined) {
        end = Math.min(end, (Math.floor(entry.offset / SECTOR) + state.torn) * SECTOR);
      }
      const diff = this.#diffs.get(index)!;
      const first = Math.floor(entry.offset / SECTOR);
      for (let sector = first; sector * SECTOR < end; sector++) {
        const from = sector * SECTOR;
        if (!overlaps(group.ranges, from, from + SECTOR)) continue;
        const whole = from >= entry.offset && from + SECTOR <= end;
        if (whole) {
          // Marked by the sign: -1 - index for "same bytes as durable".
          writers.set(sector, [diff[sector - first] ? index : -1 - index]);
        } else {
          const list = writers.get(sector) ?? [];
          list.push(index + 0.5);
          writers.set(sector, list);
        }
      }
    }
    const sectors = [...writers.keys()].sort((a, b) => a - b);
    for (const sector of sectors) {
      const list = writers.get(sector)!;
      if (list.length === 1 && list[0]! < 0) continue;
      key += `;${sector}:${list.join("/")}`;
    }
    return key;
  }

  /** For each pending write of a state, which of its sectors differ from the durable contents. */
  async #prepareDiffs(state: CrashState): Promise<void> {
    if (state.durable !== this.#diffDurable) {
      this.#diffDurable = state.durable;
      this.#diffs.clear();
    }
    const log = this.#run.log;
    let durable: ReturnType<typeof crashDevice> | undefined;
    for (const index of state.applied) {
      const entry = log[index]!;
      if (entry.kind !== "write" || this.#diffs.has(index)) continue;
      const first = Math.floor(entry.offset / SECTOR);
      const end = Math.ceil((entry.offset + entry.data.length) / SECTOR);
      const flags = new Uint8Array(end - first);
      durable ??= crashDevice(this.#run.base, log, crashStateFromId(log, String(state.durable)));
      // One read of the durable bytes under the whole entry, then a sector-by-sector compare.
      const readEnd = Math.min(end * SECTOR, durable.size);
      const old = new Uint8Array(Math.max(0, readEnd - first * SECTOR));
      if (old.length > 0) await durable.read(old, first * SECTOR);
      for (let sector = first; sector < end; sector++) {
        const from = sector * SECTOR;
        const at = from - entry.offset;
        if (at < 0 || at + SECTOR > entry.data.length || from + SECTOR > readEnd) {
          flags[sector - first] = 1;
          continue;
        }
        const o = from - first * SECTOR;
        let same = true;
        for (let k = 0; k < SECTOR; k++) {
          if (old[o + k] !== entry.data[at + k]) {
            same = false;
            break;
          }
        }
        flags[sector - first] = same ? 0 : 1;
      }
      this.#diffs.set(index, flags);
    }
  }
}

/**
 * Whether an observation holds for any device size with the same number of clusters, provided
 * every read lies inside the device (no read was cut short by the end of the file). Byte-exact
 * size tests in the driver only decide whether tables lie inside the file and whether entries
 * point past its end; when everything opened and checked without corruption, every such test
 * passed, and passes again for any size that still holds every byte read. What else depends on
 * the size (the clusters the check counts, where a repair allocates) depends on the cluster count.
 */
function sizeBlind(obs: StateObservation): boolean {
  return obs.open.ok && !obs.markedCorrupt &&
    (obs.checkBefore.status === 0 || obs.checkBefore.status === 3) &&
    obs.checkAfter.status === 0 && obs.checkBefore.failure === undefined;
}

function sameRanges(a: Float64Array, b: Float64Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Whether [start, end) meets any of the sorted, merged start/end pairs. */
function overlaps(ranges: Float64Array, start: number, end: number): boolean {
  let lo = 0;
  let hi = ranges.length / 2;
  // First pair whose end is past start.
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (ranges[mid * 2 + 1]! <= start) lo = mid + 1;
    else hi = mid;
  }
  return lo < ranges.length / 2 && ranges[lo * 2]! < end;
}
