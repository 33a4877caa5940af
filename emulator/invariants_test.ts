import assert from "node:assert/strict";
import { RUN_TAGS, type StateObservation, WorkloadModel } from "./invariants.ts";
import type { OpRecord } from "./workload_run.ts";
import { GARBAGE } from "./workload_pattern.ts";

// Four sectors. #0 writes sectors 0-1 (log entries 0-1), flush (2-3), #2 writes sector 1 (4),
// close (5-6). Tags: #0 -> 2, #2 -> 4.
const ops: OpRecord[] = [
  { op: { op: "write", offset: 0, length: 1024 }, tag: 2, start: 0, end: 2 },
  { op: { op: "flush" }, tag: 3, start: 2, end: 4 },
  { op: { op: "write", offset: 512, length: 512 }, tag: 4, start: 4, end: 5 },
  { op: { op: "close" }, tag: 0, start: 5, end: 7 },
];
const image = { format: "qcow2" as const, size: 2048 };

function observed(tags: number[]): StateObservation {
  const clean = { status: 0, corruptions: 0, leaks: 0, checkErrors: 0, copied: 0 };
  return {
    flagsBefore: { dirty: false, corrupt: false },
    checkBefore: clean,
    open: { ok: true },
    size: 2048,
    runs: [{ start: 0, length: 4, kind: RUN_TAGS, host: -1, tags: Int32Array.from(tags) }],
    markedCorrupt: false,
    checkAfter: clean,
    flagsAfter: { dirty: false, corrupt: false },
  };
}

Deno.test("WorkloadModel judges flushed and pending sectors", () => {
  const model = new WorkloadModel(image, ops);
  const none = (): number => 0;
  // Crash after the flush, before #2: everything flushed must be exact.
  assert.deepEqual(model.judge(4, observed([2, 2, 0, 0]), none).failures, []);
  assert.equal(model.judge(4, observed([2, 0, 0, 0]), none).results.d, false);
  // #2 issued: sector 1 may read the old (flushed) or the new data, nothing else.
  assert.deepEqual(model.judge(5, observed([2, 4, 0, 0]), none).failures, []);
  assert.deepEqual(model.judge(5, observed([2, 2, 0, 0]), none).failures, []);
  const garbage = model.judge(5, observed([2, GARBAGE, 0, 0]), none);
  assert.equal(garbage.results.e, false);
  assert.equal(garbage.results.d, true);
  // After the close completed, #2 is acknowledged: the old data no longer passes.
  assert.equal(model.judge(7, observed([2, 2, 0, 0]), none).results.d, false);
  assert.deepEqual(model.judge(7, observed([2, 4, 0, 0]), none).failures, []);
});

Deno.test("WorkloadModel judges the checks, the corrupt bit and a failed open", () => {
  const model = new WorkloadModel(image, ops);
  const obs = observed([2, 2, 0, 0]);
  obs.checkBefore = { status: 2, corruptions: 1, leaks: 0, checkErrors: 0, copied: 0 };
  obs.flagsAfter = { dirty: false, corrupt: true };
  const verdict = model.judge(4, obs, () => 0);
  assert.equal(verdict.results.b, false);
  assert.equal(verdict.results.f, false);
  // With lazy refcounts (b) does not apply.
  assert.equal(new WorkloadModel(image, ops, true).judge(4, obs, () => 0).results.b, undefined);
  const closed = observed([]);
  closed.open = { ok: false, typed: false, message: "boom" };
  const failed = model.judge(4, closed, () => 0);
  assert.equal(failed.results.a, false);
  assert.equal(failed.results.d, false);
});

Deno.test("WorkloadModel lets a failed request's data appear, or not, for good", () => {
  const failedOps: OpRecord[] = ops.map((op, i) => i === 0 ? { ...op, failed: "injected" } : op);
  const model = new WorkloadModel(image, failedOps);
  // Long after the flush, sector 0 may be zeros (not written) or #0's data.
  assert.deepEqual(model.judge(7, observed([0, 4, 0, 0]), () => 0).failures, []);
  assert.deepEqual(model.judge(7, observed([2, 4, 0, 0]), () => 0).failures, []);
  assert.equal(model.judge(7, observed([GARBAGE, 4, 0, 0]), () => 0).results.e, false);
});

// #0 writes sectors 0-1 (entries 0-1), #1 snapshots "a" (2-4), #2 writes sector 0 (5), #3
// applies "a" (6-9), #4 deletes "a" (10-12), close (13-14). Tags: #0 -> 2, #2 -> 4.
const snapshotOps: OpRecord[] = [
  { op: { op: "write", offset: 0, length: 1024 }, tag: 2, start: 0, end: 2 },
  { op: { op: "snapshot_create", name: "a" }, tag: 3, start: 2, end: 5 },
  { op: { op: "write", offset: 0, length: 512 }, tag: 4, start: 5, end: 6 },
  { op: { op: "snapshot_apply", name: "a" }, tag: 5, start: 6, end: 10 },
  { op: { op: "snapshot_delete", name: "a" }, tag: 6, start: 10, end: 13 },
  { op: { op: "close" }, tag: 0, start: 13, end: 15 },
];

function withSnapshots(tags: number[], snapshots: string[]): StateObservation {
  return { ...observed(tags), snapshots };
}

Deno.test("WorkloadModel: snapshot requests are durable once done, atomic while running", () => {
  const model = new WorkloadModel(image, snapshotOps);
  const none = (): number => 0;
  assert.deepEqual(model.snapshotsAfter(1), ["a"]);
  assert.deepEqual(model.snapshotsAfter(4), []);
  // Inside the create: the table may or may not list "a"; anything else breaks (g).
  assert.deepEqual(model.judge(3, withSnapshots([2, 2, 0, 0], []), none).failures, []);
  assert.deepEqual(model.judge(3, withSnapshots([2, 2, 0, 0], ["a"]), none).failures, []);
  assert.equal(model.judge(3, withSnapshots([2, 2, 0, 0], ["b"]), none).results.g, false);
  // Once the create is done, #0 is durable and "a" must be listed.
  assert.equal(model.judge(5, withSnapshots([2, 2, 0, 0], []), none).results.g, false);
  assert.equal(model.judge(5, withSnapshots([0, 2, 0, 0], ["a"]), none).results.d, false);
  // Inside the apply: all of the state before (#2's sector 0) or all of the snapshot's.
  assert.deepEqual(model.judge(7, withSnapshots([4, 2, 0, 0], ["a"]), none).failures, []);
  assert.deepEqual(model.judge(7, withSnapshots([2, 2, 0, 0], ["a"]), none).failures, []);
  // Once the apply is done, the snapshot's contents are required.
  assert.equal(model.judge(10, withSnapshots([4, 2, 0, 0], ["a"]), none).results.d, false);
  assert.deepEqual(model.judge(11, withSnapshots([2, 2, 0, 0], []), none).failures, []);
});

Deno.test("WorkloadModel: a half-applied snapshot breaks (g)", () => {
  // Two sectors differ between the state before the apply and the snapshot.
  const ops2: OpRecord[] = [
    { op: { op: "write", offset: 0, length: 1024 }, tag: 2, start: 0, end: 2 },
    { op: { op: "snapshot_create", name: "a" }, tag: 3, start: 2, end: 5 },
    { op: { op: "write", offset: 0, length: 1024 }, tag: 4, start: 5, end: 6 },
    { op: { op: "flush" }, tag: 5, start: 6, end: 7 },
    { op: { op: "snapshot_apply", name: "a" }, tag: 6, start: 7, end: 10 },
    { op: { op: "close" }, tag: 0, start: 10, end: 12 },
  ];
  const model = new WorkloadModel(image, ops2);
  const none = (): number => 0;
  assert.deepEqual(model.judge(8, withSnapshots([4, 4, 0, 0], ["a"]), none).failures, []);
  assert.deepEqual(model.judge(8, withSnapshots([2, 2, 0, 0], ["a"]), none).failures, []);
  const mixed = model.judge(8, withSnapshots([2, 4, 0, 0], ["a"]), none);
  assert.equal(mixed.results.g, false);
  assert.equal(mixed.results.e, true);
});

Deno.test("WorkloadModel: OFLAG_COPIED mismatches pass (b) only inside a snapshot request", () => {
  const model = new WorkloadModel(image, snapshotOps);
  const copied = { status: 2, corruptions: 2, leaks: 1, checkErrors: 0, copied: 2 };
  const inside = withSnapshots([4, 2, 0, 0], ["a"]);
  inside.checkBefore = copied;
  const verdict = model.judge(7, inside, () => 0);
  assert.equal(verdict.results.b, true);
  assert.equal(verdict.allowed, "oflag-copied");
  // Outside a snapshot request the same check is a violation.
  const outside = withSnapshots([2, 2, 0, 0], ["a"]);
  outside.checkBefore = copied;
  assert.equal(model.judge(5, outside, () => 0).results.b, false);
  // So is any other corruption inside one.
  inside.checkBefore = { ...copied, copied: 1 };
  assert.equal(model.judge(7, inside, () => 0).results.b, false);
});
