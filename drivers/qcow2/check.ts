/**
 * `qemu-img check` for qcow2 images: refcounts rebuilt in memory from every reference and compared
 * with the stored ones, COPIED flags, table entries; optionally repaired.
 *
 * @module
 */

import { z } from "zod";
import type { BlockDevice } from "../../core/block_device.ts";
import { QcowError } from "../../core/errors.ts";
import { type CheckCounts, CheckImage, zeroCounts } from "./check_image.ts";
import { checkRefcounts, type Fix, NO_FIX } from "./check_refcounts.ts";
import type { CheckRepair, CheckResult } from "./check_report.ts";
import { readSnapshotTable } from "./check_snapshots.ts";
import { INCOMPAT_CORRUPT, INCOMPAT_DIRTY } from "./header.ts";
import { rewriteSnapshotTable } from "./repair_snapshots.ts";

export {
  checkExitStatus,
  type CheckRepair,
  type CheckResult,
  formatCheckReport,
} from "./check_report.ts";

/** Options for {@linkcode checkQcow2}. */
export interface CheckQcow2Options {
  /**
   * "none" (default) only checks; "leaks" frees leaked clusters (and fixes COPIED flags when the
   * refcounts are otherwise right); "all" repairs everything it can, rebuilding the refcount
   * structure when it cannot be trusted. Repairs need a writable device.
   */
  repair?: CheckRepair;
  /** The name to report as `filename`; default the device's name. */
  filename?: string;
}

const optionsSchema = z.object({
  repair: z.enum(["none", "leaks", "all"]).optional(),
  filename: z.string().optional(),
}).strict();

/** Adds `src` to `out`; with `allocation`, takes its allocation figures and image end. */
function addCounts(out: CheckCounts, src: CheckCounts, allocation: boolean): void {
  out.corruptions += src.corruptions;
  out.leaks += src.leaks;
  out.checkErrors += src.checkErrors;
  out.corruptionsFixed += src.corruptionsFixed;
  out.leaksFixed += src.leaksFixed;
  if (allocation) {
    out.imageEndOffset = src.imageEndOffset;
    out.totalClusters = src.totalClusters;
    out.allocatedClusters = src.allocatedClusters;
    out.fragmentedClusters = src.fragmentedClusters;
    out.compressedClusters = src.compressedClusters;
  }
}

/** One check of the whole image, as QEMU's driver-level check. */
async function checkOnce(
  device: BlockDevice,
  fix: Fix,
  messages: string[],
  quietOpen: boolean,
): Promise<{ res: CheckCounts; failure?: string }> {
  const writable = fix.leaks || fix.errors;
  const image = await CheckImage.open(device, messages, { writable, quiet: quietOpen });
  const res = zeroCounts();
  const snapshotRes = zeroCounts();
  let failure = await readSnapshotTable(image, snapshotRes, fix.errors);
  if (failure !== undefined) {
    addCounts(res, snapshotRes, false);
    return { res, failure };
  }
  const refcountRes = zeroCounts();
  const refcounts = await checkRefcounts(image, refcountRes, fix);
  addCounts(res, refcountRes, true);
  if (refcounts.failure !== undefined) {
    addCounts(res, snapshotRes, false);
    return { res, failure: refcounts.failure };
  }
  if (fix.errors && snapshotRes.corruptions > 0) {
    const { counts, pastEnd } = refcounts.pass;
    failure = await rewriteSnapshotTable(image, counts, pastEnd, snapshotRes);
    if (failure !== undefined) {
      addCounts(res, snapshotRes, false);
      return { res, failure };
    }
    snapshotRes.corruptionsFixed += snapshotRes.corruptions;
    snapshotRes.corruptions = 0;
  }
  addCounts(res, snapshotRes, false);
  if (writable && res.checkErrors === 0 && res.corruptions === 0) {
    // Nothing is left broken: the image is clean and consistent again.
    const bits = image.incompatibleFeatures;
    if ((bits & (INCOMPAT_DIRTY | INCOMPAT_CORRUPT)) !== 0n) {
      await device.flush();
      await image.setIncompatibleFeatures(bits & ~(INCOMPAT_DIRTY | INCOMPAT_CORRUPT));
    }
  }
  return { res };
}

function toResult(
  res: CheckCounts,
  filename: string,
  messages: string[],
  failure: string | undefined,
): CheckResult {
  const result: CheckResult = {
    filename,
    format: "qcow2",
    "check-errors": res.checkErrors,
    messages,
  };
  const optional: [keyof CheckResult, number][] = [
    ["image-end-offset", res.imageEndOffset],
    ["corruptions", res.corruptions],
    ["leaks", res.leaks],
    ["corruptions-fixed", res.corruptionsFixed],
    ["leaks-fixed", res.leaksFixed],
    ["total-clusters", res.totalClusters],
    ["allocated-clusters", res.allocatedClusters],
    ["fragmented-clusters", res.fragmentedClusters],
    ["compressed-clusters", res.compressedClusters],
  ];
  for (const [key, value] of optional) {
    if (value !== 0) (result as unknown as Record<string, number>)[key] = value;
  }
  if (failure !== undefined) result.failure = failure;
  return result;
}

/**
 * Checks a qcow2 image as `qemu-img check` does, optionally repairing it as `qemu-img check -r
 * leaks` or `-r all` does. It works on the device directly, so it handles images the reader
 * refuses (dirty, marked corrupt), and it reads metadata only, never guest data, so a huge sparse
 * image checks as fast as a small one.
 *
 * Every reference is counted (header, active L1 and L2 tables and data clusters, compressed data
 * with every host cluster it touches, the snapshot table and each snapshot's tables and data, the
 * refcount table and blocks, the bitmap directory and bitmaps, the encryption header) and the
 * counts are compared with the stored refcounts: more stored than counted is a leak, fewer is a
 * corruption. COPIED flags are checked against the stored refcounts, and table entries for
 * alignment, reserved bits and whether they point into the file.
 *
 * A repair that fixed anything is followed by a fresh check, whose result is returned with the
 * numbers fixed. When the refcount structure cannot be trusted (a referenced cluster with
 * refcount 0, a broken refcount table entry), `repair: "all"` writes a new refcount table and
 * blocks after the end of the image, switches the header to them in one write and frees the old
 * ones; `repair: "leaks"` refuses ("ERROR need to rebuild refcount structures"). A repair that
 * leaves no corruption and no check error clears the dirty and corrupt bits.
 *
 * @example Checking an image file
 * ```ts
 * import { checkExitStatus, checkQcow2, createQcow2, FileDevice } from "@qcowlab/qcowlab";
 *
 * const path = await Deno.makeTempFile();
 * {
 *   await using device = FileDevice.open(path, { readOnly: false });
 *   await createQcow2(device, { size: 1024 * 1024 });
 * }
 * await using device = FileDevice.open(path);
 * const result = await checkQcow2(device, { filename: "disk.qcow2" });
 * console.log(checkExitStatus(result), result["total-clusters"]); // 0 16
 * ```
 *
 * @param device The image file; writable when repairing.
 * @param options What to repair, and the name to report.
 * @returns The result, with qemu-img's JSON fields and its diagnostic lines.
 * @throws {QcowError} When the image cannot be opened at all (bad magic, header or tables, unknown
 * incompatible features; qemu-img exits with 1 then), `INVALID_ARGUMENT` for bad options,
 * `READ_ONLY` when repairing a read-only device.
 */
export async function checkQcow2(
  device: BlockDevice,
  options: CheckQcow2Options = {},
): Promise<CheckResult> {
  const parsed = optionsSchema.safeParse(options);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const field = issue.path.length > 0 ? `${issue.path.join(".")}: ` : "";
    throw new QcowError("INVALID_ARGUMENT", `Invalid check option ${field}${issue.message}`);
  }
  const repair = options.repair ?? "none";
  if (repair !== "none" && device.readOnly) {
    throw new QcowError("READ_ONLY", `Cannot repair ${device.name}: the device is read-only`);
  }
  const filename = options.filename ?? device.name;
  const fix: Fix = { leaks: repair !== "none", errors: repair === "all" };
  const messages: string[] = [];
  const first = await checkOnce(device, fix, messages, false);
  if (first.failure !== undefined) return toResult(first.res, filename, messages, first.failure);
  if (first.res.corruptionsFixed === 0 && first.res.leaksFixed === 0) {
    return toResult(first.res, filename, messages, undefined);
  }
  // Something was repaired: report the image as it is now, with what was fixed.
  const second = await checkOnce(device, NO_FIX, messages, true);
  second.res.corruptionsFixed = first.res.corruptionsFixed;
  second.res.leaksFixed = first.res.leaksFixed;
  return toResult(second.res, filename, messages, second.failure);
}
