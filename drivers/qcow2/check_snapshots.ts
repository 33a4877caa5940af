/**
 * Reading the internal snapshot table for a consistency check, as `qemu-img check` reads it: the
 * header's snapshot fields are judged here rather than at open, and what QEMU refuses to read
 * makes the check fail.
 *
 * @module
 */

import { readString, readU16, readU32, readU64 } from "../../core/bytes.ts";
import type { CheckCounts, CheckImage, CheckSnapshot } from "./check_image.ts";
import { MAX_SNAPSHOTS } from "./header.ts";
import {
  MAX_SNAPSHOT_EXTRA_DATA,
  MAX_SNAPSHOT_TABLE_BYTES,
  SNAPSHOT_ENTRY_BYTES,
} from "./snapshots.ts";

/** Extra data a version 3 entry needs: the 64-bit VM state size and the disk size. */
const V3_EXTRA_DATA = 16;
/** Extra data QEMU knows: those two and the instruction count. */
const KNOWN_EXTRA_DATA = 24;

/**
 * Reads the snapshot table into `image` (offset, size, entries), counting what is wrong in `res`.
 * Version 3 entries without the disk size in their extra data are corruptions, and so, when
 * repairing, are entries with more extra data than QEMU accepts (which then keep only what QEMU
 * knows); a table QEMU cannot read (too many entries, unaligned, an entry with too much extra data
 * when not repairing, over 64 MiB) is a check error that ends the check.
 *
 * @param image The image being checked.
 * @param res Where problems are counted.
 * @param repairing Whether the check will rewrite a table with incomplete or oversized entries.
 * @returns The reason the check fails ("Invalid argument", "File too large"), or undefined.
 */
export async function readSnapshotTable(
  image: CheckImage,
  res: CheckCounts,
  repairing: boolean,
): Promise<string | undefined> {
  const raw = await image.read(60, 12);
  let count = readU32(raw, 0);
  const offsetHi = readU32(raw, 4);
  const offsetLo = readU32(raw, 8);
  const offset = readU64(raw, 4);
  const fail = (lines: string[], reason: string): string => {
    image.messages.push(...lines);
    res.checkErrors++;
    return reason;
  };
  if (count > MAX_SNAPSHOTS && repairing) {
    // As QEMU: the snapshots past the limit go; what only they referenced becomes leaks.
    image.messages.push(`Discarding ${count - MAX_SNAPSHOTS} overhanging snapshots`);
    res.corruptions += count - MAX_SNAPSHOTS;
    count = MAX_SNAPSHOTS;
  }
  if (count > MAX_SNAPSHOTS) {
    return fail([
      "qemu-img: ERROR snapshot table too large",
      `You can force-remove all ${
        count - MAX_SNAPSHOTS
      } overhanging snapshots with qemu-img check -r all`,
    ], "File too large");
  }
  // QEMU takes offsets as signed 64-bit values: the table's end must stay below 2^63.
  const end = ((BigInt(offsetHi) << 32n) | BigInt(offsetLo)) +
    BigInt(count * SNAPSHOT_ENTRY_BYTES);
  if (offsetLo % image.clusterSize !== 0 || end > 2n ** 63n - 1n) {
    return fail(["qemu-img: ERROR snapshot table offset invalid"], "Invalid argument");
  }

  const snapshots: CheckSnapshot[] = [];
  let at = offset;
  for (let i = 0; i < count; i++) {
    const entryStart = at;
    at = Math.ceil(at / 8) * 8;
    const entry = await image.read(at, SNAPSHOT_ENTRY_BYTES);
    at += SNAPSHOT_ENTRY_BYTES;
    const storedExtraData = readU32(entry, 36);
    let extraDataSize = storedExtraData;
    if (storedExtraData > MAX_SNAPSHOT_EXTRA_DATA) {
      if (!repairing) {
        return fail([
          `qemu-img: ERROR failed to read the snapshot table: Too much extra metadata in snapshot table entry ${i}`,
          "You can force-remove this extra metadata with qemu-img check -r all",
        ], "File too large");
      }
      // Keep what QEMU knows (VM state size, disk size, instruction count); the table is rewritten.
      image.messages.push(
        `Discarding too much extra metadata in snapshot table entry ${i} (${storedExtraData} > ${MAX_SNAPSHOT_EXTRA_DATA})`,
      );
      res.corruptions++;
      extraDataSize = KNOWN_EXTRA_DATA;
    }
    const extraData = await image.read(at, extraDataSize);
    at += storedExtraData;
    const idLength = readU16(entry, 12);
    const nameLength = readU16(entry, 14);
    const strings = await image.read(at, idLength + nameLength);
    at += idLength + nameLength;
    // Repairing, QEMU drops the entries that do not fit; an entry whose extra data it had to cut
    // short it cannot place, and the check fails as without repair.
    const whole = extraDataSize === storedExtraData;
    if (at - offset > MAX_SNAPSHOT_TABLE_BYTES && repairing && whole) {
      image.messages.push(
        `Discarding ${count - i} overhanging snapshots (snapshot table is too big)`,
      );
      res.corruptions += count - i;
      at = entryStart;
      break;
    }
    if (at - offset > MAX_SNAPSHOT_TABLE_BYTES) {
      return fail([
        "qemu-img: ERROR failed to read the snapshot table: Snapshot table is too big",
        `You can force-remove all ${count - i} overhanging snapshots with qemu-img check -r all`,
      ], "File too large");
    }
    const idBytes = cString(strings.subarray(0, idLength));
    const nameBytes = cString(strings.subarray(idLength));
    snapshots.push({
      l1Offset: readU64(entry, 0),
      l1OffsetWords: [readU32(entry, 0), readU32(entry, 4)],
      l1Size: readU32(entry, 8),
      id: readString(idBytes),
      name: readString(nameBytes),
      extraDataSize,
      entry,
      extraData,
      idBytes,
      nameBytes,
    });
  }
  image.snapshotsOffset = offset;
  image.snapshotsSize = at - offset;
  image.snapshots = snapshots;

  if (image.header.version >= 3) {
    snapshots.forEach((snapshot, i) => {
      if (snapshot.extraDataSize < V3_EXTRA_DATA) {
        res.corruptions++;
        image.messages.push(
          `${repairing ? "Repairing" : "ERROR"} snapshot table entry ${i} is incomplete`,
        );
      }
    });
  }
  return undefined;
}

/** The bytes of a string up to its first NUL, as C reads it. */
function cString(bytes: Uint8Array): Uint8Array {
  const end = bytes.indexOf(0);
  return end < 0 ? bytes : bytes.subarray(0, end);
}
