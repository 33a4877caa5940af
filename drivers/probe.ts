/**
 * Format probing by magic.
 *
 * @module
 */

import type { BlockDevice } from "../core/block_device.ts";
import { readU32 } from "../core/bytes.ts";
import type { ImageFormat } from "./image.ts";

/** "QFI\xfb" */
const QCOW_MAGIC = 0x514649fb;

/**
 * Guesses a device's image format from its first bytes; raw when nothing matches. The qcow magic
 * with version 1 is "qcow"; with any other version "qcow2" (whose reader refuses bad versions).
 *
 * @example
 * ```ts
 * import { MemoryDevice, probeFormat } from "@qcowlab/qcowlab";
 *
 * console.log(await probeFormat(new MemoryDevice({ size: 512 }))); // "raw"
 * ```
 *
 * @param device The device to look at.
 * @returns The format.
 */
export async function probeFormat(device: BlockDevice): Promise<ImageFormat> {
  if (device.size < 8) return "raw";
  const head = new Uint8Array(8);
  await device.read(head, 0);
  if (readU32(head, 0) !== QCOW_MAGIC) return "raw";
  return readU32(head, 4) === 1 ? "qcow" : "qcow2";
}
