/**
 * Streaming export of an image's virtual contents.
 *
 * @module
 */

import { QcowError } from "../core/errors.ts";
import type { Image } from "./image.ts";

/** Options for {@linkcode imageStream}. */
export interface ImageStreamOptions {
  /** Bytes per chunk; default 1 MiB. */
  chunkSize?: number;
  /** First byte; default 0. */
  start?: number;
  /** End (exclusive); default the image's size. */
  end?: number;
}

/**
 * A stream of an image's virtual contents, read chunk by chunk as the consumer pulls. Each chunk is
 * a new array the consumer owns.
 *
 * @example Writing an image out as raw
 * ```ts
 * import { imageStream, MemoryDevice, RawImage } from "@qcowlab/qcowlab";
 *
 * const image = new RawImage(MemoryDevice.from(new Uint8Array(3000).fill(1)));
 * let total = 0;
 * for await (const chunk of imageStream(image, { chunkSize: 1024 })) total += chunk.length;
 * console.log(total); // 3000
 * ```
 *
 * @param image The image to export.
 * @param options Chunk size and range.
 * @returns A readable stream of the contents.
 */
export function imageStream(
  image: Image,
  options: ImageStreamOptions = {},
): ReadableStream<Uint8Array> {
  const chunkSize = options.chunkSize ?? 1024 * 1024;
  const end = options.end ?? image.size;
  let offset = options.start ?? 0;
  if (!Number.isSafeInteger(chunkSize) || chunkSize <= 0) {
    throw new QcowError(
      "INVALID_ARGUMENT",
      `chunkSize must be a positive integer, got ${chunkSize}`,
    );
  }
  if (
    !Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(end) || end > image.size ||
    offset > end
  ) {
    throw new QcowError("OUT_OF_RANGE", `Stream range ${offset}..${end} is outside the image`);
  }
  return new ReadableStream<Uint8Array>({
    async pull(controller): Promise<void> {
      if (offset >= end) {
        controller.close();
        return;
      }
      const chunk = new Uint8Array(Math.min(chunkSize, end - offset));
      await image.read(chunk, offset);
      offset += chunk.length;
      controller.enqueue(chunk);
    },
  }, { highWaterMark: 2 });
}
