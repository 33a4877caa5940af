import assert from "node:assert/strict";
import { Explorer } from "../emulator/explore.ts";
import type { Workload } from "../emulator/workload.ts";
import { recordWorkload } from "../emulator/workload_run.ts";

// The explorer's reproducer: an L1 table of 1 KiB (two sectors) replaced by applying a snapshot.
// A torn write of the table in place would leave half of each state; the new table must be
// written elsewhere and switched to with one header write.
const workload: Workload = {
  version: 1,
  image: { format: "qcow2", size: 268435456, clusterSize: 4096 },
  ops: [
    { op: "snapshot_create", name: "s2" },
    { op: "write", offset: 39571456, length: 8192 },
    { op: "flush" },
    { op: "write", offset: 246365696, length: 1024 },
    { op: "snapshot_apply", name: "s2" },
  ],
};

Deno.test("applying a snapshot never leaves the active disk half old and half the snapshot's", async () => {
  const run = await recordWorkload(workload);
  const result = await new Explorer(run, { subsets: true, torn: true, maxStatesPerPoint: 64 })
    .explore();
  assert.ok(result.states > 20, `only ${result.states} states`);
  const found = result.violations.map((v) =>
    `${v.stateId}: ${v.failures.map((f) => `${f.invariant} ${f.message}`).join("; ")}`
  );
  assert.deepEqual(found, []);
});
