/**
 * Crash exploration of qcow (version 1) images: the explorer finds no violation of qcow's
 * guarantees (no refcounts, so a crash may leak appended space, never serve stale metadata for
 * flushed data), can find one when the disk misbehaves, and qemu-img reads a sample of crash
 * states exactly as qcowlab does.
 */

import assert from "node:assert/strict";
import { losingWrite } from "./_broken_disks.ts";
import { assertVerifiersAgree } from "./_explore.ts";
import { MemoryDevice } from "../core/memory_device.ts";
import { QcowImage } from "../drivers/qcow/qcow_image.ts";
import { crashDevice } from "../emulator/crash_states.ts";
import { Explorer } from "../emulator/explore.ts";
import { runCampaign } from "../emulator/explore_campaign.ts";
import { BACKING_NAME, exploreFormat } from "../emulator/explore_format.ts";
import { observeState } from "../emulator/explore_observe.ts";
import { generateWorkload, type WorkloadImage } from "../emulator/workload.ts";
import { openBacking, recordWorkload } from "../emulator/workload_run.ts";
import { HAVE_QEMU, makeTempDir, qemuImg, runTool } from "./_qemu.ts";

const configs: [string, WorkloadImage][] = [
  ["4 KiB clusters (qemu-img's default)", { format: "qcow", size: 2 << 20 }],
  ["512-byte clusters, backing file", { format: "qcow", size: 1 << 20, backingSize: 512 * 1024 }],
  ["64 KiB clusters", { format: "qcow", size: 4 << 20, clusterSize: 65536 }],
];

for (const [label, image] of configs) {
  Deno.test(`qcow crash exploration: no violation (${label})`, async () => {
    const result = await runCampaign({
      image,
      ops: 40,
      seed: 11,
      workloads: 2,
      states: 700,
      torn: true,
      subsets: true,
    });
    assert.equal(result.violatingStates, 0, JSON.stringify(result.violations.slice(0, 3)));
    assert.ok(result.states >= 300, `${result.states} states`);
    for (const name of ["a", "b", "c", "d", "f"] as const) {
      assert.ok(result.invariants[name].checked === result.states, name);
    }
    // Unflushed data was actually at stake in many states.
    assert.ok(result.invariants.e.checked > result.states / 4, JSON.stringify(result.invariants));
    assert.equal(result.invariants.g.checked, 0);
  });
}

Deno.test("qcow crash exploration: crashes leak appended space, and only that", async () => {
  const run = await recordWorkload(
    generateWorkload({ seed: 4, ops: 30, image: { format: "qcow", size: 2 << 20 } }),
  );
  const explorer = new Explorer(run, { subsets: true, torn: true, states: 300 });
  const format = exploreFormat("qcow");
  let leaky = 0;
  for (const state of explorer.states()) {
    const obs = await observeState(
      format,
      crashDevice(run.base, run.log, state),
      undefined,
      "mapping",
    );
    assert.equal(obs.checkBefore.corruptions, 0, state.id);
    assert.ok(obs.open.ok, state.id);
    if (obs.checkBefore.leaks > 0) leaky++;
  }
  assert.ok(leaky > 0, "no state leaked space: the sample exercises nothing");
});

Deno.test("qcow crash exploration: the fast and full verifiers agree", async () => {
  const run = await recordWorkload(
    generateWorkload({
      seed: 8,
      ops: 14,
      image: { format: "qcow", size: 1 << 20, backingSize: 256 * 1024 },
    }),
  );
  const options = { subsets: true, torn: true, maxStatesPerPoint: 6, states: 120 };
  const states = await assertVerifiersAgree(run, options);
  assert.ok(states >= 60, `${states} states`);
});

Deno.test("qcow crash exploration: a disk that drops a write breaks (d)", async () => {
  const workload = generateWorkload({ seed: 3, ops: 12, image: { format: "qcow", size: 1 << 20 } });
  // The 2th write never reaches the disk.
  const losing = losingWrite(2);
  const run = await recordWorkload(workload, { wrap: losing });
  const result = await new Explorer(run).explore();
  assert.ok(result.violatingStates > 0, JSON.stringify(result.invariants));
  assert.ok(result.invariants.d.passed < result.invariants.d.checked);
});

Deno.test({
  name: "qcow crash states: qemu-img convert reads what qcowlab reads",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    let compared = 0;
    for (const [index, [label, image]] of configs.slice(0, 2).entries()) {
      const run = await recordWorkload(generateWorkload({ seed: 20 + index, ops: 24, image }));
      const folder = `${dir.path}/${index}`;
      await Deno.mkdir(folder);
      if (run.backing) await Deno.writeFile(`${folder}/${BACKING_NAME}`, run.backing);
      const explorer = new Explorer(run, { subsets: true, torn: true, states: 12 });
      for (const state of explorer.states()) {
        const device = crashDevice(run.base, run.log, state);
        const bytes = new Uint8Array(device.size);
        await device.read(bytes, 0);
        const path = `${folder}/s${compared}.qcow`;
        await Deno.writeFile(path, bytes);
        // qemu-img has no check for qcow: it says so with exit status 63.
        const check = await runTool("qemu-img", ["check", "-f", "qcow", path]);
        assert.equal(check.code, 63, `${label} ${state.id}: ${check.stderr}`);
        await qemuImg("convert", "-f", "qcow", "-O", "raw", path, `${path}.raw`);
        const theirs = await Deno.readFile(`${path}.raw`);
        const ours = await QcowImage.open(MemoryDevice.from(bytes));
        if (run.backing) ours.setBacking(openBacking(run.backing));
        const mine = new Uint8Array(ours.size);
        await ours.read(mine, 0);
        await ours.close();
        assert.equal(theirs.length, mine.length, `${label} state ${state.id}`);
        assert.ok(
          theirs.every((b, i) => b === mine[i]),
          `${label} state ${state.id}: contents differ`,
        );
        compared++;
      }
    }
    assert.ok(compared >= 20, `${compared} states compared`);
  },
});

Deno.test("qcow driver: a flush makes data written in place durable", async () => {
  // Found by the explorer: a flush (or close) after writes into already allocated clusters
  // issued no device flush, so acknowledged data could be lost in a crash.
  const { RecordingDevice } = await import("../emulator/recording_device.ts");
  const { createQcow } = await import("../drivers/qcow/create.ts");
  const created = new MemoryDevice();
  await createQcow(created, { size: 1 << 20 });
  const device = new RecordingDevice(MemoryDevice.from(created.toBytes()));
  const image = await QcowImage.open(device, { readOnly: false });
  await image.write(new Uint8Array(4096).fill(1), 0);
  await image.flush();
  const before = device.log.length;
  await image.write(new Uint8Array(512).fill(2), 512);
  await image.flush();
  const after = device.log.slice(before);
  assert.deepEqual(after.map((e) => e.kind), ["write", "flush"]);
  await image.write(new Uint8Array(512).fill(3), 1024);
  await image.close();
  assert.equal(device.log[device.log.length - 1]!.kind, "flush");
  // Nothing written since: no flush needed (as QEMU skips it).
  const quiet = device.log.length;
  const again = await QcowImage.open(device, { readOnly: false });
  await again.flush();
  await again.close();
  assert.equal(device.log.length, quiet);
});
