/**
 * Crash safety of snapshot create, apply and delete: the writes of each operation are logged, and
 * the image is rebuilt as it would be after a crash following every prefix of them. A check that
 * repairs leaks only (`-r leaks`: no crash may leave anything worse than leaked clusters, and the
 * COPIED flags those leaks make stale) must turn each such image into one qcowlab's own check
 * finds clean, whose active disk and snapshots are exactly those before the operation or exactly
 * those after it.
 *
 * @module
 */

import assert from "node:assert/strict";
import { MemoryDevice } from "../core/memory_device.ts";
import { checkQcow2 } from "../drivers/qcow2/check.ts";
import { createQcow2, type CreateQcow2Options } from "../drivers/qcow2/create.ts";
import { Qcow2Image } from "../drivers/qcow2/qcow2_image.ts";
import { RecordingDevice } from "../emulator/recording_device.ts";

const KiB = 1024;

/** What a user can see of an image: the active disk and each snapshot's disk, by name. */
interface Visible {
  active: Uint8Array;
  snapshots: Map<string, Uint8Array>;
}

async function bytesOf(device: MemoryDevice): Promise<Uint8Array> {
  const bytes = new Uint8Array(device.size);
  await device.read(bytes, 0);
  return bytes;
}

async function visible(device: MemoryDevice): Promise<Visible> {
  await using image = await Qcow2Image.open(device);
  const active = new Uint8Array(image.size);
  await image.read(active, 0);
  const snapshots = new Map<string, Uint8Array>();
  for (const info of await image.listSnapshots()) {
    const view = await image.snapshotView(info.id, { match: "id" });
    const bytes = new Uint8Array(view.size);
    await view.read(bytes, 0);
    await view.close();
    snapshots.set(`${info.id}:${info.name}`, bytes);
  }
  return { active, snapshots };
}

function same(a: Visible, b: Visible): boolean {
  const equal = (x: Uint8Array, y: Uint8Array): boolean =>
    x.length === y.length && x.every((v, i) => v === y[i]);
  if (!equal(a.active, b.active) || a.snapshots.size !== b.snapshots.size) return false;
  for (const [key, bytes] of a.snapshots) {
    const other = b.snapshots.get(key);
    if (other === undefined || !equal(bytes, other)) return false;
  }
  return true;
}

/** An image with data, one snapshot "a", and more data written after it. */
async function baseImage(options: CreateQcow2Options): Promise<Uint8Array> {
  const device = new MemoryDevice();
  await createQcow2(device, options);
  {
    await using image = await Qcow2Image.open(device, { readOnly: false });
    await image.write(new Uint8Array(40 * KiB).fill(1), 0);
    await image.write(new Uint8Array(8 * KiB).fill(2), options.size - 8 * KiB);
    await image.createSnapshot("a");
    await image.write(new Uint8Array(12 * KiB).fill(3), 6 * KiB);
  }
  return await bytesOf(device);
}

type Operation = (image: Qcow2Image) => Promise<unknown>;

/** Replays every prefix of `op`'s writes onto `before` and checks the repaired result. */
async function assertCrashSafe(before: Uint8Array, op: Operation, label: string): Promise<void> {
  const recorder = new RecordingDevice(MemoryDevice.from(before));
  {
    await using image = await Qcow2Image.open(recorder, { readOnly: false });
    await op(image);
  }
  const writes = recorder.log;
  const start = await visible(MemoryDevice.from(before));
  const end = await visible(recorder.inner as MemoryDevice);
  assert.ok(!same(start, end), `${label}: the operation changes something`);
  let sawBefore = 0;
  let sawAfter = 0;
  for (let k = 0; k <= writes.length; k++) {
    const device = MemoryDevice.from(before);
    for (const entry of writes.slice(0, k)) {
      if (entry.kind === "write") await device.write(entry.data, entry.offset);
      if (entry.kind === "truncate") await device.truncate(entry.size);
    }
    const repair = await checkQcow2(device, { repair: "leaks" });
    assert.equal(repair["check-errors"] ?? 0, 0, `${label}, crash after ${k} writes`);
    const again = await checkQcow2(device);
    const where = `${label}, crash after ${k} of ${writes.length} log entries`;
    assert.equal(again.corruptions ?? 0, 0, `${where}: corruptions left after repair`);
    assert.equal(again.leaks ?? 0, 0, `${where}: leaks left after repair`);
    const state = await visible(device);
    if (same(state, start)) sawBefore++;
    else if (same(state, end)) sawAfter++;
    else assert.fail(`${where}: the repaired image is neither the state before nor after`);
  }
  assert.ok(sawBefore > 0 && sawAfter > 0, `${label}: both states are reached`);
}

const SHAPES: { label: string; options: CreateQcow2Options }[] = [
  { label: "v3, 4 KiB clusters", options: { size: 256 * KiB, clusterSize: 4096 } },
  { label: "v2, 512-byte clusters", options: { size: 64 * KiB, clusterSize: 512, compat: "0.10" } },
  {
    label: "v3, extended L2, 16 KiB clusters",
    options: { size: 512 * KiB, clusterSize: 16 * KiB, extendedL2: true },
  },
];

for (const shape of SHAPES) {
  Deno.test(`a crash during snapshot create repairs to before or after (${shape.label})`, async () => {
    const before = await baseImage(shape.options);
    await assertCrashSafe(before, (image) => image.createSnapshot("b"), "create");
    await assertCrashSafe(
      before,
      (image) => image.createSnapshot("vm", { vmState: new Uint8Array(9000).fill(9) }),
      "create with VM state",
    );
  });

  Deno.test(`a crash during snapshot apply repairs to before or after (${shape.label})`, async () => {
    const before = await baseImage(shape.options);
    await assertCrashSafe(before, (image) => image.applySnapshot("a"), "apply");
  });

  Deno.test(`a crash during snapshot delete repairs to before or after (${shape.label})`, async () => {
    const before = await baseImage(shape.options);
    await assertCrashSafe(before, (image) => image.deleteSnapshot("a"), "delete");
  });
}
