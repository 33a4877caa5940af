/**
 * Crash-exploration workloads: what a guest does to a disk, as data, generated from a seed.
 *
 * @module
 */

import type { CreateQcow2Options } from "../drivers/qcow2/create.ts";
import { QcowError } from "../core/errors.ts";

/** The image formats crash exploration can drive (qcow needs the qcow driver). */
export type WorkloadFormat = "qcow2" | "qcow";

/**
 * The image a workload runs on: qcow2's create options (compat, refcount width, lazy refcounts and
 * extended L2 apply to qcow2 only; qcow takes the size and cluster size), a format and a backing
 * file.
 */
export interface WorkloadImage extends
  Pick<
    CreateQcow2Options,
    "size" | "compat" | "clusterSize" | "refcountBits" | "lazyRefcounts" | "extendedL2"
  > {
  /** Image format; default "qcow2". */
  format: WorkloadFormat;
  /** Size in bytes of a raw backing file filled with a known pattern; none when absent. */
  backingSize?: number;
}

/**
 * One guest request. Data is never stored: every written 512-byte sector holds a pattern made
 * from the operation's tag and the sector number (see {@linkcode fillPattern}), so any sector read
 * back names the request that wrote it.
 *
 * Snapshot requests (qcow2 only) create, apply and delete internal snapshots by name; as in QEMU
 * they end with a flush, so a completed one is durable. New kinds are added here, in
 * {@linkcode applyOp} and in the model (`invariants.ts`); nothing else needs to know them.
 */
export type WorkloadOp =
  | { op: "write"; offset: number; length: number }
  | { op: "write_zeroes"; offset: number; length: number; unmap?: boolean }
  | { op: "discard"; offset: number; length: number }
  | { op: "write_compressed"; offset: number; length: number }
  | { op: "resize"; size: number }
  | { op: "flush" }
  | { op: "snapshot_create"; name: string }
  | { op: "snapshot_apply"; name: string }
  | { op: "snapshot_delete"; name: string };

/** A workload: the image and the requests, in order. */
export interface Workload {
  /** Always 1. */
  version: 1;
  /** The image the requests run on. */
  image: WorkloadImage;
  /** The requests. */
  ops: WorkloadOp[];
}

/** Options for {@linkcode generateWorkload}. */
export interface GenerateWorkloadOptions {
  /** Seed of the random sequence; default 1. */
  seed?: number;
  /** Number of requests; default 50. */
  ops?: number;
  /** The image; default a 64 MiB qcow2 version 3 image with 64 KiB clusters. */
  image?: Partial<WorkloadImage>;
  /**
   * Also snapshot create, apply and delete requests (about 1 request in 12; qcow2 only, ignored
   * for qcow and for refcounts narrower than 16 bits; at most 4 live snapshots); default false,
   * so the requests of a seed stay what they were before snapshots.
   */
  snapshots?: boolean;
}

/**
 * The cluster size a workload's image has: the given one, else the format's default (qcow2 64
 * KiB; qcow 4 KiB, or 512 bytes with a backing file, as qemu-img).
 *
 * @example
 * ```ts
 * import { workloadClusterSize } from "@qcowlab/qcowlab/emulator";
 *
 * console.log(workloadClusterSize({ format: "qcow", size: 1 << 20 })); // 4096
 * ```
 *
 * @param image The image options.
 * @returns The cluster size in bytes.
 */
export function workloadClusterSize(image: WorkloadImage): number {
  if (image.clusterSize !== undefined) return image.clusterSize;
  if (image.format === "qcow") return image.backingSize === undefined ? 4096 : 512;
  return 65536;
}

/** The tag of the pattern a backing file holds. */
export const BACKING_TAG: number = 1;

/**
 * The tag whose pattern request `index` of a workload writes (tag 0 means zeros, tag 1 the
 * backing file's pattern).
 *
 * @example
 * ```ts
 * import { opTag } from "@qcowlab/qcowlab/emulator";
 *
 * console.log(opTag(0)); // 2
 * ```
 *
 * @param index The request's position in the workload.
 * @returns Its tag.
 */
export function opTag(index: number): number {
  return index + 2;
}

/** A seeded generator of 32-bit values (mulberry32). */
export function mulberry32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}

const MiB = 1024 * 1024;

/**
 * Generates a random but reproducible workload: writes, zero writes, discards, compressed writes,
 * growing resizes (qcow2 only) and flushes, with `snapshots` also snapshot requests, concentrated on a few hot regions so requests overlap, reuse
 * clusters and cross L2 and refcount block boundaries.
 *
 * @example Two calls with the same seed give the same requests
 * ```ts
 * import { generateWorkload } from "@qcowlab/qcowlab/emulator";
 *
 * const a = generateWorkload({ seed: 7, ops: 20 });
 * const b = generateWorkload({ seed: 7, ops: 20 });
 * console.log(JSON.stringify(a) === JSON.stringify(b)); // true
 * ```
 *
 * @param options Seed, number of requests and image options.
 * @returns The workload.
 */
export function generateWorkload(options: GenerateWorkloadOptions = {}): Workload {
  const count = options.ops ?? 50;
  if (!Number.isInteger(count) || count < 0 || count > 1_000_000) {
    throw new QcowError(
      "INVALID_ARGUMENT",
      `ops must be a whole number up to 1000000, got ${count}`,
    );
  }
  const image: WorkloadImage = { format: "qcow2", size: 64 * MiB, ...options.image };
  const next = mulberry32(options.seed ?? 1);
  const pick = (n: number): number => next() % Math.max(1, n);
  const cs = workloadClusterSize(image);
  const sectorsPerCluster = cs / 512;
  const qcow = image.format === "qcow";
  const v2 = image.compat === "0.10";
  const v2WithBacking = v2 && image.backingSize !== undefined;
  // A host cluster holding several compressed clusters has a reference per piece, and each
  // snapshot adds one more to each: refcounts narrower than 16 bits overflow (QEMU refuses such
  // a snapshot too), so they get no snapshot requests.
  const maxLive = 4;
  const snapshots = options.snapshots === true && !qcow && (image.refcountBits ?? 16) >= 16;
  /** Live snapshots: name and the disk size when taken. */
  const live: { name: string; size: number }[] = [];
  let snapshotCount = 0;
  let size = image.size;
  const maxSize = image.size * 2;
  // A few hot spots, each a couple of clusters wide, plus the occasional far request.
  const hot = [0, 1, 2, 3].map(() => pick(Math.max(1, image.size / cs)) * cs);
  const ops: WorkloadOp[] = [];
  const where = (length: number, align: number): number | undefined => {
    const limit = size - length;
    if (limit < 0) return undefined;
    let at = next() % 4 === 0
      ? pick(limit / align + 1) * align
      : hot[pick(hot.length)]! + (pick(3 * sectorsPerCluster) - sectorsPerCluster) * 512;
    at = Math.floor(at / align) * align;
    return Math.min(Math.max(at, 0), Math.floor(limit / align) * align);
  };
  while (ops.length < count) {
    const roll = pick(100);
    if (roll < 40) {
      const length = (1 + pick(next() % 3 === 0 ? 4 * sectorsPerCluster : sectorsPerCluster)) *
        512;
      const offset = where(length, 512);
      if (offset !== undefined) ops.push({ op: "write", offset, length });
    } else if (roll < 50) {
      const length = (1 + pick(3 * sectorsPerCluster)) * 512;
      const offset = where(length, 512);
      if (offset !== undefined) {
        ops.push({ op: "write_zeroes", offset, length, unmap: pick(2) === 1 });
      }
    } else if (roll < 60) {
      const length = (1 + pick(3)) * cs;
      const offset = where(length, cs);
      if (offset !== undefined) ops.push({ op: "discard", offset, length });
    } else if (roll < 70) {
      const length = (1 + pick(2)) * cs;
      const offset = where(length, cs);
      if (offset !== undefined) ops.push({ op: "write_compressed", offset, length });
    } else if (roll < 73) {
      // Growing only: shrinking needs an unallocated tail, which a random workload rarely has.
      // qcow cannot resize; version 2 cannot while it has snapshots (QEMU refuses both).
      const grow = (1 + pick(16)) * cs;
      if (size + grow <= maxSize && !v2WithBacking && !qcow && !(v2 && live.length > 0)) {
        size += grow;
        ops.push({ op: "resize", size });
      }
    } else if (snapshots && roll < 81) {
      const kind = pick(3);
      if (kind === 0 || live.length === 0) {
        if (live.length < maxLive) {
          const name = `s${++snapshotCount}`;
          live.push({ name, size });
          ops.push({ op: "snapshot_create", name });
        }
      } else if (kind === 1) {
        // Version 2 snapshots record no disk size: only one of the current size can be applied.
        const fits = live.filter((s) => !v2 || s.size === size);
        if (fits.length > 0) {
          const chosen = fits[pick(fits.length)]!;
          size = chosen.size;
          ops.push({ op: "snapshot_apply", name: chosen.name });
        }
      } else {
        const [gone] = live.splice(pick(live.length), 1);
        ops.push({ op: "snapshot_delete", name: gone!.name });
      }
    } else {
      ops.push({ op: "flush" });
    }
  }
  return { version: 1, image, ops };
}
