import assert from "node:assert/strict";
import { writeU16, writeU32, writeU64 } from "../core/bytes.ts";
import { MemoryDevice } from "../core/memory_device.ts";
import { checkQcow2 } from "../drivers/qcow2/check.ts";
import { createQcow2 } from "../drivers/qcow2/create.ts";
import { Qcow2Image } from "../drivers/qcow2/qcow2_image.ts";
import { HAVE_QEMU, makeTempDir, runTool } from "./_qemu.ts";

const CLUSTER = 65536;

/**
 * A version 3 image whose snapshot table holds `count` entries, each with an empty L1 table and
 * `extra` bytes of extra data, placed after the image's last cluster (without refcounts: the
 * check counts those as corruptions, which the repair fixes too).
 */
async function withSnapshots(count: number, extra: number): Promise<MemoryDevice> {
  const device = new MemoryDevice({ name: "snapshots.qcow2" });
  await createQcow2(device, { size: 1 << 20, clusterSize: CLUSTER });
  {
    await using image = await Qcow2Image.open(device, { readOnly: false });
    await image.write(new Uint8Array(4096).fill(7), 0);
  }
  const encoder = new TextEncoder();
  const entries: Uint8Array[] = [];
  let size = 0;
  for (let i = 0; i < count; i++) {
    const id = encoder.encode(String(i + 1));
    const name = encoder.encode(`s${i + 1}`);
    const length = Math.ceil((40 + extra + id.length + name.length) / 8) * 8;
    const entry = new Uint8Array(length);
    writeU16(entry, 12, id.length);
    writeU16(entry, 14, name.length);
    writeU32(entry, 36, extra);
    writeU64(entry, 40 + 8, 1 << 20); // the disk size, in the extra data
    entry.set(id, 40 + extra);
    entry.set(name, 40 + extra + id.length);
    entries.push(entry);
    size += length;
  }
  const table = new Uint8Array(size);
  let at = 0;
  for (const entry of entries) {
    table.set(entry, at);
    at += entry.length;
  }
  const offset = Math.ceil(device.size / CLUSTER) * CLUSTER;
  await device.write(table, offset);
  const pointer = new Uint8Array(12);
  writeU32(pointer, 0, count);
  writeU64(pointer, 4, offset);
  await device.write(pointer, 60);
  return device;
}

/** How many snapshots qemu-img check -r all keeps of the same image (undefined without qemu). */
async function qemuKeeps(bytes: Uint8Array): Promise<number | undefined> {
  if (!HAVE_QEMU) return undefined;
  await using dir = await makeTempDir();
  const path = `${dir.path}/qemu.qcow2`;
  await Deno.writeFile(path, bytes);
  const repair = await runTool("qemu-img", ["check", "-r", "all", path]);
  assert.equal(repair.code, 0, repair.stdout + repair.stderr);
  const list = await runTool("qemu-img", ["snapshot", "-l", path]);
  // A title line and a column header above one line per snapshot.
  return list.stdout.trimEnd().split("\n").length - 2;
}

async function snapshotCount(device: MemoryDevice): Promise<number> {
  await using image = await Qcow2Image.open(device);
  return (await image.listSnapshots()).length;
}

async function qemuCheckClean(device: MemoryDevice): Promise<void> {
  if (!HAVE_QEMU) return;
  await using dir = await makeTempDir();
  const path = `${dir.path}/repaired.qcow2`;
  await Deno.writeFile(path, device.toBytes());
  const run = await runTool("qemu-img", ["check", path]);
  assert.equal(run.code, 0, run.stdout + run.stderr);
}

Deno.test("check: more than 65536 snapshots fail the check; -r all discards the overhanging ones", async () => {
  const device = await withSnapshots(65537, 24);
  const qemu = await qemuKeeps(device.toBytes());
  const checked = await checkQcow2(device);
  assert.equal(checked["check-errors"], 1);
  assert.ok(checked.messages.some((m) => /snapshot table too large/.test(m)), checked.messages[0]);

  const repaired = await checkQcow2(device, { repair: "all" });
  assert.ok(
    repaired.messages.includes("Discarding 1 overhanging snapshots"),
    repaired.messages.join("\n"),
  );
  assert.equal(repaired["check-errors"], 0);
  assert.equal(repaired.corruptions ?? 0, 0, repaired.messages.join("\n"));
  assert.ok((repaired["corruptions-fixed"] ?? 0) >= 1);
  assert.equal(await snapshotCount(device), 65536);
  if (qemu !== undefined) assert.equal(qemu, 65536);
  const again = await checkQcow2(device);
  assert.equal((again.corruptions ?? 0) + (again.leaks ?? 0) + again["check-errors"], 0);
  await qemuCheckClean(device);
});

Deno.test("check: a snapshot table over 64 MiB fails the check; -r all keeps the entries that fit", async () => {
  const device = await withSnapshots(64000, 1024);
  const qemu = await qemuKeeps(device.toBytes());
  const checked = await checkQcow2(device);
  assert.equal(checked["check-errors"], 1);
  assert.ok(checked.messages.some((m) => /Snapshot table is too big/.test(m)));

  const repaired = await checkQcow2(device, { repair: "all" });
  const line = repaired.messages.find((m) =>
    /overhanging snapshots \(snapshot table is too big\)/.test(m)
  );
  assert.ok(line, repaired.messages.join("\n"));
  const dropped = Number(/Discarding (\d+)/.exec(line)![1]);
  assert.ok(dropped > 0 && dropped < 64000, line);
  assert.equal(repaired["check-errors"], 0);
  assert.equal(repaired.corruptions ?? 0, 0, repaired.messages.join("\n"));
  assert.equal(await snapshotCount(device), 64000 - dropped);
  if (qemu !== undefined) assert.equal(64000 - dropped, qemu, "qemu-img keeps another number");
  const again = await checkQcow2(device);
  assert.equal((again.corruptions ?? 0) + (again.leaks ?? 0) + again["check-errors"], 0);
});
