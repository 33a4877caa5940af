/**
 * Create options (`-o key=value,...`) for create and convert, checked as qemu-img checks them.
 *
 * @module
 */

import { isQcowError, QcowError } from "../core/errors.ts";
import { parseSize } from "../core/parse_size.ts";
import type { ImageFormat } from "../drivers/image.ts";
import { type CreateQcow2Options, validateCreateOptions } from "../drivers/qcow2/create.ts";
import { fail } from "./_common.ts";

/** Splits `-o` texts into key=value pairs; ",," stands for a comma inside a value, as in QEMU. */
export function keyValues(texts: string[]): [string, string][] {
  const pairs: [string, string][] = [];
  for (const text of texts) {
    const parts: string[] = [];
    let part = "";
    for (let i = 0; i < text.length; i++) {
      const c = text[i]!;
      if (c !== ",") part += c;
      else if (text[i + 1] === ",") part += text[i++];
      else {
        parts.push(part);
        part = "";
      }
    }
    parts.push(part);
    for (const part of parts) {
      if (part === "") continue;
      const eq = part.indexOf("=");
      if (part === "help") pairs.push(["help", ""]);
      else if (eq <= 0) fail(`Invalid option '${part}': expected key=value`);
      else pairs.push([part.slice(0, eq), part.slice(eq + 1)]);
    }
  }
  return pairs;
}

export const QCOW2_OPTION_HELP = `Supported options:
  backing_file=<str>     - File name of a base image
  backing_fmt=<str>      - Image format of the base image (raw, qcow2 or qcow)
  cluster_size=<size>    - qcow2 cluster size
  compat=<str>           - Compatibility level (v2 [0.10] or v3 [1.1])
  compression_type=<str> - Compression method used for image cluster compression (zlib)
  extended_l2=<bool (on/off)> - Extended L2 tables
  lazy_refcounts=<bool (on/off)> - Postpone refcount updates
  preallocation=<str>    - Preallocation mode (allowed values: off, metadata)
  refcount_bits=<num>    - Width of a reference count entry in bits
  size=<size>            - Virtual disk size
`;

export const RAW_OPTION_HELP = `Supported options:
  preallocation=<str>    - Preallocation mode (allowed values: off)
  size=<size>            - Virtual disk size
`;

function onOff(key: string, value: string): boolean {
  if (value === "on") return true;
  if (value === "off") return false;
  fail(`Parameter '${key}' expects 'on' or 'off'`);
}

function rejectValue(key: string, value: string): never {
  fail(`Parameter '${key}' does not accept value '${value}'`);
}

/** Create options as typed, checked one by one (combinations are createQcow2's to judge). */
export interface ImageOptions {
  /** The pairs as given, the last of repeated keys winning, for the "Formatting" line. */
  given: Map<string, string>;
  /** Size from `-o size=`. */
  size?: number;
  /** The qcow2 options, without size. */
  qcow2: Omit<CreateQcow2Options, "size">;
}

export function imageOptions(pairs: [string, string][], format: ImageFormat): ImageOptions {
  const given = new Map(pairs);
  const result: ImageOptions = { given, qcow2: {} };
  const o = result.qcow2;
  for (const [key, value] of given) {
    if (format === "raw" && key !== "size" && key !== "preallocation") {
      fail(`Invalid parameter '${key}'`);
    }
    switch (key) {
      case "size":
        result.size = parseSize(value);
        break;
      case "compat":
        if (value === "0.10" || value === "v2") o.compat = "0.10";
        else if (value === "1.1" || value === "v3") o.compat = "1.1";
        else rejectValue(key, value);
        break;
      case "cluster_size":
        o.clusterSize = parseSize(value);
        break;
      case "refcount_bits":
        if (!/^\d+$/.test(value)) fail(`Parameter 'refcount_bits' expects a number`);
        o.refcountBits = Number(value);
        break;
      case "lazy_refcounts":
        o.lazyRefcounts = onOff(key, value);
        break;
      case "extended_l2":
        o.extendedL2 = onOff(key, value);
        break;
      case "preallocation":
        if (value !== "off" && value !== "metadata" && value !== "falloc" && value !== "full") {
          rejectValue(key, value);
        }
        if (value !== "off" && (format === "raw" || value !== "metadata")) {
          throw new QcowError(
            "UNSUPPORTED_FEATURE",
            `Preallocation mode '${value}' is not supported yet for ${format}`,
          );
        }
        o.preallocation = value;
        break;
      case "compression_type":
        if (value === "zstd") {
          throw new QcowError("UNSUPPORTED_FEATURE", "zstd compression is not supported yet");
        }
        if (value !== "zlib") rejectValue(key, value);
        break;
      case "backing_file":
        o.backingFile = value;
        break;
      case "backing_fmt":
        if (value !== "raw" && value !== "qcow2" && value !== "qcow") {
          fail(`Unknown backing format '${value}' (expected raw, qcow2 or qcow)`);
        }
        o.backingFormat = value;
        break;
      case "help":
        break;
      default:
        fail(`Invalid parameter '${key}'`);
    }
  }
  return result;
}

/** Checks options with createQcow2's rules, reporting qemu-img's message alone as qemu-img does. */
export function validateQcow2(path: string, options: CreateQcow2Options): void {
  try {
    validateCreateOptions(options);
  } catch (error) {
    if (!isQcowError(error)) throw error;
    const message = error.message.replace(/^Invalid create option (?:\w+: )?/, "");
    throw new QcowError(error.code, `${path}: ${message}`, { cause: error });
  }
}

/** The line qemu-img create prints, with its options in qemu-img's order. */
export function formattingLine(
  path: string,
  format: ImageFormat,
  size: number,
  o: ImageOptions,
): string {
  const parts = [`Formatting '${path}', fmt=${format}`];
  const given = (key: string): void => {
    const value = o.given.get(key);
    if (value !== undefined) parts.push(`${key}=${value}`);
  };
  const q = o.qcow2;
  if (format === "raw") {
    parts.push(`size=${size}`);
    given("preallocation");
  } else {
    parts.push(`cluster_size=${q.clusterSize ?? 65536}`);
    parts.push(`extended_l2=${q.extendedL2 ? "on" : "off"}`);
    given("preallocation");
    parts.push(`compression_type=zlib`, `size=${size}`);
    given("compat");
    if (q.backingFile !== undefined) parts.push(`backing_file=${q.backingFile}`);
    if (q.backingFormat !== undefined) parts.push(`backing_fmt=${q.backingFormat}`);
    parts.push(`lazy_refcounts=${q.lazyRefcounts ? "on" : "off"}`);
    parts.push(`refcount_bits=${q.refcountBits ?? 16}`);
  }
  return parts.join(" ") + "\n";
}

/** The value of a flag that repeats an `-o` option, which must then say the same. */
