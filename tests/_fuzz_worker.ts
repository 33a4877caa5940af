/**
 * Runs a share of the fuzz cases off the main thread, so the test can stop a case that hangs.
 * Protocol: receives `{ seeds, runSeed, first, end, stride }`; posts `{ type: "start", index }`
 * before each case, `{ type: "failure", index, message }` for each failure, then
 * `{ type: "done", cases, codes, slowest }`.
 *
 * @module
 */

import { FuzzFailure, makeCase, runCase, type Seed } from "./_fuzz.ts";

interface Job {
  seeds: Seed[];
  runSeed: number;
  first: number;
  end: number;
  stride: number;
}

const port = self as unknown as {
  postMessage(message: unknown): void;
  onmessage: ((event: MessageEvent<Job>) => void) | null;
};

port.onmessage = async (event: MessageEvent<Job>) => {
  const { seeds, runSeed, first, end, stride } = event.data;
  const codes: Record<string, number> = {};
  let cases = 0;
  let slowest = { index: -1, ms: 0 };
  for (let index = first; index < end; index += stride) {
    port.postMessage({ type: "start", index });
    const started = performance.now();
    try {
      const fuzzCase = makeCase(seeds, runSeed, index);
      const outcome = await runCase(seeds.find((s) => s.label === fuzzCase.seed)!, fuzzCase);
      const key = outcome.codes[0] ?? "ok";
      codes[key] = (codes[key] ?? 0) + 1;
    } catch (error) {
      const message = error instanceof FuzzFailure
        ? error.message
        : `case ${index}: harness error ${(error as Error)?.stack ?? error}`;
      port.postMessage({ type: "failure", index, message });
    }
    const ms = performance.now() - started;
    if (ms > slowest.ms) slowest = { index, ms };
    cases++;
  }
  port.postMessage({ type: "done", cases, codes, slowest });
};
