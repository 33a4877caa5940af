import assert from "node:assert/strict";
import { MemoryDevice } from "../core/memory_device.ts";
import { checkQcow2 } from "../drivers/qcow2/check.ts";
import { openImage } from "../drivers/open_image.ts";
import type { Qcow2Image } from "../drivers/qcow2/qcow2_image.ts";
import type { FaultRule } from "../emulator/fault_rule.ts";
import type { DriverEvent } from "../core/driver_event.ts";
import { type FaultRun, OPERATIONS, runFaultWorkload } from "./_fault_workload.ts";
import { HAVE_QEMU, makeTempDir, runTool } from "./_qemu.ts";

/** Events the workload must reach: allocating writes, COW, compression, discards, growth, flushes. */
const EXPECTED: DriverEvent[] = [
  "l1_update",
  "l1_grow_alloc_table",
  "l1_grow_write_table",
  "l1_grow_activate_table",
  "l2_update",
  "l2_update_compressed",
  "l2_alloc_write",
  "read_aio",
  "read_compressed",
  "reftable_load",
  "reftable_update",
  "refblock_load",
  "write_aio",
  "write_compressed",
  "cow_read",
  "reftable_grow",
  "refblock_update",
  "refblock_alloc",
  "refblock_alloc_write",
  "refblock_alloc_hookup",
  "refblock_alloc_write_blocks",
  "refblock_alloc_write_table",
  "cluster_alloc",
  "cluster_alloc_bytes",
  "cluster_free",
  "flush_to_os",
  "flush_to_disk",
];

interface Verdict {
  corruptions: number;
  leaks: number;
  checkErrors: number;
}

/** Reopens the run's bytes and checks what an image after failed requests must satisfy. */
async function verify(run: FaultRun, label: string): Promise<Verdict> {
  const result = await checkQcow2(MemoryDevice.from(run.bytes, { name: "fault.qcow2" }));
  const verdict = {
    corruptions: result.corruptions ?? 0,
    leaks: result.leaks ?? 0,
    checkErrors: result["check-errors"],
  };
  assert.equal(verdict.corruptions, 0, `${label}: corruptions\n${result.messages?.join("\n")}`);
  assert.equal(verdict.checkErrors, 0, `${label}: check errors`);
  await using image = await openImage(MemoryDevice.from(run.bytes), {
    readOnly: false,
  }) as Qcow2Image;
  const data = image.info()["format-specific"]?.data as { corrupt?: boolean } | undefined;
  assert.equal(data?.corrupt, false, `${label}: the corrupt bit was set`);
  if (run.closed) {
    // Every acknowledged request reads back once the image was closed cleanly.
    const back = new Uint8Array(Math.min(image.size, run.model.length));
    await image.read(back, 0);
    for (let i = 0; i < back.length; i++) {
      if (run.unknown[i] === 0 && back[i] !== run.model[i]) {
        assert.fail(`${label}: byte ${i} reads ${back[i]}, expected ${run.model[i]}`);
      }
    }
  }
  // Still usable: a new allocating write and a flush go through.
  await image.write(new Uint8Array(4096).fill(0xc3), 2 << 20);
  await image.flush();
  return verdict;
}

const clean = await runFaultWorkload([]);
const cleanGrowth = await runFaultWorkload([], true);

Deno.test("the fault workload succeeds without faults and reaches every allocation event", async () => {
  assert.deepEqual(clean.results, OPERATIONS.map(() => "ok"));
  assert.deepEqual(cleanGrowth.results, OPERATIONS.map(() => "ok"));
  const missing = EXPECTED.filter((event) => !(cleanGrowth.events[event]! > 0));
  assert.deepEqual(missing, []);
  assert.equal((await verify(clean, "clean")).leaks, 0);
  assert.equal((await verify(cleanGrowth, "clean, growing")).leaks, 0);
});

const events = Object.keys(cleanGrowth.events).sort() as DriverEvent[];

for (const once of [true, false]) {
  Deno.test(`an injected error at each driver event (${once ? "once" : "sticky"}) leaves no corruption`, async () => {
    let failed = 0;
    for (const event of events) {
      const rule: FaultRule = { kind: "inject-error", event, once, name: `at ${event}` };
      // Only the refcount table growth needs the long workload.
      const growth = !(clean.events[event]! > 0);
      const count = (growth ? cleanGrowth : clean).events[event]!;
      if (!once) rule.nth = Math.max(1, Math.ceil(count / 2));
      const run = await runFaultWorkload([rule], growth);
      assert.ok(run.faults > 0, `${event}: the rule never fired`);
      if (run.results.some((result) => result !== "ok")) failed++;
      await verify(run, `${event} ${once ? "once" : "sticky"}`);
    }
    // The faults must reach requests: most events fail at least one.
    assert.ok(failed >= events.length / 2, `only ${failed} of ${events.length} runs saw a failure`);
  });
}

Deno.test("a flush failing right after a metadata switch leaves a consistent image", async () => {
  // The header or L1 write went through; only its flush failed: the driver must go on from the
  // metadata on the device, not from what it had before.
  for (const event of ["l1_update", "l1_grow_activate_table", "reftable_update"] as const) {
    const run = await runFaultWorkload(
      [{ kind: "inject-error", event, io: ["flush"], once: true }],
      true,
    );
    assert.equal(run.faults, 1, event);
    await verify(run, `flush after ${event}`);
  }
});

Deno.test("failing the nth write, flush or truncate (EIO, ENOSPC, torn) leaves no corruption", async () => {
  const writes = clean.io.write!;
  const picks = new Set<number>();
  for (let n = 1; n <= 16; n++) picks.add(n);
  for (let i = 0; i < 20; i++) picks.add(Math.floor(((i + 0.5) * writes) / 20));
  let failed = 0;
  for (const n of picks) {
    const rules: FaultRule[] = [{
      kind: "io-error",
      io: ["write"],
      nth: n,
      once: true,
      ...(n % 3 === 0 ? { torn: 1 } : {}),
      ...(n % 2 === 0 ? { errno: "ENOSPC" as const } : {}),
    }];
    const run = await runFaultWorkload(rules);
    if (run.faults > 0) failed++;
    await verify(run, `write ${n}`);
  }
  assert.ok(failed >= picks.size - 1);
  const flushes = clean.io.flush!;
  for (let i = 0; i < 12; i++) {
    const n = 1 + Math.floor((i * flushes) / 12);
    const run = await runFaultWorkload([{ kind: "io-error", io: ["flush"], nth: n, once: true }]);
    assert.equal(run.faults, 1);
    await verify(run, `flush ${n}`);
  }
  for (let n = 1; n <= (clean.io.truncate ?? 0); n++) {
    const run = await runFaultWorkload([{ kind: "io-error", io: ["truncate"], nth: n }]);
    await verify(run, `truncate ${n}`);
  }
});

Deno.test("a full disk fails requests with NO_SPACE and leaves no corruption", async () => {
  const total = clean.bytes.length;
  for (const fraction of [0.1, 0.3, 0.5, 0.7, 0.9]) {
    const run = await runFaultWorkload([{
      kind: "disk-full",
      afterBytes: Math.floor(total * fraction),
    }]);
    assert.ok(run.results.includes("NO_SPACE"), `${fraction}: ${run.results}`);
    await verify(run, `disk full at ${fraction}`);
  }
});

Deno.test({
  name: "qemu-img check agrees with checkQcow2 on images left by injected faults",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    const sample: FaultRule[][] = [
      [{ kind: "inject-error", event: "l2_update", once: true }],
      [{ kind: "inject-error", event: "refblock_alloc_hookup", once: true }],
      [{ kind: "inject-error", event: "l1_grow_activate_table", once: true }],
      [{ kind: "inject-error", event: "cluster_free", once: true }],
      [{ kind: "inject-error", event: "refblock_alloc_write", nth: 3, once: true }],
      [{ kind: "inject-error", event: "write_compressed", once: true }],
      [{ kind: "io-error", io: ["write"], nth: 25, torn: 1 }],
      [{ kind: "disk-full", afterBytes: Math.floor(clean.bytes.length / 2) }],
    ];
    let leaky = 0;
    for (const [i, rules] of sample.entries()) {
      const run = await runFaultWorkload(rules);
      const ours = await checkQcow2(MemoryDevice.from(run.bytes));
      const path = `${dir.path}/case${i}.qcow2`;
      await Deno.writeFile(path, run.bytes);
      const qemu = await runTool("qemu-img", ["check", "--output", "json", path]);
      assert.ok(
        [0, 3].includes(qemu.code),
        `case ${i}: qemu-img check exit ${qemu.code} ${qemu.stderr}`,
      );
      const theirs = JSON.parse(qemu.stdout);
      assert.equal(theirs.corruptions ?? 0, 0, `case ${i}`);
      assert.equal(theirs.leaks ?? 0, ours.leaks ?? 0, `case ${i}: leaks`);
      assert.equal(theirs["check-errors"], ours["check-errors"], `case ${i}`);
      if ((ours.leaks ?? 0) > 0) leaky++;
    }
    // The sample is only worth something if some cases leave leaks to agree on.
    assert.ok(leaky > 0);
  },
});
