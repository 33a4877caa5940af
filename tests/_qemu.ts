/**
 * Helpers for tests that build images with `qemu-img` and `qemu-io` and compare qcowlab's view of
 * them with QEMU's.
 *
 * @module
 */

import { mulberry32 } from "../core/_random.ts";
import { runTool } from "../core/_run_tool.ts";

/** One entry of `qemu-img map --output json`. */
export interface QemuMapEntry {
  /** First virtual byte. */
  start: number;
  /** Length in bytes. */
  length: number;
  /** Chain depth of the image that decides the contents. */
  depth: number;
  /** Whether some image of the chain holds the range. */
  present: boolean;
  /** Whether the range reads as zeros. */
  zero: boolean;
  /** Whether the range holds data. */
  data: boolean;
  /** Host offset, when the range lies uncompressed in one file. */
  offset?: number;
}

/** A temporary directory removed with everything in it on disposal. */
export interface TempDir extends AsyncDisposable {
  /** Its absolute path. */
  path: string;
}

function toolRuns(name: string): boolean {
  try {
    return new Deno.Command(name, { args: ["--version"], stdout: "null", stderr: "null" })
      .outputSync().success;
  } catch {
    return false;
  }
}

/** Whether both `qemu-img` and `qemu-io` can be run. */
export const HAVE_QEMU: boolean = toolRuns("qemu-img") && toolRuns("qemu-io");

const decoder = new TextDecoder();

export { runTool, type ToolRun } from "../core/_run_tool.ts";

async function run(command: string, args: string[]): Promise<string> {
  const output = await runTool(command, args);
  const { stdout, stderr } = output;
  if (output.code !== 0) {
    throw new Error(`${command} ${args.join(" ")} failed (${output.code}):\n${stderr}${stdout}`);
  }
  // Warnings count as failures: a case that makes qemu-img warn is not testing what it says.
  if (stderr.trim() !== "") throw new Error(`${command} ${args.join(" ")} warned:\n${stderr}`);
  return stdout;
}

/**
 * Runs `qemu-img` and returns its standard output; throws when it fails or writes to stderr.
 *
 * @param args The arguments.
 * @returns What it printed.
 */
export async function qemuImg(...args: string[]): Promise<string> {
  return await run("qemu-img", args);
}

/** Options for {@linkcode qemuIo}. */
export interface QemuIoOptions {
  /** The commands end in `abort`, so the process is expected to die of SIGABRT. */
  crash?: boolean;
}

/**
 * Runs `qemu-io` with one `-c` per command on a qcow2 image; throws when a command fails.
 *
 * @param path The image.
 * @param commands qemu-io commands such as `write -P 5 0 4k`.
 * @param options Crash expectations.
 */
export async function qemuIo(
  path: string,
  commands: string[],
  options: QemuIoOptions = {},
): Promise<void> {
  const args = ["-f", "qcow2"];
  for (const command of commands) args.push("-c", command);
  args.push(path);
  if (options.crash) {
    // Run through a shell so the core dump limit can be set to zero before qemu-io aborts.
    const line = ["qemu-io", ...args].map((a) => `'${a.replaceAll("'", `'\\''`)}'`).join(" ");
    const output = await new Deno.Command("sh", {
      args: ["-c", `ulimit -c 0; exec ${line}`],
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (output.signal !== "SIGABRT" && output.code !== 134) {
      throw new Error(`qemu-io was expected to abort: ${decoder.decode(output.stderr)}`);
    }
    return;
  }
  const stdout = await run("qemu-io", args);
  const failure = stdout.split("\n").find((line) => /failed|error/i.test(line));
  if (failure !== undefined) throw new Error(`qemu-io ${args.join(" ")}: ${failure}`);
}

/**
 * `qemu-img info --output json` for one image.
 *
 * @param path The image.
 * @returns The parsed report.
 */
export async function qemuInfo(path: string): Promise<Record<string, unknown>> {
  return JSON.parse(await qemuImg("info", "--output", "json", path));
}

/**
 * `qemu-img map --output json` for an image and its backing chain.
 *
 * @param path The image.
 * @returns The parsed entries.
 */
export async function qemuMap(path: string): Promise<QemuMapEntry[]> {
  return JSON.parse(await qemuImg("map", "--output", "json", path));
}

/**
 * The whole virtual disk as `qemu-img convert -O raw` writes it.
 *
 * @param path The image.
 * @param scratch A file name to convert into (overwritten).
 * @returns The disk's bytes.
 */
export async function qemuContents(path: string, scratch: string): Promise<Uint8Array> {
  await qemuImg("convert", "-O", "raw", path, scratch);
  return await Deno.readFile(scratch);
}

/**
 * Bytes `[start, start + length)` of a qcow2 image's virtual disk as QEMU reads them, without
 * converting the whole disk: a `raw` node with an offset and size on top of the qcow2 node.
 *
 * @param path The qcow2 image.
 * @param start First byte.
 * @param length Bytes wanted.
 * @param scratch A file name to convert into (overwritten).
 * @returns The bytes.
 */
export async function qemuRange(
  path: string,
  start: number,
  length: number,
  scratch: string,
): Promise<Uint8Array> {
  // The raw driver wants a sector-aligned window; cut the wanted bytes out of it afterwards.
  const from = Math.floor(start / 512) * 512;
  const to = Math.ceil((start + length) / 512) * 512;
  const spec = {
    driver: "raw",
    offset: from,
    size: to - from,
    file: { driver: "qcow2", file: { driver: "file", filename: path } },
  };
  await qemuImg("convert", "-O", "raw", `json:${JSON.stringify(spec)}`, scratch);
  const bytes = await Deno.readFile(scratch);
  return bytes.subarray(start - from, start - from + length);
}

/**
 * Creates a temporary directory that `await using` removes again.
 *
 * @returns The directory.
 */
export async function makeTempDir(): Promise<TempDir> {
  const path = await Deno.makeTempDir({ prefix: "qcowlab_interop_" });
  return {
    path,
    async [Symbol.asyncDispose]() {
      await Deno.remove(path, { recursive: true });
    },
  };
}

const EXT_END = 0;
const EXT_BACKING_FORMAT = 0xe2792aca;

/**
 * Removes the backing format extension from a qcow2 header, so QEMU (and qcowlab) must probe the
 * backing file's format. qemu-img 7.2 refuses to create such an image itself.
 *
 * @param path A qcow2 image with a backing file.
 */
export async function dropBackingFormat(path: string): Promise<void> {
  const bytes = await Deno.readFile(path);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = view.getUint32(4);
  const headerLength = version >= 3 ? view.getUint32(100) : 72;
  const backingOffset = Number(view.getBigUint64(8));
  if (backingOffset === 0) throw new Error(`${path} has no backing file`);
  const kept: Uint8Array[] = [];
  let found = false;
  let at = headerLength;
  while (at + 8 <= backingOffset) {
    const type = view.getUint32(at);
    const length = view.getUint32(at + 4);
    if (type === EXT_END) break;
    const padded = 8 + Math.ceil(length / 8) * 8;
    if (type === EXT_BACKING_FORMAT) found = true;
    else kept.push(bytes.slice(at, at + padded));
    at += padded;
  }
  if (!found) throw new Error(`${path} has no backing format extension`);
  // Rewrite the extension area without it; the zeros left behind end the list.
  bytes.fill(0, headerLength, backingOffset);
  let p = headerLength;
  for (const extension of kept) {
    bytes.set(extension, p);
    p += extension.length;
  }
  await Deno.writeFile(path, bytes);
}

/**
 * A small seeded PRNG (mulberry32), so random layouts are the same on every run.
 *
 * @param seed Any 32-bit number.
 * @returns A function returning floats in [0, 1).
 */
export function seededRandom(seed: number): () => number {
  const next = mulberry32(seed);
  return (): number => next() / 2 ** 32;
}

/**
 * The first offset where two byte arrays differ, or -1 when they are equal.
 *
 * @param a One array.
 * @param b The other.
 * @returns The offset (the shorter length when one is a prefix of the other).
 */
export function firstDifference(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}
