/**
 * The qcowlab command line: `deno run -A cli.ts <command> [options]`.
 *
 * Commands: `info`, `map`, `convert`, `compare`. Every command takes `--help`. Errors go to
 * stderr as one line, and the exit status is non-zero.
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
import { Progress } from "./core/progress.ts";
import type { Image, ImageFormat, ImageInfo } from "./drivers/image.ts";
import { mapImage } from "./drivers/map_image.ts";
import { openImage } from "./drivers/open_image.ts";

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
  convert  convert an image to raw (like qemu-img convert)
  compare  compare the contents of two images (like qemu-img compare)

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
  convert: `Usage: cli.ts convert [-f FMT] -O raw [-q] SRC DST

Writes the virtual contents of SRC (with its backing chain) to DST as a sparse raw file.
  -f, --format FMT     the source's format; probed when omitted
  -O FMT               the output format: raw
  -q, --quiet          no progress output (progress: a bar on a terminal, plain lines otherwise)
`,
  compare: `Usage: cli.ts compare [-f FMT] [-F FMT] [-s] A B

Compares the virtual contents of A and B. Exit status 0 when identical, 1 when they differ (the
first differing offset is printed), 2 on an error. Without -s, an image that is larger than the
other compares equal when its extra part reads as zeros.
  -f FMT               format of A; -F FMT: format of B (probed when omitted)
  -s, --strict         images of different sizes differ
`,
};

function fail(message: string): never {
  throw new QcowError("INVALID_ARGUMENT", message);
}

function parse(
  args: string[],
  options: Record<string, { type: "string" | "boolean"; short?: string }>,
): { values: Record<string, string | boolean | undefined>; positionals: string[] } {
  try {
    const { values, positionals } = parseArgs({
      args,
      options: { ...options, help: { type: "boolean", short: "h" } },
      allowPositionals: true,
      strict: true,
    });
    return { values: values as Record<string, string | boolean | undefined>, positionals };
  } catch (error) {
    fail((error as Error).message);
  }
}

function formatOption(value: string | boolean | undefined): ImageFormat | undefined {
  if (value === undefined) return undefined;
  if (value === "raw" || value === "qcow2") return value;
  fail(`Unknown format '${String(value)}' (expected raw or qcow2)`);
}

function outputOption(value: string | boolean | undefined): "human" | "json" {
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

const CONVERT_CHUNK = 1024 * 1024;

const convert: Command = async (args, io) => {
  const { values, positionals } = parse(args, {
    format: { type: "string", short: "f" },
    O: { type: "string", short: "O" },
    quiet: { type: "boolean", short: "q" },
  });
  if (values.help) return help("convert", io);
  if (positionals.length !== 2) fail(`Expected SRC and DST, got ${positionals.length} paths`);
  const outFormat = values.O ?? "raw";
  if (outFormat !== "raw") fail(`Output format '${String(outFormat)}' is not supported yet (raw)`);
  const [src, dst] = positionals as [string, string];
  await using image = await open(src, formatOption(values.format));
  await using out = FileDevice.open(dst, { readOnly: false, create: true, truncate: true });
  await out.truncate(image.size);
  const progress = new Progress(image.size, {
    label: "convert",
    terminal: io.terminal,
    write: io.stderr,
    quiet: values.quiet === true,
  });
  const buffer = new Uint8Array(CONVERT_CHUNK);
  let done = 0;
  for (const entry of await mapImage(image)) {
    if (entry.zero) {
      done += entry.length;
      progress.update(done);
      continue;
    }
    for (let at = entry.start; at < entry.start + entry.length; at += CONVERT_CHUNK) {
      const n = Math.min(CONVERT_CHUNK, entry.start + entry.length - at);
      const chunk = buffer.subarray(0, n);
      await image.read(chunk, at);
      // Like qemu-img, leave holes where the data is all zeros.
      if (!isZero(chunk)) await out.write(chunk, at);
      done += n;
      progress.update(done);
    }
  }
  await out.flush();
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

const COMMANDS: Record<string, Command> = { info, map, convert, compare };

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
