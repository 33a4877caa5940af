/**
 * `cli.ts io`: qemu-io style commands run on an image.
 *
 * @module
 */

import { isQcowError } from "../core/errors.ts";
import { parseSize } from "../core/parse_size.ts";
import type { Image } from "../drivers/image.ts";
import { openImage } from "../drivers/open_image.ts";
import {
  type CliCommand,
  type CliIo,
  fail,
  formatOption,
  list,
  onePath,
  parse,
  reportRepair,
  showHelp,
} from "./_common.ts";
import { PASSPHRASE_HELP, PASSPHRASE_OPTIONS, readPassphrase } from "./_qcow.ts";

const HELP = `Usage: cli.ts io [-f FMT] [-r] -c COMMAND [-c COMMAND ...] FILE

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
${PASSPHRASE_HELP}`;

/** One parsed qemu-io command. */
export interface IoCommand {
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

export function parseIoCommand(text: string): IoCommand {
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
export async function runIoCommand(image: Image, command: IoCommand, io: CliIo): Promise<boolean> {
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

const ioRun: CliCommand["run"] = async (args, io) => {
  const { values, positionals } = parse(args, {
    format: { type: "string", short: "f" },
    "read-only": { type: "boolean", short: "r" },
    cmd: { type: "string", short: "c", multiple: true },
    ...PASSPHRASE_OPTIONS,
  });
  if (values.help) return showHelp(HELP, io);
  const path = onePath(positionals, "image");
  // Every command is parsed before the image is touched: a typo fails with nothing written.
  const commands = list(values.cmd).map(parseIoCommand);
  if (commands.length === 0) fail("Expected at least one -c COMMAND");
  const format = formatOption(values.format);
  const passphrase = await readPassphrase(values);
  await using image = await openImage(path, {
    readOnly: values["read-only"] === true,
    ...(format ? { format } : {}),
    ...(passphrase === undefined ? {} : { passphrase }),
  });
  reportRepair(image, io);
  let ok = true;
  for (const command of commands) ok = await runIoCommand(image, command, io) && ok;
  return ok ? 0 : 1;
};

/** `cli.ts io`. */
export const ioCommand: CliCommand = {
  name: "io",
  summary: "read, write, discard and truncate inside an image (like qemu-io)",
  run: ioRun,
};
