import assert from "node:assert/strict";
import { writeU16, writeU32, writeU64 } from "../../core/bytes.ts";
import { QcowError } from "../../core/errors.ts";
import { MemoryDevice } from "../../core/memory_device.ts";
import type { Qcow2Header } from "./header.ts";
import { checkSnapshotTable, MAX_SNAPSHOT_TABLE_BYTES, SNAPSHOT_ENTRY_BYTES } from "./snapshots.ts";

interface Entry {
  extraData?: number;
  id?: string;
  name?: string;
  /** Lengths to store without writing the strings (they are never read). */
  idLength?: number;
  nameLength?: number;
}

/** Writes snapshot table entries at `offset`; returns the offset after the last one. */
async function writeTable(device: MemoryDevice, offset: number, entries: Entry[]): Promise<number> {
  let at = offset;
  for (const entry of entries) {
    at = Math.ceil(at / 8) * 8;
    const id = new TextEncoder().encode(entry.id ?? "");
    const name = new TextEncoder().encode(entry.name ?? "");
    const extraData = entry.extraData ?? 24;
    const bytes = new Uint8Array(SNAPSHOT_ENTRY_BYTES);
    writeU64(bytes, 0, 0x50000);
    writeU32(bytes, 8, 1);
    const idLength = entry.idLength ?? id.length;
    const nameLength = entry.nameLength ?? name.length;
    writeU16(bytes, 12, idLength);
    writeU16(bytes, 14, nameLength);
    writeU32(bytes, 36, extraData);
    await device.write(bytes, at);
    at += SNAPSHOT_ENTRY_BYTES + extraData;
    await device.write(id, at);
    at += idLength;
    await device.write(name, at);
    at += nameLength;
  }
  return at;
}

function header(nbSnapshots: number, snapshotsOffset: number): Qcow2Header {
  return { nbSnapshots, snapshotsOffset } as Qcow2Header;
}

async function rejectsBadTable(promise: Promise<unknown>, pattern: RegExp): Promise<void> {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(error instanceof QcowError, `expected a QcowError, got ${error}`);
    assert.equal(error.code, "BAD_TABLE");
    assert.match(error.message, pattern);
    return true;
  });
}

Deno.test("checkSnapshotTable() accepts entries as qemu-img writes them", async () => {
  const device = new MemoryDevice({ size: 0x80000 });
  await writeTable(device, 0x70000, [
    { id: "1", name: "first" },
    { id: "2", name: "a longer snapshot name", extraData: 1024 },
    { id: "3", name: "", extraData: 0 },
  ]);
  await checkSnapshotTable(device, header(3, 0x70000));
});

Deno.test("checkSnapshotTable() refuses more than 1 KiB of extra data, naming the entry", async () => {
  const device = new MemoryDevice({ size: 0x80000 });
  await writeTable(device, 0x70000, [{ id: "1", name: "ok" }, { id: "2", extraData: 1025 }]);
  await rejectsBadTable(
    checkSnapshotTable(device, header(2, 0x70000)),
    /Too much extra metadata in snapshot table entry 1 \(1025 bytes/,
  );
  // Entries past the count are not looked at.
  await checkSnapshotTable(device, header(1, 0x70000));
});

Deno.test("checkSnapshotTable() reads a table past the end of the file as empty entries", async () => {
  const device = new MemoryDevice({ size: 0x50000 });
  await checkSnapshotTable(device, header(65536, 0x100000));
  // A table that starts inside the file and runs past its end.
  await writeTable(device, 0x4ffc0, [{ id: "1", name: "x" }]);
  await checkSnapshotTable(device, header(1000, 0x4ffc0));
});

Deno.test("checkSnapshotTable() refuses a table over 64 MiB", async () => {
  // Entries of 40 + 1024 + 2 * 65535 bytes: about 508 of them fill 64 MiB.
  const big = { extraData: 1024, idLength: 65535, nameLength: 65535 };
  const perEntry = Math.ceil((SNAPSHOT_ENTRY_BYTES + 1024 + 2 * 65535) / 8) * 8;
  const count = Math.ceil(MAX_SNAPSHOT_TABLE_BYTES / perEntry) + 1;
  const device = new MemoryDevice({ size: 0x10000, chunkSize: 4096 });
  await writeTable(device, 0x10000, Array.from({ length: count }, () => big));
  await rejectsBadTable(
    checkSnapshotTable(device, header(count, 0x10000)),
    /Snapshot table exceeds the maximum size/,
  );
  await checkSnapshotTable(device, header(count - 2, 0x10000));
});
