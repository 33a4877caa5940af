/**
 * Where qemu-img 7.2 is known to behave differently from qcowlab on a vector of the built-in
 * catalog, with what it does instead. Every entry was observed with `vectors verify --impl
 * qemu-img`; the verifier holds qemu-img to these values, so a change on either side fails.
 *
 * @module
 */

import type { CheckExpect, ContentsExpect, Difference } from "./manifest.ts";

/** A check qemu-img could not run or report (exit status 1, no JSON). */
const FAILED: CheckExpect = {
  opened: false,
  exitStatus: 1,
  corruptions: 0,
  leaks: 0,
  checkErrors: 0,
};

const L2_PAST_END = "qcowlab fails reads through an L2 table that lies past the end of the file " +
  "(CORRUPT_METADATA); QEMU reads the missing table as zeros";
const OVERLAP_STOPS_REPAIR = "QEMU's repair stops at its overlap check (an L2 table that is the " +
  "L1 table) and marks the image corrupt before it frees the leaks; qcowlab's repair frees them";
const GROWS_FOR_REFBLOCK = "QEMU grows the file to hold a refcount block that lies past its end " +
  "before rebuilding, and counts that block as one more fixed corruption";
const HEADER_LENGTH_UNALIGNED = "qcowlab refuses a header_length that is not a multiple of 8, as " +
  "the format specification requires; QEMU 7.2 does not check it and opens the image";
const SHORT_FIRST_CLUSTER = "QEMU reads the missing part of a file shorter than its header " +
  "cluster as zeros and opens it; qcowlab refuses a header that runs past the end of the file";
const TABLE_PAST_END = "QEMU reads a table that lies past the end of the file as zeros and " +
  "opens the image; qcowlab refuses it (BAD_TABLE)";
const AES_WITHOUT_KEY = "QEMU opens an AES-encrypted image for info without its key but cannot " +
  "read or check it; qcowlab refuses to open it without a passphrase";
const ZSTD = "QEMU supports zstd compression and opens the image (its zlib-compressed cluster " +
  "then fails to read); qcowlab does not support zstd yet";
const DATA_FILE = "QEMU opens an image whose external data file is missing for info only; " +
  "qcowlab does not support external data files yet";
const DATA_FILE_RAW = "QEMU opens an image with the raw external data bit but no data file for " +
  "info only; qcowlab refuses it at open (BAD_HEADER)";

const QCOW_SHORT_HEADER = "QEMU reads the missing bytes of a file shorter than a qcow header as " +
  "zeros and opens it; qcowlab refuses it (BAD_HEADER)";
const QCOW_TABLE_PAST_END = "QEMU reads a qcow L1 table that lies past the end of the file as " +
  "zeros and opens the image; qcowlab refuses it (BAD_TABLE)";
const QCOW_L1_OVER_HEADER = "QEMU 7.2 does not check that a qcow L1 table stays clear of the " +
  "header and opens the image; qcowlab refuses it (BAD_TABLE)";
const QCOW_NAME_PAST_END = "QEMU reads a qcow backing file name past the end of the file as " +
  "empty and opens the image; qcowlab refuses it (BAD_HEADER)";

const ABORTED_REPAIR =
  "Both repairs stop at the overlap check (a COPIED fix that would write over " +
  "a snapshot's L1 table) and mark the image corrupt; QEMU has not written its refcount fixes by " +
  "then, qcowlab has";

/** qemu-img has no check for qcow: exit status 63 and no report, once the image opens. */
const QEMU_NO_CHECK: CheckExpect = { ...FAILED, exitStatus: 63 };

/** The contents of an image that reads as all zeros (what QEMU reads from a table it zero-fills). */
const ZERO_CONTENTS: ContentsExpect = {
  sha256: "30e14955ebf1352266dc2ff8067e68104607e750abb9d3b36582b8af909fcb58",
  chunkedSha256: "f2bd491964b093b924ac77a7968ccb10561f4f1652c4d3d82c6f0be02fbb0fac",
  nonZeroChunks: 0,
};

/** qemu-img opens the image but can neither check nor repair it. */
const NEVER_CHECKED: Pick<Difference, "check" | "repair" | "afterRepair"> = {
  check: FAILED,
  repair: FAILED,
  afterRepair: FAILED,
};

/** A clean repair that counted `corruptionsFixed` fixes (one more for the block it grew for). */
function rebuiltAfterGrowing(corruptionsFixed: number): CheckExpect {
  return {
    opened: true,
    exitStatus: 0,
    corruptions: 0,
    leaks: 0,
    checkErrors: 0,
    corruptionsFixed,
    leaksFixed: 0,
  };
}

/** A qcow image qemu-img opens and reads as zeros (and, being qcow, cannot check). */
function qcowOpensAsZeros(reason: string): Difference {
  return { reason, open: "opens", contents: ZERO_CONTENTS, check: QEMU_NO_CHECK };
}

/** A qcow2 file shorter than its header cluster: opened, read as zeros, unrepairable. */
const SHORT_FIRST_CLUSTER_DIFFERENCE: Difference = {
  reason: SHORT_FIRST_CLUSTER,
  open: "opens",
  contents: ZERO_CONTENTS,
  check: { opened: true, exitStatus: 2, corruptions: 3, leaks: 0, checkErrors: 0 },
  afterRepair: { opened: true, exitStatus: 2, corruptions: 3, leaks: 0, checkErrors: 0 },
};

/** Known qemu-img differences, by vector id. */
export const QEMU_DIFFERENCES: Readonly<Record<string, Difference>> = {
  "damaged-v3-l1-past-end": {
    reason: L2_PAST_END,
    contents: ZERO_CONTENTS,
  },
  "damaged-v3-l1-into-l1": {
    reason: OVERLAP_STOPS_REPAIR,
    afterRepair: { opened: true, exitStatus: 2, corruptions: 1, leaks: 7, checkErrors: 0 },
  },
  "damaged-v3-reftable-entry-past-end": {
    reason: GROWS_FOR_REFBLOCK,
    repair: rebuiltAfterGrowing(12),
  },
  "damaged-v2-l1-past-end": {
    reason: L2_PAST_END,
    contents: ZERO_CONTENTS,
  },
  "damaged-v2-l1-into-l1": {
    reason: OVERLAP_STOPS_REPAIR,
    afterRepair: { opened: true, exitStatus: 2, corruptions: 1, leaks: 6, checkErrors: 0 },
  },
  "damaged-v2-reftable-entry-past-end": {
    reason: GROWS_FOR_REFBLOCK,
    repair: rebuiltAfterGrowing(11),
  },
  "damaged-v3-cluster-4k-refcount-1-l1-past-end": {
    reason: L2_PAST_END,
    contents: ZERO_CONTENTS,
  },
  "damaged-v3-cluster-4k-refcount-1-reftable-entry-past-end": {
    reason: GROWS_FOR_REFBLOCK,
    repair: rebuiltAfterGrowing(13),
  },
  "damaged-v3-cluster-512-refcount-64-l1-past-end": {
    reason: L2_PAST_END,
    contents: {
      sha256: "9ae3bae90a424b84743d7c9c991843433eeef83be23dbd8de3837368ce0d78ce",
      chunkedSha256: "b7e240d92c01d1c6c1bebf302afa64abc7e7c90819eb87f6d726e6695b6bd34b",
      nonZeroChunks: 1,
    },
  },
  "damaged-v3-cluster-512-refcount-64-l1-into-l1": {
    reason: OVERLAP_STOPS_REPAIR,
    afterRepair: { opened: true, exitStatus: 2, corruptions: 2, leaks: 6, checkErrors: 0 },
  },
  "damaged-v3-cluster-512-refcount-64-reftable-entry-past-end": {
    reason: GROWS_FOR_REFBLOCK,
    repair: rebuiltAfterGrowing(13),
  },
  "damaged-v3-extended-l2-l1-past-end": {
    reason: L2_PAST_END,
    contents: ZERO_CONTENTS,
  },
  "damaged-v3-extended-l2-l1-into-l1": {
    reason: OVERLAP_STOPS_REPAIR,
    afterRepair: { opened: true, exitStatus: 2, corruptions: 1, leaks: 7, checkErrors: 0 },
  },
  "damaged-v3-extended-l2-reftable-entry-past-end": {
    reason: GROWS_FOR_REFBLOCK,
    repair: rebuiltAfterGrowing(12),
  },
  "header-header-length-unaligned": {
    reason: HEADER_LENGTH_UNALIGNED,
    open: "opens",
    contents: {
      sha256: "d12c39499718101bc5808543c6f28c2098c3ecad61529b4d2e3d3e98b4477d2e",
      chunkedSha256: "2935dcfbfef02e080b780380ff8c5e1a9f798a25d1c6822c7d6573f54b516d1f",
      nonZeroChunks: 2,
    },
    check: { opened: true, exitStatus: 0, corruptions: 0, leaks: 0, checkErrors: 0 },
    repair: { opened: true, exitStatus: 0, corruptions: 0, leaks: 0, checkErrors: 0 },
    afterRepair: { opened: true, exitStatus: 0, corruptions: 0, leaks: 0, checkErrors: 0 },
  },
  "header-header-length-past-eof": SHORT_FIRST_CLUSTER_DIFFERENCE,
  "header-backing-name-past-eof": SHORT_FIRST_CLUSTER_DIFFERENCE,
  "header-extension-past-eof": SHORT_FIRST_CLUSTER_DIFFERENCE,
  "header-l1-past-eof": {
    reason: TABLE_PAST_END,
    open: "opens",
    contents: ZERO_CONTENTS,
  },
  "header-l1-cut": {
    reason: TABLE_PAST_END,
    open: "opens",
    contents: ZERO_CONTENTS,
  },
  "header-reftable-past-eof": {
    reason: TABLE_PAST_END,
    open: "opens",
    contents: {
      sha256: "378f72d01bbd07d9c4f7960d9f251cfe391a3a1ae2ad15ebf174004325c37b3c",
      chunkedSha256: "f0ea976d1be887f7b958dedb7fbfd517ab30674db389c33ee3909b11ff437918",
      nonZeroChunks: 2,
    },
  },
  "header-encryption-aes": {
    reason: AES_WITHOUT_KEY,
    open: "read-only",
    contents: { error: "qemu-img convert failed" },
    ...NEVER_CHECKED,
  },
  "header-compression-zstd": {
    reason: ZSTD,
    open: "opens",
    contents: { error: "qemu-img convert failed" },
  },
  "header-external-data-file-bit": {
    reason: DATA_FILE,
    open: "read-only",
    contents: { error: "qemu-img convert failed" },
    ...NEVER_CHECKED,
  },
  "header-data-file-raw-bit": {
    reason: DATA_FILE_RAW,
    open: "read-only",
    contents: { error: "qemu-img convert failed" },
    ...NEVER_CHECKED,
  },
  "qcow-header-too-short": qcowOpensAsZeros(QCOW_SHORT_HEADER),
  "qcow-header-l1-offset-huge": qcowOpensAsZeros(QCOW_TABLE_PAST_END),
  "qcow-header-l1-past-eof": qcowOpensAsZeros(QCOW_TABLE_PAST_END),
  "qcow-header-l1-over-header": qcowOpensAsZeros(QCOW_L1_OVER_HEADER),
  "qcow-header-backing-name-past-eof": {
    reason: QCOW_NAME_PAST_END,
    open: "opens",
    contents: {
      sha256: "73415fe1f0218ca0d83dee1730156cf7db0f31867f314406d11e6122e3d1fc03",
      chunkedSha256: "da4a61c7886fed84883c27321f66536cf0e4c1e425b7c8050ba001a649c22fc7",
      nonZeroChunks: 2,
    },
    check: QEMU_NO_CHECK,
  },
  "qcow-header-l2-past-eof": {
    reason: L2_PAST_END,
    contents: ZERO_CONTENTS,
  },
  "damaged-snapshots-entry-without-disk-size": {
    reason: ABORTED_REPAIR,
    afterRepair: { opened: true, exitStatus: 2, corruptions: 3, leaks: 6, checkErrors: 0 },
  },
};
