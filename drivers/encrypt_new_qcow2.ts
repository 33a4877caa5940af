/**
 * Turning a freshly created qcow2 image into a legacy AES-encrypted one.
 *
 * @module
 */

import type { BlockDevice } from "../core/block_device.ts";
import { readU32, readU64, writeU32 } from "../core/bytes.ts";
import { QcowError } from "../core/errors.ts";

/**
 * Marks a new, empty qcow2 image as encrypted with QEMU's legacy AES (crypt_method 1, as
 * `qemu-img create -o encrypt.format=aes` makes it). The format keeps no key material, so only
 * the header field changes; data written afterwards through an image opened with a passphrase
 * is encrypted. Refused when any L1 entry is set: existing clusters would read as garbage.
 *
 * @example Creating an encrypted qcow2 image in memory
 * ```ts
 * import { createQcow2, encryptNewQcow2, MemoryDevice, openImage } from "@qcowlab/qcowlab";
 *
 * const device = new MemoryDevice();
 * await createQcow2(device, { size: 1 << 20 });
 * await encryptNewQcow2(device);
 * await using image = await openImage(device, { readOnly: false, passphrase: "secret" });
 * await image.write(new Uint8Array(512).fill(1), 0);
 * console.log(image.info().encrypted); // true
 * ```
 *
 * @param device A qcow2 image just created.
 * @throws {QcowError} `BAD_MAGIC` for something else than qcow2, `INVALID_ARGUMENT` for an image
 * that is already encrypted or holds data.
 */
export async function encryptNewQcow2(device: BlockDevice): Promise<void> {
  const head = new Uint8Array(Math.min(48, device.size));
  await device.read(head, 0);
  if (head.length < 48 || readU32(head, 0) !== 0x514649fb || readU32(head, 4) < 2) {
    throw new QcowError("BAD_MAGIC", `${device.name} is not a qcow2 image`);
  }
  if (readU32(head, 32) !== 0) {
    throw new QcowError("INVALID_ARGUMENT", `${device.name} is already encrypted`);
  }
  const l1Size = readU32(head, 36);
  const l1Offset = readU64(head, 40);
  const l1 = new Uint8Array(Math.min(l1Size * 8, Math.max(0, device.size - l1Offset)));
  if (l1.length > 0) await device.read(l1, l1Offset);
  if (l1.some((byte) => byte !== 0)) {
    throw new QcowError(
      "INVALID_ARGUMENT",
      `${device.name} already maps clusters; only a new, empty image can be encrypted`,
    );
  }
  const field = new Uint8Array(4);
  writeU32(field, 0, 1);
  await device.write(field, 32);
  await device.flush();
}
