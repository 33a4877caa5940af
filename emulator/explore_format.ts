/**
 * What crash exploration needs from an image format, so formats other than qcow2 plug in.
 *
 * @module
 */

import type { BlockDevice } from "../core/block_device.ts";
import { QcowError } from "../core/errors.ts";
import type { Image } from "../drivers/image.ts";
import { createQcow2 } from "../drivers/qcow2/create.ts";
import { Qcow2Image } from "../drivers/qcow2/qcow2_image.ts";
import { checkQcow2, type CheckResult } from "../drivers/qcow2/check.ts";
import { readU32, readU64 } from "../core/bytes.ts";
import { compressedLocation, entryCompressed, entryOffset } from "../drivers/qcow2/entries.ts";
import { INCOMPAT_EXTENDED_L2 } from "../drivers/qcow2/header.ts";
import { createQcow } from "../drivers/qcow/create.ts";
import { QcowImage } from "../drivers/qcow/qcow_image.ts";
import { checkQcow } from "../drivers/qcow/check.ts";
import { decodeEntry, l1Index, l2Index } from "../drivers/qcow/entries.ts";
import type { WorkloadFormat, WorkloadImage } from "./workload.ts";

/** The name a workload's image gives its backing file. */
export const BACKING_NAME: string = "backing.raw";

/** How crash exploration creates, opens and checks images of one format. */
export interface ExploreFormat {
  /** The format's name. */
  readonly name: WorkloadFormat;
  /** Writes a new image onto an empty device. */
  create(device: BlockDevice, image: WorkloadImage): Promise<void>;
  /** Opens an image (a writable open of a dirty image repairs it first). */
  open(device: BlockDevice, readOnly: boolean): Promise<Image>;
  /**
   * Checks the image as `qemu-img check` does, repairing everything with `repair: true` (for a
   * format without refcounts, leaks stay: nothing can reclaim them).
   */
  check(device: BlockDevice, repair: boolean): Promise<CheckResult>;
  /** Reads the header's dirty and corrupt bits (both false for formats without them). */
  flags(device: BlockDevice): Promise<{ dirty: boolean; corrupt: boolean }>;
  /** Whether the format may leave refcounts behind on purpose (lazy refcounts). */
  lazy(image: WorkloadImage): boolean;
  /**
   * The stored bytes of the compressed cluster that holds virtual offset `offset` (its location
   * first, then its compressed data), read from `device` the way the driver finds them; undefined
   * when the cluster is not compressed. Lets the explorer reuse what a compressed cluster decodes
   * to. Optional.
   */
  compressedBytes?(
    image: Image,
    device: BlockDevice,
    offset: number,
  ): Promise<Uint8Array | undefined>;
  /** The internal snapshots' names, in table order (formats with snapshots). Optional. */
  snapshotNames?(image: Image): Promise<string[]>;
}

const qcow2: ExploreFormat = {
  name: "qcow2",
  async create(device, image) {
    await createQcow2(device, {
      size: image.size,
      ...(image.compat === undefined ? {} : { compat: image.compat }),
      ...(image.clusterSize === undefined ? {} : { clusterSize: image.clusterSize }),
      ...(image.refcountBits === undefined ? {} : { refcountBits: image.refcountBits }),
      ...(image.lazyRefcounts === undefined ? {} : { lazyRefcounts: image.lazyRefcounts }),
      ...(image.extendedL2 === undefined ? {} : { extendedL2: image.extendedL2 }),
      ...(image.backingSize === undefined
        ? {}
        : { backingFile: BACKING_NAME, backingFormat: "raw" as const }),
    });
  },
  open(device, readOnly) {
    return Qcow2Image.open(device, { readOnly });
  },
  check(device, repair) {
    return checkQcow2(device, { repair: repair ? "all" : "none" });
  },
  async flags(device) {
    const field = new Uint8Array(8);
    const head = new Uint8Array(8);
    await device.read(head, 0);
    const version = (head[4]! << 24 | head[5]! << 16 | head[6]! << 8 | head[7]!) >>> 0;
    if (version < 3 || device.size < 80) return { dirty: false, corrupt: false };
    await device.read(field, 72);
    const bits = readU64(field, 0);
    return { dirty: (bits & 1) !== 0, corrupt: (bits & 2) !== 0 };
  },
  lazy(image) {
    return (image.compat ?? "1.1") === "1.1" && image.lazyRefcounts === true;
  },
  async snapshotNames(image) {
    if (!(image instanceof Qcow2Image)) return [];
    return (await image.listSnapshots()).map((s) => s.name);
  },
  async compressedBytes(image, device, offset) {
    if (!(image instanceof Qcow2Image)) return undefined;
    const h = image.header;
    const cs = 2 ** h.clusterBits;
    const entryBytes = (h.incompatibleFeatures & INCOMPAT_EXTENDED_L2) !== 0n ? 16 : 8;
    const perTable = cs / entryBytes;
    const cluster = Math.floor(offset / cs);
    const l1Index = Math.floor(cluster / perTable);
    if (l1Index >= h.l1Size) return undefined;
    const entry = new Uint8Array(8);
    await device.read(entry, h.l1TableOffset + l1Index * 8);
    const l2 = entryOffset(readU32(entry, 0), readU32(entry, 4));
    if (l2 === 0 || l2 + cs > device.size) return undefined;
    await device.read(entry, l2 + (cluster % perTable) * entryBytes);
    const hi = readU32(entry, 0);
    const lo = readU32(entry, 4);
    if (!entryCompressed(hi)) return undefined;
    const location = compressedLocation(hi, lo, h.clusterBits);
    const end = Math.min(location.offset + location.length, device.size);
    const out = new Uint8Array(8 + Math.max(0, end - location.offset));
    out.set(entry);
    if (end > location.offset) await device.read(out.subarray(8), location.offset);
    return out;
  },
};

/**
 * qcow (version 1): no refcounts, no header flags, no repair. `checkQcow`'s structural errors
 * count as corruptions; space nothing refers to (appended and never linked) as leaks, in
 * clusters, which stay after a "repair".
 */
const qcow: ExploreFormat = {
  name: "qcow",
  async create(device, image) {
    await createQcow(device, {
      size: image.size,
      ...(image.clusterSize === undefined ? {} : { clusterSize: image.clusterSize }),
      ...(image.backingSize === undefined ? {} : { backingFile: BACKING_NAME }),
    });
  },
  open(device, readOnly) {
    return QcowImage.open(device, { readOnly });
  },
  async check(device) {
    const report = await checkQcow(device);
    const head = new Uint8Array(33);
    await device.read(head, 0);
    const cs = 2 ** head[32]!;
    const leaks = report.leakedClusters + Math.ceil(report.leakedTailBytes / cs);
    return {
      filename: device.name,
      format: "qcow",
      "check-errors": 0,
      corruptions: report.errors.length,
      leaks,
      messages: report.errors.map((e) => `ERROR ${e.message}`),
    };
  },
  flags() {
    return Promise.resolve({ dirty: false, corrupt: false });
  },
  lazy() {
    return false;
  },
  async compressedBytes(image, device, offset) {
    if (!(image instanceof QcowImage)) return undefined;
    const h = image.header;
    const index = l1Index(offset, h.clusterBits, h.l2Bits);
    const entry = new Uint8Array(8);
    if (h.l1TableOffset + (index + 1) * 8 > device.size) return undefined;
    await device.read(entry, h.l1TableOffset + index * 8);
    const l2 = readU64(entry, 0);
    const at = l2 + l2Index(offset, h.clusterBits, h.l2Bits) * 8;
    if (l2 === 0 || at + 8 > device.size) return undefined;
    await device.read(entry, at);
    const decoded = decodeEntry(readU32(entry, 0), readU32(entry, 4), h.clusterBits);
    if (decoded.kind !== "compressed") return undefined;
    const end = Math.min(decoded.offset + decoded.length, device.size);
    const out = new Uint8Array(8 + Math.max(0, end - decoded.offset));
    out.set(entry);
    if (end > decoded.offset) await device.read(out.subarray(8), decoded.offset);
    return out;
  },
};

/**
 * The exploration hooks of a format.
 *
 * @example
 * ```ts
 * import { exploreFormat } from "@qcowlab/qcowlab/emulator";
 *
 * console.log(exploreFormat("qcow2").lazy({ format: "qcow2", size: 512, lazyRefcounts: true })); // true
 * ```
 *
 * @param name The format.
 * @returns Its hooks.
 * @throws {QcowError} `UNSUPPORTED_FEATURE` for any other format.
 */
export function exploreFormat(name: WorkloadFormat): ExploreFormat {
  if (name === "qcow2") return qcow2;
  if (name === "qcow") return qcow;
  throw new QcowError(
    "UNSUPPORTED_FEATURE",
    `Crash exploration knows qcow2 and qcow images, not ${String(name)}`,
  );
}
