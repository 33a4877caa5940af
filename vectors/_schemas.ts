/**
 * The zod schemas of the catalog and the manifest. Private: the public types are the interfaces of
 * spec.ts and manifest.ts, which these schemas check.
 *
 * @module
 */

import { z } from "zod";

const count = z.number().int().min(0);

/** A check's numbers, as `qemu-img check --output=json` reports them. */
export const checkExpectSchema = z.object({
  /** Whether the check could open the image at all (qemu-img exits with 1 when not). */
  opened: z.boolean(),
  /** qemu-img check's exit status: 0 clean, 1 check failed, 2 corruptions, 3 leaks. */
  exitStatus: z.number().int(),
  corruptions: count,
  leaks: count,
  checkErrors: count,
  /** Repairs only. */
  corruptionsFixed: count.optional(),
  leaksFixed: count.optional(),
}).strict();

/** The `qemu-img info --output=json` fields that do not depend on where the file is. */
export const infoExpectSchema = z.object({
  format: z.string(),
  "virtual-size": count,
  "cluster-size": count.optional(),
  "dirty-flag": z.boolean(),
  "backing-filename": z.string().optional(),
  "backing-filename-format": z.string().optional(),
  /** `format-specific.data`. */
  "format-specific": z.record(z.string(), z.union([z.string(), z.number(), z.boolean()]))
    .optional(),
}).strict();

/** Expected virtual contents, or the read failure. */
export const contentsExpectSchema = z.union([
  z.object({
    /** sha256 (hex) of all virtual bytes; only for images of at most 8 MiB. */
    sha256: z.string().regex(/^[0-9a-f]{64}$/).optional(),
    /** The chunked digest (see the README): defined for every size. */
    chunkedSha256: z.string().regex(/^[0-9a-f]{64}$/),
    /** 64 KiB chunks that are not all zeros. */
    nonZeroChunks: count,
  }).strict(),
  /** Reading the contents fails; `code` is qcowlab's error code. */
  z.object({ error: z.string() }).strict(),
]);

/**
 * Where qemu-img is known to behave differently from the manifest's expectations, with what it
 * does instead: each member given replaces that expectation when verifying with qemu-img (`null`:
 * qemu-img does not get that far).
 */
export const differenceSchema = z.object({
  /** Why they differ (shown by the verifier). */
  reason: z.string().min(1),
  open: z.enum(["opens", "read-only", "refused"]).optional(),
  contents: contentsExpectSchema.optional(),
  check: checkExpectSchema.optional(),
  repair: checkExpectSchema.nullable().optional(),
  afterRepair: checkExpectSchema.nullable().optional(),
}).strict();

/** What a conforming implementation does with one vector. */
export const expectSchema = z.object({
  /**
   * `opens`: opens for reading and for writing; `read-only`: opens for reading only;
   * `refused`: does not open, with qcowlab's error `code`.
   */
  open: z.object({
    status: z.enum(["opens", "read-only", "refused"]),
    code: z.string().optional(),
  }).strict(),
  /** Present when the image opens. */
  info: infoExpectSchema.optional(),
  /** Present when the image opens. */
  contents: contentsExpectSchema.optional(),
  /** `qemu-img check` of the image as generated. */
  check: checkExpectSchema,
  /** `qemu-img check -r all` of a copy, when the check opens the image. */
  repair: checkExpectSchema.optional(),
  /** A fresh `qemu-img check` of that repaired copy. */
  afterRepair: checkExpectSchema.optional(),
}).strict();

/** One file of a vector. */
export const fileEntrySchema = z.object({
  /** Path relative to the corpus directory (`<id>/<name>`). */
  path: z.string(),
  format: z.enum(["raw", "qcow", "qcow2"]),
  size: count,
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
}).strict();

/** One vector of the manifest. */
export const manifestVectorSchema = z.object({
  id: z.string(),
  description: z.string(),
  tags: z.array(z.string()),
  /** The image under test (a path like the files'). */
  image: z.string(),
  /** `qcow`, `qcow2-v2` or `qcow2-v3`. */
  format: z.string(),
  /** Every file, the backing chain first. */
  files: z.array(fileEntrySchema),
  expect: expectSchema,
  /** Known qemu-img differences. */
  qemu: differenceSchema.optional(),
}).strict();

/** The whole manifest. */
export const manifestSchema = z.object({
  manifestVersion: z.literal(1),
  generator: z.string(),
  seed: z.number().int(),
  vectors: z.array(manifestVectorSchema),
}).strict();

const offset = z.number().int().min(0).max(2 ** 53 - 1);
const length = z.number().int().min(1).max(2 ** 31);

/**
 * What a written range holds: a byte value repeated, incompressible seeded bytes (`"random"`), or
 * seeded bytes from a 16-value alphabet that deflate shrinks (`"compressible"`).
 */
export const patternSchema: z.ZodType<number | "random" | "compressible"> = z.union([
  z.number().int().min(0).max(255),
  z.literal("random"),
  z.literal("compressible"),
]);

/** One step of a content recipe, applied in order to an open image. */
export const stepSchema = z.discriminatedUnion("op", [
  z.object({ op: z.literal("write"), offset, length, pattern: patternSchema }).strict(),
  z.object({ op: z.literal("zero"), offset, length, unmap: z.boolean().optional() }).strict(),
  z.object({ op: z.literal("discard"), offset, length }).strict(),
  z.object({ op: z.literal("compressed"), offset, length, pattern: patternSchema }).strict(),
  z.object({ op: z.literal("resize"), size: offset }).strict(),
  z.object({
    op: z.literal("scatter"),
    count: z.number().int().min(1).max(4096),
    maxLength: length,
  }).strict(),
  /** Internal snapshot (qcow2 only), with a fixed date (default 0) so the bytes are reproducible. */
  z.object({
    op: z.literal("snapshot"),
    name: z.string().min(1),
    dateSeconds: z.number().int().min(0).optional(),
  }).strict(),
  /** Reverts the image to an internal snapshot (qcow2 only). */
  z.object({ op: z.literal("revert"), name: z.string().min(1) }).strict(),
]);

/** qcow2 create options, as `createQcow2` takes them (without the backing file, set by the chain). */
export const createSchema = z.object({
  size: offset,
  compat: z.enum(["0.10", "1.1"]).optional(),
  clusterSize: z.number().int().optional(),
  refcountBits: z.number().int().optional(),
  lazyRefcounts: z.boolean().optional(),
  extendedL2: z.boolean().optional(),
  preallocation: z.enum(["off", "metadata"]).optional(),
  /** qcow (version 1) only: entries per L2 table. */
  l2Entries: z.number().int().optional(),
}).strict();

/** One image of a vector: the last layer is the image under test, each one backs the next. */
export const layerSchema = z.object({
  /** File name inside the vector's directory. */
  name: z.string().regex(/^[a-z0-9][a-z0-9._-]*$/),
  /** `qcow` is version 1, generated only once qcowlab has a qcow driver. */
  format: z.enum(["raw", "qcow", "qcow2"]),
  create: createSchema,
  /** Record the backing format in the overlay (default true; qcow2 layers above another only). */
  backingFormat: z.boolean().optional(),
  steps: z.array(stepSchema),
}).strict();

/** Where a byte edit lands: a fixed file offset or a place found in the image's metadata. */
export const locationSchema = z.discriminatedUnion("in", [
  z.object({ in: z.literal("file"), at: offset }).strict(),
  /** Entry `index` of the active L1 table. */
  z.object({ in: z.literal("l1"), index: z.number().int().min(0) }).strict(),
  /** The L2 entry that maps guest offset `guest`. */
  z.object({ in: z.literal("l2"), guest: offset }).strict(),
  /** Entry `index` of the refcount table. */
  z.object({ in: z.literal("reftable"), index: z.number().int().min(0) }).strict(),
  /** The first snapshot table entry (its L1 table offset field). */
  z.object({ in: z.literal("snapshot") }).strict(),
  /** The header extension number `index` (0 = the first), at its type field. */
  z.object({ in: z.literal("extension"), index: z.number().int().min(0) }).strict(),
]);

/** A cluster of the image file, named by what it holds. */
export const clusterRefSchema = z.discriminatedUnion("of", [
  /** The host cluster that holds guest offset `guest` (where a compressed stream starts). */
  z.object({ of: z.literal("guest"), guest: offset }).strict(),
  /** The first cluster inside the file whose refcount is 0. */
  z.object({ of: z.literal("free") }).strict(),
  /** The cluster just past the end of the file (the file grows by one cluster). */
  z.object({ of: z.literal("end") }).strict(),
  /** A cluster `by` clusters past the end of the file (the file stays as it is). */
  z.object({ of: z.literal("past-end"), by: z.number().int().min(0) }).strict(),
  /** A metadata cluster: the header, the L1 table, the refcount table or refcount block 0. */
  z.object({ of: z.enum(["header", "l1", "reftable", "refblock"]) }).strict(),
]);

/** One byte edit of the finished image under test, made in order. */
export const editSchema = z.discriminatedUnion("edit", [
  /** Big-endian u8/u32/u64 written at a location (`value` as hi/lo halves for u64). */
  z.object({
    edit: z.literal("u8"),
    where: locationSchema,
    value: z.number().int().min(0).max(255),
    plus: z.number().int().min(0).optional(),
  }).strict(),
  z.object({
    edit: z.literal("u32"),
    where: locationSchema,
    value: z.number().int().min(0).max(0xffffffff),
    /** Where to write inside the location, in bytes (default 0). */
    plus: z.number().int().min(0).optional(),
  }).strict(),
  z.object({
    edit: z.literal("u64"),
    where: locationSchema,
    hi: z.number().int().min(0).max(0xffffffff),
    lo: z.number().int().min(0).max(0xffffffff),
  }).strict(),
  /** Sets (`or`) or clears (`andNot`) bits of the u32 at a location. */
  z.object({
    edit: z.literal("bits"),
    where: locationSchema,
    plus: z.number().int().min(0).optional(),
    or: z.number().int().min(0).max(0xffffffff).optional(),
    andNot: z.number().int().min(0).max(0xffffffff).optional(),
  }).strict(),
  /** Adds to the low word of the u64 at a location (moves an offset by a few bytes). */
  z.object({ edit: z.literal("shift"), where: locationSchema, by: z.number().int() }).strict(),
  /** Points the entry at a location at a cluster (keeping its flag bits). */
  z.object({ edit: z.literal("point"), where: locationSchema, to: clusterRefSchema }).strict(),
  /** Copies the 8 (or 16) bytes of one L2 entry over another. */
  z.object({ edit: z.literal("copy-entry"), from: offset, to: offset }).strict(),
  /** Sets the stored refcount of a cluster (or adds `delta`). */
  z.object({
    edit: z.literal("refcount"),
    cluster: clusterRefSchema,
    value: z.number().int().min(0).optional(),
    delta: z.number().int().optional(),
  }).strict(),
  /** Cuts the file to `length` bytes. */
  z.object({ edit: z.literal("truncate"), length: z.number().int().min(0) }).strict(),
]);

/** How the image under test is left after its content recipe. */
export const stateSchema = z.discriminatedUnion("kind", [
  /** Closed cleanly. */
  z.object({ kind: z.literal("clean") }).strict(),
  /**
   * Lazy refcounts: the recipe's writes are flushed but the image is never closed, so the dirty
   * bit stays set and the refcounts lag behind, as after a crash.
   */
  z.object({ kind: z.literal("dirty-crash") }).strict(),
  /** Closed cleanly, then damaged by byte edits. */
  z.object({ kind: z.literal("damaged"), edits: z.array(editSchema).min(1) }).strict(),
]);

/** One test vector. */
export const vectorSpecSchema = z.object({
  /** Unique, stable, a path-safe slug (`qcow2-v3-cluster-512`). */
  id: z.string().regex(/^[a-z0-9][a-z0-9-]*$/),
  /** One sentence for humans. */
  description: z.string().min(1),
  /** Free-form labels for filtering and coverage counts. */
  tags: z.array(z.string()),
  /** The image files, the backing chain first and the image under test last. */
  layers: z.array(layerSchema).min(1),
  state: stateSchema.optional(),
  /** Known qemu-img differences. */
  qemu: differenceSchema.optional(),
}).strict().superRefine((spec, ctx) => {
  const names = new Set<string>();
  for (const layer of spec.layers) {
    if (names.has(layer.name)) {
      ctx.addIssue({ code: "custom", message: `layer name ${layer.name} is used twice` });
    }
    names.add(layer.name);
  }
  const top = spec.layers[spec.layers.length - 1];
  if (top === undefined) return;
  if (spec.layers.slice(1).some((l) => l.format === "raw")) {
    ctx.addIssue({ code: "custom", message: "only the bottom layer of a chain may be raw" });
  }
  if (top.format === "raw") ctx.addIssue({ code: "custom", message: "the top layer is raw" });
});
