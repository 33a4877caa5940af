/**
 * Crash exploration of workloads that create, apply and delete internal snapshots: every crash
 * state inside a snapshot operation repairs to the state before or after it (g), without
 * corruption when refcounts are not lazy (b; the OFLAG_COPIED exception is counted, not hidden).
 */

import assert from "node:assert/strict";
import { assertVerifiersAgree } from "./_explore.ts";
import { MemoryDevice } from "../core/memory_device.ts";
import { checkExitStatus, checkQcow2 } from "../drivers/qcow2/check.ts";
import { crashDevice } from "../emulator/crash_states.ts";
import { Explorer } from "../emulator/explore.ts";
import { runCampaign } from "../emulator/explore_campaign.ts";
import { generateWorkload, type WorkloadImage } from "../emulator/workload.ts";
import { recordWorkload } from "../emulator/workload_run.ts";
import { HAVE_QEMU, makeTempDir, runTool } from "./_qemu.ts";

const MiB = 1024 * 1024;

const configs: [string, WorkloadImage, number][] = [
  ["v3, 4 KiB clusters", { format: "qcow2", size: 2 * MiB, clusterSize: 4096 }, 31],
  ["v3, lazy refcounts", {
    format: "qcow2",
    size: 2 * MiB,
    clusterSize: 4096,
    lazyRefcounts: true,
  }, 32],
  ["v2, backing file", {
    format: "qcow2",
    size: 1 * MiB,
    compat: "0.10",
    clusterSize: 4096,
    backingSize: 256 * 1024,
  }, 33],
  ["v3, 64 KiB clusters, extended L2, 64-bit refcounts", {
    format: "qcow2",
    size: 4 * MiB,
    extendedL2: true,
    refcountBits: 64,
  }, 34],
];

/** The first seed from `seed` on whose workload creates, applies and deletes snapshots. */
function seedWithAllKinds(seed: number, image: WorkloadImage, ops: number): number {
  for (let s = seed; s < seed + 50; s++) {
    const kinds = new Set<string>(
      generateWorkload({ seed: s, ops, image, snapshots: true }).ops.map((op) => op.op),
    );
    if (["snapshot_create", "snapshot_apply", "snapshot_delete"].every((k) => kinds.has(k))) {
      return s;
    }
  }
  throw new Error("no seed gives every snapshot request: the generator makes too few");
}

for (const [label, image, seed] of configs) {
  Deno.test(`crash exploration with snapshot requests: (${label})`, async () => {
    const first = seedWithAllKinds(seed, image, 60);
    const result = await runCampaign({
      image,
      ops: 60,
      seed: first,
      workloads: 2,
      states: 900,
      torn: true,
      subsets: true,
      snapshots: true,
      shrink: false,
    });
    const lazy = image.lazyRefcounts === true;
    const failed = new Set(result.violations.flatMap((v) => v.failures.map((f) => f.invariant)));
    // Every state is judged against the snapshot table (g), none may break it.
    assert.equal(result.invariants.g.checked, result.states);
    assert.equal(result.invariants.g.passed, result.states, JSON.stringify(result.violations));
    if (!lazy) {
      assert.equal(result.violatingStates, 0, JSON.stringify(result.violations.slice(0, 3)));
    } else {
      // Lazy refcounts have the known data-ordering finding (d)/(e) of emulator/README.md only.
      for (const name of failed) assert.ok(name === "d" || name === "e", name);
    }
    console.log(
      `${label}: ${result.states} states, ${result.violatingStates} violating, ` +
        `${result.allowedCopied} passed (b) by the OFLAG_COPIED exception`,
    );
  });
}

Deno.test("crash exploration with snapshots: the fast and full verifiers agree", async () => {
  const image: WorkloadImage = { format: "qcow2", size: 1 * MiB, clusterSize: 4096 };
  const seed = seedWithAllKinds(40, image, 30);
  const run = await recordWorkload(generateWorkload({ seed, ops: 30, image, snapshots: true }));
  assert.ok(run.ops.some((r) => r.op.op === "snapshot_apply"), "no apply in the workload");
  const options = { subsets: true, torn: true, maxStatesPerPoint: 4, states: 150 };
  const states = await assertVerifiersAgree(run, options);
  assert.ok(states >= 100, `${states} states`);
});

Deno.test("crash exploration with snapshots: every state inside an apply is judged", async () => {
  // A workload built so that applying the snapshot changes data: the crash states inside the
  // apply must show the disk before or after it, never a mix, and never lose the snapshot.
  const image: WorkloadImage = { format: "qcow2", size: 1 * MiB, clusterSize: 4096 };
  const workload = {
    version: 1 as const,
    image,
    ops: [
      { op: "write" as const, offset: 0, length: 65536 },
      { op: "snapshot_create" as const, name: "a" },
      { op: "write" as const, offset: 32768, length: 131072 },
      { op: "write_zeroes" as const, offset: 512 * 1024, length: 8192, unmap: true },
      { op: "snapshot_apply" as const, name: "a" },
      { op: "write" as const, offset: 4096, length: 4096 },
      { op: "snapshot_delete" as const, name: "a" },
    ],
  };
  const run = await recordWorkload(workload);
  const apply = run.ops[4]!;
  assert.ok(apply.end - apply.start >= 3, "the apply wrote too little to crash inside it");
  const explorer = new Explorer(run, { subsets: true, torn: true, maxStatesPerPoint: 64 });
  const inside = [...explorer.states()].filter((s) =>
    s.crashPoint > apply.start && s.crashPoint <= apply.end
  );
  assert.ok(inside.length > 3, `${inside.length} states inside the apply`);
  for (const state of inside) {
    const verdict = await explorer.verify(state);
    assert.equal(verdict.results.g, true, `${state.id}: ${JSON.stringify(verdict.failures)}`);
    assert.deepEqual(verdict.failures, [], state.id);
  }
  const result = await explorer.explore();
  assert.equal(result.violatingStates, 0, JSON.stringify(result.violations));
});

Deno.test({
  name: "crash states inside snapshot requests: qemu-img check agrees, OFLAG_COPIED included",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    const image: WorkloadImage = { format: "qcow2", size: 1 * MiB, clusterSize: 4096 };
    const seed = seedWithAllKinds(50, image, 40);
    const run = await recordWorkload(generateWorkload({ seed, ops: 40, image, snapshots: true }));
    const windows = run.ops.filter((r) => r.op.op.startsWith("snapshot_"));
    const explorer = new Explorer(run, { subsets: true, torn: true, maxStatesPerPoint: 4 });
    const inside = [...explorer.states()].filter((s) =>
      windows.some((w) => s.crashPoint > w.start && s.crashPoint < w.end)
    );
    const sample = inside.filter((_, i) => i % Math.max(1, Math.floor(inside.length / 60)) === 0);
    assert.ok(sample.length >= 40, `${sample.length} states`);
    let copied = 0;
    for (const [i, state] of sample.entries()) {
      const device = crashDevice(run.base, run.log, state);
      const bytes = new Uint8Array(device.size);
      await device.read(bytes, 0);
      const path = `${dir.path}/s${i}.qcow2`;
      await Deno.writeFile(path, bytes);
      const ours = await checkQcow2(MemoryDevice.from(bytes), { filename: path });
      const out = await runTool("qemu-img", ["check", "--output=json", "-f", "qcow2", path]);
      const theirs = JSON.parse(out.stdout) as Record<string, number>;
      assert.deepEqual(
        { code: out.code, leaks: theirs.leaks ?? 0, corruptions: theirs.corruptions ?? 0 },
        { code: checkExitStatus(ours), leaks: ours.leaks ?? 0, corruptions: ours.corruptions ?? 0 },
        state.id,
      );
      if ((ours.corruptions ?? 0) > 0) {
        // The documented case: nothing but OFLAG_COPIED mismatches, which qemu-img counts too.
        assert.ok(ours.messages.every((m) => !/^ERROR/.test(m) || /OFLAG_COPIED/.test(m)));
        copied++;
      }
      const repaired = MemoryDevice.from(bytes);
      assert.equal(checkExitStatus(await checkQcow2(repaired, { repair: "all" })), 0, state.id);
      await Deno.writeFile(path, repaired.toBytes());
      const after = await runTool("qemu-img", ["check", "-f", "qcow2", path]);
      assert.equal(after.code, 0, `${state.id}: ${after.stdout}`);
    }
    console.log(`${sample.length} states inside snapshot requests, ${copied} with OFLAG_COPIED`);
  },
});
