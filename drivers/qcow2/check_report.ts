/**
 * The result of a qcow2 consistency check and the text `qemu-img check` prints for it, without
 * I/O.
 *
 * @module
 */

/** How much a check may repair: nothing, leaked clusters only, or everything it can. */
export type CheckRepair = "none" | "leaks" | "all";

/**
 * What a check found, with `qemu-img check --output=json`'s field names. As in qemu-img, the
 * counters other than `check-errors` are present only when they are not 0.
 */
export interface CheckResult {
  /** The image's name, as qemu-img prints the file name it was given. */
  filename: string;
  /** Always "qcow2". */
  format: string;
  /** Problems that stopped parts of the check (unreadable refcounts, failed repairs). */
  "check-errors": number;
  /** One past the last cluster in use or referenced, in bytes. */
  "image-end-offset"?: number;
  /** Inconsistencies that can lose or damage data, left after any repair. */
  corruptions?: number;
  /** Clusters whose stored refcount exceeds their references, left after any repair. */
  leaks?: number;
  /** Corruptions the repair fixed. */
  "corruptions-fixed"?: number;
  /** Leaks the repair fixed. */
  "leaks-fixed"?: number;
  /** Clusters of the virtual disk. */
  "total-clusters"?: number;
  /** Clusters of the virtual disk the active L1 table maps to the image file. */
  "allocated-clusters"?: number;
  /** Allocated clusters not stored right after the previous one of the same L2 table. */
  "fragmented-clusters"?: number;
  /** Compressed clusters. */
  "compressed-clusters"?: number;
  /**
   * What the check wrote to standard error, line by line, as qemu-img does ("Leaked cluster 6
   * refcount=1 reference=0", "ERROR OFLAG_COPIED data cluster: ..."), the double check after a
   * repair included. qemu-img ends them with "qemu-img: Check failed" (plus ": " and `failure`
   * when set) whenever {@linkcode checkExitStatus} is 1. Not part of the JSON output.
   */
  messages: string[];
  /**
   * Set when the check could not finish, with the reason qemu-img names in "Check failed: ..."
   * (for example "Input/output error" when `repair: "leaks"` meets refcounts that need a rebuild).
   * qemu-img then prints no report. Not part of the JSON output.
   */
  failure?: string;
}

/** The counters of {@linkcode CheckResult} that qemu-img omits when they are 0, in struct order. */
export const OPTIONAL_COUNTERS = [
  "image-end-offset",
  "corruptions",
  "leaks",
  "corruptions-fixed",
  "leaks-fixed",
  "total-clusters",
  "allocated-clusters",
  "fragmented-clusters",
  "compressed-clusters",
] as const;

/** One of the counters that may be absent. */
export type OptionalCounter = typeof OPTIONAL_COUNTERS[number];

/**
 * The order qemu-img 7.2 prints the JSON members in: QEMU's dictionaries iterate their hash
 * buckets in order, so this is the order of the keys' hashes, not the struct's.
 */
const JSON_ORDER = [
  "image-end-offset",
  "compressed-clusters",
  "total-clusters",
  "corruptions",
  "corruptions-fixed",
  "check-errors",
  "leaks",
  "leaks-fixed",
  "allocated-clusters",
  "filename",
  "format",
  "fragmented-clusters",
] as const;

/**
 * The exit status of `qemu-img check` for a result: 1 when the check failed or had check errors,
 * 2 when corruptions are left, 3 when only leaks are left, 0 for a clean image. After a repair the
 * result describes the repaired image, and so does the status.
 *
 * @example A clean image
 * ```ts
 * import { checkExitStatus } from "@qcowlab/qcowlab";
 *
 * console.log(checkExitStatus({ filename: "a", format: "qcow2", "check-errors": 0, messages: [] })); // 0
 * ```
 *
 * @param result A check result.
 * @returns 0, 1, 2 or 3.
 */
export function checkExitStatus(result: CheckResult): number {
  if (result.failure !== undefined || result["check-errors"] > 0) return 1;
  if ((result.corruptions ?? 0) > 0) return 2;
  if ((result.leaks ?? 0) > 0) return 3;
  return 0;
}

/**
 * Formats a percentage as C's `%0.2f` does: exact halves round to even (JavaScript's `toFixed`
 * rounds them up).
 */
export function formatPercent(value: number): string {
  const hundredths = value * 100;
  const floor = Math.floor(hundredths);
  if (hundredths - floor === 0.5) {
    const even = floor % 2 === 0 ? floor : floor + 1;
    return (even / 100).toFixed(2);
  }
  return value.toFixed(2);
}

/** Escapes a string as QEMU's JSON writer does: control and non-ASCII characters as \uXXXX. */
function jsonString(text: string): string {
  let out = '"';
  for (const char of text) {
    const code = char.codePointAt(0)!;
    if (char === '"') out += '\\"';
    else if (char === "\\") out += "\\\\";
    else if (char === "\b") out += "\\b";
    else if (char === "\f") out += "\\f";
    else if (char === "\n") out += "\\n";
    else if (char === "\r") out += "\\r";
    else if (char === "\t") out += "\\t";
    else if (code >= 0x20 && code <= 0x7e) out += char;
    else {
      for (let i = 0; i < char.length; i++) {
        out += "\\u" + char.charCodeAt(i).toString(16).toUpperCase().padStart(4, "0");
      }
    }
  }
  return out + '"';
}

function humanReport(result: CheckResult): string {
  const corruptions = result.corruptions ?? 0;
  const leaks = result.leaks ?? 0;
  const errors = result["check-errors"];
  let out = "";
  if (corruptions === 0 && leaks === 0 && errors === 0) {
    out += "No errors were found on the image.\n";
  } else {
    if (corruptions > 0) {
      out += `\n${corruptions} errors were found on the image.\n` +
        "Data may be corrupted, or further writes to the image may corrupt it.\n";
    }
    if (leaks > 0) {
      out += `\n${leaks} leaked clusters were found on the image.\n` +
        "This means waste of disk space, but no harm to data.\n";
    }
    if (errors > 0) out += `\n${errors} internal errors have occurred during the check.\n`;
  }
  const total = result["total-clusters"] ?? 0;
  const allocated = result["allocated-clusters"] ?? 0;
  if (total !== 0 && allocated !== 0) {
    const fragmented = result["fragmented-clusters"] ?? 0;
    const compressed = result["compressed-clusters"] ?? 0;
    out += `${allocated}/${total} = ${formatPercent(allocated * 100 / total)}% allocated, ` +
      `${formatPercent(fragmented * 100 / allocated)}% fragmented, ` +
      `${formatPercent(compressed * 100 / allocated)}% compressed clusters\n`;
  }
  const end = result["image-end-offset"] ?? 0;
  if (end !== 0) out += `Image end offset: ${end}\n`;
  return out;
}

function jsonReport(result: CheckResult): string {
  const members: string[] = [];
  for (const key of JSON_ORDER) {
    const value = result[key];
    if (value === undefined) continue;
    members.push(`    "${key}": ${typeof value === "string" ? jsonString(value) : value}`);
  }
  return `{\n${members.join(",\n")}\n}\n`;
}

/**
 * What `qemu-img check` prints on standard output for a result: the human report (with the
 * summary of repairs and "Double checking the fixed image now..." when something was fixed) or
 * the JSON object, byte for byte. A failed check prints nothing. The result's `messages` are what
 * qemu-img prints on standard error; it ends them with "qemu-img: Check failed" (and ": " plus
 * `failure` when the check failed) whenever {@linkcode checkExitStatus} is 1.
 *
 * @example The report of a clean image
 * ```ts
 * import { formatCheckReport } from "@qcowlab/qcowlab";
 *
 * const text = formatCheckReport({
 *   filename: "disk.qcow2",
 *   format: "qcow2",
 *   "check-errors": 0,
 *   "image-end-offset": 262144,
 *   "total-clusters": 16,
 *   messages: [],
 * });
 * console.log(text); // "No errors were found on the image.\nImage end offset: 262144\n"
 * ```
 *
 * @param result A check result.
 * @param format "human" (default) or "json".
 * @returns The text, ending in a newline, or "" for a failed check.
 */
export function formatCheckReport(result: CheckResult, format: "human" | "json" = "human"): string {
  if (result.failure !== undefined) return "";
  if (format === "json") return jsonReport(result);
  const leaksFixed = result["leaks-fixed"] ?? 0;
  const corruptionsFixed = result["corruptions-fixed"] ?? 0;
  let out = "";
  if (leaksFixed > 0 || corruptionsFixed > 0) {
    out += "The following inconsistencies were found and repaired:\n\n" +
      `    ${leaksFixed} leaked clusters\n` +
      `    ${corruptionsFixed} corruptions\n\n` +
      "Double checking the fixed image now...\n";
  }
  return out + humanReport(result);
}
