/**
 * The qcowlab command line: `deno run -A cli.ts <command> [options]`.
 *
 * Commands: `info`, `map`, `create`, `resize`, `convert`, `compare`, `io`. Every command takes
 * `--help`. Errors go to stderr as one line, and the exit status is non-zero.
 *
 * @example Running a command from code
 * ```ts
 * import { main } from "@qcowlab/qcowlab/cli";
 *
 * const path = await Deno.makeTempFile();
 * await Deno.writeFile(path, new Uint8Array(4096));
 * const status = await main(["info", "--output", "json", path]);
 * console.log(status); // 0
 * ```
 *
 * @module
 */

import { parseArgs } from "node:util";
import { isQcowError, QcowError } from "./core/errors.ts";
import { FileDevice } from "./core/file_device.ts";
import { formatSize } from "./core/format_size.ts";
import { isZero } from "./core/bytes.ts";
import { parseSize } from "./core/parse_size.ts";
import { Progress } from "./core/progress.ts";
import { resolveBackingPath } from "./drivers/backing_path.ts";
import type { Image, ImageFormat, ImageInfo } from "./drivers/image.ts";
import { mapImage } from "./drivers/map_image.ts";
import { openImage } from "./drivers/open_image.ts";
import {
  createQcow2,
  type CreateQcow2Options,
  validateCreateOptions,
} from "./drivers/qcow2/create.ts";
import { Qcow2Image } from "./drivers/qcow2/qcow2_image.ts";
import { checkExitStatus, checkQcow2, formatCheckReport } from "./drivers/qcow2/check.ts";
import { probeFormat } from "./drivers/probe.ts";

/** Where a command writes; defaults to the process's stdout and stderr. */
export interface CliIo {
  /** Normal output. */
  stdout: (text: string) => void;
  /** Errors and progress. */
  stderr: (text: string) => void;
  /** Whether stderr is a terminal (progress bars). */
  terminal: boolean;
}

type Command = (args: string[], io: CliIo) => Promise<number>;

const encoder = new TextEncoder();
const defaultIo: CliIo = {
  stdout: (text) => void Deno.stdout.writeSync(encoder.encode(text)),
  stderr: (text) => void Deno.stderr.writeSync(encoder.encode(text)),
  terminal: Deno.stderr.isTerminal(),
};

const USAGE = `qcowlab: emulate, inspect and check qcow2 disk images

Usage: deno run -A cli.ts <command> [options]

Commands:
  info     show what an image is (like qemu-img info)
  map      show how an image's ranges are allocated (like qemu-img map)
  check    check (and repair) a qcow2 image's metadata (like qemu-img check)
  create   create a qcow2 or raw image (like qemu-img create)
  resize   change an image's virtual size (like qemu-img resize)
  convert  copy an image to raw or qcow2 (like qemu-img convert)
  compare  compare the contents of two images (like qemu-img compare)
  io       read, write, discard and truncate inside an image (like qemu-io)

Run 'cli.ts <command> --help' for a command's options.
`;

const HELP: Record<string, string> = {
  info: `Usage: cli.ts info [-f FMT] [--backing-chain] [--output human|json] FILE

Shows the format, virtual size, cluster size, backing file and format-specific details of FILE.
  -f, --format FMT     the image's format (raw or qcow2); probed when omitted
  --backing-chain      show every image of the backing chain
  --output FORMAT      human (default) or json, with qemu-img's field names
`,
  map: `Usage: cli.ts map [-f FMT] [--output human|json] FILE

Lists how each range of FILE and its backing chain is stored.
  -f, --format FMT     the image's format (raw or qcow2); probed when omitted
  --output FORMAT      human (default: ranges stored as data, with their host offsets) or json
                       (every range, with depth, present, zero, data and offset, as qemu-img)
`,
  create: `Usage: cli.ts create [-f FMT] [-o OPTIONS] [-b BACKING -F FMT] [-q] FILE [SIZE]

Creates FILE as an empty image of SIZE bytes (k, M, G, T suffixes; default: the backing file's
virtual size), printing qemu-img's "Formatting ..." line.
  -f, --format FMT     qcow2 (the default here; qemu-img's is raw) or raw (a sparse file)
  -o OPTIONS           comma-separated key=value create options ("-o help" lists them):
                       compat=0.10|1.1, cluster_size=SIZE, refcount_bits=N,
                       lazy_refcounts=on|off, extended_l2=on|off, preallocation=off|metadata,
                       backing_file=NAME, backing_fmt=FMT, size=SIZE
  -b, --backing NAME   the backing file, stored as given and found beside FILE
  -F, --backing-format FMT  the backing file's format (raw or qcow2), required with -b
  -q, --quiet          print nothing on success
`,
  resize: `Usage: cli.ts resize [--shrink] [-f FMT] [-q] FILE [+|-]SIZE

Sets the virtual size of FILE to SIZE, or grows (+) or shrinks (-) it by SIZE (k, M, G, T
suffixes). A negative size needs no "--" before it.
  --shrink             allow making the image smaller (a qcow2 image only loses an unallocated tail)
  -f, --format FMT     the image's format (raw or qcow2); probed when omitted
  -q, --quiet          print nothing on success
`,
  convert: `Usage: cli.ts convert [-f FMT] [-O raw|qcow2] [-c] [-o OPTIONS] [-q] SRC DST

Writes the virtual contents of SRC (with its backing chain) to DST, skipping ranges that read as
zeros: a sparse raw file, or a new qcow2 image without a backing file.
  -f, --format FMT     the source's format; probed when omitted
  -O FMT               the output format: raw (default) or qcow2
  -c, --compress       write qcow2 data clusters compressed
  -o OPTIONS           qcow2 create options for DST, as for create (no size or backing file)
  -q, --quiet          no progress output (progress: a bar on a terminal, plain lines otherwise)
`,
  check: `Usage: cli.ts check [-f FMT] [-r leaks|all] [--output human|json] [-q] FILE

Checks a qcow2 image's metadata the way qemu-img check does: rebuilds the refcounts from every
reference and compares them with the stored ones, and checks COPIED flags and table offsets.
  -r leaks             free leaked clusters
  -r all               repair everything it can, rebuilding the refcount structure if needed
  --output FORMAT      human (default) or json, with qemu-img's field names
  -q, --quiet          print no report (human output)
Exit status: 0 clean, 1 the check failed, 2 corruptions, 3 leaks (after -r: the state after
repair), 63 for formats without checks (raw).
`,
  compare: `Usage: cli.ts compare [-f FMT] [-F FMT] [-s] A B

Compares the virtual contents of A and B. Exit status 0 when identical, 1 when they differ (the
first differing offset is printed), 2 on an error. Without -s, an image that is larger than the
other compares equal when its extra part reads as zeros.
  -f FMT               format of A; -F FMT: format of B (probed when omitted)
  -s, --strict         images of different sizes differ
`,
  io: `Usage: cli.ts io [-f FMT] [-r] -c COMMAND [-c COMMAND ...] FILE

Runs qemu-io style commands on FILE (with its backing chain), in order, printing what qemu-io
prints. Every command is checked before the first one runs; a command that fails is reported and
the rest still run, and the exit status is then 1.
  -f, --format FMT     the image's format (raw or qcow2); probed when omitted
  -r, --read-only      open FILE read-only (writing commands then fail)
  -c, --cmd COMMAND    one of (offsets and lengths take k, M, G, T suffixes):
      read [-q] [-P PATTERN] OFF LEN      read, and check every byte is PATTERN when given
      write [-q] [-P PATTERN] [-c] OFF LEN  write PATTERN bytes (default 0xcd); -c compressed
      write [-q] -z [-u] OFF LEN          write zeroes; -u lets the image unmap them
      discard [-q] OFF LEN                discard the range
      flush                               write cached metadata and sync
      truncate SIZE                       resize (shrinking too)
`,
};

function fail(message: string): never {
  throw new QcowError("INVALID_ARGUMENT", message);
}

type OptionSpec = { type: "string" | "boolean"; short?: string; multiple?: boolean };
type Values = Record<string, string | boolean | string[] | undefined>;

function parse(
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
function list(value: Values[string]): string[] {
  return Array.isArray(value) ? value : [];
}

function formatOption(value: Values[string]): ImageFormat | undefined {
  if (value === undefined) return undefined;
  if (value === "raw" || value === "qcow2") return value;
  fail(`Unknown format '${String(value)}' (expected raw or qcow2)`);
}

function outputOption(value: Values[string]): "human" | "json" {
  if (value === undefined || value === "human") return "human";
  if (value === "json") return "json";
  fail(`--output must be human or json, not '${String(value)}'`);
}

function onePath(positionals: string[], what: string): string {
  if (positionals.length !== 1) fail(`Expected one ${what}, got ${positionals.length}`);
  return positionals[0]!;
}

async function open(path: string, format: ImageFormat | undefined): Promise<Image> {
  return await openImage(path, format === undefined ? {} : { format });
}

function humanInfo(info: ImageInfo): string {
  const lines = [
    `image: ${info.filename}`,
    `file format: ${info.format}`,
    `virtual size: ${formatSize(info["virtual-size"])} (${info["virtual-size"]} bytes)`,
  ];
  if (info["actual-size"] !== undefined) {
    lines.push(`disk size: ${formatSize(info["actual-size"])}`);
  }
  if (info["cluster-size"] !== undefined) lines.push(`cluster_size: ${info["cluster-size"]}`);
  const backing = info["backing-filename"];
  if (backing !== undefined) {
    const full = info["full-backing-filename"];
    lines.push(
      `backing file: ${backing}${full && full !== backing ? ` (actual path: ${full})` : ""}`,
    );
  }
  if (info["backing-filename-format"]) {
    lines.push(`backing file format: ${info["backing-filename-format"]}`);
  }
  if (info["dirty-flag"]) lines.push("cleanly shut down: no");
  const specific = info["format-specific"];
  if (specific) {
    lines.push("Format specific information:");
    for (const [key, value] of Object.entries(specific.data)) {
      lines.push(`    ${key.replaceAll("-", " ")}: ${value}`);
    }
  }
  return lines.join("\n") + "\n";
}

const info: Command = async (args, io) => {
  const { values, positionals } = parse(args, {
    format: { type: "string", short: "f" },
    output: { type: "string" },
    "backing-chain": { type: "boolean" },
  });
  if (values.help) return help("info", io);
  const output = outputOption(values.output);
  await using image = await open(onePath(positionals, "image"), formatOption(values.format));
  const chain: ImageInfo[] = [];
  for (let layer: Image | undefined = image; layer; layer = layer.backing) {
    chain.push(layer.info());
    if (!values["backing-chain"]) break;
  }
  if (output === "json") {
    io.stdout(JSON.stringify(values["backing-chain"] ? chain : chain[0], null, 4) + "\n");
  } else {
    io.stdout(chain.map(humanInfo).join("\n"));
  }
  return 0;
};

const map: Command = async (args, io) => {
  const { values, positionals } = parse(args, {
    format: { type: "string", short: "f" },
    output: { type: "string" },
  });
  if (values.help) return help("map", io);
  const output = outputOption(values.output);
  await using image = await open(onePath(positionals, "image"), formatOption(values.format));
  const entries = await mapImage(image);
  if (output === "json") {
    const lines = entries.map((e) => {
      const offset = e.offset === undefined ? "" : `, "offset": ${e.offset}`;
      return `{ "start": ${e.start}, "length": ${e.length}, "depth": ${e.depth}, "present": ${e.present}, "zero": ${e.zero}, "data": ${e.data}${offset}}`;
    });
    io.stdout(`[${lines.join(",\n")}]\n`);
  } else {
    const hex = (n: number): string => (n === 0 ? "0" : `0x${n.toString(16)}`).padEnd(16);
    let text = `${"Offset".padEnd(16)}${"Length".padEnd(16)}${"Mapped to".padEnd(16)}File\n`;
    for (const e of entries) {
      if (e.data && e.offset === undefined) {
        // As qemu-img: the table has no way to show where compressed data lies.
        throw new QcowError(
          "UNSUPPORTED_FEATURE",
          "File contains external, encrypted or compressed clusters (use --output json)",
        );
      }
      if (e.data && e.offset !== undefined) {
        text += `${hex(e.start)}${hex(e.length)}${hex(e.offset)}${e.filename}\n`;
      }
    }
    io.stdout(text);
  }
  return 0;
};

// ---- create options (-o key=value,...) ----

/** Splits `-o` texts into key=value pairs; ",," stands for a comma inside a value, as in QEMU. */
function keyValues(texts: string[]): [string, string][] {
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

const QCOW2_OPTION_HELP = `Supported options:
  backing_file=<str>     - File name of a base image
  backing_fmt=<str>      - Image format of the base image (raw or qcow2)
  cluster_size=<size>    - qcow2 cluster size
  compat=<str>           - Compatibility level (v2 [0.10] or v3 [1.1])
  compression_type=<str> - Compression method used for image cluster compression (zlib)
  extended_l2=<bool (on/off)> - Extended L2 tables
  lazy_refcounts=<bool (on/off)> - Postpone refcount updates
  preallocation=<str>    - Preallocation mode (allowed values: off, metadata)
  refcount_bits=<num>    - Width of a reference count entry in bits
  size=<size>            - Virtual disk size
`;

const RAW_OPTION_HELP = `Supported options:
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
interface ImageOptions {
  /** The pairs as given, the last of repeated keys winning, for the "Formatting" line. */
  given: Map<string, string>;
  /** Size from `-o size=`. */
  size?: number;
  /** The qcow2 options, without size. */
  qcow2: Omit<CreateQcow2Options, "size">;
}

function imageOptions(pairs: [string, string][], format: ImageFormat): ImageOptions {
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
        if (value !== "raw" && value !== "qcow2") {
          fail(`Unknown backing format '${value}' (expected raw or qcow2)`);
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
function validateQcow2(path: string, options: CreateQcow2Options): void {
  try {
    validateCreateOptions(options);
  } catch (error) {
    if (!isQcowError(error)) throw error;
    const message = error.message.replace(/^Invalid create option (?:\w+: )?/, "");
    throw new QcowError(error.code, `${path}: ${message}`, { cause: error });
  }
}

/** The line qemu-img create prints, with its options in qemu-img's order. */
function formattingLine(path: string, format: ImageFormat, size: number, o: ImageOptions): string {
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
function agree<T extends string>(flag: string, value: T, option: T | undefined): T {
  if (option !== undefined && option !== value) fail(`${flag} ${value} contradicts -o ${option}`);
  return value;
}

function roundUp512(size: number): number {
  return Math.ceil(size / 512) * 512;
}

/** Opens the backing file a new image will name, to check it and learn its size. */
async function backingSize(
  path: string,
  options: Omit<CreateQcow2Options, "size">,
): Promise<number> {
  const name = options.backingFile!;
  const where = resolveBackingPath(path, name);
  let image: Image;
  try {
    image = await openImage(where, {
      backing: false,
      ...(options.backingFormat ? { format: options.backingFormat } : {}),
    });
  } catch (error) {
    if (!isQcowError(error)) throw error;
    throw new QcowError(error.code, `${path}: Could not open backing image: ${error.message}`, {
      cause: error,
    });
  }
  try {
    if (options.backingFormat === undefined) {
      // As qemu-img 7.2: probing the backing format at every open is unsafe, so it must be named.
      fail(
        `${path}: Backing file specified without backing format (detected format of ${image.format}; use -F ${image.format})`,
      );
    }
    return image.size;
  } finally {
    await image.close();
  }
}

const create: Command = async (args, io) => {
  const { values, positionals } = parse(args, {
    format: { type: "string", short: "f" },
    options: { type: "string", short: "o", multiple: true },
    backing: { type: "string", short: "b" },
    "backing-format": { type: "string", short: "F" },
    quiet: { type: "boolean", short: "q" },
  });
  if (values.help) return help("create", io);
  const format = formatOption(values.format) ?? "qcow2";
  const options = imageOptions(keyValues(list(values.options)), format);
  if (options.given.has("help")) {
    io.stdout(format === "raw" ? RAW_OPTION_HELP : QCOW2_OPTION_HELP);
    return 0;
  }
  if (positionals.length < 1 || positionals.length > 2) {
    fail(`Expected FILE and an optional SIZE, got ${positionals.length} arguments`);
  }
  const [path, sizeText] = positionals as [string, string | undefined];
  const q = options.qcow2;
  const backing = typeof values.backing === "string" ? values.backing : undefined;
  const backingFormat = formatOption(values["backing-format"]);
  if (format === "raw" && (backing ?? backingFormat) !== undefined) {
    fail(`${path}: Backing file not supported for file format 'raw'`);
  }
  if (backing !== undefined) q.backingFile = agree("-b", backing, q.backingFile);
  if (backingFormat !== undefined) q.backingFormat = agree("-F", backingFormat, q.backingFormat);
  let size = sizeText === undefined ? options.size : parseSize(sizeText);
  if (q.backingFile !== undefined) {
    const base = await backingSize(path, q);
    size ??= base;
  }
  if (size === undefined) fail(`${path}: Image creation needs a size parameter`);
  if (!values.quiet) io.stdout(formattingLine(path, format, size, options));

  if (format === "raw") {
    await using device = FileDevice.open(path, { readOnly: false, create: true, truncate: true });
    await device.truncate(roundUp512(size));
    return 0;
  }
  // qcow2 rounds the size up to whole sectors, as qemu-img does.
  const full: CreateQcow2Options = { ...q, size: roundUp512(size) };
  validateQcow2(path, full);
  await using device = FileDevice.open(path, { readOnly: false, create: true, truncate: true });
  await createQcow2(device, full);
  return 0;
};

// ---- resize ----

/** Moves "-1M"-like sizes behind "--", so they need no "--" of their own. */
function negativeSizesLast(args: string[]): string[] {
  if (args.includes("--")) return args;
  const negative = (a: string): boolean => /^-\d/.test(a);
  if (!args.some(negative)) return args;
  return [...args.filter((a) => !negative(a)), "--", ...args.filter(negative)];
}

const resize: Command = async (args, io) => {
  const { values, positionals } = parse(negativeSizesLast(args), {
    format: { type: "string", short: "f" },
    shrink: { type: "boolean" },
    quiet: { type: "boolean", short: "q" },
  });
  if (values.help) return help("resize", io);
  if (positionals.length !== 2) fail(`Expected FILE and SIZE, got ${positionals.length} arguments`);
  const [path, sizeText] = positionals as [string, string];
  const sign = sizeText[0] === "+" || sizeText[0] === "-" ? sizeText[0] : "";
  const amount = parseSize(sign ? sizeText.slice(1) : sizeText);
  const format = formatOption(values.format);
  // With its backing chain: growing over a longer backing file must zero what would show through.
  await using image = await openImage(path, { readOnly: false, ...(format ? { format } : {}) });
  reportRepair(image, io);
  const size = sign === "+" ? image.size + amount : sign === "-" ? image.size - amount : amount;
  if (size < 0) fail("New image size must be positive");
  if (size < image.size && !values.shrink) {
    fail("Use the --shrink option to perform a shrink operation.");
  }
  await image.resize(size, { shrink: true });
  if (!values.quiet) io.stdout("Image resized.\n");
  return 0;
};

// ---- convert ----

const CONVERT_CHUNK = 1024 * 1024;

/** Where convert writes: in runs of whole `granularity`-sized pieces (the last may be short). */
interface ConvertTarget extends AsyncDisposable {
  granularity: number;
  write(data: Uint8Array, at: number): Promise<void>;
  finish(): Promise<void>;
}

/**
 * Copies every non-zero `granularity`-sized piece of `image` to `target`, reading only what the
 * map says may hold data: like qemu-img convert, zero ranges are skipped, not written.
 */
async function copyNonZero(image: Image, target: ConvertTarget, progress: Progress): Promise<void> {
  const g = target.granularity;
  const chunkSize = Math.max(CONVERT_CHUNK, g);
  const buffer = new Uint8Array(chunkSize);
  // Entries rounded out to whole pieces may overlap; nothing below `copied` is read twice.
  let copied = 0;
  for (const entry of await mapImage(image)) {
    const end = entry.start + entry.length;
    if (!entry.zero) {
      const stop = Math.min(image.size, Math.ceil(end / g) * g);
      for (let at = Math.max(copied, entry.start - (entry.start % g)); at < stop;) {
        const chunk = buffer.subarray(0, Math.min(chunkSize, stop - at));
        await image.read(chunk, at);
        await writeNonZeroRuns(chunk, at, target);
        at += chunk.length;
        progress.update(at);
      }
      copied = Math.max(copied, stop);
    }
    progress.update(end);
  }
}

async function writeNonZeroRuns(
  chunk: Uint8Array,
  at: number,
  target: ConvertTarget,
): Promise<void> {
  const g = target.granularity;
  let run = -1;
  for (let i = 0; i < chunk.length; i += g) {
    const zero = isZero(chunk.subarray(i, i + g));
    if (!zero && run < 0) run = i;
    if (zero && run >= 0) {
      await target.write(chunk.subarray(run, i), at + run);
      run = -1;
    }
  }
  if (run >= 0) await target.write(chunk.subarray(run), at + run);
}

/** A sparse raw file: pieces of 4 KiB, qemu-img convert's default sparse size. */
async function rawTarget(path: string, size: number): Promise<ConvertTarget> {
  const device = FileDevice.open(path, { readOnly: false, create: true, truncate: true });
  try {
    await device.truncate(size);
  } catch (error) {
    await device.close();
    throw error;
  }
  return {
    granularity: 4096,
    write: (data, at) => device.write(data, at),
    finish: () => device.flush(),
    [Symbol.asyncDispose]: () => device.close(),
  };
}

/** A new qcow2 image, written a cluster at a time, compressed with `compress`. */
async function qcow2Target(
  path: string,
  options: CreateQcow2Options,
  compress: boolean,
): Promise<ConvertTarget> {
  validateQcow2(path, options);
  const device = FileDevice.open(path, { readOnly: false, create: true, truncate: true });
  let image: Qcow2Image;
  try {
    await createQcow2(device, options);
    image = await Qcow2Image.open(device, { readOnly: false, ownsDevice: true });
  } catch (error) {
    await device.close();
    throw error;
  }
  // A source that ends inside a cluster (a raw file of odd size) leaves a short last piece;
  // compressed writes need it padded to the cluster's end or the image's.
  const cs = image.clusterSize;
  const wholeClusters = (data: Uint8Array, at: number): Uint8Array => {
    const end = Math.min(image.size, at + Math.ceil(data.length / cs) * cs);
    if (at + data.length === end) return data;
    const padded = new Uint8Array(end - at);
    padded.set(data);
    return padded;
  };
  return {
    granularity: cs,
    write: compress
      ? (data, at) => image.writeCompressed(wholeClusters(data, at), at)
      : (data, at) => image.write(data, at),
    finish: () => image.flush(),
    [Symbol.asyncDispose]: () => image.close(),
  };
}

const convert: Command = async (args, io) => {
  const { values, positionals } = parse(args, {
    format: { type: "string", short: "f" },
    O: { type: "string", short: "O" },
    compress: { type: "boolean", short: "c" },
    options: { type: "string", short: "o", multiple: true },
    quiet: { type: "boolean", short: "q" },
  });
  if (values.help) return help("convert", io);
  const outFormat = formatOption(values.O) ?? "raw";
  const options = imageOptions(keyValues(list(values.options)), outFormat);
  if (options.given.has("help")) {
    io.stdout(outFormat === "raw" ? RAW_OPTION_HELP : QCOW2_OPTION_HELP);
    return 0;
  }
  for (const key of ["size", "backing_file", "backing_fmt"]) {
    if (options.given.has(key)) fail(`Option '${key}' is not supported by convert`);
  }
  if (values.compress && outFormat === "raw") {
    fail("Compression not supported for this file format");
  }
  if (positionals.length !== 2) fail(`Expected SRC and DST, got ${positionals.length} paths`);
  const [src, dst] = positionals as [string, string];
  await using image = await open(src, formatOption(values.format));
  const compress = values.compress === true;
  await using target = outFormat === "raw"
    ? await rawTarget(dst, image.size)
    : await qcow2Target(dst, { ...options.qcow2, size: roundUp512(image.size) }, compress);
  const progress = new Progress(image.size, {
    label: "convert",
    terminal: io.terminal,
    write: io.stderr,
    quiet: values.quiet === true,
  });
  await copyNonZero(image, target, progress);
  await target.finish();
  progress.done();
  return 0;
};

async function firstDifference(a: Image, b: Image, end: number): Promise<number> {
  const bufA = new Uint8Array(CONVERT_CHUNK);
  const bufB = new Uint8Array(CONVERT_CHUNK);
  for (let at = 0; at < end; at += CONVERT_CHUNK) {
    const n = Math.min(CONVERT_CHUNK, end - at);
    const partA = bufA.subarray(0, n);
    const partB = bufB.subarray(0, n);
    await a.read(partA, at);
    await b.read(partB, at);
    for (let i = 0; i < n; i++) if (partA[i] !== partB[i]) return at + i;
  }
  return -1;
}

async function firstNonZero(image: Image, start: number): Promise<number> {
  const buffer = new Uint8Array(CONVERT_CHUNK);
  for (const entry of await mapImage(image, { start, length: image.size - start })) {
    if (entry.zero) continue;
    for (let at = entry.start; at < entry.start + entry.length; at += CONVERT_CHUNK) {
      const part = buffer.subarray(0, Math.min(CONVERT_CHUNK, entry.start + entry.length - at));
      await image.read(part, at);
      const i = part.findIndex((byte) => byte !== 0);
      if (i >= 0) return at + i;
    }
  }
  return -1;
}

const compare: Command = async (args, io) => {
  const { values, positionals } = parse(args, {
    f: { type: "string", short: "f" },
    F: { type: "string", short: "F" },
    strict: { type: "boolean", short: "s" },
  });
  if (values.help) return help("compare", io);
  if (positionals.length !== 2) fail(`Expected two images, got ${positionals.length}`);
  try {
    await using a = await open(positionals[0]!, formatOption(values.f));
    await using b = await open(positionals[1]!, formatOption(values.F));
    if (values.strict && a.size !== b.size) {
      io.stdout("Strict mode: Image size mismatch!\n");
      return 1;
    }
    const common = Math.min(a.size, b.size);
    let at = await firstDifference(a, b, common);
    if (at < 0 && a.size !== b.size) at = await firstNonZero(a.size > b.size ? a : b, common);
    if (at >= 0) {
      // qemu-img compare works in 512-byte sectors and names the sector's first byte.
      io.stdout(`Content mismatch at offset ${at - (at % 512)}!\n`);
      return 1;
    }
    io.stdout("Images are identical.\n");
    return 0;
  } catch (error) {
    report(error, io);
    return 2;
  }
};

// ---- io (qemu-io commands) ----

/** One parsed qemu-io command. */
interface IoCommand {
  name: "read" | "write" | "discard" | "flush" | "truncate";
  offset: number;
  length: number;
  pattern: number | undefined;
  zero: boolean;
  unmap: boolean;
  compressed: boolean;
  quiet: boolean;
}

/** Flags and positionals of one command, getopt style: flags first, "-zu" combined, "-P5" or "-P 5". */
function ioOptions(
  name: string,
  words: string[],
  flags: string,
  withValue: string,
): { options: Map<string, string>; rest: string[] } {
  const options = new Map<string, string>();
  let i = 0;
  for (; i < words.length; i++) {
    const word = words[i]!;
    if (word === "--") {
      i++;
      break;
    }
    if (!word.startsWith("-") || word.length === 1) break;
    for (let j = 1; j < word.length; j++) {
      const flag = word[j]!;
      if (withValue.includes(flag)) {
        const value = j + 1 < word.length ? word.slice(j + 1) : words[++i];
        if (value === undefined) fail(`${name}: option requires an argument -- '${flag}'`);
        options.set(flag, value);
        break;
      }
      if (!flags.includes(flag)) fail(`${name}: invalid option -- '${flag}'`);
      options.set(flag, "");
    }
  }
  return { options, rest: words.slice(i) };
}

/** A pattern byte as qemu-io reads it: C's strtol with base 0 (0x hex, 0 octal, decimal). */
function patternByte(text: string): number {
  const value = /^0x[0-9a-f]+$/i.test(text)
    ? parseInt(text.slice(2), 16)
    : /^0[0-7]*$/.test(text)
    ? parseInt(text, 8)
    : /^[1-9]\d*$/.test(text)
    ? Number(text)
    : NaN;
  if (!(value >= 0 && value <= 255)) fail(`${text} is not a valid pattern byte`);
  return value;
}

function ioNumber(text: string): number {
  try {
    return parseSize(text);
  } catch {
    fail(`Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- ${text}`);
  }
}

const IO_SHAPES: Record<IoCommand["name"], { flags: string; withValue: string; args: number }> = {
  read: { flags: "q", withValue: "P", args: 2 },
  write: { flags: "qzuc", withValue: "P", args: 2 },
  discard: { flags: "q", withValue: "", args: 2 },
  flush: { flags: "", withValue: "", args: 0 },
  truncate: { flags: "", withValue: "", args: 1 },
};

function parseIoCommand(text: string): IoCommand {
  const [name = "", ...words] = text.trim().split(/\s+/);
  if (!Object.hasOwn(IO_SHAPES, name)) fail(`command "${name}" not found`);
  const shape = IO_SHAPES[name as IoCommand["name"]];
  const { options, rest } = ioOptions(name, words, shape.flags, shape.withValue);
  if (rest.length !== shape.args) {
    fail(`bad argument count ${rest.length} to ${name}, expected ${shape.args} arguments`);
  }
  const command: IoCommand = {
    name: name as IoCommand["name"],
    offset: shape.args === 2 ? ioNumber(rest[0]!) : 0,
    length: shape.args === 2 ? ioNumber(rest[1]!) : shape.args === 1 ? ioNumber(rest[0]!) : 0,
    pattern: options.has("P") ? patternByte(options.get("P")!) : undefined,
    zero: options.has("z"),
    unmap: options.has("u"),
    compressed: options.has("c"),
    quiet: options.has("q"),
  };
  if (command.zero && command.pattern !== undefined) {
    fail("Only one of -z and -P can be specified at the same time");
  }
  if (command.unmap && !command.zero) fail("-u requires -z to be specified");
  return command;
}

/** qemu-io's sizes: three decimals above a KiB ("1.500 KiB", "64 KiB"), six below ("1 bytes"). */
function ioSize(value: number): string {
  const units = ["EiB", "PiB", "TiB", "GiB", "MiB", "KiB"];
  for (let i = 0; i < units.length; i++) {
    const unit = 2 ** (10 * (6 - i));
    if (value >= unit) return `${(value / unit).toFixed(3).replace(/\.000$/, "")} ${units[i]}`;
  }
  return `${value.toFixed(6).replace(/\.000000$/, "")} bytes`;
}

/** qemu-io's elapsed time: "00.00 sec" under a minute, "h:mm:ss.cc" above. */
function ioTime(seconds: number): string {
  const pad = (n: number): string => String(n).padStart(2, "0");
  const centis = Math.floor(seconds * 100);
  const whole = Math.floor(centis / 100);
  if (whole < 60) return `${pad(whole)}.${pad(centis % 100)} sec`;
  return `${Math.floor(whole / 3600)}:${pad(Math.floor(whole / 60) % 60)}:${pad(whole % 60)}.${
    pad(centis % 100)
  }`;
}

/** qemu-io's two report lines for one operation. */
function ioReport(verb: string, command: IoCommand, seconds: number): string {
  const n = command.length;
  const t = Math.max(seconds, 1e-9);
  return `${verb} ${n}/${n} bytes at offset ${command.offset}\n` +
    `${ioSize(n)}, 1 ops; ${ioTime(seconds)} (${ioSize(n / t)}/sec and ${
      (1 / t).toFixed(4)
    } ops/sec)\n`;
}

const IO_CHUNK = 4 * 1024 * 1024;

/** Where a pattern check failed: the first differing byte. */
interface Mismatch {
  at: number;
  found: number;
}

async function ioRead(image: Image, command: IoCommand): Promise<Mismatch | undefined> {
  const buffer = new Uint8Array(Math.min(command.length, IO_CHUNK));
  let mismatch: Mismatch | undefined;
  for (let done = 0; done < command.length; done += buffer.length) {
    const part = buffer.subarray(0, Math.min(buffer.length, command.length - done));
    await image.read(part, command.offset + done);
    if (command.pattern === undefined || mismatch) continue;
    const i = part.findIndex((byte) => byte !== command.pattern);
    if (i >= 0) mismatch = { at: command.offset + done + i, found: part[i]! };
  }
  return mismatch;
}

async function ioWrite(image: Image, command: IoCommand): Promise<void> {
  const { offset, length } = command;
  if (command.zero) return await image.writeZeroes(offset, length, { mayUnmap: command.unmap });
  // Compressed writes go in one piece up to 64 MiB, so a misaligned tail fails before any write.
  const piece = command.compressed ? 64 * 1024 * 1024 : IO_CHUNK;
  const buffer = new Uint8Array(Math.min(length, piece));
  buffer.fill(command.pattern ?? 0xcd);
  for (let done = 0; done < length; done += buffer.length) {
    const part = buffer.subarray(0, Math.min(buffer.length, length - done));
    if (command.compressed) await image.writeCompressed(part, offset + done);
    else await image.write(part, offset + done);
  }
}

/** Runs one command; returns whether it succeeded. */
async function runIoCommand(image: Image, command: IoCommand, io: CliIo): Promise<boolean> {
  const start = performance.now();
  const seconds = (): number => (performance.now() - start) / 1000;
  try {
    switch (command.name) {
      case "read": {
        const mismatch = await ioRead(image, command);
        const elapsed = seconds();
        if (mismatch) {
          // qemu-io names the whole request; the error line adds the first differing byte.
          io.stdout(
            `Pattern verification failed at offset ${command.offset}, ${command.length} bytes\n`,
          );
        }
        if (!command.quiet) io.stdout(ioReport("read", command, elapsed));
        if (mismatch) {
          const hex = (b: number): string => `0x${b.toString(16).padStart(2, "0")}`;
          io.stderr(
            `qcowlab: Pattern verification failed: byte at offset ${mismatch.at} is ${
              hex(mismatch.found)
            }, expected ${hex(command.pattern!)}\n`,
          );
          return false;
        }
        return true;
      }
      case "write":
        await ioWrite(image, command);
        if (!command.quiet) io.stdout(ioReport("wrote", command, seconds()));
        return true;
      case "discard":
        await image.discard(command.offset, command.length);
        if (!command.quiet) io.stdout(ioReport("discard", command, seconds()));
        return true;
      case "flush":
        if (!image.readOnly) await image.flush();
        return true;
      case "truncate":
        await image.resize(command.length, { shrink: true });
        return true;
    }
  } catch (error) {
    if (!isQcowError(error)) throw error;
    io.stderr(`qcowlab: ${command.name} failed: ${error.message}\n`);
    return false;
  }
}

const ioCommand: Command = async (args, io) => {
  const { values, positionals } = parse(args, {
    format: { type: "string", short: "f" },
    "read-only": { type: "boolean", short: "r" },
    cmd: { type: "string", short: "c", multiple: true },
  });
  if (values.help) return help("io", io);
  const path = onePath(positionals, "image");
  // Every command is parsed before the image is touched: a typo fails with nothing written.
  const commands = list(values.cmd).map(parseIoCommand);
  if (commands.length === 0) fail("Expected at least one -c COMMAND");
  const format = formatOption(values.format);
  await using image = await openImage(path, {
    readOnly: values["read-only"] === true,
    ...(format ? { format } : {}),
  });
  reportRepair(image, io);
  let ok = true;
  for (const command of commands) ok = await runIoCommand(image, command, io) && ok;
  return ok ? 0 : 1;
};

const check: Command = async (args, io) => {
  const { values, positionals } = parse(args, {
    format: { type: "string", short: "f" },
    output: { type: "string" },
    repair: { type: "string", short: "r" },
    quiet: { type: "boolean", short: "q" },
  });
  if (values.help) return help("check", io);
  const output = outputOption(values.output);
  const repair = values.repair ?? "none";
  if (repair !== "none" && repair !== "leaks" && repair !== "all") {
    fail(`Unknown option for -r: '${String(repair)}' (expected leaks or all)`);
  }
  const path = onePath(positionals, "image");
  await using device = FileDevice.open(path, { readOnly: repair === "none" });
  const format = formatOption(values.format) ?? await probeFormat(device);
  if (format !== "qcow2") {
    io.stderr(`qcowlab: This image format does not support checks\n`);
    return 63;
  }
  const result = await checkQcow2(device, { repair, filename: path });
  for (const line of result.messages) io.stderr(`${line}\n`);
  const status = checkExitStatus(result);
  if (!values.quiet || output === "json") io.stdout(formatCheckReport(result, output));
  if (status === 1) {
    io.stderr(`qcowlab: Check failed${result.failure ? `: ${result.failure}` : ""}\n`);
  }
  return status;
};

const COMMANDS: Record<string, Command> = {
  info,
  map,
  check,
  create,
  resize,
  convert,
  compare,
  io: ioCommand,
};

/** Says on stderr that opening a dirty image for writing repaired it first, and how. */
function reportRepair(image: Image, io: CliIo): void {
  const result = image instanceof Qcow2Image ? image.repairResult : undefined;
  if (!result) return;
  io.stderr(
    `Repaired dirty image ${image.filename}: ${result["leaks-fixed"] ?? 0} leaked clusters and ` +
      `${result["corruptions-fixed"] ?? 0} corruptions fixed\n`,
  );
}

function help(command: string, io: CliIo): number {
  io.stdout(HELP[command] ?? USAGE);
  return 0;
}

function report(error: unknown, io: CliIo): void {
  if (isQcowError(error)) io.stderr(`qcowlab: ${error.message}\n`);
  else io.stderr(`qcowlab: internal error: ${error instanceof Error ? error.stack : error}\n`);
}

/**
 * Runs one CLI command.
 *
 * @param args The arguments after `cli.ts`, starting with the command.
 * @param io Where output goes; defaults to the process's streams.
 * @returns The exit status.
 */
export async function main(args: string[], io: CliIo = defaultIo): Promise<number> {
  const [name, ...rest] = args;
  if (name === undefined || name === "help" || name === "--help" || name === "-h") {
    io.stdout(USAGE);
    return name === undefined ? 1 : 0;
  }
  const command = COMMANDS[name];
  if (!command) {
    io.stderr(`qcowlab: unknown command '${name}'\n${USAGE}`);
    return 1;
  }
  try {
    return await command(rest, io);
  } catch (error) {
    report(error, io);
    return 1;
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
