import assert from "node:assert/strict";
import { droppingFlushes } from "./_broken_disks.ts";
import { Explorer } from "../emulator/explore.ts";
import { generateWorkload, type Workload } from "../emulator/workload.ts";
import { recordWorkload } from "../emulator/workload_run.ts";
import { shrinkWorkload } from "../emulator/shrink.ts";
import { parseReproducer, replayReproducer } from "../emulator/replay.ts";

const workload: Workload = generateWorkload({
  seed: 11,
  ops: 12,
  image: { size: 4 << 20, clusterSize: 4096 },
});

Deno.test("the explorer passes the real driver on the same workload", async () => {
  const run = await recordWorkload(workload);
  const result = await new Explorer(run, { subsets: true, maxStatesPerPoint: 16, states: 300 })
    .explore();
  assert.ok(result.states > 50);
  assert.equal(result.violatingStates, 0, JSON.stringify(result.violations.slice(0, 2)));
});

Deno.test("the explorer catches a driver whose metadata writes are not ordered by flushes", async () => {
  const run = await recordWorkload(workload, { wrap: droppingFlushes });
  const result = await new Explorer(run, { subsets: true, maxStatesPerPoint: 16, states: 300 })
    .explore();
  assert.ok(result.violatingStates > 0, "no violation found");
  const failed = new Set(result.violations.flatMap((v) => v.failures.map((f) => f.invariant)));
  assert.ok(failed.has("b"), `expected corruption before repair, got ${[...failed]}`);
});

Deno.test("a violation shrinks to a reproducer that replays and exports", async () => {
  // Found with the broken disk: the reproducer's workload must still break it.
  const options = { subsets: true, maxStatesPerPoint: 16, states: 300, invariants: ["b" as const] };
  const found = await shrinkWithBrokenDisk(workload, options);
  assert.ok(found, "no reproducer");
  assert.ok(
    found.workload.ops.length < workload.ops.length / 2,
    `${found.workload.ops.length} ops`,
  );
  assert.ok(found.failures.some((f) => f.invariant === "b"));
  const text = JSON.stringify(found);
  const dir = await Deno.makeTempDir();
  try {
    const replay = await replayReproducer(parseReproducer(text), {
      exportPath: `${dir}/crash.qcow2`,
      record: { wrap: droppingFlushes },
    });
    assert.ok(replay.verdict.results.b === false, JSON.stringify(replay.verdict));
    assert.deepEqual(replay.exported, [`${dir}/crash.qcow2`]);
    assert.ok((await Deno.stat(`${dir}/crash.qcow2`)).size > 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

async function shrinkWithBrokenDisk(
  w: Workload,
  options: Parameters<typeof shrinkWorkload>[1],
): Promise<Awaited<ReturnType<typeof shrinkWorkload>>> {
  return await shrinkWorkload(w, { ...options, record: { wrap: droppingFlushes } });
}
