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
  /** Write instead of read (`-w`). */
  write?: boolean;
  /** Byte value written (`--pattern`); qemu-img's default is 0. */
  pattern?: number;
}

/**
 * The `qemu-img bench` arguments for a benchmark on a qcow2 image with the page cache on.
 *
 * @param path The image.
 * @param options Request size, count, step, depth and AIO engine.
 * @returns The arguments after `qemu-img`.
 */
export function benchArgs(path: string, options: QemuBenchOptions): string[] {
  const args = ["bench"];
  if (options.write) args.push("-w");
  args.push("-f", "qcow2", "-t", "writeback", "-i", options.aio);
  args.push("-s", String(options.requestSize), "-c", String(options.count));
  if (options.step !== undefined) args.push("-S", String(options.step));
  if (options.depth !== undefined) args.push("-d", String(options.depth));
  if (options.pattern !== undefined) args.push(`--pattern=${options.pattern}`);
  args.push(path);
  return args;
}

/** What one `qemu-img bench` run took. */
export interface QemuBenchTiming {
  /** Seconds from its "Run completed in X seconds." line. */
  reported: number;
  /** Seconds from spawning the process to its exit, as seen from here. */
  wall: number;
}

/**
 * Runs `qemu-img bench` and returns the time it reports and the time the whole process took.
 *
 * @param path The image.
 * @param options Request size, count, step, depth, AIO engine, direction and pattern.
 * @returns Both times in seconds.
 */
export async function qemuImgBenchTimed(
  path: string,
  options: QemuBenchOptions,
): Promise<QemuBenchTiming> {
  const start = performance.now();
  const out = await run("qemu-img", benchArgs(path, options));
  const wall = (performance.now() - start) / 1000;
  const match = /Run completed in ([\d.]+) seconds\./.exec(out);
  if (!match) throw new Error(`qemu-img bench printed no completion line: ${out}`);
  return { reported: Number(match[1]), wall };
}

/**
 * Runs `qemu-img bench` and returns the time it reports.
 *
 * @param path The image.
 * @param options Request size, count, step, depth and AIO engine.
 * @returns Seconds, from its "Run completed in X seconds." line.
 */
export async function qemuImgBench(path: string, options: QemuBenchOptions): Promise<number> {
  return (await qemuImgBenchTimed(path, options)).reported;
}

/**
 * Picks the fastest AIO engine `qemu-img bench` accepts with the page cache on: io_uring, else
 * threads (`native` needs `cache.direct=on`, which would bypass the page cache).
 *
 * @param path A qcow2 image to try on (written to when `write` is set).
 * @param write Try write requests (`-w`) instead of reads.
 * @returns The engine name.
 */
export async function pickAio(path: string, write = false): Promise<string> {
  for (const aio of ["io_uring", "native", "threads"]) {
    try {
      await qemuImgBench(path, { requestSize: 4096, count: 16, aio, write });
      return aio;
    } catch {
      // Try the next engine.
    }
  }
  throw new Error("qemu-img bench accepts none of io_uring, native, threads");
}

/**
 * Runs `qemu-img check` and fails unless it finds nothing wrong: no errors, corruptions or leaks.
 *
 * @param path The qcow2 image.
 * @throws {Error} With qemu-img's report when anything is wrong.
 */
export async function qemuImgCheck(path: string): Promise<void> {
  // Exit status 2 (corruptions) and 3 (leaks) make run() throw with the report.
  const out = await run("qemu-img", ["check", "-f", "qcow2", "--output=json", path]);
  const report = JSON.parse(out) as Record<string, unknown>;
  const bad = ["check-errors", "corruptions", "leaks", "corruptions-fixed", "leaks-fixed"]
    .filter((key) => typeof report[key] === "number" && report[key] !== 0);
  if (bad.length > 0) throw new Error(`qemu-img check ${path}: ${bad.join(", ")}: ${out}`);
}

/**
 * Reads requests back with `qemu-io` (an independent reader): checks that all but the first
 * `head` bytes of each hold `pattern` and returns those first bytes.
 *
 * @param path The qcow2 image.
 * @param requests Offset and length of each request.
 * @param pattern The byte every request holds after its head.
 * @param head Bytes at the start of each request to return rather than check.
 * @returns The head bytes of each request, in order.
 * @throws {Error} When a pattern check fails.
 */
export async function qemuIoHeads(
  path: string,
  requests: { offset: number; length: number }[],
  pattern: number,
  head: number,
): Promise<Uint8Array[]> {
  const commands = requests.flatMap(({ offset, length }) => [
    "-c",
    `read -P ${pattern} ${offset + head} ${length - head}`,
    "-c",
    `read -v ${offset} ${head}`,
  ]);
  const out = await run("qemu-io", ["-f", "qcow2", "-r", ...commands, path]);
  if (/verification failed/i.test(out)) throw new Error(`qemu-io on ${path}: ${out}`);
  const dumps = [...out.matchAll(/^[0-9a-f]{8}:((?: +[0-9a-f]{2}(?= |$))+)/gm)];
  if (dumps.length !== requests.length) {
    throw new Error(`qemu-io printed ${dumps.length} dumps for ${requests.length} reads: ${out}`);
  }
  return dumps.map((m) => Uint8Array.from(m[1]!.trim().split(/ +/), (h) => parseInt(h, 16)));
}

/** A fully allocated qcow2 test image and its small baseline twin with the same cluster size. */
export interface MetadataCase {
  /** Bytes per cluster of both images. */
  clusterSize: number;
  /** The image with every cluster allocated (`preallocation=metadata`). */
  path: string;
  /** The small image, for timing what a command costs apart from the image's size. */
  baselinePath: string;
}

/** Virtual size of the fully allocated images of {@linkcode withMetadataImages}: 4 GiB. */
export const METADATA_IMAGE_SIZE = 4 * 2 ** 30;
/** Virtual size of their baseline twins: 1 MiB. */
const METADATA_BASELINE_SIZE = 2 ** 20;
/** The cluster sizes of the cases, in order. */
const METADATA_CLUSTER_SIZES = [64 * 1024, 4 * 1024];

/**
 * For cluster sizes 64 KiB and 4 KiB in turn: creates the case's two images in `dir` with
 * `qemu-img create` (a {@linkcode METADATA_IMAGE_SIZE} one with `preallocation=metadata`, so every
 * cluster is allocated and the file stays sparse, and a 1 MiB baseline), runs `measure` on them,
 * and at the end removes every image it made, even on failure.
 *
 * @param dir Where the images go; they are named `<prefix>-<cluster KiB>k[-baseline].qcow2`.
 * @param prefix The start of the image names.
 * @param measure Times one case.
 * @returns What `measure` returned, one per case.
 */
export async function withMetadataImages<T>(
  dir: string,
  prefix: string,
  measure: (test: MetadataCase) => Promise<T>,
): Promise<T[]> {
  const cases: MetadataCase[] = METADATA_CLUSTER_SIZES.map((clusterSize) => ({
    clusterSize,
    path: `${dir}/${prefix}-${clusterSize / 1024}k.qcow2`,
    baselinePath: `${dir}/${prefix}-${clusterSize / 1024}k-baseline.qcow2`,
  }));
  const create = async (path: string, clusterSize: number, size: number, full: boolean) => {
    const o = `cluster_size=${clusterSize}${full ? ",preallocation=metadata" : ""}`;
    await run("qemu-img", ["create", "-q", "-f", "qcow2", "-o", o, path, String(size)]);
  };
  const results: T[] = [];
  try {
    for (const test of cases) {
      await create(test.path, test.clusterSize, METADATA_IMAGE_SIZE, true);
      await create(test.baselinePath, test.clusterSize, METADATA_BASELINE_SIZE, false);
      results.push(await measure(test));
    }
  } finally {
    for (const test of cases) {
      for (const p of [test.path, test.baselinePath]) await Deno.remove(p).catch(() => {});
    }
  }
  return results;
}
