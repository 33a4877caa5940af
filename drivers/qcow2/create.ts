/**
 * Creating qcow2 images.
 *
 * @module
 */

import { z } from "zod";
import type { BlockDevice } from "../../core/block_device.ts";
import { writeU64 } from "../../core/bytes.ts";
import { QcowError } from "../../core/errors.ts";
import { encodeNewHeader } from "./header_codec.ts";
import { writeRefcount } from "./refcount_math.ts";
import { Qcow2Image } from "./qcow2_image.ts";

/** Options for {@linkcode createQcow2}, named like qemu-img's `-o` options. */
export interface CreateQcow2Options {
  /** Virtual size in bytes (a multiple of 512). */
  size: number;
  /** "1.1" (version 3, the default) or "0.10" (version 2). */
  compat?: "0.10" | "1.1";
  /** Cluster size: a power of two from 512 B to 2 MiB; default 64 KiB. */
  clusterSize?: number;
  /** Refcount width in bits: a power of two from 1 to 64; default 16 (other widths need v3). */
  refcountBits?: number;
  /** Lazy refcounts (v3 only); default false. */
  lazyRefcounts?: boolean;
  /** 128-bit L2 entries with 32 subclusters (v3, clusters of at least 16 KiB); default false. */
  extendedL2?: boolean;
  /** Backing file name, stored as given. */
  backingFile?: string;
  /** Backing file format ("raw" or "qcow2"). */
  backingFormat?: "raw" | "qcow2" | "qcow";
  /** "off" (default) or "metadata": allocate every L2 table and data cluster up front. */
  preallocation?: "off" | "metadata";
}

const isPowerOfTwo = (n: number): boolean => Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;

const schema = z.object({
  size: z.number().int("size must be a whole number of bytes").min(0, "size must not be negative")
    .max(2 ** 53 - 512, "size is beyond 2^53 bytes")
    .refine((n) => n % 512 === 0, "Image size must be a multiple of 512 bytes"),
  compat: z.enum(["0.10", "1.1"]).optional(),
  clusterSize: z.number().refine(
    (n) => isPowerOfTwo(n) && n >= 512 && n <= 2 * 1024 * 1024,
    "Cluster size must be a power of two between 512 and 2048k",
  ).optional(),
  refcountBits: z.number().refine(
    (n) => isPowerOfTwo(n) && n <= 64,
    "Refcount width must be a power of two and may be at most 64 bits",
  ).optional(),
  lazyRefcounts: z.boolean().optional(),
  extendedL2: z.boolean().optional(),
  backingFile: z.string().min(1).max(1023, "Backing file name too long").optional(),
  backingFormat: z.enum(["raw", "qcow2", "qcow"]).optional(),
  preallocation: z.enum(["off", "metadata"]).optional(),
}).strict().superRefine((o, ctx) => {
  const v3 = (o.compat ?? "1.1") === "1.1";
  const problem = (message: string): void => void ctx.addIssue({ code: "custom", message });
  if (!v3 && (o.refcountBits ?? 16) !== 16) {
    problem(
      "Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)",
    );
  }
  if (!v3 && o.lazyRefcounts) {
    problem(
      "Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)",
    );
  }
  if (!v3 && o.extendedL2) {
    problem("Extended L2 entries are only supported with compatibility level 1.1 and above");
  }
  if (o.extendedL2 && (o.clusterSize ?? 65536) < 16384) {
    problem("Extended L2 entries are only supported with cluster sizes of at least 16 KiB");
  }
  if (o.backingFormat && !o.backingFile) problem("Backing format given without a backing file");
  if (o.backingFile && o.preallocation === "metadata" && !o.extendedL2) {
    problem(
      "Backing file and preallocation can only be used at the same time if extended_l2 is on",
    );
  }
});

/**
 * Validates create options, with qemu-img's messages.
 *
 * @param options The options to check.
 * @returns The same options, known to be valid.
 * @throws {QcowError} `INVALID_ARGUMENT` naming the first problem.
 */
export function validateCreateOptions(options: CreateQcow2Options): CreateQcow2Options {
  const parsed = schema.safeParse(options);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const field = issue.path.length > 0 ? `${issue.path.join(".")}: ` : "";
    throw new QcowError("INVALID_ARGUMENT", `Invalid create option ${field}${issue.message}`);
  }
  return options;
}

/**
 * Writes a new, empty qcow2 image onto `device` (which should be empty): the same layout
 * `qemu-img create` writes for the same options (header, refcount table and block, L1 table).
 *
 * @example Creating an image in memory and writing to it
 * ```ts
 * import { createQcow2, MemoryDevice, openImage } from "@qcowlab/qcowlab";
 *
 * const device = new MemoryDevice();
 * await createQcow2(device, { size: 64 * 1024 * 1024 });
 * await using image = await openImage(device, { readOnly: false });
 * await image.write(new Uint8Array(4096).fill(1), 0);
 * ```
 *
 * @param device Where to write the image.
 * @param options Size and qemu-img's create options.
 */
export async function createQcow2(device: BlockDevice, options: CreateQcow2Options): Promise<void> {
  validateCreateOptions(options);
  const version = (options.compat ?? "1.1") === "1.1" ? 3 : 2;
  const clusterSize = options.clusterSize ?? 65536;
  const clusterBits = Math.log2(clusterSize);
  const refcountOrder = Math.log2(options.refcountBits ?? 16);
  const header: Parameters<typeof encodeNewHeader>[0] = {
    version,
    clusterBits,
    refcountOrder,
    refcountTableOffset: clusterSize,
    refcountTableClusters: 1,
    lazyRefcounts: options.lazyRefcounts ?? false,
    extendedL2: options.extendedL2 ?? false,
  };
  if (options.backingFile !== undefined) header.backingFile = options.backingFile;
  if (options.backingFormat !== undefined) header.backingFormat = options.backingFormat;
  // Start as QEMU does: header, refcount table, one refcount block counting those three
  // clusters, no L1 table; then grow the image to its size like any resize.
  const layout = new Uint8Array(3 * clusterSize);
  layout.set(encodeNewHeader(header));
  writeU64(layout, clusterSize, 2 * clusterSize);
  for (let c = 0; c < 3; c++) writeRefcount(layout.subarray(2 * clusterSize), c, refcountOrder, 1);
  await device.truncate(0);
  await device.write(layout, 0);
  await device.flush();

  const image = await Qcow2Image.open(device, { readOnly: false });
  try {
    await image.resize(options.size);
    if (options.preallocation === "metadata") await image.preallocateMetadata();
  } finally {
    await image.close();
  }
}
