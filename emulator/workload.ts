/**
 * Crash-exploration workloads: what a guest does to a disk, as data, generated from a seed.
 *
 * @module
 */

import { QcowError } from "../core/errors.ts";

/** The image formats crash exploration can drive (qcow needs the qcow driver). */
export type WorkloadFormat = "qcow2" | "qcow";

/** The image a workload runs on, with qemu-img's create options. */
export interface WorkloadImage {
  /** Image format; default "qcow2". */
  format: WorkloadFormat;
  /** Virtual size in bytes (a multiple of 512). */
  size: number;
  /** "1.1" (version 3) or "0.10" (version 2); qcow2 only. */
  compat?: "0.10" | "1.1";
  /** Cluster size in bytes. */
  clusterSize?: number;
  /** Refcount width in bits; qcow2 only. */
  refcountBits?: number;
  /** Lazy refcounts (version 3); qcow2 only. */
  lazyRefcounts?: boolean;
  /** 128-bit L2 entries with subclusters; qcow2 only. */
  extendedL2?: boolean;
  /** Size in bytes of a raw backing file filled with a known pattern; none when absent. */
  backingSize?: number;
}

/**
 * One guest request. Data is never stored: every written 512-byte sector holds a pattern made
 * from the operation's tag and the sector number (see {@linkcode fillPattern}), so any sector read
 * back names the request that wrote it.
 *
 * New kinds (snapshot create/apply/delete, once the drivers have them) are added here, in
 * {@linkcode applyOp} and in the model's `opEffect`; nothing else needs to know them.
 */
export type WorkloadOp =
  | { op: "write"; offset: number; length: number }
  | { op: "write_zeroes"; offset: number; length: number; unmap?: boolean }
  | { op: "discard"; offset: number; length: number }
  | { op: "write_compressed"; offset: number; length: number }
  | { op: "resize"; size: number }
  | { op: "flush" };

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
 * growing resizes and flushes, concentrated on a few hot regions so requests overlap, reuse
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
  const cs = image.clusterSize ?? 65536;
  const sectorsPerCluster = cs / 512;
  const v2WithBacking = image.compat === "0.10" && image.backingSize !== undefined;
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
      const grow = (1 + pick(16)) * cs;
      if (size + grow <= maxSize && !v2WithBacking) {
        size += grow;
        ops.push({ op: "resize", size });
      }
    } else {
      ops.push({ op: "flush" });
    }
  }
  return { version: 1, image, ops };
}
