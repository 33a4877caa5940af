/**
 * Running `qemu-img` and `qemu-io` for the benchmark.
 *
 * @module
 */

import type { BenchWrap } from "./_pattern.ts";

const decoder = new TextDecoder();

/**
 * Runs a command and returns its standard output.
 *
 * @param command The program.
 * @param args Its arguments.
 * @returns What it printed on stdout.
 * @throws {Error} With its stderr when it fails.
 */
export async function run(command: string, args: string[]): Promise<string> {
  const output = await new Deno.Command(command, {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { LC_ALL: "C" },
  }).output();
  const stdout = decoder.decode(output.stdout);
  if (!output.success) {
    const stderr = decoder.decode(output.stderr);
    throw new Error(`${command} ${args.join(" ")} failed (${output.code}): ${stderr}${stdout}`);
  }
  return stdout;
}

/**
 * The `qemu-img` version as `[major, minor]`.
 *
 * @returns The version numbers.
 */
export async function qemuImgVersion(): Promise<[number, number]> {
  const out = await run("qemu-img", ["--version"]);
  const match = /version (\d+)\.(\d+)/.exec(out);
  if (!match) throw new Error(`Cannot read the qemu-img version from: ${out}`);
  return [Number(match[1]), Number(match[2])];
}

/**
 * How this `qemu-img bench` wraps offsets: QEMU 10.1 changed `offset %= image_size` into
 * `offset %= image_size - bufsize` (commit ff2ab634).
 *
 * @param version From {@linkcode qemuImgVersion}.
 * @returns The wrap rule for {@linkcode qemuBenchOffsets}.
 */
export function benchWrap(version: [number, number]): BenchWrap {
  const [major, minor] = version;
  return major > 10 || (major === 10 && minor >= 1) ? "usable" : "image";
}

/** Options for {@linkcode qemuImgBench}. */
export interface QemuBenchOptions {
  /** Bytes per request (`-s`). */
  requestSize: number;
  /** Requests (`-c`). */
  count: number;
  /** Offset step (`-S`); default the request size. */
  step?: number;
  /** Queue depth (`-d`); default qemu-img's (64). */
  depth?: number;
  /** AIO engine (`-i`). */
  aio: string;
}

/**
 * The `qemu-img bench` arguments for a read benchmark on a qcow2 image with the page cache on.
 *
 * @param path The image.
 * @param options Request size, count, step, depth and AIO engine.
 * @returns The arguments after `qemu-img`.
 */
export function benchArgs(path: string, options: QemuBenchOptions): string[] {
  const args = ["bench", "-f", "qcow2", "-t", "writeback", "-i", options.aio];
  args.push("-s", String(options.requestSize), "-c", String(options.count));
  if (options.step !== undefined) args.push("-S", String(options.step));
  if (options.depth !== undefined) args.push("-d", String(options.depth));
  args.push(path);
  return args;
}

/**
 * Runs `qemu-img bench` and returns the time it reports.
 *
 * @param path The image.
 * @param options Request size, count, step, depth and AIO engine.
 * @returns Seconds, from its "Run completed in X seconds." line.
 */
export async function qemuImgBench(path: string, options: QemuBenchOptions): Promise<number> {
  const out = await run("qemu-img", benchArgs(path, options));
  const match = /Run completed in ([\d.]+) seconds\./.exec(out);
  if (!match) throw new Error(`qemu-img bench printed no completion line: ${out}`);
  return Number(match[1]);
}

/**
 * Picks the fastest AIO engine `qemu-img bench` accepts with the page cache on: io_uring, else
 * threads (`native` needs `cache.direct=on`, which would bypass the page cache).
 *
 * @param path A qcow2 image to try on.
 * @returns The engine name.
 */
export async function pickAio(path: string): Promise<string> {
  for (const aio of ["io_uring", "native", "threads"]) {
    try {
      await qemuImgBench(path, { requestSize: 4096, count: 16, aio });
      return aio;
    } catch {
      // Try the next engine.
    }
  }
  throw new Error("qemu-img bench accepts none of io_uring, native, threads");
}
