/**
 * Replaying a saved reproducer: rerun its workload, rebuild its crash state, judge it again, and
 * optionally write the crashed image to a file for qemu-img.
 *
 * @module
 */

import { z } from "zod";
import { dirname, join } from "node:path";
import { QcowError } from "../core/errors.ts";
import { crashDevice, crashStateFromId } from "./crash_states.ts";
import { Explorer } from "./explore.ts";
import { BACKING_NAME } from "./explore_format.ts";
import type { StateVerdict } from "./invariants.ts";
import type { Reproducer } from "./shrink.ts";
import { parseWorkload } from "./workload_file.ts";
import { type RecordOptions, recordWorkload } from "./workload_run.ts";

const schema = z.object({
  version: z.literal(1),
  kind: z.literal("qcowlab-crash-reproducer"),
  workload: z.unknown(),
  crashStates: z.object({
    seed: z.number().int().optional(),
    maxStatesPerPoint: z.number().int().positive().optional(),
    subsets: z.boolean().optional(),
    torn: z.boolean().optional(),
  }).strict(),
  state: z.string().min(1),
  failures: z.array(
    z.object({ invariant: z.enum(["a", "b", "c", "d", "e", "f", "g"]), message: z.string() }),
  ),
}).strict();

/**
 * Reads a reproducer from JSON text.
 *
 * @param text The file's contents.
 * @returns The reproducer.
 * @throws {QcowError} `INVALID_ARGUMENT` naming the first problem.
 */
export function parseReproducer(text: string): Reproducer {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new QcowError(
      "INVALID_ARGUMENT",
      `Invalid reproducer: not JSON (${error instanceof Error ? error.message : String(error)})`,
    );
  }
  const parsed = schema.safeParse(value);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const where = issue.path.length > 0 ? issue.path.join(".") : "(top level)";
    throw new QcowError("INVALID_ARGUMENT", `Invalid reproducer: ${where}: ${issue.message}`);
  }
  return { ...parsed.data, workload: parseWorkload(parsed.data.workload) } as Reproducer;
}

/** What a replay found. */
export interface ReplayResult {
  /** The state's verdict now (read through the driver, nothing reused). */
  verdict: StateVerdict;
  /** Files written by `exportPath`: the image, and its backing file when it has one. */
  exported: string[];
}

/**
 * Reruns a reproducer's workload, rebuilds its crash state and judges it with the full verifier.
 *
 * @example
 * ```ts
 * import { generateWorkload, replayReproducer } from "@qcowlab/qcowlab/emulator";
 *
 * const workload = generateWorkload({ seed: 1, ops: 4, image: { size: 1 << 20 } });
 * const { verdict } = await replayReproducer({
 *   version: 1,
 *   kind: "qcowlab-crash-reproducer",
 *   workload,
 *   crashStates: {},
 *   state: "3",
 *   failures: [],
 * });
 * console.log(verdict.failures.length); // 0
 * ```
 *
 * @param reproducer The reproducer.
 * @param options `exportPath`: also write the crashed image there (and its backing file as
 *   `backing.raw` beside it); `record`: how the workload was recorded when it was found.
 * @returns The verdict and the files written.
 */
export async function replayReproducer(
  reproducer: Reproducer,
  options: { exportPath?: string; record?: RecordOptions } = {},
): Promise<ReplayResult> {
  const run = await recordWorkload(reproducer.workload, options.record);
  const state = crashStateFromId(run.log, reproducer.state);
  const verdict = await new Explorer(run, { verifier: "full" }).verify(state);
  const exported: string[] = [];
  if (options.exportPath !== undefined) {
    const device = crashDevice(run.base, run.log, state);
    const bytes = new Uint8Array(device.size);
    await device.read(bytes, 0);
    await Deno.writeFile(options.exportPath, bytes);
    exported.push(options.exportPath);
    if (run.backing) {
      const backing = join(dirname(options.exportPath), BACKING_NAME);
      await Deno.writeFile(backing, run.backing);
      exported.push(backing);
    }
  }
  return { verdict, exported };
}
