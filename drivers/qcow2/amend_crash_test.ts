import assert from "node:assert/strict";
import { MemoryDevice } from "../../core/memory_device.ts";
import type { BlockDevice } from "../../core/block_device.ts";
import { crashDevice, enumerateCrashStates } from "../../emulator/crash_states.ts";
import { RecordingDevice } from "../../emulator/recording_device.ts";
import { amendQcow2, type AmendQcow2Options } from "./amend.ts";
import { checkQcow2 } from "./check.ts";
import { createQcow2 } from "./create.ts";
import { Qcow2Image } from "./qcow2_image.ts";

const SIZE = 2 * 1024 * 1024;

async function contents(device: BlockDevice): Promise<Uint8Array> {
  await using image = await Qcow2Image.open(device);
  const out = new Uint8Array(SIZE);
  await image.read(out, 0);
  return out;
}

/** An image with data, zero clusters with and without host clusters, and free holes. */
async function sample(): Promise<Uint8Array> {
  const device = new MemoryDevice({ name: "t.qcow2" });
  await createQcow2(device, { size: SIZE, clusterSize: 4096 });
  {
    await using image = await Qcow2Image.open(device, { readOnly: false });
    for (let i = 0; i < 24; i++) await image.write(new Uint8Array(4096).fill(i + 1), i * 8192);
    await image.writeZeroes(8192, 24576);
    await image.writeZeroes(1 << 20, 16384);
    await image.discard(32768, 8192);
  }
  const bytes = new Uint8Array(device.size);
  await device.read(bytes, 0);
  return bytes;
}

/**
 * Amends a recording copy of `base`, then checks every state a crash during the amend can leave
 * (every prefix, and subsets of the writes since the last flush): no corruption, no check error,
 * the same virtual contents; leaks are allowed.
 */
async function crashAnywhere(base: Uint8Array, options: AmendQcow2Options): Promise<number> {
  const expected = await contents(MemoryDevice.from(base, { name: "base" }));
  const recording = new RecordingDevice(MemoryDevice.from(base, { name: "t.qcow2" }));
  await amendQcow2(recording, options);
  let states = 0;
  for (
    const state of enumerateCrashStates(recording.log, { subsets: true, maxStatesPerPoint: 6 })
  ) {
    const device = crashDevice(base, recording.log, state);
    const result = await checkQcow2(device);
    const what = `${JSON.stringify(options)} crash state ${state.id}`;
    assert.equal(result.corruptions ?? 0, 0, `${what}: ${result.messages.join("\n")}`);
    assert.equal(result["check-errors"], 0, `${what}: ${result.messages.join("\n")}`);
    const actual = await contents(device);
    const differs = actual.findIndex((byte, i) => byte !== expected[i]);
    assert.equal(differs, -1, `${what}: contents differ at ${differs}`);
    states++;
  }
  return states;
}

Deno.test("amendQcow2() downgrade: a crash at any point leaves a consistent image with the same contents", async () => {
  const states = await crashAnywhere(await sample(), { compat: "0.10" });
  assert.ok(states > 10, `only ${states} crash states`);
});

Deno.test("amendQcow2() refcount width change: a crash at any point leaves a consistent image", async () => {
  const base = await sample();
  assert.ok(await crashAnywhere(base, { refcountBits: 2 }) > 5);
  assert.ok(await crashAnywhere(base, { refcountBits: 64 }) > 5);
});

Deno.test("amendQcow2() upgrade with lazy refcounts: a crash at any point leaves a consistent image", async () => {
  const device = new MemoryDevice({ name: "t.qcow2" });
  await createQcow2(device, { size: SIZE, clusterSize: 4096, compat: "0.10" });
  {
    await using image = await Qcow2Image.open(device, { readOnly: false });
    await image.write(new Uint8Array(40000).fill(9), 5000);
  }
  const base = new Uint8Array(device.size);
  await device.read(base, 0);
  assert.ok(await crashAnywhere(base, { compat: "1.1", lazyRefcounts: true }) > 2);
});
