/**
 * Opening an image of any format together with its backing chain.
 *
 * @module
 */

import { z } from "zod";
import type { BlockDevice } from "../core/block_device.ts";
import { isQcowError, QcowError } from "../core/errors.ts";
import { FileDevice } from "../core/file_device.ts";
import type { Image, ImageFormat } from "./image.ts";
import { probeFormat } from "./probe.ts";
import { Qcow2Image, type Qcow2OpenOptions } from "./qcow2/qcow2_image.ts";
import type { OverlapCheck } from "./qcow2/overlap.ts";
import { RawImage } from "./raw.ts";
import { QcowImage, type QcowOpenOptions } from "./qcow/qcow_image.ts";
import { resolveBackingPath } from "./backing_path.ts";

/** Resolves a backing file name to a device or a path; see {@linkcode OpenImageOptions}. */
export type BackingResolver = (
  name: string,
  overlay: Image,
) => BlockDevice | string | Promise<BlockDevice | string>;

/** Options for {@linkcode openImage}. */
export interface OpenImageOptions {
  /** The format of the top image; probed from its magic when omitted. */
  format?: ImageFormat;
  /** Open the top image for reading only; default true. Backing images are always read-only. */
  readOnly?: boolean;
  /**
   * For a writable qcow2 image: which metadata regions every write is checked against, like
   * QEMU's overlap-check option ("none", "constant", "cached" (default), "all").
   */
  overlapCheck?: OverlapCheck;
  /** Open the backing chain; default true. Without it, unallocated ranges read as zeros. */
  backing?: boolean;
  /** Bytes of L2 tables each qcow2 image in the chain may cache (default: up to 32 MiB). */
  l2CacheSize?: number;
  /** Longest backing chain accepted; default 64. */
  maxChainDepth?: number;
  /**
   * Finds backing files. By default a relative name is resolved against the directory of the image
   * that names it and opened as a file; give a resolver to keep whole chains in memory.
   */
  resolveBacking?: BackingResolver;
  /**
   * The passphrase of AES-encrypted (crypt_method 1) qcow and qcow2 images in the chain; an
   * encrypted image opened without one fails with `PASSPHRASE_REQUIRED`. A wrong passphrase
   * cannot be detected: the image then reads as garbage.
   */
  passphrase?: string | Uint8Array;
}

const optionsSchema = z.object({
  format: z.enum(["raw", "qcow", "qcow2"]).optional(),
  readOnly: z.boolean().optional(),
  overlapCheck: z.enum(["none", "constant", "cached", "all"]).optional(),
  backing: z.boolean().optional(),
  l2CacheSize: z.number().int().min(0).optional(),
  maxChainDepth: z.number().int().min(1).max(4096).optional(),
  resolveBacking: z.custom<BackingResolver>((v) => typeof v === "function").optional(),
  passphrase: z.union([z.string(), z.instanceof(Uint8Array)]).optional(),
}).strict();

/**
 * Opens a disk image from a path or a {@linkcode BlockDevice}, probing its format, and opens its
 * backing chain. Images are opened read-only unless `readOnly: false` is given. Closing the returned image closes the whole chain
 * and every file that `openImage` opened (a device passed in stays open).
 *
 * @example Reading an image file
 * ```ts
 * import { openImage } from "@qcowlab/qcowlab";
 *
 * const path = await Deno.makeTempFile();
 * await Deno.writeFile(path, new Uint8Array(1024).fill(7));
 * await using image = await openImage(path);
 * const sector = new Uint8Array(512);
 * await image.read(sector, 512);
 * console.log(image.format, sector[0]); // raw 7
 * ```
 *
 * @param source A file path or a device.
 * @param options Format, backing chain and cache options.
 * @returns The open top image.
 * @throws {QcowError} `NOT_FOUND`, `BACKING_MISSING`, `BACKING_LOOP`, or the reader's codes.
 */
export async function openImage(
  source: string | BlockDevice,
  options: OpenImageOptions = {},
): Promise<Image> {
  const parsed = optionsSchema.safeParse(options);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new QcowError(
      "INVALID_ARGUMENT",
      `Invalid open option ${issue.path.join(".") || "(options)"}: ${issue.message}`,
    );
  }
  const top = await openOne(source, options.format, options, options.readOnly ?? true);
  if (options.backing === false) return top;
  try {
    await openChain(top, options);
  } catch (error) {
    await top.close();
    throw error;
  }
  return top;
}

async function openOne(
  source: string | BlockDevice,
  format: string | undefined,
  options: OpenImageOptions,
  readOnly = true,
): Promise<Image> {
  const owns = typeof source === "string";
  const device = typeof source === "string" ? FileDevice.open(source, { readOnly }) : source;
  try {
    const chosen = format ?? await probeFormat(device);
    if (chosen === "raw") return new RawImage(device, { ownsDevice: owns, readOnly });
    if (chosen === "qcow2") {
      const qcowOptions: Qcow2OpenOptions = { ownsDevice: owns, readOnly };
      if (options.overlapCheck !== undefined) qcowOptions.overlapCheck = options.overlapCheck;
      if (options.l2CacheSize !== undefined) qcowOptions.l2CacheSize = options.l2CacheSize;
      if (options.passphrase !== undefined) qcowOptions.passphrase = options.passphrase;
      return await Qcow2Image.open(device, qcowOptions);
    }
    if (chosen === "qcow") {
      const qcowOptions: QcowOpenOptions = { ownsDevice: owns, readOnly };
      if (options.l2CacheSize !== undefined) qcowOptions.l2CacheSize = options.l2CacheSize;
      if (options.passphrase !== undefined) qcowOptions.passphrase = options.passphrase;
      return await QcowImage.open(device, qcowOptions);
    }
    throw new QcowError("UNSUPPORTED_FEATURE", `Unsupported image format '${chosen}'`);
  } catch (error) {
    if (owns) await device.close();
    throw error;
  }
}

function realPath(path: string): string {
  try {
    return Deno.realPathSync(path);
  } catch {
    return path;
  }
}

async function openChain(top: Image, options: OpenImageOptions): Promise<void> {
  const maxDepth = options.maxChainDepth ?? 64;
  const seen = new Set<string>([realPath(top.filename)]);
  let overlay = top;
  let depth = 0;
  while (overlay.backingName !== undefined && overlay.backingName !== "") {
    depth++;
    if (depth > maxDepth) {
      throw new QcowError("BACKING_LOOP", `Backing chain is deeper than ${maxDepth} images`);
    }
    const name = overlay.backingName;
    let backing: Image;
    let where = resolveBackingPath(overlay.filename, name);
    try {
      const source = options.resolveBacking ? await options.resolveBacking(name, overlay) : where;
      where = typeof source === "string" ? source : source.name;
      const key = typeof source === "string" ? realPath(source) : source.name;
      if (seen.has(key)) {
        throw new QcowError("BACKING_LOOP", `Backing chain loops: ${key} appears twice`);
      }
      seen.add(key);
      const format = overlay.backingFormat;
      if (format !== undefined && format !== "raw" && format !== "qcow" && format !== "qcow2") {
        throw new QcowError("UNSUPPORTED_FEATURE", `Unsupported backing file format '${format}'`);
      }
      backing = await openOne(source, format, options);
    } catch (error) {
      if (isQcowError(error, "NOT_FOUND")) {
        throw new QcowError(
          "BACKING_MISSING",
          `Could not open backing file ${where}: no such file`,
          { cause: error },
        );
      }
      throw error;
    }
    overlay.setBacking(backing);
    overlay = backing;
  }
}
