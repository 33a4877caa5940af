/**
 * The checks QEMU makes on the internal snapshot table when it opens an image.
 *
 * @module
 */

import type { BlockDevice } from "../../core/block_device.ts";
import { readU16, readU32 } from "../../core/bytes.ts";
import { QcowError } from "../../core/errors.ts";
import type { Qcow2Header } from "./header.ts";

/** Bytes of the fixed part of a snapshot table entry. */
export const SNAPSHOT_ENTRY_BYTES = 40;
/** QEMU refuses entries with more extra data than this. */
export const MAX_SNAPSHOT_EXTRA_DATA = 1024;
/** QEMU refuses snapshot tables larger than this. */
export const MAX_SNAPSHOT_TABLE_BYTES = 64 * 1024 * 1024;

const WINDOW = 64 * 1024;

/**
 * Walks the snapshot table and refuses what QEMU refuses at open: an entry with more than 1 KiB of
 * extra data, or a table over 64 MiB. As in QEMU, bytes past the end of the file read as zeros
 * (which make empty entries), so a table cut short is not an error here.
 *
 * @param device The image file.
 * @param header Its parsed header; the table offset must be checked already.
 * @throws {QcowError} `BAD_TABLE`.
 */
export async function checkSnapshotTable(device: BlockDevice, header: Qcow2Header): Promise<void> {
  const start = header.snapshotsOffset;
  let windowStart = -1;
  const window = new Uint8Array(WINDOW);
  /** Returns the entry header at `at`, reading through a window that zero-fills past the end. */
  const entryAt = async (at: number): Promise<Uint8Array> => {
    if (windowStart < 0 || at < windowStart || at + SNAPSHOT_ENTRY_BYTES > windowStart + WINDOW) {
      windowStart = at;
      window.fill(0);
      const available = Math.min(WINDOW, device.size - at);
      if (available > 0) await device.read(window.subarray(0, available), at);
    }
    return window.subarray(at - windowStart, at - windowStart + SNAPSHOT_ENTRY_BYTES);
  };
  let at = start;
  for (let i = 0; i < header.nbSnapshots; i++) {
    at = Math.ceil(at / 8) * 8;
    const entry = await entryAt(at);
    const extraData = readU32(entry, 36);
    if (extraData > MAX_SNAPSHOT_EXTRA_DATA) {
      throw new QcowError(
        "BAD_TABLE",
        `Too much extra metadata in snapshot table entry ${i} (${extraData} bytes, at most ${MAX_SNAPSHOT_EXTRA_DATA})`,
      );
    }
    at += SNAPSHOT_ENTRY_BYTES + extraData + readU16(entry, 12) + readU16(entry, 14);
    if (at - start > MAX_SNAPSHOT_TABLE_BYTES) {
      throw new QcowError(
        "BAD_TABLE",
        `Snapshot table exceeds the maximum size (${MAX_SNAPSHOT_TABLE_BYTES} bytes) at entry ${i}`,
      );
    }
  }
}
