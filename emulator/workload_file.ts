/**
 * Workload files: a workload as JSON, checked with zod.
 *
 * @module
 */

import { z } from "zod";
import { QcowError } from "../core/errors.ts";
import type { Workload } from "./workload.ts";

const bytes = z.number().int().min(0).max(2 ** 53 - 1);
const sectorAligned = bytes.refine((n) => n % 512 === 0, "must be a multiple of 512");

const imageSchema = z.object({
  format: z.enum(["qcow2", "qcow"]).default("qcow2"),
  size: sectorAligned.refine((n) => n > 0, "must be positive"),
  compat: z.enum(["0.10", "1.1"]).optional(),
  clusterSize: z.number().int().optional(),
  refcountBits: z.number().int().optional(),
  lazyRefcounts: z.boolean().optional(),
  extendedL2: z.boolean().optional(),
  backingSize: sectorAligned.optional(),
}).strict();

const snapshotName = z.string().min(1).max(255);
const range = { offset: sectorAligned, length: sectorAligned };
const opSchema = z.discriminatedUnion("op", [
  z.object({ op: z.literal("write"), ...range }).strict(),
  z.object({ op: z.literal("write_zeroes"), ...range, unmap: z.boolean().optional() }).strict(),
  z.object({ op: z.literal("discard"), ...range }).strict(),
  z.object({ op: z.literal("write_compressed"), ...range }).strict(),
  z.object({ op: z.literal("resize"), size: sectorAligned }).strict(),
  z.object({ op: z.literal("flush") }).strict(),
  z.object({ op: z.literal("snapshot_create"), name: snapshotName }).strict(),
  z.object({ op: z.literal("snapshot_apply"), name: snapshotName }).strict(),
  z.object({ op: z.literal("snapshot_delete"), name: snapshotName }).strict(),
]);

const schema = z.object({
  version: z.literal(1),
  image: imageSchema,
  ops: z.array(opSchema).max(1_000_000),
}).strict();

function bad(message: string): QcowError {
  return new QcowError("INVALID_ARGUMENT", `Invalid workload: ${message}`);
}

/**
 * Reads a workload from JSON text (or an already parsed value), as written by
 * `JSON.stringify(workload)`. Requests must stay inside the disk as it is sized at that point;
 * only growing resizes are allowed; backing files may not be larger than the disk; snapshot
 * requests (qcow2 only) name a snapshot that exists (apply, delete) or does not (create); qcow
 * images take no resize.
 *
 * @example
 * ```ts
 * import { parseWorkload } from "@qcowlab/qcowlab/emulator";
 *
 * const workload = parseWorkload(
 *   '{"version":1,"image":{"format":"qcow2","size":1048576},"ops":[{"op":"flush"}]}',
 * );
 * console.log(workload.ops.length); // 1
 * ```
 *
 * @param input JSON text or a parsed value.
 * @returns The workload.
 * @throws {QcowError} `INVALID_ARGUMENT` naming the first problem and where it is.
 */
export function parseWorkload(input: string | unknown): Workload {
  let value = input;
  if (typeof input === "string") {
    try {
      value = JSON.parse(input);
    } catch (error) {
      throw bad(`not JSON (${error instanceof Error ? error.message : String(error)})`);
    }
  }
  const parsed = schema.safeParse(value);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const where = issue.path.length > 0 ? issue.path.join(".") : "(top level)";
    throw bad(`${where}: ${issue.message}`);
  }
  const workload = parsed.data as Workload;
  const image = workload.image;
  if (image.backingSize !== undefined && image.backingSize > image.size) {
    throw bad("image.backingSize: the backing file may not be larger than the disk");
  }
  let size = image.size;
  /** Live snapshots by name: the disk size when taken. */
  const live = new Map<string, number>();
  for (const [index, op] of workload.ops.entries()) {
    if (op.op === "resize") {
      if (image.format === "qcow") throw bad(`ops.${index}: qcow images cannot be resized`);
      if (op.size < size) throw bad(`ops.${index}: only growing resizes are supported`);
      size = op.size;
    } else if (
      op.op === "snapshot_create" || op.op === "snapshot_apply" || op.op === "snapshot_delete"
    ) {
      if (image.format !== "qcow2") throw bad(`ops.${index}: ${image.format} has no snapshots`);
      const taken = live.get(op.name);
      if (op.op === "snapshot_create") {
        if (taken !== undefined) throw bad(`ops.${index}: snapshot '${op.name}' already exists`);
        live.set(op.name, size);
      } else if (taken === undefined) {
        throw bad(`ops.${index}: no snapshot '${op.name}' at that point`);
      } else if (op.op === "snapshot_apply") size = taken;
      else live.delete(op.name);
    } else if (op.op !== "flush" && op.offset + op.length > size) {
      throw bad(
        `ops.${index}: ${op.op} of ${op.length} bytes at ${op.offset} ends past the disk (${size} bytes)`,
      );
    }
  }
  return workload;
}
