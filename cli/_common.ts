/**
 * What every CLI command shares: its output streams, argument parsing, and option checks.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { isQcowError, QcowError } from "../core/errors.ts";
import type { Image, ImageFormat } from "../drivers/image.ts";
import { openImage } from "../drivers/open_image.ts";
import { Qcow2Image } from "../drivers/qcow2/qcow2_image.ts";

/** Where a command writes; defaults to the process's stdout and stderr. */
export interface CliIo {
  /** Normal output. */
  stdout: (text: string) => void;
  /** Errors and progress. */
  stderr: (text: string) => void;
  /** Whether stderr is a terminal (progress bars). */
  terminal: boolean;
}

/** One subcommand of the CLI. */
export interface CliCommand {
  /** The word that selects it: `cli.ts <name>`. */
  name: string;
  /** One line for the command list. */
  summary: string;
  /** Runs it with the arguments after its name; resolves to the exit status. */
  run: (args: string[], io: CliIo) => Promise<number>;
}

/** Throws the CLI's usage error. */
export function fail(message: string): never {
  throw new QcowError("INVALID_ARGUMENT", message);
}

/** One option of {@linkcode parse}. */
export type OptionSpec = { type: "string" | "boolean"; short?: string; multiple?: boolean };
/** Parsed option values. */
export type Values = Record<string, string | boolean | string[] | undefined>;

/** Parses `args` strictly with node:util's parseArgs; `-h/--help` is always accepted. */
export function parse(
  args: string[],
  options: Record<string, OptionSpec>,
): { values: Values; positionals: string[] } {
  try {
    const { values, positionals } = parseArgs({
      args,
      options: { ...options, help: { type: "boolean", short: "h" } },
      allowPositionals: true,
      strict: true,
    });
    return { values: values as Values, positionals };
  } catch (error) {
    fail((error as Error).message);
  }
}

/** The values of an option given with `multiple: true`. */
export function list(value: Values[string]): string[] {
  return Array.isArray(value) ? value : [];
}

/** An image format option (`-f`, `-O`, `-F`). */
export function formatOption(value: Values[string]): ImageFormat | undefined {
  if (value === undefined) return undefined;
  if (value === "raw" || value === "qcow" || value === "qcow2") return value;
  fail(`Unknown format '${String(value)}' (expected raw, qcow or qcow2)`);
}

/** The `--output` option. */
export function outputOption(value: Values[string]): "human" | "json" {
  if (value === undefined || value === "human") return "human";
  if (value === "json") return "json";
  fail(`--output must be human or json, not '${String(value)}'`);
}

/** The one positional argument a command takes. */
export function onePath(positionals: string[], what: string): string {
  if (positionals.length !== 1) fail(`Expected one ${what}, got ${positionals.length}`);
  return positionals[0]!;
}

/** Opens an image read-only with its backing chain (`passphrase` for encrypted images). */
export async function open(
  path: string,
  format: ImageFormat | undefined,
  passphrase?: string,
): Promise<Image> {
  return await openImage(path, {
    ...(format === undefined ? {} : { format }),
    ...(passphrase === undefined ? {} : { passphrase }),
  });
}

/** Rounds a size up to whole 512-byte sectors, as qemu-img does for new images. */
export function roundUp512(size: number): number {
  return Math.ceil(size / 512) * 512;
}

/** Prints a command's help text; the exit status of `--help`. */
export function showHelp(text: string, io: CliIo): number {
  io.stdout(text);
  return 0;
}

/** Says on stderr that opening a dirty image for writing repaired it first, and how. */
export function reportRepair(image: Image, io: CliIo): void {
  const result = image instanceof Qcow2Image ? image.repairResult : undefined;
  if (!result) return;
  io.stderr(
    `Repaired dirty image ${image.filename}: ${result["leaks-fixed"] ?? 0} leaked clusters and ` +
      `${result["corruptions-fixed"] ?? 0} corruptions fixed\n`,
  );
}

/** Prints an error as the CLI's one line. */
export function report(error: unknown, io: CliIo): void {
  if (isQcowError(error)) io.stderr(`qcowlab: ${error.message}\n`);
  else io.stderr(`qcowlab: internal error: ${error instanceof Error ? error.stack : error}\n`);
}
