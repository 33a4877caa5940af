/**
 * The catalog's data model: one {@linkcode VectorSpec} per test vector, checked with zod.
 *
 * @module
 */

import { QcowError } from "../core/errors.ts";
import { vectorSpecSchema } from "./_schemas.ts";
import type { Difference } from "./manifest.ts";

/**
 * What a written range holds: a byte value repeated, incompressible seeded bytes (`"random"`), or
 * seeded runs of bytes below 16 that deflate shrinks (`"compressible"`).
 */
export type Pattern = number | "random" | "compressible";

/** One step of a content recipe, applied in order to an open image. */
export type Step =
  /** Writes `length` bytes of `pattern` at `offset`. */
  | { op: "write"; offset: number; length: number; pattern: Pattern }
  /** Writes zeros; `unmap` lets the image release the clusters. */
  | { op: "zero"; offset: number; length: number; unmap?: boolean | undefined }
  /** Discards a range. */
  | { op: "discard"; offset: number; length: number }
  /** Writes whole clusters compressed. */
  | { op: "compressed"; offset: number; length: number; pattern: Pattern }
  /** Grows the image. */
  | { op: "resize"; size: number }
  /** `count` seeded random writes of 1 to `maxLength` bytes. */
  | { op: "scatter"; count: number; maxLength: number }
  /** An internal snapshot (qcow2), dated `dateSeconds` (default 0) so the bytes never change. */
  | { op: "snapshot"; name: string; dateSeconds?: number | undefined }
  /** Reverts to an internal snapshot (qcow2). */
  | { op: "revert"; name: string };

/** Create options of a layer, named like `createQcow2`'s (and `createQcow`'s for qcow). */
export interface CreateSpec {
  /** Virtual size in bytes. */
  size: number;
  /** qcow2: "0.10" (version 2) or "1.1" (version 3, the default). */
  compat?: "0.10" | "1.1" | undefined;
  /** Cluster size in bytes. */
  clusterSize?: number | undefined;
  /** qcow2: refcount width in bits. */
  refcountBits?: number | undefined;
  /** qcow2: lazy refcounts. */
  lazyRefcounts?: boolean | undefined;
  /** qcow2: extended L2 entries. */
  extendedL2?: boolean | undefined;
  /** qcow2: "off" or "metadata". */
  preallocation?: "off" | "metadata" | undefined;
  /** qcow: entries per L2 table. */
  l2Entries?: number | undefined;
}

/** One image of a vector: the last layer is the image under test, each one backs the next. */
export interface Layer {
  /** File name inside the vector's directory. */
  name: string;
  /** The image format (`qcow` is version 1). */
  format: "raw" | "qcow" | "qcow2";
  /** Create options. */
  create: CreateSpec;
  /** qcow2 over another layer: record its format (default true). */
  backingFormat?: boolean | undefined;
  /** The content recipe. */
  steps: Step[];
}

/** A place in an image file, found in the undamaged image's metadata. */
export type Location =
  /** A fixed file offset. */
  | { in: "file"; at: number }
  /** Entry `index` of the active L1 table. */
  | { in: "l1"; index: number }
  /** The L2 entry that maps guest offset `guest`. */
  | { in: "l2"; guest: number }
  /** Entry `index` of the refcount table. */
  | { in: "reftable"; index: number }
  /** The first snapshot table entry (at its L1 table offset field). */
  | { in: "snapshot" }
  /** Header extension `index` (0 = the first; one past the last is the end marker). */
  | { in: "extension"; index: number };

/** A cluster of the image file, named by what it holds. */
export type ClusterRef =
  /** The host cluster holding guest offset `guest` (where a compressed stream starts). */
  | { of: "guest"; guest: number }
  /** The first cluster inside the file whose refcount is 0. */
  | { of: "free" }
  /** The cluster just past the end of the file (the file grows to hold it). */
  | { of: "end" }
  /** A cluster `by` clusters past the end of the file (the file stays as it is). */
  | { of: "past-end"; by: number }
  /** The header, the L1 table, the refcount table or refcount block 0. */
  | { of: "header" | "l1" | "reftable" | "refblock" };

/** One byte edit of the finished image under test, made in order. */
export type Edit =
  /** A byte at a location (`plus` bytes into it). */
  | { edit: "u8"; where: Location; value: number; plus?: number | undefined }
  /** A big-endian u32 at a location (`plus` bytes into it). */
  | { edit: "u32"; where: Location; value: number; plus?: number | undefined }
  /** A big-endian u64, as two u32 halves. */
  | { edit: "u64"; where: Location; hi: number; lo: number }
  /** Bits set (`or`) or cleared (`andNot`) in the u32 at a location. */
  | {
    edit: "bits";
    where: Location;
    plus?: number | undefined;
    or?: number | undefined;
    andNot?: number | undefined;
  }
  /** Adds `by` to the low word of the u64 at a location (moves an offset by a few bytes). */
  | { edit: "shift"; where: Location; by: number }
  /** Points the entry at a location at a cluster, keeping its flag bits. */
  | { edit: "point"; where: Location; to: ClusterRef }
  /** Copies the L2 entry mapping guest offset `from` over the one mapping `to`. */
  | { edit: "copy-entry"; from: number; to: number }
  /** Sets a cluster's stored refcount to `value`, or adds `delta`. */
  | {
    edit: "refcount";
    cluster: ClusterRef;
    value?: number | undefined;
    delta?: number | undefined;
  }
  /** Cuts the file to `length` bytes. */
  | { edit: "truncate"; length: number };

/** How the image under test is left after its content recipe. */
export type State =
  /** Closed cleanly. */
  | { kind: "clean" }
  /** Lazy refcounts: flushed but never closed, so the dirty bit stays set, as after a crash. */
  | { kind: "dirty-crash" }
  /** Closed cleanly, then damaged by byte edits. */
  | { kind: "damaged"; edits: Edit[] };

/** One test vector, as declared in the catalog. */
export interface VectorSpec {
  /** Unique, stable, a path-safe slug (`qcow2-v3-cluster-512`). */
  id: string;
  /** One sentence for humans. */
  description: string;
  /** Labels for filtering and coverage counts. */
  tags: string[];
  /** The image files, the backing chain first and the image under test last. */
  layers: Layer[];
  /** How the image under test is left; default clean. */
  state?: State | undefined;
  /** A known qemu-img difference. */
  qemu?: Difference | undefined;
}

/**
 * Validates a vector declaration.
 *
 * @example Validating a declaration
 * ```ts
 * import { parseVectorSpec } from "@qcowlab/qcowlab/vectors";
 *
 * const spec = parseVectorSpec({
 *   id: "tiny",
 *   description: "An empty 1 MiB image",
 *   tags: [],
 *   layers: [{ name: "disk.qcow2", format: "qcow2", create: { size: 1 << 20 }, steps: [] }],
 * });
 * console.log(spec.layers.length); // 1
 * ```
 *
 * @param value Anything.
 * @returns The declaration, typed.
 * @throws {QcowError} `INVALID_ARGUMENT` naming the first problem.
 */
export function parseVectorSpec(value: unknown): VectorSpec {
  const parsed = vectorSpecSchema.safeParse(value);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const id = (value as { id?: unknown } | null)?.id;
    const where = issue.path.length > 0 ? ` at ${issue.path.join(".")}` : "";
    throw new QcowError(
      "INVALID_ARGUMENT",
      `Invalid vector ${String(id ?? "(no id)")}${where}: ${issue.message}`,
    );
  }
  return parsed.data as VectorSpec;
}
