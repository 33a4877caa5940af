import assert from "node:assert/strict";
import { MemoryDevice } from "../core/memory_device.ts";
import { isQcowError } from "../core/errors.ts";
import {
  crashDevice,
  type CrashState,
  crashStateFromId,
  enumerateCrashStates,
  SECTOR_SIZE,
} from "./crash_states.ts";
import { RecordingDevice, type WriteLogEntry } from "./recording_device.ts";
import { seededRandom } from "./_random.ts";

/** The contents a state should have, built the slow obvious way: copy and apply. */
function expected(base: Uint8Array, log: readonly WriteLogEntry[], state: CrashState): Uint8Array {
  let disk = base.slice();
  const apply = (entry: WriteLogEntry, torn?: number): void => {
    if (entry.kind === "write") {
      let data = entry.data;
      if (torn !== undefined) {
        const end = (Math.floor(entry.offset / SECTOR_SIZE) + torn) * SECTOR_SIZE;
        data = data.subarray(0, end - entry.offset);
      }
      const size = Math.max(disk.length, data.length > 0 ? entry.offset + data.length : 0);
      if (size > disk.length) {
        const grown = new Uint8Array(size);
        grown.set(disk);
        disk = grown;
      }
      disk.set(data, entry.offset);
    } else if (entry.kind === "truncate") {
      const resized = new Uint8Array(entry.size);
      resized.set(disk.subarray(0, Math.min(entry.size, disk.length)));
      disk = resized;
    }
  };
  for (let i = 0; i < state.durable; i++) apply(log[i]!);
  state.applied.forEach((index, i) => {
    apply(log[index]!, i === state.applied.length - 1 ? state.torn : undefined);
  });
  return disk;
}

async function contents(device: { size: number; read(b: Uint8Array, o: number): Promise<void> }) {
  const bytes = new Uint8Array(device.size);
  await device.read(bytes, 0);
  return bytes;
}

/** A random log over a small disk: writes of 1 to 20 sectors, unaligned ones, flushes, resizes. */
async function randomLog(seed: number, count: number, size = 64 * 1024) {
  const random = seededRandom(seed);
  const base = new Uint8Array(size);
  for (let i = 0; i < size; i += 97) base[i] = (i / 97) & 0xff;
  const device = new RecordingDevice(MemoryDevice.from(base));
  for (let i = 0; i < count; i++) {
    const roll = random();
    if (roll < 0.15) await device.flush();
    else if (roll < 0.2) await device.truncate(Math.floor(random() * size * 1.5));
    else {
      const length = 1 + Math.floor(random() * 20 * SECTOR_SIZE);
      const offset = Math.floor(random() * size);
      await device.write(new Uint8Array(length).fill(1 + (i % 250)), offset);
    }
  }
  return { base, log: device.log, final: (device.inner as MemoryDevice).toBytes() };
}

Deno.test("enumerateCrashStates() lists every prefix once, in order, with unique ids", async () => {
  const { log } = await randomLog(1, 40);
  const states = [...enumerateCrashStates(log)];
  assert.equal(states.length, log.length + 1);
  assert.deepEqual(states.map((s) => s.crashPoint), states.map((_, i) => i));
  assert.equal(new Set(states.map((s) => s.id)).size, states.length);
});

Deno.test("crashDevice() of every prefix matches applying the log to a copy", async () => {
  for (const seed of [2, 3, 4]) {
    const { base, log, final } = await randomLog(seed, 60);
    const states = [...enumerateCrashStates(log, { subsets: true, torn: true, reorder: true })];
    for (const state of states) {
      const device = crashDevice(base, log, state);
      assert.deepEqual(await contents(device), expected(base, log, state), `state ${state.id}`);
    }
    // The last in-order state is what the real device holds.
    const last = states.filter((s) => s.crashPoint === log.length && !s.id.includes(":"));
    assert.deepEqual(await contents(crashDevice(base, log, last[0]!)), final);
  }
});

Deno.test("crashStateFromId() rebuilds every listed state", async () => {
  const { log } = await randomLog(5, 80);
  let count = 0;
  for (
    const state of enumerateCrashStates(log, { subsets: true, torn: true, reorder: true, seed: 9 })
  ) {
    assert.deepEqual(crashStateFromId(log, state.id), state);
    count++;
  }
  assert.ok(count > log.length);
});

Deno.test("enumerateCrashStates() lists all subsets of a small flush interval exactly once", () => {
  const write = (offset: number): WriteLogEntry => ({
    kind: "write",
    offset,
    data: new Uint8Array(512).fill(offset / 512 + 1),
    event: undefined,
  });
  const log = [write(0), { kind: "flush", event: undefined } as const, write(512), write(1024)];
  log.push(write(1536), write(2048));
  const states = [...enumerateCrashStates(log, { subsets: true })];
  // After the flush: 4 writes, so 2^4 subsets; the empty one is crash point 2.
  const after = states.filter((s) => s.crashPoint >= 2).map((s) => s.applied.join(","));
  assert.equal(after.length, 16);
  assert.equal(new Set(after).size, 16);
  assert.ok(after.includes(""));
  assert.ok(after.includes("2,3,4,5"));
  assert.ok(after.includes("3,5"));
});

Deno.test("enumerateCrashStates() samples by seed, reproducibly, within maxStatesPerPoint", () => {
  const log: WriteLogEntry[] = Array.from({ length: 40 }, (_, i) => ({
    kind: "write",
    offset: i * 4096,
    data: new Uint8Array(4096),
    event: "write_aio",
  }));
  const options = { subsets: true, torn: true, maxStatesPerPoint: 10, seed: 3 };
  const ids = [...enumerateCrashStates(log, options)].map((s) => s.id);
  assert.deepEqual([...enumerateCrashStates(log, options)].map((s) => s.id), ids);
  const other = [...enumerateCrashStates(log, { ...options, seed: 4 })].map((s) => s.id);
  assert.notDeepEqual(other, ids);
  const perPoint = new Map<string, number>();
  for (const id of ids) {
    const point = id.split(":")[0]!;
    perPoint.set(point, (perPoint.get(point) ?? 0) + 1);
  }
  assert.ok([...perPoint.values()].every((n) => n <= 10));
  assert.equal(perPoint.get("40"), 10);
  assert.equal(new Set(ids).size, ids.length);
});

Deno.test("torn states keep only the first sectors of the last write", async () => {
  const base = new Uint8Array(8192);
  const log: WriteLogEntry[] = [
    { kind: "write", offset: 100, data: new Uint8Array(1500).fill(7), event: "write_aio" },
  ];
  const torn = [...enumerateCrashStates(log, { torn: true })].filter((s) => s.torn !== undefined);
  // 100..1600 spans sectors 0, 1, 2 and 3: torn after 1, 2 or 3 of them.
  assert.deepEqual(torn.map((s) => s.id), ["1:t1", "1:t2", "1:t3"]);
  const bytes = await contents(crashDevice(base, log, torn[1]!));
  assert.equal(bytes[99], 0);
  assert.equal(bytes[100], 7);
  assert.equal(bytes[1023], 7);
  assert.equal(bytes[1024], 0);
});

Deno.test("crashStateFromId() refuses malformed ids and ids that do not fit the log", () => {
  const log: WriteLogEntry[] = [
    { kind: "write", offset: 0, data: new Uint8Array(512), event: undefined },
    { kind: "flush", event: undefined },
    { kind: "write", offset: 0, data: new Uint8Array(1024), event: undefined },
  ];
  for (
    const id of [
      "",
      "x",
      "4",
      "-1",
      "01",
      "3:s0",
      "3:s1",
      "3:s2,2",
      "3:t2",
      "3:s:t1",
      "3:q",
      "3:s3-2",
    ]
  ) {
    assert.throws(() => crashStateFromId(log, id), (e) => isQcowError(e, "INVALID_ARGUMENT"), id);
  }
  assert.equal(crashStateFromId(log, "3:t1").torn, 1);
  assert.deepEqual(crashStateFromId(log, "3:s").applied, []);
});

Deno.test("crashDevice() shares the durable part and never changes base, log or other states", async () => {
  const { base, log } = await randomLog(6, 50);
  const baseCopy = base.slice();
  const state = [...enumerateCrashStates(log)].at(-1)!;
  const one = crashDevice(base, log, state);
  const two = crashDevice(base, log, state);
  const before = await contents(two);
  await one.write(new Uint8Array(9000).fill(0xee), 10);
  await one.truncate(3);
  assert.deepEqual(await contents(two), before);
  assert.deepEqual(base, baseCopy);
  assert.deepEqual(await contents(crashDevice(base, log, state)), before);
});

Deno.test("enumerateCrashStates() streams: a huge log yields its first states at once", () => {
  const data = new Uint8Array(512);
  const log: WriteLogEntry[] = [];
  for (let i = 0; i < 200_000; i++) log.push({ kind: "write", offset: 0, data, event: undefined });
  const iterator = enumerateCrashStates(log, { subsets: true, maxStatesPerPoint: 1000 })[
    Symbol.iterator
  ]();
  let taken = 0;
  while (taken < 5000 && !iterator.next().done) taken++;
  assert.equal(taken, 5000);
});

Deno.test("enumerateCrashStates() refuses bad options", () => {
  assert.throws(() => enumerateCrashStates([], { maxStatesPerPoint: 0 }), /maxStatesPerPoint/);
  assert.throws(() => enumerateCrashStates([], { seed: 1.5 }), /seed/);
});

Deno.test("reordered states let an earlier overlapping write land last", async () => {
  const base = new Uint8Array(2048);
  const log: WriteLogEntry[] = [
    { kind: "write", offset: 0, data: new Uint8Array(1024).fill(1), event: undefined },
    { kind: "write", offset: 1536, data: new Uint8Array(512).fill(2), event: undefined },
    { kind: "write", offset: 512, data: new Uint8Array(512).fill(3), event: undefined },
  ];
  const reordered = [...enumerateCrashStates(log, { reorder: true })].filter((s) =>
    s.id.includes(":s")
  );
  // Only write 0 overlaps write 2; write 1 does not.
  assert.deepEqual(reordered.map((s) => s.id), ["3:s1-2,0"]);
  assert.deepEqual(crashStateFromId(log, "3:s1-2,0"), reordered[0]);
  const bytes = await contents(crashDevice(base, log, reordered[0]!));
  assert.equal(bytes[600], 1);
  assert.equal(bytes[1600], 2);
});
