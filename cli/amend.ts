/**
 * `cli.ts amend`: a qcow2 image's options changed in place, as qemu-img amend changes them.
 *
 * @module
 */

import { FileDevice } from "../core/file_device.ts";
import { parseSize } from "../core/parse_size.ts";
import { openImage } from "../drivers/open_image.ts";
import { probeFormat } from "../drivers/probe.ts";
import { amendQcow2, type AmendQcow2Options } from "../drivers/qcow2/amend.ts";
import { type CliCommand, fail, formatOption, list, onePath, parse, showHelp } from "./_common.ts";

const HELP = `Usage: cli.ts amend -o OPTIONS [-f FMT] [-q] FILE

Changes the options of a qcow2 image in place, as qemu-img amend does. OPTIONS is a
comma-separated list (-o may be given more than once):
  compat=0.10|1.1      the compatibility level: 0.10 (version 2) or 1.1 (version 3); a downgrade
                       rewrites zero clusters and is refused for what version 2 cannot hold
  lazy_refcounts=on|off
                       defer refcount updates (version 3); turning it off on a dirty image
                       repairs it first
  refcount_bits=N      the refcount width: 1, 2, 4, 8, 16, 32 or 64 (not 16: version 3 only)
  size=SIZE            a new virtual size (k, M, G, T suffixes), as resize sets it
  backing_file=NAME, backing_fmt=FMT
                       accepted only when they are the image's own (use rebase to change them)
  -o help              list these options
  -f, --format FMT     the image's format (only qcow2 can be amended); probed when omitted
  -q, --quiet          print nothing but errors
Exit status: 0 done, 1 refused or failed.
`;

const AMEND_OPTIONS = `Amend options for 'qcow2':
  compat=<str>           - Compatibility level (v2 [0.10] or v3 [1.1])
  lazy_refcounts=<bool (on/off)> - Postpone refcount updates
  refcount_bits=<num>    - Width of a reference count entry in bits
  size=<size>            - Virtual disk size
  backing_file=<str>     - File name of a base image
  backing_fmt=<str>      - Image format of the base image
`;

/** Options only \`create\` takes: qemu-img names them apart from unknown ones. */
const CREATE_ONLY = new Set([
  "cluster_size",
  "preallocation",
  "extended_l2",
  "compression_type",
  "encryption",
  "encrypt.format",
]);

const TRUE_WORDS = new Set(["on", "yes", "true", "y"]);
const FALSE_WORDS = new Set(["off", "no", "false", "n"]);

/** A refusal with qemu-img's message and hint line. */
class Refusal extends Error {}

function parseBool(name: string, value: string): boolean {
  if (TRUE_WORDS.has(value)) return true;
  if (FALSE_WORDS.has(value)) return false;
  throw new Refusal(`Parameter '${name}' expects 'on' or 'off'`);
}

/** The options of `-o` as amendQcow2 takes them, plus what needs the image to judge. */
interface ParsedOptions {
  amend: AmendQcow2Options;
  backingFile?: string;
  backingFormat?: string;
  size?: string;
  dataFile?: string;
  dataFileRaw?: boolean;
  encrypt: boolean;
}

function parseAmendOptions(text: string): ParsedOptions {
  const parsed: ParsedOptions = { amend: {}, encrypt: false };
  for (const item of text.split(",")) {
    if (item === "") continue;
    const eq = item.indexOf("=");
    const name = eq < 0 ? item : item.slice(0, eq);
    const value = eq < 0 ? "on" : item.slice(eq + 1);
    if (name === "compat") parsed.amend.compat = value;
    else if (name === "lazy_refcounts") parsed.amend.lazyRefcounts = parseBool(name, value);
    else if (name === "refcount_bits") {
      if (!/^\d+$/.test(value)) throw new Refusal(`Parameter '${name}' expects a number`);
      parsed.amend.refcountBits = Number(value);
    } else if (name === "backing_file") parsed.backingFile = value;
    else if (name === "backing_fmt") parsed.backingFormat = value;
    else if (name === "size") parsed.size = value;
    else if (name === "data_file") parsed.dataFile = value;
    else if (name === "data_file_raw") parsed.dataFileRaw = parseBool(name, value);
    else if (name.startsWith("encrypt.") && !CREATE_ONLY.has(name)) parsed.encrypt = true;
    else if (CREATE_ONLY.has(name)) {
      throw new Refusal(
        `Invalid parameter '${name}'\nThis option is only supported for image creation`,
      );
    } else throw new Refusal(`Invalid parameter '${name}'`);
  }
  return parsed;
}

const amendRun: CliCommand["run"] = async (args, io) => {
  const { values, positionals } = parse(args, {
    options: { type: "string", short: "o", multiple: true },
    format: { type: "string", short: "f" },
    quiet: { type: "boolean", short: "q" },
    progress: { type: "boolean", short: "p" },
  });
  if (values.help) return showHelp(HELP, io);
  const optionTexts = list(values.options);
  if (optionTexts.includes("help") || optionTexts.includes("?")) {
    io.stdout(AMEND_OPTIONS);
    return 0;
  }
  if (optionTexts.length === 0) fail("Must specify options (-o)");
  const path = onePath(positionals, "image");
  let parsed: ParsedOptions;
  try {
    parsed = parseAmendOptions(optionTexts.join(","));
  } catch (error) {
    if (!(error instanceof Refusal)) throw error;
    io.stderr(`qcowlab: ${error.message}\n`);
    return 1;
  }
  const size = parsed.size === undefined ? undefined : parseSize(parsed.size);
  const { compat, ...rest } = parsed.amend;
  // A new size is set after everything but a downgrade, as QEMU orders it.
  const downgrade = compat === "0.10" || compat === "v2";
  const first: AmendQcow2Options = {
    ...(downgrade && size !== undefined ? rest : parsed.amend),
    ...(parsed.backingFile !== undefined ? { backingFile: parsed.backingFile } : {}),
    ...(parsed.backingFormat !== undefined ? { backingFormat: parsed.backingFormat } : {}),
  };
  const device = FileDevice.open(path, { readOnly: false });
  try {
    const format = formatOption(values.format) ?? await probeFormat(device);
    if (format !== "qcow2") fail(`Format driver '${format}' does not support option amendment`);
    if (parsed.encrypt) fail("Can't amend encryption options - encryption not present");
    if (parsed.dataFile !== undefined) {
      fail("data-file can only be set for images that use an external data file");
    }
    if (parsed.dataFileRaw) fail("data-file-raw cannot be set on existing images");
    const result = await amendQcow2(device, first);
    if (result.repair) {
      io.stderr(
        `Repaired dirty image ${path}: ${result.repair["leaks-fixed"] ?? 0} leaked clusters and ` +
          `${result.repair["corruptions-fixed"] ?? 0} corruptions fixed\n`,
      );
    }
  } finally {
    await device.close();
  }
  if (size === undefined) return 0;
  {
    // With the backing chain: growing over a longer backing file must hide what it holds there.
    await using image = await openImage(path, { readOnly: false, format: "qcow2" });
    if (size !== image.size) await image.resize(size, { shrink: true });
  }
  if (downgrade) {
    await using again = FileDevice.open(path, { readOnly: false });
    await amendQcow2(again, { compat: "0.10" });
  }
  return 0;
};

/** `cli.ts amend`. */
export const amendCommand: CliCommand = {
  name: "amend",
  summary: "change a qcow2 image's options in place (like qemu-img amend)",
  run: amendRun,
};
