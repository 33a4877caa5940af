/**
 * Creating qcow (version 1) images.
 *
 * @module
 */

import { z } from "zod";
import type { BlockDevice } from "../../core/block_device.ts";
import { QcowError } from "../../core/errors.ts";
import { l1EntriesFor } from "./entries.ts";
import {
  encodeQcowHeader,
  MAX_QCOW_L1_BYTES,
  QCOW_CRYPT_AES,
  QCOW_CRYPT_NONE,
  QCOW_HEADER_SIZE,
} from "./header.ts";

/** Options for {@linkcode createQcow}. */
export interface CreateQcowOptions {
  /** Virtual size in bytes; rounded up to a multiple of 512 as qemu-img does. */
  size: number;
  /** Backing file name, stored as given (qcow stores no backing format). */
  backingFile?: string;
  /** Legacy AES encryption (crypt_method 1); the passphrase is needed only to open the image. */
  encrypted?: boolean;
  /**
   * Cluster size, 512 B to 64 KiB; default as qemu-img: 4 KiB without a backing file, 512 B with
   * one. (qemu-img has no such option; other sizes are for tests.)
   */
  clusterSize?: number;
  /**
   * Entries per L2 table, 64 to 8192; default as qemu-img: 512 without a backing file, 4096 with
   * one.
   */
  l2Entries?: number;
}

const powerOfTwoIn = (min: number, max: number) => (n: number): boolean =>
  Number.isInteger(n) && n >= min && n <= max && (n & (n - 1)) === 0;

const schema = z.object({
  size: z.number().int("size must be a whole number of bytes").min(1, "Image size is too small")
    .max(2 ** 53 - 512, "size is beyond 2^53 bytes"),
  backingFile: z.string().min(1).max(1023, "Backing file name too long").optional(),
  encrypted: z.boolean().optional(),
  clusterSize: z.number().refine(
    powerOfTwoIn(512, 65536),
    "Cluster size must be a power of two between 512 and 64k",
  ).optional(),
  l2Entries: z.number().refine(
    powerOfTwoIn(64, 8192),
    "L2 tables must have a power of two between 64 and 8192 entries",
  ).optional(),
}).strict();

/**
 * Writes a new, empty qcow image onto `device` (which is truncated first): the header, the
 * backing file name, and a zeroed L1 table padded to whole sectors, as `qemu-img create -f qcow`
 * lays them out.
 *
 * @example Creating an image in memory
 * ```ts
 * import { createQcow, MemoryDevice, openImage } from "@qcowlab/qcowlab";
 *
 * const device = new MemoryDevice();
 * await createQcow(device, { size: 1 << 20 });
 * await using image = await openImage(device);
 * console.log(image.format, image.size); // qcow 1048576
 * ```
 *
 * @param device Where to write the image.
 * @param options Size, backing file and encryption.
 * @throws {QcowError} `INVALID_ARGUMENT` for invalid options, `TOO_LARGE` for an L1 table
 * beyond 32 MiB.
 */
export async function createQcow(device: BlockDevice, options: CreateQcowOptions): Promise<void> {
  const parsed = schema.safeParse(options);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const field = issue.path.length > 0 ? `${issue.path.join(".")}: ` : "";
    throw new QcowError("INVALID_ARGUMENT", `Invalid create option ${field}${issue.message}`);
  }
  const size = Math.ceil(options.size / 512) * 512;
  const backing = options.backingFile;
  const name = backing === undefined ? new Uint8Array(0) : new TextEncoder().encode(backing);
  if (name.length > 1023) {
    throw new QcowError("INVALID_ARGUMENT", "Invalid create option backingFile: too long");
  }
  const clusterBits = Math.log2(options.clusterSize ?? (backing === undefined ? 4096 : 512));
  const l2Bits = Math.log2(options.l2Entries ?? (backing === undefined ? 512 : 4096));
  const l1Bytes = l1EntriesFor(size, clusterBits, l2Bits) * 8;
  if (l1Bytes > MAX_QCOW_L1_BYTES) {
    throw new QcowError("TOO_LARGE", `Image too large: its L1 table would be ${l1Bytes} bytes`);
  }
  const headerSize = Math.ceil((QCOW_HEADER_SIZE + name.length) / 8) * 8;
  const header = encodeQcowHeader({
    backingFileOffset: backing === undefined ? 0 : QCOW_HEADER_SIZE,
    backingFileSize: name.length,
    mtime: 0,
    size,
    clusterBits,
    l2Bits,
    cryptMethod: options.encrypted ? QCOW_CRYPT_AES : QCOW_CRYPT_NONE,
    l1TableOffset: headerSize,
  });
  const layout = new Uint8Array(headerSize + Math.ceil(l1Bytes / 512) * 512);
  layout.set(header);
  layout.set(name, QCOW_HEADER_SIZE);
  await device.truncate(0);
  await device.write(layout, 0);
  await device.flush();
}
