/**
 * What the CLI needs for qcow (version 1) images and legacy AES: passphrase options, qcow create
 * options, the qcow convert target and the qcow check report.
 *
 * @module
 */

import { isQcowError, QcowError } from "../core/errors.ts";
import { FileDevice } from "../core/file_device.ts";
import { parseSize } from "../core/parse_size.ts";
import { checkQcow, type QcowCheckReport } from "../drivers/qcow/check.ts";
import { createQcow } from "../drivers/qcow/create.ts";
import { QcowImage } from "../drivers/qcow/qcow_image.ts";
import { resolveBackingPath } from "../drivers/backing_path.ts";
import type { Image, ImageFormat } from "../drivers/image.ts";
import { openImage } from "../drivers/open_image.ts";
import { fail, type OptionSpec, type Values } from "./_common.ts";
import { keyValues } from "./_create_options.ts";
import { clusterTarget, type ConvertTarget } from "./_convert_target.ts";

/** The passphrase options every command that opens images takes. */
export const PASSPHRASE_OPTIONS: Record<string, OptionSpec> = {
  "passphrase-file": { type: "string" },
  "passphrase-env": { type: "string" },
};

/** Help lines for {@linkcode PASSPHRASE_OPTIONS}. */
export const PASSPHRASE_HELP =
  `  --passphrase-file F  the passphrase of AES-encrypted images, read from file F (one trailing
                       newline is dropped); never given on the command line itself
  --passphrase-env NAME  the passphrase, from environment variable NAME
                       (a wrong passphrase cannot be detected: the image reads as garbage)
`;

/**
 * The passphrase named by `--passphrase-file` or `--passphrase-env`, if any. It is never echoed.
 *
 * @param values Parsed options.
 * @returns The passphrase, or undefined when neither option is given.
 */
export async function readPassphrase(values: Values): Promise<string | undefined> {
  const file = values["passphrase-file"];
  const env = values["passphrase-env"];
  if (typeof file === "string" && typeof env === "string") {
    fail("Give the passphrase with --passphrase-file or --passphrase-env, not both");
  }
  if (typeof file === "string") {
    let text: string;
    try {
      text = await Deno.readTextFile(file);
    } catch (error) {
      throw new QcowError("NOT_FOUND", `Cannot read the passphrase file ${file}`, {
        cause: error,
      });
    }
    return text.replace(/\r?\n$/, "");
  }
  if (typeof env === "string") {
    const value = Deno.env.get(env);
    if (value === undefined) fail(`Environment variable ${env} (the passphrase) is not set`);
    return value;
  }
  return undefined;
}

/**
 * Takes the encryption options out of `-o` pairs: `encryption=on|off` (QEMU's old spelling),
 * `encrypt.format=aes` and `encrypt.key-secret=ID` (accepted for qemu-img's command lines; the
 * key is not needed to create an image).
 *
 * @param pairs The `-o` pairs.
 * @returns The other pairs, and whether to encrypt.
 */
export function takeEncryption(pairs: [string, string][]): {
  pairs: [string, string][];
  encrypt: boolean;
  given: [string, string][];
} {
  let encrypt = false;
  const rest: [string, string][] = [];
  const given: [string, string][] = [];
  for (const [key, value] of pairs) {
    if (key === "encryption") {
      if (value !== "on" && value !== "off") fail(`Parameter 'encryption' expects 'on' or 'off'`);
      encrypt = value === "on";
      given.push([key, value]);
    } else if (key === "encrypt.format") {
      if (value !== "aes") {
        throw new QcowError(
          "UNSUPPORTED_FEATURE",
          `Encryption format '${value}' is not supported (only the legacy 'aes')`,
        );
      }
      encrypt = true;
      given.push([key, value]);
    } else if (key === "encrypt.key-secret") {
      given.push([key, value]);
    } else {
      rest.push([key, value]);
    }
  }
  return { pairs: rest, encrypt, given };
}

/** qcow create options from `-o`. */
export interface QcowCliOptions {
  /** From `size=`. */
  size?: number;
  /** From `backing_file=`. */
  backingFile?: string;
  /** From `backing_fmt=` (checked, not stored: qcow has no field for it). */
  backingFormat?: string;
  /** Whether to encrypt. */
  encrypt: boolean;
  /** The pairs as given, for the "Formatting" line. */
  given: [string, string][];
}

export const QCOW_OPTION_HELP = `Supported options:
  backing_file=<str>     - File name of a base image
  backing_fmt=<str>      - Image format of the base image (not stored by qcow)
  encrypt.format=<str>   - Encrypt the image, format choices: 'aes'
  encrypt.key-secret=<str> - accepted and ignored: give the passphrase when opening the image
  encryption=<bool (on/off)> - Encrypt the image with format 'aes' (deprecated spelling)
  size=<size>            - Virtual disk size
`;

/**
 * Parses `-o` pairs for the qcow format.
 *
 * @param pairs The pairs.
 * @returns The options.
 */
export function qcowOptions(pairs: [string, string][]): QcowCliOptions {
  const { pairs: rest, encrypt, given } = takeEncryption(pairs);
  const options: QcowCliOptions = { encrypt, given: [...given] };
  for (const [key, value] of rest) {
    options.given.push([key, value]);
    switch (key) {
      case "size":
        options.size = parseSize(value);
        break;
      case "backing_file":
        options.backingFile = value;
        break;
      case "backing_fmt":
        if (!["raw", "qcow", "qcow2"].includes(value)) {
          fail(`Unknown backing format '${value}' (expected raw, qcow or qcow2)`);
        }
        options.backingFormat = value;
        break;
      case "help":
        break;
      default:
        fail(`Invalid parameter '${key}'`);
    }
  }
  return options;
}

/** The line qemu-img create prints for a qcow image. */
export function qcowFormattingLine(path: string, size: number, o: QcowCliOptions): string {
  const parts = [`Formatting '${path}', fmt=qcow size=${size}`];
  if (o.backingFile !== undefined) parts.push(`backing_file=${o.backingFile}`);
  if (o.backingFormat !== undefined) parts.push(`backing_fmt=${o.backingFormat}`);
  for (const [key, value] of o.given) {
    if (key.startsWith("encrypt")) parts.push(`${key}=${value}`);
  }
  return parts.join(" ") + "\n";
}

/** Creates a qcow image file. */
export async function createQcowFile(
  path: string,
  size: number,
  options: { backingFile?: string; encrypt: boolean },
): Promise<void> {
  await using device = FileDevice.open(path, { readOnly: false, create: true, truncate: true });
  await createQcow(device, {
    size,
    encrypted: options.encrypt,
    ...(options.backingFile === undefined ? {} : { backingFile: options.backingFile }),
  });
}

/**
 * Creates `path` as a qcow image of `size` bytes and returns a convert target for it.
 *
 * @param path The new image.
 * @param size Its virtual size.
 * @param options Compression, encryption and its passphrase.
 * @returns The target.
 */
export async function qcowTarget(
  path: string,
  size: number,
  options: { compress: boolean; encrypt: boolean; passphrase?: string },
): Promise<ConvertTarget> {
  if (options.encrypt && options.passphrase === undefined) {
    throw new QcowError(
      "PASSPHRASE_REQUIRED",
      "An encrypted target needs a passphrase (--passphrase-file or --passphrase-env)",
    );
  }
  if (options.encrypt && options.compress) {
    fail("Compression is not supported for encrypted images");
  }
  await createQcowFile(path, size, { encrypt: options.encrypt });
  const device = FileDevice.open(path, { readOnly: false });
  let image: QcowImage;
  try {
    image = await QcowImage.open(device, {
      readOnly: false,
      ownsDevice: true,
      ...(options.passphrase === undefined ? {} : { passphrase: options.passphrase }),
    });
  } catch (error) {
    await device.close();
    throw error;
  }
  return clusterTarget(image, options.compress);
}

/**
 * Runs `checkQcow` on a file and prints its report. qemu-img has no check for qcow (it exits 63);
 * this one goes beyond it. Exit statuses as qemu-img check's: 0 clean, 2 errors, 3 leaks only.
 *
 * @param path The image.
 * @param output Human or JSON.
 * @param io Where to print.
 * @returns The exit status.
 */
export async function runQcowCheck(
  path: string,
  output: "human" | "json",
  io: { stdout: (text: string) => void },
): Promise<number> {
  await using device = FileDevice.open(path, { readOnly: true });
  const report = await checkQcow(device);
  io.stdout(output === "json" ? qcowCheckJson(path, report) : qcowCheckText(report));
  if (report.errors.length > 0) return 2;
  return report.leakedClusters > 0 || report.leakedTailBytes > 0 ? 3 : 0;
}

function qcowCheckJson(path: string, report: QcowCheckReport): string {
  return JSON.stringify(
    {
      filename: path,
      format: "qcow",
      "check-errors": report.errors.length,
      errors: report.errors,
      "l2-tables": report.l2Tables,
      "data-clusters": report.dataClusters,
      "compressed-clusters": report.compressedClusters,
      "image-end-offset": report.usedEnd,
      "leaked-clusters": report.leakedClusters,
      "leaked-tail-bytes": report.leakedTailBytes,
      note: "qemu-img has no check for qcow images; this check goes beyond it",
    },
    null,
    4,
  ) + "\n";
}

function qcowCheckText(report: QcowCheckReport): string {
  const lines = report.errors.map((e) => `ERROR ${e.message}`);
  if (report.leakedClusters > 0) {
    lines.push(`${report.leakedClusters} clusters are not referenced by any table (leaked)`);
  }
  if (report.leakedTailBytes > 0) {
    lines.push(`${report.leakedTailBytes} bytes at the end of the file are not used (leaked)`);
  }
  if (report.errors.length === 0 && lines.length === 0) {
    lines.push("No errors were found on the image.");
  } else if (report.errors.length > 0) {
    lines.push(`\n${report.errors.length} errors were found on the image.`);
  }
  lines.push(
    `${report.dataClusters} data and ${report.compressedClusters} compressed clusters in ` +
      `${report.l2Tables} L2 tables; image end offset: ${report.usedEnd}`,
  );
  lines.push("(qemu-img has no check for qcow images; this check goes beyond it)");
  return lines.join("\n") + "\n";
}

/**
 * `create -f qcow`: checks the options as qemu-img does and creates the image.
 *
 * @param values Parsed create options.
 * @param positionals FILE and SIZE.
 * @param io Where to print.
 * @returns The exit status.
 */
export async function createQcowRun(
  values: Values,
  positionals: string[],
  io: { stdout: (text: string) => void },
): Promise<number> {
  const pairs = keyValuesOf(values);
  const o = qcowOptions(pairs);
  if (o.given.some(([key]) => key === "help") || pairs.some(([key]) => key === "help")) {
    io.stdout(QCOW_OPTION_HELP);
    return 0;
  }
  if (positionals.length < 1 || positionals.length > 2) {
    fail(`Expected FILE and an optional SIZE, got ${positionals.length} arguments`);
  }
  const [path, sizeText] = positionals as [string, string | undefined];
  const backing = typeof values.backing === "string" ? values.backing : undefined;
  const backingFormat = values["backing-format"];
  if (backing !== undefined) {
    if (o.backingFile !== undefined && o.backingFile !== backing) {
      fail(`-b ${backing} contradicts -o ${o.backingFile}`);
    }
    o.backingFile = backing;
  }
  if (typeof backingFormat === "string") {
    o.backingFormat = qcowOptions([["backing_fmt", backingFormat]]).backingFormat!;
  }
  let size = sizeText === undefined ? o.size : parseSize(sizeText);
  if (o.backingFile !== undefined) {
    const where = resolveBackingPath(path, o.backingFile);
    let base: Image;
    try {
      base = await openImage(where, {
        backing: false,
        ...(o.backingFormat ? { format: o.backingFormat as ImageFormat } : {}),
      });
    } catch (error) {
      if (!isQcowError(error) || error.code === "PASSPHRASE_REQUIRED") throw error;
      throw new QcowError(error.code, `${path}: Could not open backing image: ${error.message}`, {
        cause: error,
      });
    }
    try {
      if (o.backingFormat === undefined) {
        fail(
          `${path}: Backing file specified without backing format (detected format of ${base.format}; use -F ${base.format})`,
        );
      }
      size ??= base.size;
    } finally {
      await base.close();
    }
  }
  if (size === undefined) fail(`${path}: Image creation needs a size parameter`);
  const rounded = Math.ceil(size / 512) * 512;
  if (!values.quiet) io.stdout(qcowFormattingLine(path, rounded, o));
  await createQcowFile(path, rounded, {
    encrypt: o.encrypt,
    ...(o.backingFile === undefined ? {} : { backingFile: o.backingFile }),
  });
  return 0;
}

function keyValuesOf(values: Values): [string, string][] {
  const texts = Array.isArray(values.options) ? values.options : [];
  return keyValues(texts);
}
