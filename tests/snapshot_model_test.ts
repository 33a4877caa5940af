/**
 * A model-based property test of internal snapshots: random sequences of writes (plain, zeroes,
 * discards, compressed) interleaved with snapshot create, apply and delete run against qcowlab
 * (in memory) and a model that keeps the active disk and each snapshot's bytes. After every step
 * the active disk must read as the model says; at the end (and after every reopen) every snapshot
 * must read as the model kept it, and qcowlab's check must find neither leaks nor corruptions.
 *
 * Environment: QCOWLAB_SNAPSHOT_SEED (fast-check seed), QCOWLAB_SNAPSHOT_RUNS (default 40).
 *
 * @module
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import { isQcowError } from "../core/errors.ts";
import { MemoryDevice } from "../core/memory_device.ts";
import { checkQcow2 } from "../drivers/qcow2/check.ts";
import { createQcow2, type CreateQcow2Options } from "../drivers/qcow2/create.ts";
import { Qcow2Image } from "../drivers/qcow2/qcow2_image.ts";
import { firstDifference } from "./_qemu.ts";

const KiB = 1024;
const SEED = Number(Deno.env.get("QCOWLAB_SNAPSHOT_SEED") ?? 0x5a95);
const RUNS = Number(Deno.env.get("QCOWLAB_SNAPSHOT_RUNS") ?? 40);

type Step =
  | { op: "write"; at: number; length: number; value: number }
  | { op: "zero"; at: number; length: number }
  | { op: "discard"; at: number; length: number }
  | { op: "compressed"; cluster: number; value: number }
  | { op: "create"; vmState: number }
  | { op: "apply"; pick: number }
  | { op: "delete"; pick: number }
  | { op: "reopen" };

/** Positions are fractions of the disk, so the same steps fit every image shape. */
const place = fc.record({
  at: fc.double({ min: 0, max: 1, noNaN: true }),
  length: fc.nat(40 * KiB),
});

const stepArbitrary: fc.Arbitrary<Step> = fc.oneof(
  {
    weight: 5,
    arbitrary: fc.record({ p: place, value: fc.integer({ min: 1, max: 255 }) })
      .map(({ p, value }) => ({ op: "write" as const, at: p.at, length: p.length + 1, value })),
  },
  {
    weight: 1,
    arbitrary: place.map((p) => ({ op: "zero" as const, at: p.at, length: p.length + 1 })),
  },
  {
    weight: 1,
    arbitrary: place.map((p) => ({ op: "discard" as const, at: p.at, length: p.length + 1 })),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      cluster: fc.double({ min: 0, max: 1, noNaN: true }),
      value: fc.nat(255),
    })
      .map((r) => ({ op: "compressed" as const, ...r })),
  },
  {
    weight: 3,
    arbitrary: fc.nat(3).map((n) => ({ op: "create" as const, vmState: n === 0 ? 5000 : 0 })),
  },
  { weight: 2, arbitrary: fc.nat().map((pick) => ({ op: "apply" as const, pick })) },
  { weight: 2, arbitrary: fc.nat().map((pick) => ({ op: "delete" as const, pick })) },
  { weight: 1, arbitrary: fc.constant({ op: "reopen" as const }) },
);

const shapeArbitrary: fc.Arbitrary<CreateQcow2Options> = fc.oneof(
  fc.constant<CreateQcow2Options>({ size: 256 * KiB, clusterSize: 4096 }),
  fc.constant<CreateQcow2Options>({ size: 128 * KiB, clusterSize: 512, compat: "0.10" }),
  fc.constant<CreateQcow2Options>({ size: 512 * KiB, clusterSize: 16 * KiB, extendedL2: true }),
  fc.constant<CreateQcow2Options>({ size: 200 * KiB, clusterSize: 1024, refcountBits: 4 }),
  fc.constant<CreateQcow2Options>({ size: 256 * KiB, clusterSize: 2048, lazyRefcounts: true }),
);

interface ModelSnapshot {
  id: string;
  disk: Uint8Array;
  vmState: Uint8Array;
}

function range(step: { at: number; length: number }, size: number): [number, number] {
  const at = Math.min(Math.floor(step.at * size), size - 1);
  return [at, Math.min(step.length, size - at)];
}

async function readAll(image: { size: number; read(b: Uint8Array, at: number): Promise<void> }) {
  const bytes = new Uint8Array(image.size);
  await image.read(bytes, 0);
  return bytes;
}

function assertSame(actual: Uint8Array, expected: Uint8Array, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: size`);
  const at = firstDifference(actual, expected);
  assert.equal(at, -1, `${what}: byte ${at} is ${actual[at]}, the model says ${expected[at]}`);
}

async function run(shape: CreateQcow2Options, steps: Step[]): Promise<void> {
  const device = new MemoryDevice();
  await createQcow2(device, shape);
  let image = await Qcow2Image.open(device, { readOnly: false });
  const size = image.size;
  const cs = image.clusterSize;
  let active = new Uint8Array(size);
  const snapshots: ModelSnapshot[] = [];
  let serial = 0;
  const verifySnapshots = async (when: string): Promise<void> => {
    const listed = await image.listSnapshots();
    assert.deepEqual(listed.map((s) => s.id), snapshots.map((s) => s.id), `${when}: ids`);
    for (const snapshot of snapshots) {
      const view = await image.snapshotView(snapshot.id, { match: "id" });
      assertSame(await readAll(view), snapshot.disk, `${when}: snapshot ${snapshot.id}`);
      await view.close();
      const state = await image.readSnapshotVmState(snapshot.id, { match: "id" });
      assertSame(state, snapshot.vmState, `${when}: VM state of ${snapshot.id}`);
    }
  };
  try {
    for (const [i, step] of steps.entries()) {
      const when = `step ${i} (${JSON.stringify(step)})`;
      switch (step.op) {
        case "write": {
          const [at, length] = range(step, size);
          const data = new Uint8Array(length).fill(step.value);
          await image.write(data, at);
          active.set(data, at);
          break;
        }
        case "zero": {
          const [at, length] = range(step, size);
          await image.writeZeroes(at, length);
          active.fill(0, at, at + length);
          break;
        }
        case "discard": {
          // Only whole clusters are discarded (they then read as zeros: no backing file).
          const [at, length] = range(step, size);
          const first = Math.ceil(at / cs) * cs;
          const end = Math.floor((at + length) / cs) * cs;
          if (end <= first) break;
          await image.discard(first, end - first);
          active.fill(0, first, end);
          break;
        }
        case "compressed": {
          const clusters = Math.floor(size / cs);
          const at = Math.min(Math.floor(step.cluster * clusters), clusters - 1) * cs;
          const data = new Uint8Array(cs).map((_, k) => (k >> 4) === 0 ? step.value : 0);
          await image.writeCompressed(data, at);
          active.set(data, at);
          break;
        }
        case "create": {
          const vmState = new Uint8Array(step.vmState).map((_, k) => (k * 7 + serial) & 0xff);
          try {
            const info = await image.createSnapshot(`s${serial++}`, { vmState });
            snapshots.push({ id: info.id, disk: active.slice(), vmState });
          } catch (error) {
            // Narrow refcounts run out: the snapshot is refused and nothing changes.
            if (!isQcowError(error, "INVALID_ARGUMENT") || !/refcount_bits/.test(error.message)) {
              throw error;
            }
          }
          break;
        }
        case "apply": {
          if (snapshots.length === 0) break;
          const snapshot = snapshots[step.pick % snapshots.length]!;
          try {
            await image.applySnapshot(snapshot.id, { match: "id" });
            active = snapshot.disk.slice();
          } catch (error) {
            if (!isQcowError(error, "INVALID_ARGUMENT") || !/refcount_bits/.test(error.message)) {
              throw error;
            }
          }
          break;
        }
        case "delete": {
          if (snapshots.length === 0) break;
          const index = step.pick % snapshots.length;
          await image.deleteSnapshot(snapshots[index]!.id, { match: "id" });
          snapshots.splice(index, 1);
          break;
        }
        case "reopen": {
          await image.close();
          image = await Qcow2Image.open(device, { readOnly: false });
          await verifySnapshots(when);
          break;
        }
      }
      assertSame(await readAll(image), active, `${when}: active disk`);
    }
    await verifySnapshots("at the end");
  } finally {
    await image.close();
  }
  const result = await checkQcow2(device);
  assert.equal(result.corruptions ?? 0, 0, "corruptions at the end");
  assert.equal(result.leaks ?? 0, 0, "leaks at the end");
  assert.equal(result["check-errors"] ?? 0, 0, "check errors at the end");
}

Deno.test("snapshots keep their bytes through random writes, creates, applies and deletes", async () => {
  await fc.assert(
    fc.asyncProperty(shapeArbitrary, fc.array(stepArbitrary, { maxLength: 30 }), run),
    { seed: SEED, numRuns: RUNS },
  );
});

Deno.test("a snapshot of 1-bit refcounts cannot be taken and leaves the image as it was", async () => {
  const device = new MemoryDevice();
  await createQcow2(device, { size: 64 * KiB, clusterSize: 4096, refcountBits: 1 });
  {
    await using image = await Qcow2Image.open(device, { readOnly: false });
    await image.write(new Uint8Array(8 * KiB).fill(5), 0);
    await assert.rejects(
      image.createSnapshot("x"),
      (e: unknown) =>
        e instanceof Error && "code" in e && e.code === "INVALID_ARGUMENT" &&
        /refcount_bits=1/.test(e.message),
    );
    assert.deepEqual(await image.listSnapshots(), []);
  }
  const result = await checkQcow2(device);
  assert.equal(result.corruptions ?? 0, 0);
  assert.equal(result.leaks ?? 0, 0);
});

Deno.test("when 2-bit refcounts run out, a further snapshot is refused and changes nothing", async () => {
  const device = new MemoryDevice();
  await createQcow2(device, { size: 64 * KiB, clusterSize: 4096, refcountBits: 2 });
  {
    await using image = await Qcow2Image.open(device, { readOnly: false });
    await image.write(new Uint8Array(8 * KiB).fill(5), 0);
    await image.createSnapshot("a");
    await image.createSnapshot("b"); // refcounts now 3, the most 2 bits hold
    const refused = (e: unknown): boolean =>
      isQcowError(e, "INVALID_ARGUMENT") && /refcount_bits=2/.test(e.message);
    await assert.rejects(image.createSnapshot("c"), refused);
    await image.write(new Uint8Array(4 * KiB).fill(6), 0); // cluster 0 is the active's own again
    await image.deleteSnapshot("b");
    await image.createSnapshot("c");
    await assert.rejects(image.createSnapshot("d"), refused);
    assert.deepEqual((await image.listSnapshots()).map((s) => s.name), ["a", "c"]);
    const sector = new Uint8Array(512);
    await image.read(sector, 0);
    assert.equal(sector[0], 6);
  }
  const result = await checkQcow2(device);
  assert.equal(result.corruptions ?? 0, 0);
  assert.equal(result.leaks ?? 0, 0);
});
