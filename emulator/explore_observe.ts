/**
 * Observing one crash state: check it, open it (repairing a dirty image), map it, read what the
 * mapping cannot tell, close it, repair it and check it again.
 *
 * @module
 */

import type { BlockDevice } from "../core/block_device.ts";
import { isQcowError } from "../core/errors.ts";
import { checkExitStatus } from "../drivers/qcow2/check.ts";
import type { Image } from "../drivers/image.ts";
import type { ExploreFormat } from "./explore_format.ts";
import {
  type CheckSummary,
  type ObservedRun,
  RUN_DATA,
  RUN_TAGS,
  RUN_UNALLOCATED,
  RUN_ZERO,
  type StateObservation,
  summarizeCheck,
} from "./invariants.ts";
import { openBacking } from "./workload_run.ts";
import { ForwardingDevice } from "./forwarding_device.ts";
import { GARBAGE, identifySector, patternSector, SECTOR } from "./workload_pattern.ts";

/** Forwards to a device and remembers which byte ranges were read. */
export class ReadTracker extends ForwardingDevice {
  /** Start and end of every read, in order. */
  readonly reads: number[] = [];
  /** Writes and truncations forwarded so far. */
  changes = 0;

  /** Reads, remembering the range. */
  override read(buffer: Uint8Array, offset: number): Promise<void> {
    this.reads.push(offset, offset + buffer.length);
    return super.read(buffer, offset);
  }
  /** Writes, counting the change. */
  override write(data: Uint8Array, offset: number): Promise<void> {
    this.changes++;
    return super.write(data, offset);
  }
  /** Truncates, counting the change. */
  override truncate(size: number): Promise<void> {
    this.changes++;
    return super.truncate(size);
  }

  /** The ranges read, sorted and merged, as start/end pairs. */
  merged(): Float64Array {
    const pairs: [number, number][] = [];
    for (let i = 0; i < this.reads.length; i += 2) pairs.push([this.reads[i]!, this.reads[i + 1]!]);
    pairs.sort((a, b) => a[0] - b[0]);
    const out: number[] = [];
    for (const [start, end] of pairs) {
      if (out.length > 0 && start <= out[out.length - 1]!) {
        out[out.length - 1] = Math.max(out[out.length - 1]!, end);
      } else out.push(start, end);
    }
    return Float64Array.from(out);
  }
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

async function check(
  format: ExploreFormat,
  device: BlockDevice,
  repair: boolean,
): Promise<CheckSummary> {
  try {
    const result = await format.check(device, repair);
    return summarizeCheck(result, checkExitStatus(result));
  } catch (error) {
    return {
      status: 1,
      corruptions: 0,
      leaks: 0,
      checkErrors: 0,
      copied: 0,
      failure: isQcowError(error) ? error.message : `untyped error: ${describe(error)}`,
    };
  }
}

/**
 * What compressed clusters decode to, by their stored bytes (see
 * {@linkcode ExploreFormat.compressedBytes}), so each distinct cluster is inflated once.
 */
export class CompressedTags {
  #map = new Map<string, { bytes: Uint8Array; start: number; tags: Int32Array }[]>();
  #size = 0;

  static #hash(bytes: Uint8Array, seed: number): number {
    let h = seed >>> 0;
    for (let i = 0; i < bytes.length; i++) h = Math.imul(h ^ bytes[i]!, 16777619);
    return h >>> 0;
  }

  #key(bytes: Uint8Array): string {
    return `${CompressedTags.#hash(bytes, 2166136261)}:${CompressedTags.#hash(bytes, 0x9e3779b9)}`;
  }

  /** The tags stored for these bytes and this run, if any. */
  get(bytes: Uint8Array, start: number, length: number): Int32Array | undefined {
    for (const e of this.#map.get(this.#key(bytes)) ?? []) {
      if (e.start === start && e.tags.length === length && equal(e.bytes, bytes)) return e.tags;
    }
    return undefined;
  }

  /** Stores the tags a run decoded to. */
  set(bytes: Uint8Array, start: number, tags: Int32Array): void {
    if (this.#size > 1024) {
      this.#map.clear();
      this.#size = 0;
    }
    const key = this.#key(bytes);
    const list = this.#map.get(key) ?? [];
    list.push({ bytes, start, tags });
    this.#map.set(key, list);
    this.#size++;
  }
}

function equal(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** How much of the virtual disk the observation reads through the image. */
export type ReadMode = "mapping" | "everything";

async function readTags(image: Image, start: number, length: number): Promise<Int32Array> {
  const tags = new Int32Array(length);
  const chunk = new Uint8Array(Math.min(length, 2048) * SECTOR);
  for (let done = 0; done < length;) {
    const n = Math.min(length - done, chunk.length / SECTOR);
    const view = chunk.subarray(0, n * SECTOR);
    await image.read(view, (start + done) * SECTOR);
    for (let k = 0; k < n; k++) {
      const tag = identifySector(view, k * SECTOR);
      const s = start + done + k;
      tags[done + k] = tag > 0 && patternSector(view, k * SECTOR) !== (s >>> 0) ? GARBAGE : tag;
    }
    done += n;
  }
  return tags;
}

/** Tags of a compressed run, decoded by the driver once per distinct stored cluster. */
async function compressedRunTags(
  format: ExploreFormat,
  image: Image,
  device: BlockDevice,
  cache: CompressedTags | undefined,
  start: number,
  length: number,
): Promise<Int32Array> {
  const clusterSize = (image as { clusterSize?: number }).clusterSize;
  if (!cache || !format.compressedBytes || clusterSize === undefined) {
    return await readTags(image, start, length);
  }
  const perCluster = clusterSize / SECTOR;
  const tags = new Int32Array(length);
  for (let done = 0; done < length;) {
    const s = start + done;
    const n = Math.min(length - done, perCluster - (s % perCluster));
    const bytes = await format.compressedBytes(image, device, s * SECTOR);
    let piece = bytes ? cache.get(bytes, s, n) : undefined;
    if (!piece) {
      piece = await readTags(image, s, n);
      if (bytes) cache.set(bytes, s, piece);
    }
    tags.set(piece, done);
    done += n;
  }
  return tags;
}

/**
 * Observes a crash state on `device` (which it writes to: repairs land there).
 *
 * @param format The image format's hooks.
 * @param device A fresh device holding the crash state.
 * @param backing The backing file's bytes, if any.
 * @param mode "mapping": record how data is stored and read only compressed clusters;
 *   "everything": read the whole virtual disk through the driver.
 * @param compressed Decoded compressed clusters to reuse (mapping mode).
 * @returns The observation.
 */
export async function observeState(
  format: ExploreFormat,
  device: BlockDevice,
  backing: Uint8Array | undefined,
  mode: ReadMode,
  compressed?: CompressedTags,
): Promise<StateObservation> {
  const tracker = device instanceof ReadTracker ? device : new ReadTracker(device);
  device = tracker;
  const flagsBefore = await format.flags(device);
  const checkBefore = await check(format, device, false);
  let open: StateObservation["open"] = { ok: true };
  let size = 0;
  const runs: ObservedRun[] = [];
  let markedCorrupt = false;
  let snapshots: string[] | undefined;
  let image: Image | undefined;
  try {
    image = await format.open(device, false);
    if (backing) image.setBacking(openBacking(backing));
    size = image.size;
    if (mode === "everything") {
      runs.push({
        start: 0,
        length: size / SECTOR,
        kind: RUN_TAGS,
        host: -1,
        tags: await readTags(image, 0, size / SECTOR),
      });
    } else {
      for (let at = 0; at < size;) {
        const status = await image.blockStatus(at, size - at);
        const start = at / SECTOR;
        const length = status.length / SECTOR;
        let run: ObservedRun;
        if (status.kind === "unallocated") {
          run = { start, length, kind: RUN_UNALLOCATED, host: -1 };
        } else if (status.kind === "zero") run = { start, length, kind: RUN_ZERO, host: -1 };
        else if (status.kind === "data" && status.hostOffset !== undefined) {
          run = { start, length, kind: RUN_DATA, host: status.hostOffset };
        } else {
          run = {
            start,
            length,
            kind: RUN_TAGS,
            host: -1,
            tags: await compressedRunTags(format, image, device, compressed, start, length),
          };
        }
        const last = runs[runs.length - 1];
        if (
          last && last.kind === run.kind && run.kind !== RUN_TAGS &&
          last.start + last.length === start &&
          (run.kind !== RUN_DATA || last.host + last.length * SECTOR === run.host)
        ) last.length += length;
        else runs.push(run);
        at += status.length;
      }
    }
    if (format.snapshotNames) snapshots = await format.snapshotNames(image);
    markedCorrupt = (image as { corrupt?: boolean }).corrupt === true;
  } catch (error) {
    open = { ok: false, typed: isQcowError(error), message: describe(error) };
    if (image) markedCorrupt = (image as { corrupt?: boolean }).corrupt === true;
  }
  try {
    await image?.close();
  } catch (error) {
    if (open.ok) {
      open = { ok: false, typed: isQcowError(error), message: `close: ${describe(error)}` };
    }
  }
  // A clean image nobody wrote to would only be checked again: same bytes, same result.
  const unchanged = tracker.changes === 0 && checkBefore.status === 0;
  const checkAfter = unchanged ? checkBefore : await check(format, device, true);
  const flagsAfter = unchanged ? flagsBefore : await format.flags(device);
  const obs: StateObservation = {
    flagsBefore,
    checkBefore,
    open,
    size,
    runs,
    markedCorrupt,
    checkAfter,
    flagsAfter,
  };
  if (snapshots !== undefined && open.ok) obs.snapshots = snapshots;
  return obs;
}
