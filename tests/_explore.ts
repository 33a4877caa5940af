/**
 * Shared checks on the crash explorer for tests.
 *
 * @module
 */

import assert from "node:assert/strict";
import { type ExploreOptions, Explorer } from "../emulator/explore.ts";
import type { RecordedRun } from "../emulator/workload_run.ts";

/**
 * Verifies every state of `run` with the fast verifier and with the full one, and asserts that
 * they judge each state alike.
 *
 * @returns The number of states compared.
 */
export async function assertVerifiersAgree(
  run: RecordedRun,
  options: ExploreOptions,
): Promise<number> {
  const fast = new Explorer(run, options);
  const full = new Explorer(run, { ...options, verifier: "full" });
  let states = 0;
  for (const state of fast.states()) {
    const a = await fast.verify(state);
    const b = await full.verify(state);
    assert.deepEqual(a.results, b.results, `state ${state.id}`);
    assert.equal(a.allowed, b.allowed, `state ${state.id}`);
    states++;
  }
  return states;
}
