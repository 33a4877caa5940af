/**
 * Allocation status of a whole backing chain, like `qemu-img map`.
 *
 * @module
 */

import { QcowError } from "../core/errors.ts";
import type { Image } from "./image.ts";

/** One range of `qemu-img map --output json`, with the same field names and meanings. */
export interface MapEntry {
  /** First virtual byte of the range. */
  start: number;
  /** Length in bytes. */
  length: number;
  /** Which image of the chain decides the contents: 0 the top, 1 its backing file, ... */
  depth: number;
  /** Whether some image of the chain holds the range (false: nothing is allocated anywhere). */
  present: boolean;
  /** Whether the range reads as zeros. */
  zero: boolean;
  /** Whether the range holds data. */
  data: boolean;
  /** Where the range lies in the file of the image at `depth`, when it lies there uncompressed. */
  offset?: number;
}

/** A map entry with the image it was found in (for human-readable output). */
export interface MapEntryWithFile extends MapEntry {
  /** The file name of the image at `depth`. */
  filename: string;
}

/** Options for {@linkcode mapImage}. */
export interface MapImageOptions {
  /** First byte to map; default 0. */
  start?: number;
  /** Bytes to map; default to the end of the image. */
  length?: number;
}

async function statusAt(image: Image, offset: number, length: number): Promise<MapEntryWithFile> {
  let layer = image;
  let depth = 0;
  let n = length;
  for (;;) {
    const status = await layer.blockStatus(offset, n);
    n = status.length;
    if (status.kind !== "unallocated") {
      const entry: MapEntryWithFile = {
        start: offset,
        length: n,
        depth,
        present: true,
        zero: status.kind === "zero",
        data: status.kind === "data" || status.kind === "compressed",
        filename: layer.filename,
      };
      if (status.hostOffset !== undefined) entry.offset = status.hostOffset;
      return entry;
    }
    const backing = layer.backing;
    if (!backing || offset >= backing.size) {
      const entry: MapEntryWithFile = {
        start: offset,
        length: n,
        depth,
        present: false,
        zero: true,
        data: false,
        filename: layer.filename,
      };
      if (status.hostOffset !== undefined) entry.offset = status.hostOffset;
      return entry;
    }
    n = Math.min(n, backing.size - offset);
    layer = backing;
    depth++;
  }
}

function mergeable(a: MapEntryWithFile, b: MapEntryWithFile): boolean {
  if (a.zero !== b.zero || a.data !== b.data || a.depth !== b.depth || a.present !== b.present) {
    return false;
  }
  if ((a.offset === undefined) !== (b.offset === undefined)) return false;
  return a.offset === undefined || a.offset + a.length === b.offset;
}

/**
 * Lists how every range of an image and its backing chain is allocated, merged the way
 * `qemu-img map` merges: neighbours with equal flags, depth and contiguous offsets form one entry.
 *
 * @example
 * ```ts
 * import { mapImage, MemoryDevice, RawImage } from "@qcowlab/qcowlab";
 *
 * const image = new RawImage(new MemoryDevice({ size: 4096 }));
 * console.log(await mapImage(image));
 * // [ { start: 0, length: 4096, depth: 0, present: true, zero: false, data: true, offset: 0, filename: "memory" } ]
 * ```
 *
 * @param image The top image of a chain.
 * @param options The range to map.
 * @returns The entries in order.
 */
export async function mapImage(
  image: Image,
  options: MapImageOptions = {},
): Promise<MapEntryWithFile[]> {
  const start = options.start ?? 0;
  const end = options.length === undefined ? image.size : start + options.length;
  if (
    !Number.isSafeInteger(start) || start < 0 || !Number.isSafeInteger(end) || end > image.size ||
    start > end
  ) {
    throw new QcowError("OUT_OF_RANGE", `Map range ${start}..${end} is outside the image`);
  }
  const entries: MapEntryWithFile[] = [];
  let offset = start;
  while (offset < end) {
    const entry = await statusAt(image, offset, end - offset);
    const last = entries[entries.length - 1];
    if (last && mergeable(last, entry)) last.length += entry.length;
    else entries.push(entry);
    offset += entry.length;
  }
  return entries;
}
