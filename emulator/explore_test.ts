import assert from "node:assert/strict";
import { losingWrite } from "../tests/_broken_disks.ts";
import { assertVerifiersAgree } from "../tests/_explore.ts";
import { Explorer } from "./explore.ts";
import { generateWorkload, type WorkloadImage } from "./workload.ts";
import { recordWorkload } from "./workload_run.ts";

const configs: [string, Partial<WorkloadImage>][] = [
  ["v3", { clusterSize: 4096 }],
  ["v3 lazy refcounts", { clusterSize: 4096, lazyRefcounts: true }],
  ["v2 with a backing file", { compat: "0.10", clusterSize: 4096, backingSize: 512 * 1024 }],
  ["v3 extended L2, refcount width 2", { clusterSize: 16384, extendedL2: true, refcountBits: 2 }],
];

for (const [name, image] of configs) {
  Deno.test(`Explorer: fast and full verifiers agree on every state (${name})`, async () => {
    const workload = generateWorkload({ seed: 5, ops: 10, image: { size: 1 << 20, ...image } });
    const run = await recordWorkload(workload);
    const options = { subsets: true, torn: true, maxStatesPerPoint: 6, states: 120 };
    const states = await assertVerifiersAgree(run, options);
    assert.ok(states >= 60, `${states} states`);
  });
}

Deno.test("Explorer: a disk that loses an acknowledged write breaks invariant (d)", async () => {
  const workload = generateWorkload({
    seed: 3,
    ops: 12,
    image: { size: 1 << 20, clusterSize: 4096 },
  });
  // The 4th write never reaches the disk.
  const losing = losingWrite(4);
  const run = await recordWorkload(workload, { wrap: losing });
  const result = await new Explorer(run).explore();
  assert.ok(result.invariants.d.passed < result.invariants.d.checked, JSON.stringify(result));
});

Deno.test("Explorer: shards split the states without overlap", async () => {
  const run = await recordWorkload(generateWorkload({ seed: 9, ops: 6, image: { size: 1 << 20 } }));
  const all = [...new Explorer(run, { torn: true }).states()].map((s) => s.id);
  const parts = [0, 1, 2].map((index) =>
    [...new Explorer(run, { torn: true, shard: { index, count: 3 } }).states()].map((s) => s.id)
  );
  assert.deepEqual(parts.flat(), all);
  assert.throws(() => new Explorer(run, { shard: { index: 3, count: 3 } }), /Bad shard/);
});

Deno.test("Explorer: a state budget spreads over the whole log", async () => {
  const run = await recordWorkload(
    generateWorkload({ seed: 9, ops: 20, image: { size: 1 << 20 } }),
  );
  const all = [...new Explorer(run).states()];
  const some = [...new Explorer(run, { states: 10 }).states()];
  assert.equal(some.length, 10);
  assert.equal(some[some.length - 1]!.id, all[all.length - 1]!.id);
});
