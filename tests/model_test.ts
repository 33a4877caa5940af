/**
 * Model-based tests of the qcow2 write path: random create options and operation sequences run
 * against qcowlab (in memory) and a plain byte array side by side; every read must match the
 * model, and the image must pass {@linkcode assertStructure} at every flush and reopen. Also: the
 * regressions those runs found, and proof that {@linkcode assertStructure} catches what it claims.
 *
 * Environment:
 * - QCOWLAB_MODEL_SEED: fast-check seed (default below; printed on failure).
 * - QCOWLAB_MODEL_RUNS: scenarios of the general property (default 250; the growth property
 *   runs a tenth as many).
 * - QCOWLAB_MODEL_SHRINK=0: report the first failure without shrinking it.
 *
 * @module
 */

import assert, { AssertionError } from "node:assert/strict";
import fc from "fast-check";
import { readU32, writeU32 } from "../core/bytes.ts";
import { entryOffset } from "../drivers/qcow2/entries.ts";
import { MemoryDevice } from "../core/memory_device.ts";
import { createQcow2 } from "../drivers/qcow2/create.ts";
import { openImage } from "../drivers/open_image.ts";
import { readRefcount, writeRefcount } from "../drivers/qcow2/refcount_math.ts";
import { assertStructure } from "./_structure.ts";
import { firstDifference } from "./_qemu.ts";
import {
  growthOpArbitrary,
  growthOptionsArbitrary,
  runScenario,
  type Scenario,
  scenarioArbitrary,
} from "./_model.ts";

const KiB = 1024;
const DEFAULT_SEED = 0x0dd5eed;
const SEED = Number(Deno.env.get("QCOWLAB_MODEL_SEED") ?? DEFAULT_SEED);
const RUNS = Number(Deno.env.get("QCOWLAB_MODEL_RUNS") ?? 250);
const SHRINK = Deno.env.get("QCOWLAB_MODEL_SHRINK") !== "0";

/** Runs a property with the fixed seed, and names the seed when it fails. */
async function check(property: fc.IAsyncProperty<[Scenario]>, numRuns: number): Promise<void> {
  try {
    await fc.assert(property, { numRuns, seed: SEED, endOnFailure: !SHRINK });
  } catch (error) {
    console.error(`model test failed with seed ${SEED} (rerun with QCOWLAB_MODEL_SEED=${SEED})`);
    throw error;
  }
}

Deno.test("qcowlab reads back what a byte-array model expects after random operation sequences", async () => {
  let ops = 0;
  await check(
    fc.asyncProperty(scenarioArbitrary(), async (scenario) => {
      ops += (await runScenario(scenario)).log.length;
    }),
    RUNS,
  );
  // The sequences must be long enough to mean something.
  assert.ok(ops >= RUNS * 8, `only ${ops} operations ran in ${RUNS} scenarios`);
});

Deno.test("qcowlab keeps matching the model while its refcount table and blocks grow", async () => {
  const runs = Math.max(1, Math.round(RUNS / 10));
  let grown = 0;
  await check(
    fc.asyncProperty(
      scenarioArbitrary({
        options: growthOptionsArbitrary,
        op: growthOpArbitrary,
        minOps: 3,
        maxOps: 12,
      }),
      async (scenario) => {
        const { summary } = await runScenario(scenario);
        if (summary !== undefined && summary.refcountTableClusters > 1) grown++;
      },
    ),
    runs,
  );
  assert.ok(grown >= runs / 3, `the refcount table grew in only ${grown} of ${runs} scenarios`);
});

/** A fresh in-memory qcow2 image open for writing. */
async function freshImage(options: Parameters<typeof createQcow2>[1]) {
  const device = new MemoryDevice();
  await createQcow2(device, options);
  return { device, image: await openImage(device, { readOnly: false }) };
}

async function readAll(image: { size: number; read(b: Uint8Array, o: number): Promise<void> }) {
  const bytes = new Uint8Array(image.size);
  await image.read(bytes, 0);
  return bytes;
}

Deno.test("a compressed cluster written again at the same host offset reads its new data", async () => {
  const cs = 64 * KiB;
  const { device, image } = await freshImage({ size: 4 * cs });
  // Both fills deflate to the same length, so the second lands where the first was freed.
  await image.writeCompressed(new Uint8Array(cs).fill(1), 0);
  assertSameBytes(await readAll(image), concat(new Uint8Array(cs).fill(1), new Uint8Array(3 * cs)));
  await image.write(new Uint8Array(cs).fill(9), 0);
  await image.writeCompressed(new Uint8Array(cs).fill(2), 0);
  assertSameBytes(await readAll(image), concat(new Uint8Array(cs).fill(2), new Uint8Array(3 * cs)));
  await image.close();
  await assertStructure(device);
});

Deno.test("compressed writes never pack into a host cluster freed and reused since", async () => {
  const cs = 64 * KiB;
  const { device, image } = await freshImage({ size: 4 * cs });
  await image.writeCompressed(new Uint8Array(cs).fill(1), 0);
  await image.write(new Uint8Array(cs).fill(3), 0); // frees the compressed host cluster
  await image.write(new Uint8Array(cs).fill(4), cs); // takes that cluster for data
  await image.writeCompressed(new Uint8Array(cs).fill(5), 2 * cs);
  const expected = concat(
    new Uint8Array(cs).fill(3),
    new Uint8Array(cs).fill(4),
    new Uint8Array(cs).fill(5),
    new Uint8Array(cs),
  );
  assertSameBytes(await readAll(image), expected);
  await image.close();
  await assertStructure(device);
});

/** Compares bytes without building a diff of megabytes. */
function assertSameBytes(actual: Uint8Array, expected: Uint8Array): void {
  const at = firstDifference(actual, expected);
  assert.equal(at, -1, `bytes differ at ${at}: got ${actual[at]}, expected ${expected[at]}`);
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}

Deno.test("preallocated clusters read as zeros even where freed metadata clusters are reused", async () => {
  // 512-byte clusters with 64-bit refcounts outgrow the first refcount table; its old clusters are
  // freed and then handed out as preallocated data clusters.
  const device = new MemoryDevice();
  const size = 4056064;
  await createQcow2(device, {
    size,
    clusterSize: 512,
    refcountBits: 64,
    preallocation: "metadata",
  });
  const summary = await assertStructure(device);
  assert.ok(summary.refcountTableClusters > 1, "the refcount table did not grow");
  const image = await openImage(device);
  assertSameBytes(await readAll(image), new Uint8Array(size));
  await image.close();
});

// --- assertStructure must catch what it claims to. ----------------------------------------------

/** Where things are in the small image {@linkcode damaged} starts from. */
interface Layout {
  clusterSize: number;
  refblock: number;
  l2: number;
  /** Host offsets of virtual clusters 0 and 1. */
  data0: number;
  data1: number;
}

/**
 * Builds a sound 1 MiB image (data in clusters 0 and 1, a compressed cluster at 4), then lets
 * `damage` change its bytes, and returns what assertStructure says.
 */
async function damaged(
  damage: (device: MemoryDevice, layout: Layout) => Promise<void>,
): Promise<string> {
  const cs = 64 * KiB;
  const { device, image } = await freshImage({ size: 16 * cs });
  await image.write(new Uint8Array(2 * cs).fill(7), 0);
  await image.writeCompressed(new Uint8Array(cs).fill(8), 4 * cs);
  await image.close();
  await assertStructure(device); // sound before the damage
  const words = async (offset: number): Promise<[number, number]> => {
    const bytes = new Uint8Array(8);
    await device.read(bytes, offset);
    return [readU32(bytes, 0), readU32(bytes, 4)];
  };
  const pointer = async (offset: number): Promise<number> => entryOffset(...await words(offset));
  const l2 = await pointer(await pointer(40));
  const layout: Layout = {
    clusterSize: cs,
    refblock: await pointer(await pointer(48)),
    l2,
    data0: await pointer(l2),
    data1: await pointer(l2 + 8),
  };
  await damage(device, layout);
  try {
    await assertStructure(device);
  } catch (error) {
    assert.ok(error instanceof AssertionError, `not an AssertionError: ${error}`);
    return error.message;
  }
  assert.fail("assertStructure found nothing wrong");
}

/** Adds `delta` to the 16-bit refcount of `cluster`. */
async function bumpRefcount(device: MemoryDevice, layout: Layout, cluster: number, delta: number) {
  const block = new Uint8Array(layout.clusterSize);
  await device.read(block, layout.refblock);
  writeRefcount(block, cluster, 4, readRefcount(block, cluster, 4) + delta);
  await device.write(block, layout.refblock);
}

/** Replaces the high and low words of the 8-byte entry at `offset`. */
async function setEntry(
  device: MemoryDevice,
  offset: number,
  edit: (hi: number, lo: number) => [number, number],
) {
  const entry = new Uint8Array(8);
  await device.read(entry, offset);
  const [hi, lo] = edit(readU32(entry, 0), readU32(entry, 4));
  writeU32(entry, 0, hi >>> 0);
  writeU32(entry, 4, lo >>> 0);
  await device.write(entry, offset);
}

Deno.test("assertStructure reports a cluster whose refcount exceeds its references as leaked", async () => {
  const message = await damaged((device, layout) => bumpRefcount(device, layout, 12, 1));
  assert.match(message, /Leaked cluster 12 refcount=1 reference=0/);
});

Deno.test("assertStructure reports a referenced cluster with too low a refcount", async () => {
  const message = await damaged((device, layout) =>
    bumpRefcount(device, layout, layout.data1 / layout.clusterSize, -1)
  );
  assert.match(message, /ERROR cluster \d+ refcount=0 reference=1/);
  assert.match(message, /COPIED is set but the refcount is 0/);
});

Deno.test("assertStructure reports a COPIED flag on a cluster with refcount 2", async () => {
  const message = await damaged((device, layout) =>
    bumpRefcount(device, layout, layout.data0 / layout.clusterSize, 1)
  );
  assert.match(message, /COPIED is set but the refcount is 2/);
});

Deno.test("assertStructure reports two L2 entries sharing one data cluster", async () => {
  const message = await damaged(async (device, layout) => {
    await setEntry(device, layout.l2 + 8, (hi) => [hi, layout.data0]);
    await bumpRefcount(device, layout, layout.data1 / layout.clusterSize, -1);
    await bumpRefcount(device, layout, layout.data0 / layout.clusterSize, 1);
  });
  assert.match(message, /is referenced twice/);
});

Deno.test("assertStructure reports reserved bits, unaligned offsets and COPIED compressed entries", async () => {
  const message = await damaged(async (device, layout) => {
    await setEntry(device, layout.l2, (hi, lo) => [hi, lo | 2]);
    await setEntry(device, layout.l2 + 8, (hi, lo) => [hi, lo + 512]);
    await setEntry(device, layout.l2 + 32, (hi, lo) => [hi | 0x80000000, lo]);
  });
  assert.match(message, /L2 entry 0 .*reserved bits set/);
  assert.match(message, /L2 entry 1 .*not cluster aligned/);
  assert.match(message, /L2 entry 4 .*COPIED set on a compressed cluster/);
});

Deno.test("assertStructure reports data clusters outside the file", async () => {
  const message = await damaged((device, layout) =>
    setEntry(device, layout.l2 + 8, (hi, lo) => [hi + 1, lo])
  );
  assert.match(message, /lies outside the file/);
});

Deno.test("assertStructure counts compressed clusters sharing a host cluster once each", async () => {
  const cs = 64 * KiB;
  const { device, image } = await freshImage({ size: 8 * cs });
  for (let c = 0; c < 4; c++) await image.writeCompressed(new Uint8Array(cs).fill(c + 1), c * cs);
  await image.close();
  const summary = await assertStructure(device);
  assert.equal(summary.compressedClusters, 4);
  assert.equal(summary.compressedHostClusters, 1);
  assert.equal(summary.sharedHostClusters, 1);
  assert.equal(summary.maxRefcount, 4);
});
