import assert from "node:assert/strict";
import { Explorer } from "../emulator/explore.ts";
import type { Workload } from "../emulator/workload.ts";
import { recordWorkload } from "../emulator/workload_run.ts";

/**
 * Crash states where an L2 table reached the disk before the data it points at: the driver must
 * make newly written data durable before any L2 table that maps it is written. Both workloads
 * were found by the explorer and shrunk.
 */
async function violations(workload: Workload): Promise<string> {
  const run = await recordWorkload(workload);
  const result = await new Explorer(run, { subsets: true, torn: true, maxStatesPerPoint: 64 })
    .explore();
  assert.ok(result.states > 10, `only ${result.states} states`);
  return result.violations
    .map((v) => `${v.stateId}: ${v.failures.map((f) => `${f.invariant} ${f.message}`).join("; ")}`)
    .join("\n");
}

Deno.test("a write into a zeroed cluster kept allocated is durable before the L2 entry that clears the flag", async () => {
  const found = await violations({
    version: 1,
    image: { format: "qcow2", size: 64 << 20, clusterSize: 65536 },
    ops: [
      { op: "write", offset: 6842880, length: 193024 },
      { op: "write_zeroes", offset: 6909952, length: 131072, unmap: false },
      { op: "flush" },
      { op: "write", offset: 6972928, length: 43520 },
    ],
  });
  assert.equal(found, "");
});

Deno.test("with lazy refcounts, data is durable before the L2 table that points at it", async () => {
  const found = await violations({
    version: 1,
    image: { format: "qcow2", size: 16 << 20, clusterSize: 65536, lazyRefcounts: true },
    ops: [
      { op: "write", offset: 0, length: 65536 },
      { op: "flush" },
      { op: "write", offset: 1 << 20, length: 4096 },
      { op: "write", offset: 4 << 20, length: 65536 },
      { op: "flush" },
    ],
  });
  assert.equal(found, "");
});
