/**
 * A crash-exploration campaign: several generated workloads, their crash states shared out under
 * one budget, the counts added up, and the first violation shrunk to a reproducer.
 *
 * @module
 */

import { QcowError } from "../core/errors.ts";
import {
  emptyCounts,
  type ExploreOptions,
  Explorer,
  type InvariantCount,
  type Violation,
} from "./explore.ts";
import { type InvariantName, INVARIANTS } from "./invariants.ts";
import { type Reproducer, shrinkWorkload } from "./shrink.ts";
import { generateWorkload, type Workload, type WorkloadImage } from "./workload.ts";
import { type RecordOptions, recordWorkload } from "./workload_run.ts";

/** Options for {@linkcode runCampaign}. */
export interface CampaignOptions {
  /** The image of every workload. */
  image: WorkloadImage;
  /** Requests per workload; default 50. */
  ops?: number;
  /** Seed of the first workload (the next ones count up); default 1. */
  seed?: number;
  /** Number of workloads; default 1. Ignored when `workload` is given. */
  workloads?: number;
  /** A given workload instead of generated ones. */
  workload?: Workload;
  /** Crash states to verify in all (over all shards), spread evenly; default 2000. */
  states?: number;
  /** Torn-write variants; default false. */
  torn?: boolean;
  /** Subsets of pending writes; default true. */
  subsets?: boolean;
  /** States per crash point; default 16. */
  maxStatesPerPoint?: number;
  /** This process's share: `{ index, count }`. */
  shard?: { index: number; count: number };
  /** Shrink the first violation to a reproducer; default true. */
  shrink?: boolean;
  /** How workloads are recorded (fault injection). */
  record?: RecordOptions;
  /** Generated workloads also create, apply and delete snapshots (qcow2); default false. */
  snapshots?: boolean;
  /** Progress: states done of the total. */
  onProgress?: (done: number, total: number) => void;
}

/** What a campaign found. */
export interface CampaignResult {
  /** Workloads run. */
  workloads: number;
  /** Requests that failed while recording (injected faults), over all workloads. */
  failedRequests: number;
  /** Crash states verified. */
  states: number;
  /** Observations reused between states. */
  reused: number;
  /** States that passed (b) only by the documented OFLAG_COPIED exception (see `ExploreResult`). */
  allowedCopied: number;
  /** Per invariant. */
  invariants: Record<InvariantName, InvariantCount>;
  /** States with a violation. */
  violatingStates: number;
  /** The first violations, with their workload's seed. */
  violations: (Violation & { seed: number })[];
  /** A shrunk reproducer of the first violation, when shrinking was on and one was found. */
  reproducer?: Reproducer;
  /** Seconds spent verifying (recording and shrinking excluded). */
  seconds: number;
  /** States verified per second. */
  statesPerSecond: number;
}

/**
 * Runs a crash-exploration campaign.
 *
 * @example
 * ```ts
 * import { runCampaign } from "@qcowlab/qcowlab/emulator";
 *
 * const result = await runCampaign({ image: { format: "qcow2", size: 1 << 20 }, ops: 5, states: 20 });
 * console.log(result.states, result.violatingStates); // 20 0
 * ```
 *
 * @param options The image, the workloads, the budget.
 * @returns The counts, violations and speed.
 */
export async function runCampaign(options: CampaignOptions): Promise<CampaignResult> {
  const seed = options.seed ?? 1;
  const count = options.workload ? 1 : options.workloads ?? 1;
  const budget = options.states ?? 2000;
  if (!Number.isInteger(count) || count < 1) {
    throw new QcowError("INVALID_ARGUMENT", `workloads must be a positive integer, got ${count}`);
  }
  if (!Number.isInteger(budget) || budget < 1) {
    throw new QcowError("INVALID_ARGUMENT", `states must be a positive integer, got ${budget}`);
  }
  const explore: ExploreOptions = {
    torn: options.torn ?? false,
    subsets: options.subsets ?? true,
    maxStatesPerPoint: options.maxStatesPerPoint ?? 16,
    seed,
  };
  const invariants = emptyCounts();
  const violations: CampaignResult["violations"] = [];
  let states = 0;
  let reused = 0;
  let allowedCopied = 0;
  let violatingStates = 0;
  let seconds = 0;
  let firstBad: Workload | undefined;
  let failedRequests = 0;
  // Workloads are recorded one at a time, so only one log is held at once. The progress total is
  // exact for the workloads done and the current one, and each later one's share of the budget.
  let doneBefore = 0;
  for (let w = 0; w < count; w++) {
    const workloadSeed = seed + w;
    const workload = options.workload ??
      generateWorkload({
        seed: workloadSeed,
        ops: options.ops ?? 50,
        image: options.image,
        snapshots: options.snapshots ?? false,
      });
    const run = await recordWorkload(workload, options.record);
    failedRequests += run.ops.filter((op) => op.failed !== undefined).length;
    const shareOf = (k: number): number =>
      Math.floor((k + 1) * budget / count) - Math.floor(k * budget / count);
    const chosen: ExploreOptions = {
      ...explore,
      states: shareOf(w),
      ...(options.shard ? { shard: options.shard } : {}),
    };
    const mine = options.onProgress ? new Explorer(run, chosen).count() : 0;
    let later = 0;
    for (let k = w + 1; k < count; k++) later += shareOf(k);
    if (options.shard) later = Math.ceil(later / options.shard.count);
    const total = doneBefore + mine + later;
    const start = performance.now();
    const base = states;
    const explorer = new Explorer(run, {
      ...chosen,
      onProgress: (done) => options.onProgress?.(base + done, total),
    });
    const result = await explorer.explore();
    doneBefore += result.states;
    seconds += (performance.now() - start) / 1000;
    states += result.states;
    reused += result.reused;
    allowedCopied += result.allowedCopied;
    violatingStates += result.violatingStates;
    for (const name of INVARIANTS) {
      invariants[name].checked += result.invariants[name].checked;
      invariants[name].passed += result.invariants[name].passed;
    }
    for (const v of result.violations) {
      if (violations.length < 20) violations.push({ ...v, seed: workloadSeed });
    }
    if (result.violatingStates > 0) firstBad ??= workload;
  }
  const out: CampaignResult = {
    workloads: count,
    failedRequests,
    states,
    reused,
    allowedCopied,
    invariants,
    violatingStates,
    violations,
    seconds,
    statesPerSecond: seconds > 0 ? states / seconds : 0,
  };
  if (firstBad && (options.shrink ?? true)) {
    const invariantsHit = [...new Set(violations[0]!.failures.map((f) => f.invariant))];
    const reproducer = await shrinkWorkload(firstBad, {
      ...explore,
      states: budget,
      invariants: invariantsHit,
      ...(options.record ? { record: options.record } : {}),
    });
    if (reproducer) out.reproducer = reproducer;
  }
  return out;
}
