import assert from "node:assert/strict";
import { MemoryDevice } from "../core/memory_device.ts";
import { isQcowError } from "../core/errors.ts";
import { RecordingDevice } from "./recording_device.ts";

Deno.test("RecordingDevice logs writes, flushes and truncations with the last event", async () => {
  const inner = new MemoryDevice();
  const events: string[] = [];
  Object.assign(inner, { event: (name: string) => events.push(name) });
  const device = new RecordingDevice(inner);
  const data = new Uint8Array([1, 2, 3]);
  await device.write(data, 10);
  device.event("l2_update");
  await device.write(data, 20);
  data.fill(9); // the log holds a copy
  await device.flush();
  device.event("cluster_alloc");
  await device.truncate(4096);
  assert.deepEqual(device.log, [
    { kind: "write", offset: 10, data: new Uint8Array([1, 2, 3]), event: undefined },
    { kind: "write", offset: 20, data: new Uint8Array([1, 2, 3]), event: "l2_update" },
    { kind: "flush", event: "l2_update" },
    { kind: "truncate", size: 4096, event: "cluster_alloc" },
  ]);
  assert.deepEqual(events, ["l2_update", "cluster_alloc"]);
  assert.equal(device.size, 4096);
  const back = new Uint8Array(3);
  await device.read(back, 20);
  assert.deepEqual(back, new Uint8Array([1, 2, 3]));
});

Deno.test("RecordingDevice does not log I/O that failed", async () => {
  const device = new RecordingDevice(new MemoryDevice({ readOnly: true }));
  await assert.rejects(device.write(new Uint8Array(1), 0), (e) => isQcowError(e, "READ_ONLY"));
  await assert.rejects(device.truncate(1), (e) => isQcowError(e, "READ_ONLY"));
  await device.close();
  await assert.rejects(device.flush(), (e) => isQcowError(e, "CLOSED"));
  assert.equal(device.log.length, 0);
});
