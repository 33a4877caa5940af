import assert from "node:assert/strict";
import { MemoryDevice } from "../core/memory_device.ts";
import { isQcowError } from "../core/errors.ts";
import { FaultyDevice } from "./faulty_device.ts";
import type { FaultRule } from "./fault_rule.ts";

function device(rules: FaultRule[]): { faulty: FaultyDevice; memory: MemoryDevice } {
  const memory = new MemoryDevice({ size: 1 << 20 });
  return { faulty: new FaultyDevice(memory, { rules }), memory };
}

async function outcome(promise: Promise<void>): Promise<string> {
  try {
    await promise;
    return "ok";
  } catch (error) {
    return isQcowError(error) ? error.code : "other";
  }
}

Deno.test("FaultyDevice fails the nth write once, or from the nth on when sticky", async () => {
  const once = device([{ kind: "io-error", io: ["write"], nth: 3, once: true }]).faulty;
  const sticky = device([{ kind: "io-error", io: ["write"], nth: 3 }]).faulty;
  const results = { once: [] as string[], sticky: [] as string[] };
  for (let i = 0; i < 5; i++) {
    await once.read(new Uint8Array(1), 0); // reads do not count
    results.once.push(await outcome(once.write(new Uint8Array(1), i)));
    results.sticky.push(await outcome(sticky.write(new Uint8Array(1), i)));
  }
  assert.deepEqual(results.once, ["ok", "ok", "IO", "ok", "ok"]);
  assert.deepEqual(results.sticky, ["ok", "ok", "IO", "IO", "IO"]);
  assert.equal(once.stats.io.write, 5);
  assert.equal(once.stats.io.read, 5);
  assert.equal(once.stats.bytesWritten, 4);
  assert.equal(once.stats.faults.length, 1);
  assert.equal(once.stats.faults[0]!.offset, 2);
});

Deno.test("FaultyDevice fails only I/O touching a byte range, and says which rule", async () => {
  const { faulty } = device([
    { kind: "io-error", offset: 4096, length: 512, errno: "EIO", name: "bad sector" },
  ]);
  assert.equal(await outcome(faulty.write(new Uint8Array(4096), 0)), "ok");
  assert.equal(await outcome(faulty.write(new Uint8Array(10), 4608)), "ok");
  assert.equal(await outcome(faulty.flush()), "ok");
  const error = await faulty.read(new Uint8Array(2), 4095).catch((e) => e);
  assert.ok(isQcowError(error, "IO"));
  assert.match(error.message, /EIO.*read of 2 bytes at offset 4095, by bad sector/);
});

Deno.test("FaultyDevice emulates a full disk with ENOSPC", async () => {
  const { faulty, memory } = device([{ kind: "disk-full", afterBytes: 10_000 }]);
  assert.equal(await outcome(faulty.write(new Uint8Array(8192).fill(1), 0)), "ok");
  assert.equal(await outcome(faulty.write(new Uint8Array(4096).fill(2), 8192)), "NO_SPACE");
  assert.equal(await outcome(faulty.write(new Uint8Array(1000).fill(3), 8192)), "ok");
  assert.equal(await outcome(faulty.write(new Uint8Array(1000), 0)), "NO_SPACE");
  assert.equal(await outcome(faulty.read(new Uint8Array(10), 0)), "ok");
  const back = new Uint8Array(1);
  await memory.read(back, 8192);
  assert.equal(back[0], 3);
});

Deno.test("FaultyDevice tears a failing write after its first sectors", async () => {
  const { faulty, memory } = device([{ kind: "io-error", io: ["write"], torn: 2, once: true }]);
  const error = await faulty.write(new Uint8Array(2048).fill(7), 256).catch((e) => e);
  assert.ok(isQcowError(error, "IO"));
  // Sectors 0 and 1 of the write: bytes 256..1023.
  const back = new Uint8Array(2048 + 512);
  await memory.read(back, 0);
  assert.equal(back[255], 0);
  assert.equal(back[256], 7);
  assert.equal(back[1023], 7);
  assert.equal(back[1024], 0);
  assert.equal(faulty.stats.faults[0]!.persisted, 768);
});

Deno.test("FaultyDevice arms inject-error rules on driver events, as blkdebug does", async () => {
  const { faulty } = device([{ kind: "inject-error", event: "l2_update", nth: 2, once: true }]);
  faulty.event("l2_update");
  assert.equal(await outcome(faulty.write(new Uint8Array(1), 0)), "ok");
  faulty.event("l2_update");
  faulty.event("cluster_alloc"); // an event without rules leaves the armed rule armed
  assert.equal(await outcome(faulty.write(new Uint8Array(1), 0)), "IO");
  assert.equal(await outcome(faulty.write(new Uint8Array(1), 0)), "ok");
  faulty.event("l2_update");
  assert.equal(await outcome(faulty.write(new Uint8Array(1), 0)), "ok");
  assert.deepEqual(faulty.stats.events, { l2_update: 3, cluster_alloc: 1 });
  assert.equal(faulty.stats.faults[0]!.event, "cluster_alloc");
});

Deno.test("FaultyDevice keeps a sticky event rule armed and filters by I/O kind", async () => {
  const { faulty } = device([{ kind: "inject-error", event: "flush_to_disk", io: ["flush"] }]);
  assert.equal(await outcome(faulty.flush()), "ok");
  faulty.event("flush_to_disk");
  assert.equal(await outcome(faulty.write(new Uint8Array(1), 0)), "ok");
  assert.equal(await outcome(faulty.flush()), "IO");
  assert.equal(await outcome(faulty.flush()), "IO");
  faulty.clearRules();
  assert.equal(await outcome(faulty.flush()), "ok");
});

Deno.test("FaultyDevice follows set-state rules: a fault only in state 2", async () => {
  const { faulty } = device([
    { kind: "set-state", event: "l2_update", state: 1, newState: 2 },
    { kind: "inject-error", event: "refblock_alloc", state: 2, errno: "ENOSPC", once: true },
  ]);
  faulty.event("refblock_alloc"); // state 1: nothing armed
  assert.equal(await outcome(faulty.write(new Uint8Array(1), 0)), "ok");
  faulty.event("l2_update");
  assert.equal(faulty.stats.state, 2);
  faulty.event("refblock_alloc");
  assert.equal(await outcome(faulty.write(new Uint8Array(1), 0)), "NO_SPACE");
});

Deno.test("FaultyDevice applies set-state after the event's other rules", () => {
  const { faulty } = device([
    { kind: "set-state", event: "l1_update", state: 1, newState: 2 },
    { kind: "set-state", event: "l1_update", state: 2, newState: 3 },
  ]);
  faulty.event("l1_update");
  assert.equal(faulty.stats.state, 2);
  faulty.event("l1_update");
  assert.equal(faulty.stats.state, 3);
});

Deno.test("FaultyDevice adds latency without failing, and forwards events", async () => {
  const memory = new MemoryDevice({ size: 512 });
  const seen: string[] = [];
  Object.assign(memory, { event: (name: string) => seen.push(name) });
  const faulty = new FaultyDevice(memory, { rules: [{ kind: "latency", ms: 1 }] });
  faulty.event("write_aio");
  await faulty.write(new Uint8Array(512), 0);
  assert.deepEqual(seen, ["write_aio"]);
  assert.equal(faulty.stats.faults.length, 0);
});

Deno.test("FaultyDevice refuses a malformed rule with INVALID_SCENARIO naming the field", () => {
  const bad = [{ kind: "inject-error", event: "l2_updat" }] as unknown as FaultRule[];
  assert.throws(
    () => new FaultyDevice(new MemoryDevice(), { rules: bad }),
    (e) => isQcowError(e, "INVALID_SCENARIO") && /0\.event/.test(e.message),
  );
  const faulty = new FaultyDevice(new MemoryDevice());
  assert.throws(
    () => faulty.addRule({ kind: "io-error", nth: 0 }),
    (e) => isQcowError(e, "INVALID_SCENARIO") && /nth/.test(e.message),
  );
});
