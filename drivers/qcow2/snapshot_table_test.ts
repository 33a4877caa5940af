import assert from "node:assert/strict";
import { readU32, writeU16, writeU32, writeU64 } from "../../core/bytes.ts";
import { QcowError } from "../../core/errors.ts";
import {
  alignEntry,
  decodeSnapshotTable,
  encodeSnapshotEntries,
  findSnapshot,
  findSnapshotByName,
  MAX_SNAPSHOT_COUNT,
  nextSnapshotId,
  NO_ICOUNT,
  snapshotBytes,
  type SnapshotEntry,
  snapshotTableSize,
  snapshotText,
} from "./snapshot_table.ts";

function entry(id: string, name: string, extra: Partial<SnapshotEntry> = {}): SnapshotEntry {
  return {
    l1TableOffset: 0x30000,
    l1Size: 3,
    idBytes: snapshotBytes(id),
    nameBytes: snapshotBytes(name),
    dateSec: 1_700_000_000,
    dateNsec: 123_000_000,
    vmClockNsec: 5_000_000_123n,
    vmStateSize: 0,
    diskSize: 1 << 30,
    icount: 0n,
    unknownExtraData: new Uint8Array(0),
    extraDataSize: 24,
    ...extra,
  };
}

/** Writes one raw entry as an older or foreign writer might; returns the end offset. */
function rawEntry(
  table: Uint8Array,
  at: number,
  fields: { extra: Uint8Array; id: string; name: string; vmState32?: number },
): number {
  const id = snapshotBytes(fields.id);
  const name = snapshotBytes(fields.name);
  writeU64(table, at, 0x40000);
  writeU32(table, at + 8, 2);
  writeU16(table, at + 12, id.length);
  writeU16(table, at + 14, name.length);
  writeU32(table, at + 32, fields.vmState32 ?? 0);
  writeU32(table, at + 36, fields.extra.length);
  table.set(fields.extra, at + 40);
  table.set(id, at + 40 + fields.extra.length);
  table.set(name, at + 40 + fields.extra.length + id.length);
  return at + 40 + fields.extra.length + id.length + name.length;
}

Deno.test("encodeSnapshotEntries() and decodeSnapshotTable() round-trip every field", () => {
  const entries = [
    entry("1", "first"),
    entry("2", "second, with state", {
      vmStateSize: 5 * 2 ** 32 + 7,
      icount: NO_ICOUNT,
      vmClockNsec: 2n ** 63n + 5n,
      unknownExtraData: new Uint8Array([9, 8, 7, 6, 5]),
    }),
    entry("10", "héllo"),
  ];
  const table = encodeSnapshotEntries(entries);
  assert.equal(table.length, snapshotTableSize(entries));
  const decoded = decodeSnapshotTable(table, entries.length, 1);
  assert.equal(decoded.size, table.length);
  for (const [i, want] of entries.entries()) {
    const got = decoded.entries[i]!;
    assert.deepEqual(got.idBytes, want.idBytes);
    assert.deepEqual(got.nameBytes, want.nameBytes);
    assert.equal(got.l1TableOffset, want.l1TableOffset);
    assert.equal(got.l1Size, want.l1Size);
    assert.equal(got.dateSec, want.dateSec);
    assert.equal(got.dateNsec, want.dateNsec);
    assert.equal(got.vmClockNsec, want.vmClockNsec);
    assert.equal(got.vmStateSize, want.vmStateSize);
    assert.equal(got.diskSize, want.diskSize);
    assert.equal(got.icount, want.icount);
    assert.deepEqual(got.unknownExtraData, want.unknownExtraData);
  }
  assert.equal(snapshotText(decoded.entries[2]!.nameBytes), "héllo");
});

Deno.test("encodeSnapshotEntries() starts every entry at an 8-byte boundary", () => {
  // 40 + 24 + 1 + 2 = 67 bytes: the next entry starts at 72.
  const table = encodeSnapshotEntries([entry("1", "ab"), entry("2", "c")]);
  assert.equal(readU32(table, 72 + 36), 24);
  assert.equal(table.length, 72 + 67 - 1);
  assert.equal(alignEntry(67), 72);
});

Deno.test("encodeSnapshotEntries() sets the 32-bit VM state size only when it fits", () => {
  const small = encodeSnapshotEntries([entry("1", "a", { vmStateSize: 1234 })]);
  assert.equal(readU32(small, 32), 1234);
  const large = encodeSnapshotEntries([entry("1", "a", { vmStateSize: 2 ** 32 + 1 })]);
  assert.equal(readU32(large, 32), 0);
});

Deno.test("decodeSnapshotTable() fills in what short extra data lacks, as QEMU reads it", () => {
  const table = new Uint8Array(256);
  // No extra data: the 32-bit VM state size, the image's disk size, no instruction count.
  let at = rawEntry(table, 0, { extra: new Uint8Array(0), id: "1", name: "old", vmState32: 77 });
  // 16 bytes (the version 3 minimum): 64-bit VM state size and disk size, no instruction count.
  const extra16 = new Uint8Array(16);
  writeU64(extra16, 0, 99);
  writeU64(extra16, 8, 4096);
  at = rawEntry(table, alignEntry(at), { extra: extra16, id: "2", name: "v3" });
  const decoded = decodeSnapshotTable(table, 2, 1 << 20);
  const [first, second] = decoded.entries as [SnapshotEntry, SnapshotEntry];
  assert.equal(first.vmStateSize, 77);
  assert.equal(first.diskSize, 1 << 20);
  assert.equal(first.icount, NO_ICOUNT);
  assert.equal(first.extraDataSize, 0);
  assert.equal(second.vmStateSize, 99);
  assert.equal(second.diskSize, 4096);
  assert.equal(second.icount, NO_ICOUNT);
  assert.equal(decoded.size, at);
  // Rewritten, both get the 24 bytes QEMU writes.
  const again = decodeSnapshotTable(encodeSnapshotEntries(decoded.entries), 2, 0).entries;
  assert.deepEqual(again.map((e) => e.extraDataSize), [24, 24]);
  assert.equal(again[0]!.diskSize, 1 << 20);
});

Deno.test("decodeSnapshotTable() keeps unknown extra data and cuts strings at NUL", () => {
  const table = new Uint8Array(256);
  const extra = new Uint8Array(40).fill(0xee);
  rawEntry(table, 0, { extra, id: "7\0junk", name: "name\0rest" });
  const [only] = decodeSnapshotTable(table, 1, 0).entries as [SnapshotEntry];
  assert.deepEqual(only.unknownExtraData, new Uint8Array(16).fill(0xee));
  assert.equal(snapshotText(only.idBytes), "7");
  assert.equal(snapshotText(only.nameBytes), "name");
  const rewritten = encodeSnapshotEntries([only]);
  assert.equal(readU32(rewritten, 36), 40);
  assert.deepEqual(rewritten.subarray(40 + 24, 40 + 40), new Uint8Array(16).fill(0xee));
});

Deno.test("decodeSnapshotTable() refuses what QEMU refuses", () => {
  const table = new Uint8Array(2048);
  rawEntry(table, 0, { extra: new Uint8Array(1025), id: "1", name: "x" });
  assert.throws(
    () => decodeSnapshotTable(table, 1, 0),
    (e: unknown) =>
      e instanceof QcowError && e.code === "BAD_TABLE" && /extra metadata/.test(e.message),
  );
  assert.throws(
    () => decodeSnapshotTable(new Uint8Array(8), 1, 0),
    (e: unknown) => e instanceof QcowError && e.code === "BAD_TABLE",
  );
  assert.throws(
    () => decodeSnapshotTable(new Uint8Array(0), MAX_SNAPSHOT_COUNT + 1, 0),
    (e: unknown) => e instanceof QcowError && e.code === "BAD_TABLE",
  );
});

Deno.test("encodeSnapshotEntries() refuses entries beyond QEMU's limits", () => {
  const tooMuchExtra = entry("1", "a", { unknownExtraData: new Uint8Array(1001) });
  assert.throws(
    () => encodeSnapshotEntries([tooMuchExtra]),
    (e: unknown) => e instanceof QcowError && e.code === "INVALID_ARGUMENT",
  );
  const longName = entry("1", "a", { nameBytes: new Uint8Array(0x10000).fill(0x61) });
  assert.throws(
    () => encodeSnapshotEntries([longName]),
    (e: unknown) => e instanceof QcowError && e.code === "INVALID_ARGUMENT",
  );
  const many = new Array(MAX_SNAPSHOT_COUNT + 1).fill(entry("1", ""));
  assert.throws(
    () => encodeSnapshotEntries(many),
    (e: unknown) => e instanceof QcowError && e.code === "INVALID_ARGUMENT",
  );
});

Deno.test("nextSnapshotId() is one more than the largest numeric id, as strtoul reads them", () => {
  assert.equal(nextSnapshotId([]), "1");
  assert.equal(nextSnapshotId([entry("3", ""), entry("12abc", ""), entry("x", "")]), "13");
  assert.equal(nextSnapshotId([entry(" 41", "")]), "42");
});

Deno.test("findSnapshot() prefers ids; findSnapshotByName() matches names only", () => {
  const entries = [entry("1", "2"), entry("2", "one"), entry("3", "one")];
  assert.equal(findSnapshot(entries, "2"), 1);
  assert.equal(findSnapshot(entries, "one"), 1);
  assert.equal(findSnapshotByName(entries, "2"), 0);
  assert.equal(findSnapshotByName(entries, "1"), -1);
  assert.equal(findSnapshot(entries, "none"), -1);
});
