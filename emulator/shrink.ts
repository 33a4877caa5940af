/**
 * Shrinking a workload that breaks an invariant to a small one that still does.
 *
 * @module
 */

import type { CrashStateOptions } from "./crash_states.ts";
import { type ExploreOptions, Explorer, type Violation } from "./explore.ts";
import type { InvariantName } from "./invariants.ts";
import type { Workload } from "./workload.ts";
import { type RecordOptions, recordWorkload } from "./workload_run.ts";

/** A violation with everything needed to rerun it: `cli.ts crash --replay FILE` reads it. */
export interface Reproducer {
  /** Always 1. */
  version: 1;
  /** Always "qcowlab-crash-reproducer". */
  kind: "qcowlab-crash-reproducer";
  /** The (shrunk) workload. */
  workload: Workload;
  /** How the crash states were listed (the id depends on the log only, but is kept for context). */
  crashStates: CrashStateOptions;
  /** The violating state's id. */
  state: string;
  /** What failed when it was found. */
  failures: Violation["failures"];
}

/** Options for {@linkcode shrinkWorkload}. */
export interface ShrinkOptions extends ExploreOptions {
  /** Only violations of these invariants count; default any. */
  invariants?: InvariantName[];
  /** At most this many reruns of the workload; default 80. */
  maxRuns?: number;
  /** How to record each workload (a device wrapper, as for {@linkcode recordWorkload}). */
  record?: RecordOptions;
}

/**
 * The first violating state of a workload, if any (a workload whose requests fail counts as none).
 *
 * @param workload The workload.
 * @param options Crash-state and exploration options.
 * @returns The violation, or undefined.
 */
export async function findViolation(
  workload: Workload,
  options: ShrinkOptions = {},
): Promise<Violation | undefined> {
  let run;
  try {
    run = await recordWorkload(workload, options.record);
  } catch {
    return undefined;
  }
  const wanted = options.invariants;
  const { onProgress: _, record: __, invariants: ___, maxRuns: ____, ...rest } = options;
  const explorer = new Explorer(run, { ...rest, stopAtFirst: wanted ?? true, maxViolations: 1e9 });
  const result = await explorer.explore();
  return result.violations.find((v) =>
    wanted === undefined || v.failures.some((f) => wanted.includes(f.invariant))
  );
}

/**
 * Removes requests from a workload (halves, then quarters, down to single requests) while a
 * violation of the same invariants persists, and returns a reproducer for the smallest workload
 * found, or undefined when the workload has no violation.
 *
 * @example
 * ```ts
 * import { generateWorkload, shrinkWorkload } from "@qcowlab/qcowlab/emulator";
 *
 * const workload = generateWorkload({ seed: 4, ops: 6, image: { size: 1 << 20 } });
 * console.log(await shrinkWorkload(workload)); // undefined: the driver keeps its promises
 * ```
 *
 * @param workload The violating workload.
 * @param options Exploration options (use the ones that found the violation) and limits.
 * @returns The reproducer, or undefined.
 */
export async function shrinkWorkload(
  workload: Workload,
  options: ShrinkOptions = {},
): Promise<Reproducer | undefined> {
  let best = await findViolation(workload, options);
  if (!best) return undefined;
  const invariants = options.invariants ?? [...new Set(best.failures.map((f) => f.invariant))];
  const opts = { ...options, invariants };
  let ops = workload.ops;
  let runs = 1;
  const max = options.maxRuns ?? 80;
  let chunk = Math.max(1, Math.ceil(ops.length / 2));
  while (runs < max) {
    let removed = false;
    for (let i = 0; i < ops.length && runs < max;) {
      const candidate = [...ops.slice(0, i), ...ops.slice(i + chunk)];
      runs++;
      const found = await findViolation({ ...workload, ops: candidate }, opts);
      if (found) {
        ops = candidate;
        best = found;
        removed = true;
      } else i += chunk;
    }
    if (chunk === 1 && !removed) break;
    chunk = Math.max(1, Math.floor(chunk / 2));
  }
  const crashStates: CrashStateOptions = {};
  for (const key of ["seed", "maxStatesPerPoint", "subsets", "torn"] as const) {
    if (options[key] !== undefined) (crashStates as Record<string, unknown>)[key] = options[key];
  }
  return {
    version: 1,
    kind: "qcowlab-crash-reproducer",
    workload: { ...workload, ops },
    crashStates,
    state: best.stateId,
    failures: best.failures,
  };
}
