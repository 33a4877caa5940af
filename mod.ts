/**
 * qcowlab emulates virtual disks stored in QEMU's qcow2 format over in-memory or file-backed
 * devices, and reads them byte for byte as `qemu-img` does.
 *
 * @example Open an image, look at it, read from it
 * ```ts
 * import { mapImage, openImage } from "@qcowlab/qcowlab";
 *
 * const path = await Deno.makeTempFile();
 * await Deno.writeFile(path, new Uint8Array(65536).fill(0xab));
 * await using image = await openImage(path);
 * console.log(image.info()["virtual-size"]); // 65536
 * console.log((await mapImage(image)).length); // 1
 * const buffer = new Uint8Array(4096);
 * await image.read(buffer, 0);
 * ```
 *
 * @module
 */

export * from "./core/errors.ts";
export * from "./core/block_device.ts";
export * from "./core/driver_event.ts";
export * from "./core/memory_device.ts";
export * from "./core/file_device.ts";
export * from "./core/table_cache.ts";
export * from "./core/rw_lock.ts";
export * from "./drivers/image.ts";
export * from "./drivers/raw.ts";
export * from "./drivers/probe.ts";
export * from "./drivers/open_image.ts";
export * from "./drivers/backing_path.ts";
export * from "./drivers/map_image.ts";
export * from "./drivers/image_stream.ts";
export {
  Qcow2Image,
  type Qcow2OpenOptions,
  type ResizeOptions,
  type WriteZeroesOptions,
} from "./drivers/qcow2/qcow2_image.ts";
export type { OverlapCheck } from "./drivers/qcow2/overlap.ts";
export type {
  SnapshotCreateOptions,
  SnapshotInfo,
  SnapshotLookupOptions,
  SnapshotViewOptions,
} from "./drivers/qcow2/snapshot_ops.ts";
export * from "./drivers/qcow2/create.ts";
export type {
  BitmapsExtension,
  FeatureName,
  Qcow2Extension,
  Qcow2Header,
} from "./drivers/qcow2/header.ts";
export * from "./core/format_size.ts";
export * from "./core/progress.ts";
export * from "./drivers/qcow2/check.ts";
export * from "./drivers/qcow2/amend.ts";
export { QcowImage, type QcowOpenOptions } from "./drivers/qcow/qcow_image.ts";
export * from "./drivers/qcow/create.ts";
export * from "./drivers/qcow/check.ts";
export type { QcowHeader } from "./drivers/qcow/header.ts";
export { AesSectorCipher } from "./drivers/aes_sectors.ts";
export * from "./drivers/encrypt_new_qcow2.ts";
