/**
 * Overlap checks: which host clusters hold qcow2 metadata, so that a write about to land on them
 * can be refused before it damages the image (QEMU's `overlap-check` option).
 *
 * @module
 */

/** How much metadata writes are checked against, as QEMU's `overlap-check` option. */
export type OverlapCheck = "none" | "constant" | "cached" | "all";

/** The kinds of metadata region, as bit numbers. */
export const REGION_HEADER = 0;
/** The active L1 table. */
export const REGION_ACTIVE_L1 = 1;
/** L2 tables referenced by the active L1 table. */
export const REGION_ACTIVE_L2 = 2;
/** The refcount table. */
export const REGION_REFCOUNT_TABLE = 3;
/** Refcount blocks. */
export const REGION_REFCOUNT_BLOCK = 4;
/** The snapshot table. */
export const REGION_SNAPSHOT_TABLE = 5;
/** Snapshot L1 tables. */
export const REGION_INACTIVE_L1 = 6;
/** L2 tables referenced by snapshot L1 tables. */
export const REGION_INACTIVE_L2 = 7;
/** The bitmap directory. */
export const REGION_BITMAP_DIRECTORY = 8;

/** QEMU's names for the regions, by kind. */
export const REGION_NAMES: readonly string[] = [
  "qcow2_header",
  "active L1 table",
  "active L2 table",
  "refcount table",
  "refcount block",
  "snapshot table",
  "inactive L1 table",
  "inactive L2 table",
  "bitmap directory",
];

const CONSTANT = (1 << REGION_HEADER) | (1 << REGION_ACTIVE_L1) | (1 << REGION_REFCOUNT_TABLE) |
  (1 << REGION_SNAPSHOT_TABLE) | (1 << REGION_BITMAP_DIRECTORY);
const CACHED = CONSTANT | (1 << REGION_ACTIVE_L2) | (1 << REGION_REFCOUNT_BLOCK) |
  (1 << REGION_INACTIVE_L1);
const ALL = CACHED | (1 << REGION_INACTIVE_L2);

/** The region kinds a template checks, as a bit mask. */
export function overlapMask(check: OverlapCheck): number {
  switch (check) {
    case "none":
      return 0;
    case "constant":
      return CONSTANT;
    case "cached":
      return CACHED;
    case "all":
      return ALL;
    default:
      throw new RangeError(`Unknown overlap check template: ${check}`);
  }
}

/**
 * Host clusters holding metadata, by region kind. Each cluster maps to a bit mask of the kinds
 * that occupy it, so a check costs one map lookup per touched cluster.
 */
export class OverlapMap {
  #clusterBits: number;
  #clusterSize: number;
  #mask: number;
  #kinds: Set<number>[] = REGION_NAMES.map(() => new Set<number>());
  #byCluster = new Map<number, number>();

  /**
   * @param clusterBits log2 of the cluster size.
   * @param check Which regions to check.
   */
  constructor(clusterBits: number, check: OverlapCheck) {
    this.#clusterBits = clusterBits;
    this.#clusterSize = 2 ** clusterBits;
    this.#mask = overlapMask(check);
  }

  /** Whether any region is checked at all. */
  get enabled(): boolean {
    return this.#mask !== 0;
  }

  /** Whether regions of `kind` are checked (and so worth tracking). */
  tracks(kind: number): boolean {
    return (this.#mask & (1 << kind)) !== 0;
  }

  /** Marks the clusters of `[offset, offset + bytes)` as holding `kind`. */
  add(kind: number, offset: number, bytes: number): void {
    if (!this.tracks(kind) || bytes <= 0) return;
    const bit = 1 << kind;
    const set = this.#kinds[kind]!;
    const last = Math.floor((offset + bytes - 1) / this.#clusterSize);
    for (let c = Math.floor(offset / this.#clusterSize); c <= last; c++) {
      set.add(c);
      this.#byCluster.set(c, (this.#byCluster.get(c) ?? 0) | bit);
    }
  }

  /** Forgets `kind` in the clusters of `[offset, offset + bytes)`. */
  remove(kind: number, offset: number, bytes: number): void {
    if (!this.tracks(kind) || bytes <= 0) return;
    const set = this.#kinds[kind]!;
    const last = Math.floor((offset + bytes - 1) / this.#clusterSize);
    for (let c = Math.floor(offset / this.#clusterSize); c <= last; c++) {
      if (!set.delete(c)) continue;
      const rest = (this.#byCluster.get(c) ?? 0) & ~(1 << kind);
      if (rest === 0) this.#byCluster.delete(c);
      else this.#byCluster.set(c, rest);
    }
  }

  /** Forgets every cluster of `kind`. */
  clear(kind: number): void {
    const set = this.#kinds[kind]!;
    for (const c of set) {
      const rest = (this.#byCluster.get(c) ?? 0) & ~(1 << kind);
      if (rest === 0) this.#byCluster.delete(c);
      else this.#byCluster.set(c, rest);
    }
    set.clear();
  }

  /** Whether `kind` holds host cluster `cluster`. */
  has(kind: number, cluster: number): boolean {
    return this.#kinds[kind]!.has(cluster);
  }

  /**
   * The first checked region `[offset, offset + bytes)` overlaps, ignoring the kinds in
   * `ignore` (a bit mask).
   *
   * @returns The region's QEMU name, or undefined when the range is clear.
   */
  check(offset: number, bytes: number, ignore = 0): string | undefined {
    if (this.#byCluster.size === 0 || bytes <= 0) return undefined;
    const bits = this.#clusterBits;
    const first = Math.floor(offset / 2 ** bits);
    const last = Math.floor((offset + bytes - 1) / 2 ** bits);
    for (let c = first; c <= last; c++) {
      const hit = (this.#byCluster.get(c) ?? 0) & ~ignore;
      if (hit !== 0) return REGION_NAMES[31 - Math.clz32(hit & -hit)];
    }
    return undefined;
  }
}
