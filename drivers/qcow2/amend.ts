/**
 * `qemu-img amend` for qcow2 images: compatibility level, lazy refcounts and refcount width
 * changed in place.
 *
 * @module
 */

import { z } from "zod";
import type { BlockDevice } from "../../core/block_device.ts";
import { readU32, readU64 } from "../../core/bytes.ts";
import { QcowError } from "../../core/errors.ts";
import { encodeAmendedHeader, headerFields } from "./amend_header.ts";
import { changeRefcountOrder } from "./amend_refcounts.ts";
import { expandZeroClusters } from "./amend_zero.ts";
import { CheckImage, zeroCounts } from "./check_image.ts";
import type { CheckResult } from "./check_report.ts";
import { readSnapshotTable } from "./check_snapshots.ts";
import {
  COMPAT_LAZY_REFCOUNTS,
  INCOMPAT_COMPRESSION,
  INCOMPAT_DIRTY,
  parseQcow2Header,
  peekClusterBits,
  type Qcow2Header,
} from "./header.ts";
import { Qcow2Image } from "./qcow2_image.ts";

/** Options for {@linkcode amendQcow2}; only the options given change. */
export interface AmendQcow2Options {
  /** The compatibility level: "0.10" (or "v2") for version 2, "1.1" (or "v3") for version 3. */
  compat?: string;
  /** Lazy refcounts (version 3 only). */
  lazyRefcounts?: boolean;
  /** The refcount width in bits: a power of two up to 64 (not 16: version 3 only). */
  refcountBits?: number;
  /**
   * The backing file name, accepted only when it is the image's own (with `backingFormat`, which
   * must be the image's too): as in QEMU, amend does not change backing files.
   */
  backingFile?: string;
  /** The backing file format; see `backingFile`. */
  backingFormat?: string;
}

/** What {@linkcode amendQcow2} did. */
export interface AmendQcow2Result {
  /** The repair that ran first because the image was dirty (as opening it writable repairs it). */
  repair?: CheckResult;
  /** Zero clusters rewritten for a downgrade. */
  zeroClustersExpanded: number;
}

const optionsSchema = z.object({
  compat: z.string().optional(),
  lazyRefcounts: z.boolean().optional(),
  refcountBits: z.number().optional(),
  backingFile: z.string().optional(),
  backingFormat: z.string().optional(),
}).strict();

const AUTOCLEAR_BITMAPS = 1n;
/** Extra data a version 3 snapshot entry must have: 64-bit VM state size and disk size. */
const V3_SNAPSHOT_EXTRA = 16;

function invalid(message: string): QcowError {
  return new QcowError("INVALID_ARGUMENT", message);
}

function compatVersion(compat: string): 2 | 3 {
  if (compat === "0.10" || compat === "v2") return 2;
  if (compat === "1.1" || compat === "v3") return 3;
  throw invalid(`Unknown compatibility level ${compat}`);
}

async function readHeader(device: BlockDevice): Promise<Qcow2Header> {
  const head = new Uint8Array(Math.min(104, device.size));
  await device.read(head, 0);
  const first = new Uint8Array(Math.min(2 ** peekClusterBits(head), device.size));
  await device.read(first, 0);
  return parseQcow2Header(first);
}

/** The snapshots' L1 tables, VM state sizes and disk sizes, as a check reads them. */
async function readSnapshots(
  device: BlockDevice,
): Promise<
  {
    l1Offset: number;
    l1Size: number;
    vmState: number;
    diskSize: number | undefined;
    entryBytes: number;
  }[]
> {
  const image = await CheckImage.open(device, [], { writable: false, quiet: true });
  const res = zeroCounts();
  const failure = await readSnapshotTable(image, res, false);
  if (failure !== undefined || res.corruptions > 0) {
    throw new QcowError(
      "CORRUPT_METADATA",
      `The snapshot table of ${device.name} is damaged; run check -r all first`,
    );
  }
  return image.snapshots.map((s) => ({
    l1Offset: s.l1Offset,
    l1Size: s.l1Size,
    vmState: s.extraDataSize >= 8 ? readU64(s.extraData, 0) : readU32(s.entry, 32),
    diskSize: s.extraDataSize >= V3_SNAPSHOT_EXTRA ? readU64(s.extraData, 8) : undefined,
    // The entry's size in the table: fixed part, extra data, ID and name, padded to 8 bytes.
    entryBytes: Math.ceil(
      (s.entry.length + s.extraDataSize + s.idBytes.length + s.nameBytes.length) / 8,
    ) * 8,
  }));
}

/**
 * Changes a qcow2 image's options in place as `qemu-img amend` does, in QEMU's order: upgrade to
 * version 3 first, then the refcount width, then lazy refcounts, and a downgrade to version 2
 * last. Like QEMU, the header is rewritten whole (in one write) even when nothing changes.
 *
 * - An upgrade rewrites the header as version 3.
 * - A downgrade needs 16-bit refcounts, no incompatible feature but compression type zlib (an
 *   image with extended L2 entries is refused), and snapshots without VM state that have the
 *   image's size. It rewrites every zero cluster (see {@linkcode expandZeroClusters}), then
 *   writes a version 2 header without feature bits or the feature name table.
 * - A new refcount width is written as a new refcount structure after the end of the file; the
 *   header then switches to it (see {@linkcode changeRefcountOrder}).
 * - Turning lazy refcounts off on a dirty image: the image is repaired first, as every writable
 *   open of a dirty image is.
 *
 * What QEMU refuses is refused with its message, and before anything is written (QEMU finds some
 * of these only after earlier steps are done). Every step leaves a consistent image if it is cut
 * short: at worst clusters are leaked.
 *
 * @example Upgrading a version 2 image with lazy refcounts
 * ```ts
 * import { amendQcow2, createQcow2, MemoryDevice, Qcow2Image } from "@qcowlab/qcowlab";
 *
 * const device = new MemoryDevice();
 * await createQcow2(device, { size: 1 << 20, compat: "0.10" });
 * await amendQcow2(device, { compat: "1.1", lazyRefcounts: true });
 * await using image = await Qcow2Image.open(device);
 * console.log(image.header.version, image.info()["format-specific"]?.data["lazy-refcounts"]); // 3 true
 * ```
 *
 * @param device The image file, writable.
 * @param options What to change.
 * @returns What the amend did beyond the options (a repair, zero clusters rewritten).
 * @throws {QcowError} `INVALID_ARGUMENT` for options QEMU refuses, `UNSUPPORTED_FEATURE` for
 * images that cannot be amended that way, `READ_ONLY` for a read-only device, and any error
 * opening the image writable raises (a corrupt image, say).
 */
export async function amendQcow2(
  device: BlockDevice,
  options: AmendQcow2Options,
): Promise<AmendQcow2Result> {
  const parsed = optionsSchema.safeParse(options);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const field = issue.path.length > 0 ? `${issue.path.join(".")}: ` : "";
    throw invalid(`Invalid amend option ${field}${issue.message}`);
  }
  const { compat, lazyRefcounts, refcountBits } = parsed.data;
  const requestedVersion = compat === undefined ? undefined : compatVersion(compat);
  if (
    refcountBits !== undefined &&
    !(Number.isInteger(refcountBits) && refcountBits >= 1 && refcountBits <= 64 &&
      (refcountBits & (refcountBits - 1)) === 0)
  ) {
    throw invalid("Refcount width must be a power of two and may not exceed 64 bits");
  }
  if (device.readOnly) {
    throw new QcowError("READ_ONLY", `Cannot amend ${device.name}: the device is read-only`);
  }

  // Open it writable as QEMU does: every check of the header, and a dirty image repaired.
  const opened = await Qcow2Image.open(device, { readOnly: false });
  const repair = opened.repairResult;
  await opened.close();

  let header = await readHeader(device);
  const oldVersion = header.version as 2 | 3;
  const newVersion = requestedVersion ?? oldVersion;
  const oldBits = 2 ** header.refcountOrder;
  const newBits = refcountBits ?? oldBits;
  const oldLazy = oldVersion >= 3 && (header.compatibleFeatures & COMPAT_LAZY_REFCOUNTS) !== 0n;
  const newLazy = lazyRefcounts ?? oldLazy;

  // Everything QEMU would refuse, before anything is written.
  const { backingFile, backingFormat } = parsed.data;
  if (
    (backingFile !== undefined || backingFormat !== undefined) &&
    (backingFile !== header.backingFile || backingFormat !== header.backingFormat)
  ) {
    throw invalid("Cannot amend the backing file; you can use rebase instead");
  }
  if (newBits !== oldBits && newVersion < 3 && newBits !== 16) {
    throw invalid(
      "Refcount widths other than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)",
    );
  }
  if (newLazy && !oldLazy && newVersion < 3) {
    throw invalid(
      "Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)",
    );
  }
  const snapshots = header.nbSnapshots > 0 ? await readSnapshots(device) : [];
  const snapshotTableBytes = snapshots.reduce((sum, s) => sum + s.entryBytes, 0);
  if (newVersion > oldVersion && snapshots.some((s) => s.diskSize === undefined)) {
    throw new QcowError(
      "UNSUPPORTED_FEATURE",
      "Upgrading an image whose snapshot table entries lack version 3 extra data is not supported yet",
    );
  }
  if (newVersion < oldVersion) {
    if (newBits !== 16) {
      throw new QcowError("UNSUPPORTED_FEATURE", "compat=0.10 requires refcount_bits=16");
    }
    if (snapshots.some((s) => s.vmState !== 0 || (s.diskSize ?? header.size) !== header.size)) {
      throw new QcowError("UNSUPPORTED_FEATURE", "Internal snapshots prevent downgrade of image");
    }
    const left = header.incompatibleFeatures & ~INCOMPAT_COMPRESSION & ~INCOMPAT_DIRTY;
    if (left !== 0n) {
      throw new QcowError(
        "UNSUPPORTED_FEATURE",
        `Cannot downgrade an image with incompatible features 0x${left.toString(16)} set`,
      );
    }
  }

  const keepBitmaps = header.bitmaps !== undefined &&
    (header.autoclearFeatures & AUTOCLEAR_BITMAPS) !== 0n;
  const fields = headerFields(header, keepBitmaps);
  const writeHeader = async (): Promise<void> => {
    await device.write(encodeAmendedHeader(header, fields), 0);
    await device.flush();
  };

  if (newVersion > oldVersion) {
    fields.version = 3;
    await writeHeader();
  }
  if (newBits !== oldBits) {
    const table = await changeRefcountOrder(device, Math.log2(newBits));
    header = await readHeader(device);
    fields.refcountOrder = header.refcountOrder;
    fields.reftableOffset = table.offset;
    fields.reftableClusters = table.clusters;
  }
  await writeHeader();
  if (newLazy !== oldLazy) {
    fields.compatible = newLazy
      ? fields.compatible | COMPAT_LAZY_REFCOUNTS
      : fields.compatible & ~COMPAT_LAZY_REFCOUNTS;
    await writeHeader();
  }
  let zeroClustersExpanded = 0;
  if (newVersion < oldVersion) {
    // Compatible and autoclear bits are dropped from memory first, as QEMU does; the header
    // keeps saying version 3 until every zero cluster is gone.
    fields.compatible = 0n;
    fields.autoclear = 0n;
    zeroClustersExpanded = await expandZeroClusters(device, {
      clusterBits: header.clusterBits,
      refcountOrder: fields.refcountOrder,
      reftableOffset: fields.reftableOffset,
      reftableClusters: fields.reftableClusters,
      hasBacking: header.backingFile !== undefined,
      l1Tables: [
        { offset: header.l1TableOffset, size: header.l1Size },
        ...snapshots.map((s) => ({ offset: s.l1Offset, size: s.l1Size })),
      ],
      ...(header.nbSnapshots > 0
        ? { snapshotTable: { offset: header.snapshotsOffset, size: snapshotTableBytes } }
        : {}),
    });
    header = await readHeader(device);
    fields.reftableOffset = header.refcountTableOffset;
    fields.reftableClusters = header.refcountTableClusters;
    fields.version = 2;
    fields.incompatible = 0n;
    await writeHeader();
  }
  const result: AmendQcow2Result = { zeroClustersExpanded };
  if (repair) result.repair = repair;
  return result;
}
