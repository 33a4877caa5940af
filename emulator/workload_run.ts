/**
 * Running a workload on a recording device: the write log crash states are built from, and where
 * each guest request starts and ends in it.
 *
 * @module
 */

import type { BlockDevice } from "../core/block_device.ts";
import { MemoryDevice } from "../core/memory_device.ts";
import { QcowError } from "../core/errors.ts";
import type { Image } from "../drivers/image.ts";
import { RawImage } from "../drivers/raw.ts";
import { Qcow2Image } from "../drivers/qcow2/qcow2_image.ts";
import { RecordingDevice, type WriteLogEntry } from "./recording_device.ts";
import { BACKING_NAME, exploreFormat } from "./explore_format.ts";
import { BACKING_TAG, opTag, type Workload, type WorkloadOp } from "./workload.ts";
import { fillPattern, SECTOR } from "./workload_pattern.ts";

/** A request as it ran: the log entries `[start, end)` it issued. */
export interface OpRecord {
  /** The request; "close" is the clean close that ends every run. */
  readonly op: WorkloadOp | { op: "close" };
  /** Its tag (the pattern it writes). */
  readonly tag: number;
  /** First log entry it issued. */
  readonly start: number;
  /** One past the last log entry it issued. */
  readonly end: number;
  /** Why it failed, when it did (only with `tolerateErrors`). */
  readonly failed?: string;
}

/** A workload that ran: the image before, the log, and the requests' places in the log. */
export interface RecordedRun {
  /** The workload. */
  readonly workload: Workload;
  /** The image file's bytes before the first request. */
  readonly base: Uint8Array;
  /** The backing file's bytes, when the image has one. */
  readonly backing: Uint8Array | undefined;
  /** The write log. */
  readonly log: readonly WriteLogEntry[];
  /** The requests in order, then the close. */
  readonly ops: readonly OpRecord[];
}

/**
 * Makes the raw backing file of a workload's image: every sector holds the backing pattern.
 *
 * @param size Its size in bytes.
 * @returns The bytes.
 */
export function backingBytes(size: number): Uint8Array {
  const bytes = new Uint8Array(size);
  fillPattern(bytes, BACKING_TAG, 0);
  return bytes;
}

/** Opens a workload image's backing file (read-only, in memory) for attaching to the image. */
export function openBacking(bytes: Uint8Array): Image {
  return new RawImage(MemoryDevice.from(bytes, { name: BACKING_NAME, readOnly: true }), {
    readOnly: true,
  });
}

/**
 * Runs one request against an open image.
 *
 * @param image The image, open for writing.
 * @param op The request.
 * @param tag The tag of the pattern it writes.
 */
export async function applyOp(image: Image, op: WorkloadOp, tag: number): Promise<void> {
  switch (op.op) {
    case "write":
    case "write_compressed": {
      const data = new Uint8Array(op.length);
      fillPattern(data, tag, op.offset / SECTOR);
      if (op.op === "write") await image.write(data, op.offset);
      else await image.writeCompressed(data, op.offset);
      return;
    }
    case "write_zeroes":
      return await image.writeZeroes(op.offset, op.length, { mayUnmap: op.unmap ?? false });
    case "discard":
      return await image.discard(op.offset, op.length);
    case "resize":
      return await image.resize(op.size);
    case "flush":
      return await image.flush();
    case "snapshot_create":
    case "snapshot_apply":
    case "snapshot_delete": {
      if (!(image instanceof Qcow2Image)) {
        throw new QcowError("UNSUPPORTED_FEATURE", `${image.format} images have no snapshots`);
      }
      // A fixed date keeps the write log the same from run to run (replays, shrinking).
      if (op.op === "snapshot_create") await image.createSnapshot(op.name, { date: tag * 1000 });
      else if (op.op === "snapshot_apply") await image.applySnapshot(op.name, { match: "name" });
      else await image.deleteSnapshot(op.name, { match: "name" });
      return;
    }
  }
}

/** Options for {@linkcode recordWorkload}. */
export interface RecordOptions {
  /**
   * Wraps the device the image driver sees (the recording device sits below it): fault
   * injection, or a deliberately misbehaving disk in tests of the explorer itself.
   */
  wrap?: (device: BlockDevice) => BlockDevice;
  /**
   * Record requests that fail (injected faults) instead of stopping: their effect is then
   * uncertain, and the model allows old or new contents for it from then on. Default false.
   */
  tolerateErrors?: boolean;
}

/**
 * Creates the workload's image in memory, runs every request on it through a
 * {@linkcode RecordingDevice}, closes it cleanly, and returns the log.
 *
 * @example
 * ```ts
 * import { generateWorkload, recordWorkload } from "@qcowlab/qcowlab/emulator";
 *
 * const run = await recordWorkload(generateWorkload({ seed: 3, ops: 10, image: { size: 1 << 20 } }));
 * console.log(run.ops.length, run.log.length > 0); // 11 true
 * ```
 *
 * @param workload The workload.
 * @param options A wrapper for the device the driver sees; whether failing requests are kept.
 * @returns The recorded run.
 * @throws {QcowError} When a request fails (the message names it), or the format cannot write.
 */
export async function recordWorkload(
  workload: Workload,
  options: RecordOptions = {},
): Promise<RecordedRun> {
  const format = exploreFormat(workload.image.format);
  const created = new MemoryDevice({ name: "crash.qcow2" });
  await format.create(created, workload.image);
  const base = created.toBytes();
  await created.close();
  const backing = workload.image.backingSize === undefined
    ? undefined
    : backingBytes(workload.image.backingSize);
  const device = new RecordingDevice(MemoryDevice.from(base, { name: "crash.qcow2" }));
  const image = await format.open(options.wrap ? options.wrap(device) : device, false);
  if (backing) image.setBacking(openBacking(backing));
  const ops: OpRecord[] = [];
  for (const [index, op] of workload.ops.entries()) {
    const start = device.log.length;
    let failed: string | undefined;
    try {
      await applyOp(image, op, opTag(index));
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      if (!options.tolerateErrors || !(error instanceof QcowError)) {
        await image.close().catch(() => {});
        throw new QcowError(
          error instanceof QcowError ? error.code : "IO",
          `Workload request #${index} (${op.op}) failed: ${message}`,
          { cause: error },
        );
      }
      failed = message;
    }
    const record = { op, tag: opTag(index), start, end: device.log.length };
    ops.push(failed === undefined ? record : { ...record, failed });
  }
  const start = device.log.length;
  let failed: string | undefined;
  try {
    await image.close();
  } catch (error) {
    if (!options.tolerateErrors || !(error instanceof QcowError)) throw error;
    failed = error.message;
  }
  const record = { op: { op: "close" as const }, tag: 0, start, end: device.log.length };
  ops.push(failed === undefined ? record : { ...record, failed });
  // The live image is no longer needed (the log keeps its own copies): let its memory go now.
  await device.close();
  return { workload, base, backing, log: device.log, ops };
}
