/**
 * Fault scenarios: rules (and an optional workload) read from JSON and validated.
 *
 * @module
 */

import { z } from "zod";
import { DRIVER_EVENTS } from "../core/driver_event.ts";
import { QcowError } from "../core/errors.ts";
import type { FaultRule } from "./fault_rule.ts";

const count = z.number().int().min(1);
const offset = z.number().int().min(0).max(Number.MAX_SAFE_INTEGER);
const failure = {
  io: z.array(z.enum(["read", "write", "flush", "truncate"])).min(1).optional(),
  offset: offset.optional(),
  length: count.optional(),
  errno: z.enum(["EIO", "ENOSPC"]).optional(),
  once: z.boolean().optional(),
  torn: z.number().int().min(0).optional(),
  name: z.string().optional(),
};
const event = z.enum(DRIVER_EVENTS, {
  error: (issue) =>
    `unknown driver event ${JSON.stringify(issue.input)} (blkdebug names, such as l2_update)`,
});
const state = z.number().int().min(0).optional();

const ruleSchema = z.discriminatedUnion("kind", [
  z.strictObject({ kind: z.literal("io-error"), nth: count.optional(), ...failure }),
  z.strictObject({
    kind: z.literal("disk-full"),
    afterBytes: offset,
    errno: failure.errno,
    name: failure.name,
  }),
  z.strictObject({
    kind: z.literal("inject-error"),
    event,
    state,
    nth: count.optional(),
    ...failure,
  }),
  z.strictObject({
    kind: z.literal("set-state"),
    event,
    state,
    newState: z.number().int().min(1),
    name: failure.name,
  }),
  z.strictObject({
    kind: z.literal("latency"),
    ms: z.number().min(0).max(60_000),
    io: failure.io,
    name: failure.name,
  }),
]);

const scenarioSchema = z.strictObject({
  description: z.string().optional(),
  rules: z.array(ruleSchema),
  workload: z.array(z.string().min(1)).optional(),
});

/** A fault scenario: rules for a {@linkcode FaultyDevice}, and optionally a workload. */
export interface Scenario {
  /** What the scenario is about. */
  description?: string;
  /** The fault rules, applied in order. */
  rules: FaultRule[];
  /** qemu-io style commands (`write -P 0xab 0 64k`, `flush`, ...) for `cli.ts emulate`. */
  workload?: string[];
}

function describe(error: z.ZodError, what: string): QcowError {
  const issue = error.issues[0]!;
  const path = issue.path.length === 0 ? "(top level)" : issue.path.map(String).join(".");
  return new QcowError("INVALID_SCENARIO", `Invalid ${what}: ${path}: ${issue.message}`);
}

/**
 * Validates fault rules given in code; {@linkcode FaultyDevice} calls it on its rules.
 *
 * @example
 * ```ts
 * import { parseFaultRules } from "@qcowlab/qcowlab/emulator";
 *
 * const rules = parseFaultRules([{ kind: "inject-error", event: "l2_update", nth: 3 }]);
 * console.log(rules.length); // 1
 * ```
 *
 * @param rules Candidate rules.
 * @returns The rules, checked.
 * @throws {QcowError} `INVALID_SCENARIO`, naming the first bad field.
 */
export function parseFaultRules(rules: unknown): FaultRule[] {
  const result = z.array(ruleSchema).safeParse(rules);
  if (!result.success) throw describe(result.error, "fault rules");
  return result.data as FaultRule[];
}

/**
 * Parses a scenario from JSON text (or an already parsed value).
 *
 * @example A scenario with a workload
 * ```ts
 * import { parseScenario } from "@qcowlab/qcowlab/emulator";
 *
 * const scenario = parseScenario(`{
 *   "rules": [{ "kind": "inject-error", "event": "refblock_alloc", "state": 2, "once": true },
 *             { "kind": "set-state", "event": "l2_update", "newState": 2 }],
 *   "workload": ["write -P 0xab 0 64k", "flush"]
 * }`);
 * console.log(scenario.rules[1]?.kind); // set-state
 * ```
 *
 * @param input JSON text or a parsed value.
 * @returns The validated scenario.
 * @throws {QcowError} `INVALID_SCENARIO` for bad JSON or a bad field, which the message names.
 */
export function parseScenario(input: string | unknown): Scenario {
  let value = input;
  if (typeof input === "string") {
    try {
      value = JSON.parse(input);
    } catch (error) {
      throw new QcowError(
        "INVALID_SCENARIO",
        `Invalid scenario: not JSON (${(error as Error).message})`,
      );
    }
  }
  const result = scenarioSchema.safeParse(value);
  if (!result.success) throw describe(result.error, "scenario");
  return result.data as Scenario;
}

/**
 * Reads and validates a scenario file.
 *
 * @example
 * ```ts
 * import { loadScenario } from "@qcowlab/qcowlab/emulator";
 *
 * const path = await Deno.makeTempFile({ suffix: ".json" });
 * await Deno.writeTextFile(path, '{ "rules": [{ "kind": "disk-full", "afterBytes": 1048576 }] }');
 * console.log((await loadScenario(path)).rules[0]?.kind); // disk-full
 * ```
 *
 * @param path The file.
 * @returns The validated scenario.
 * @throws {QcowError} `NOT_FOUND` when the file is missing, `INVALID_SCENARIO` when it is bad.
 */
export async function loadScenario(path: string): Promise<Scenario> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      throw new QcowError("NOT_FOUND", `Scenario file ${path} does not exist`);
    }
    throw new QcowError("IO", `Cannot read scenario file ${path}: ${(error as Error).message}`);
  }
  try {
    return parseScenario(text);
  } catch (error) {
    if (error instanceof QcowError) {
      throw new QcowError(error.code, `${path}: ${error.message}`, { cause: error });
    }
    throw error;
  }
}
