import assert from "node:assert/strict";
import { MemoryDevice } from "../core/memory_device.ts";
import { checkExitStatus, checkQcow2 } from "../drivers/qcow2/check.ts";
import { crashDevice } from "../emulator/crash_states.ts";
import { Explorer } from "../emulator/explore.ts";
import { BACKING_NAME } from "../emulator/explore_format.ts";
import { generateWorkload, type WorkloadImage } from "../emulator/workload.ts";
import { recordWorkload } from "../emulator/workload_run.ts";
import { HAVE_QEMU, makeTempDir, runTool } from "./_qemu.ts";

const configs: [string, Partial<WorkloadImage>][] = [
  ["v3", { clusterSize: 4096 }],
  ["v3 lazy refcounts", { clusterSize: 4096, lazyRefcounts: true }],
  ["v3 lazy refcounts, 64 KiB clusters", { lazyRefcounts: true, size: 8 << 20 }],
  ["v2 with a backing file", { compat: "0.10", clusterSize: 4096, backingSize: 512 * 1024 }],
  ["v3 refcount width 1, backing file", {
    clusterSize: 8192,
    refcountBits: 1,
    backingSize: 1 << 20,
  }],
];
const PER_CONFIG = 44;
const CONCURRENCY = 2;

interface QemuCheck {
  code: number;
  leaks: number;
  corruptions: number;
}

async function qemuCheck(path: string): Promise<QemuCheck> {
  const out = await runTool("qemu-img", ["check", "--output=json", "-f", "qcow2", path]);
  let json: Record<string, number> = {};
  try {
    json = JSON.parse(out.stdout);
  } catch {
    // A failed check prints no report.
  }
  return { code: out.code, leaks: json.leaks ?? 0, corruptions: json.corruptions ?? 0 };
}

async function pool<T>(items: T[], limit: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) await fn(items[next++]!);
  };
  await Promise.all(Array.from({ length: limit }, worker));
}

Deno.test({
  name:
    "crash states: qemu-img check agrees with qcowlab's check, and finds them clean after repair",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    const jobs: { name: string; bytes: Uint8Array; folder: string }[] = [];
    for (const [index, [label, image]] of configs.entries()) {
      const workload = generateWorkload({
        seed: 100 + index,
        ops: 24,
        image: { size: 2 << 20, ...image },
      });
      const run = await recordWorkload(workload);
      const folder = `${dir.path}/${index}`;
      await Deno.mkdir(folder);
      if (run.backing) await Deno.writeFile(`${folder}/${BACKING_NAME}`, run.backing);
      const explorer = new Explorer(run, {
        subsets: true,
        torn: true,
        maxStatesPerPoint: 8,
        states: PER_CONFIG,
      });
      for (const state of explorer.states()) {
        const device = crashDevice(run.base, run.log, state);
        const bytes = new Uint8Array(device.size);
        await device.read(bytes, 0);
        jobs.push({ name: `${label} state ${state.id}`, bytes, folder });
      }
    }
    assert.ok(jobs.length >= 200, `${jobs.length} states`);
    let dirtyStates = 0;
    let leakyStates = 0;
    const unrepairable: string[] = [];
    await pool(jobs.map((job, i) => ({ ...job, i })), CONCURRENCY, async (job) => {
      const path = `${job.folder}/s${job.i}.qcow2`;
      await Deno.writeFile(path, job.bytes);
      const ours = await checkQcow2(MemoryDevice.from(job.bytes), { filename: path });
      const theirs = await qemuCheck(path);
      assert.deepEqual(
        theirs,
        { code: checkExitStatus(ours), leaks: ours.leaks ?? 0, corruptions: ours.corruptions ?? 0 },
        job.name,
      );
      if (theirs.leaks > 0) leakyStates++;
      if ((job.bytes[79]! & 1) !== 0) dirtyStates++;
      const device = MemoryDevice.from(job.bytes);
      const repaired = await checkQcow2(device, { repair: "all" });
      if (checkExitStatus(repaired) === 0) {
        await Deno.writeFile(path, device.toBytes());
        const after = await qemuCheck(path);
        assert.deepEqual(after, { code: 0, leaks: 0, corruptions: 0 }, `${job.name}: after repair`);
      } else {
        // qcowlab could not repair it: neither may qemu-img (a state past what repair can fix).
        const out = await runTool("qemu-img", ["check", "-r", "all", "-f", "qcow2", path]);
        assert.notEqual(out.code, 0, `${job.name}: qemu-img repaired what qcowlab could not`);
        unrepairable.push(job.name);
      }
      await Deno.remove(path);
    });
    // The sample covers what matters: leaked clusters and dirty (lazy refcount) images.
    assert.ok(leakyStates > 0 && dirtyStates > 0, `${leakyStates} leaky, ${dirtyStates} dirty`);
    // Known (see emulator/README.md): with lazy refcounts an L2 table may reach the disk before the
    // data write that extends the file; such states cannot be repaired by either tool.
    assert.ok(unrepairable.length < jobs.length / 10, unrepairable.join("\n"));
    console.log(
      `${jobs.length} states, ${leakyStates} leaky, ${dirtyStates} dirty, ` +
        `${unrepairable.length} unrepairable by both tools`,
    );
  },
});
