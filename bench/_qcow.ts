/**
 * qcow (version 1) throughput against `qemu-img bench -f qcow`, and legacy AES read throughput
 * against `qemu-img convert` of the same encrypted image. Part of `deno task bench`; on its own:
 * `deno run -A bench/_qcow.ts` (about a minute and 1.5 GiB of temporary disk space).
 *
 * Reads: a 1 GiB qcow image made by `qemu-img convert -O qcow` (4 KiB clusters, every cluster
 * allocated), page cache warm; both tools issue the same sequential offsets, qcowlab one awaited
 * request at a time, qemu-img at its default queue depth (64). Writes: a fresh 1 GiB image from
 * `qemu-img create -f qcow`, every request allocating; qemu-img is timed from spawning to exit
 * less a one-request run (process start, open, close, flush), qcowlab from the first write until
 * `close()` (which flushes) resolves, so both end with data and metadata written. AES: the whole
 * of a 256 MiB encrypted image converted to raw, by `qemu-img convert` and by qcowlab's convert.
 *
 * @module
 */

import * as fs from "node:fs";
import { createQcow, FileDevice, type Image, openImage } from "../mod.ts";
import { main } from "../cli.ts";
import { qemuBenchOffsets } from "./_pattern.ts";
import { qemuImgVersion, run } from "./_qemu.ts";
import { formatFigure, log, median, printTable } from "./_report.ts";

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

const IMAGE_SIZE = GiB;
const AES_SIZE = 256 * MiB;
const RUNS = 3;
const PASS = "bench-passphrase";

interface QcowTest {
  name: string;
  requestSize: number;
  count: number;
  write: boolean;
}

const TESTS: QcowTest[] = [
  { name: "read 4 KiB sequential", requestSize: 4 * KiB, count: 65_536, write: false },
  { name: "read 64 KiB sequential", requestSize: 64 * KiB, count: 16_384, write: false },
  // QEMU's qcow driver syncs every L2 update (about 1 MiB/s here): fewer requests keep it short.
  { name: "write 4 KiB fresh", requestSize: 4 * KiB, count: 4_096, write: true },
  { name: "write 64 KiB fresh", requestSize: 64 * KiB, count: 1_024, write: true },
];

function writeNoise(path: string, size: number): void {
  const chunk = new Uint8Array(8 * MiB);
  const words = new Uint32Array(chunk.buffer);
  let state = 0x5eed;
  const fd = fs.openSync(path, "w");
  try {
    for (let at = 0; at < size; at += chunk.length) {
      for (let i = 0; i < words.length; i++) {
        state = (state + 0x6d2b79f5) >>> 0;
        words[i] = Math.imul(state ^ (state >>> 15), state | 1) >>> 0;
      }
      fs.writeSync(fd, chunk, 0, Math.min(chunk.length, size - at), at);
    }
  } finally {
    fs.closeSync(fd);
  }
}

function warm(path: string): void {
  const fd = fs.openSync(path, "r");
  const buffer = new Uint8Array(8 * MiB);
  try {
    while (fs.readSync(fd, buffer) > 0) {
      // Reading is the point: the page cache keeps the file.
    }
  } finally {
    fs.closeSync(fd);
  }
}

function benchArgs(path: string, test: QcowTest, aio: string, count = test.count): string[] {
  const args = ["bench", ...(test.write ? ["-w"] : []), "-f", "qcow", "-t", "writeback"];
  args.push("-i", aio, "-s", String(test.requestSize), "-c", String(count), path);
  return args;
}

async function pickAio(path: string): Promise<string> {
  for (const aio of ["io_uring", "threads"]) {
    try {
      await run("qemu-img", benchArgs(path, TESTS[0]!, aio, 16));
      return aio;
    } catch {
      // Try the next one.
    }
  }
  throw new Error("qemu-img bench accepts neither io_uring nor threads");
}

async function wallSeconds(command: string, args: string[]): Promise<number> {
  const start = performance.now();
  await run(command, args);
  return (performance.now() - start) / 1000;
}

async function qcowlabRun(path: string, test: QcowTest, offsets: Float64Array): Promise<number> {
  const buffer = new Uint8Array(test.requestSize).fill(test.write ? 0xa5 : 0);
  if (test.write) {
    await using device = FileDevice.open(path, { readOnly: false, create: true, truncate: true });
    await createQcow(device, { size: IMAGE_SIZE });
  }
  const image: Image = await openImage(path, { readOnly: !test.write });
  const start = performance.now();
  try {
    if (test.write) { for (const offset of offsets) await image.write(buffer, offset); }
    else for (const offset of offsets) await image.read(buffer, offset);
  } finally {
    await image.close();
  }
  return (performance.now() - start) / 1000;
}

async function qemuRun(path: string, test: QcowTest, aio: string): Promise<number> {
  if (!test.write) {
    const out = await run("qemu-img", benchArgs(path, test, aio));
    const match = /Run completed in ([\d.]+) seconds\./.exec(out);
    if (!match) throw new Error(`qemu-img bench printed no completion line: ${out}`);
    return Number(match[1]);
  }
  await run("qemu-img", ["create", "-f", "qcow", path, String(IMAGE_SIZE)]);
  const baseline = await wallSeconds("qemu-img", benchArgs(path, test, aio, 1));
  await run("qemu-img", ["create", "-f", "qcow", path, String(IMAGE_SIZE)]);
  return Math.max(1e-6, (await wallSeconds("qemu-img", benchArgs(path, test, aio))) - baseline);
}

async function qcowlabConvert(source: string, target: string): Promise<number> {
  Deno.env.set("QCOWLAB_BENCH_PASS", PASS);
  const start = performance.now();
  const status = await main(
    ["convert", "-q", "-O", "raw", "--passphrase-env", "QCOWLAB_BENCH_PASS", source, target],
    {
      stdout: () => {},
      stderr: (t) => void Deno.stderr.writeSync(new TextEncoder().encode(t)),
      terminal: false,
    },
  );
  if (status !== 0) throw new Error(`qcowlab convert failed with status ${status}`);
  return (performance.now() - start) / 1000;
}

function qemuConvertArgs(source: string, target: string): string[] {
  return [
    "convert",
    "--object",
    `secret,id=sec0,data=${PASS}`,
    "--image-opts",
    `driver=qcow,file.filename=${source},encrypt.key-secret=sec0`,
    "-O",
    "raw",
    target,
  ];
}

/**
 * Runs the qcow benchmarks in `dir` and returns a function printing their tables.
 *
 * @param dir A scratch directory.
 * @returns The printer.
 */
export async function qcowBench(dir: string): Promise<() => void> {
  const raw = `${dir}/qcow-source.raw`;
  const image = `${dir}/image.qcow`;
  const scratch = `${dir}/scratch.qcow`;
  log(`qcow: writing a ${IMAGE_SIZE / MiB} MiB raw file and converting it to qcow`);
  writeNoise(raw, IMAGE_SIZE);
  await run("qemu-img", ["convert", "-f", "raw", "-O", "qcow", raw, image]);
  await Deno.remove(raw);
  const aio = await pickAio(image);
  warm(image);
  const rows: string[][] = [];
  const only = Deno.env.get("QCOWLAB_QCOW_BENCH");
  for (const test of TESTS.filter((t) => !only || t.name.startsWith(only))) {
    const offsets = qemuBenchOffsets({
      imageSize: IMAGE_SIZE,
      requestSize: test.requestSize,
      count: test.count,
    });
    const ours: number[] = [];
    const theirs: number[] = [];
    for (let i = 0; i < RUNS; i++) {
      const path = test.write ? scratch : image;
      ours.push(await qcowlabRun(path, test, offsets));
      theirs.push(await qemuRun(path, test, aio));
    }
    const mib = (seconds: number): number => test.count * test.requestSize / MiB / seconds;
    const a = mib(median(ours));
    const b = mib(median(theirs));
    log(`  ${test.name}: qcowlab ${formatFigure(a)} MiB/s, qemu-img ${formatFigure(b)} MiB/s`);
    rows.push([test.name, "MiB/s", formatFigure(a), formatFigure(b), `${(a / b).toFixed(2)}x`]);
  }
  await Deno.remove(image);
  await Deno.remove(scratch).catch(() => {});

  if (only && only !== "aes") {
    return () => printTable(["test", "unit", "qcowlab", "qemu-img", "ratio"], rows);
  }
  log(`qcow: converting a ${AES_SIZE / MiB} MiB raw file to an AES-encrypted qcow image`);
  const aesRaw = `${dir}/aes-source.raw`;
  const encrypted = `${dir}/encrypted.qcow`;
  const out = `${dir}/aes-out.raw`;
  writeNoise(aesRaw, AES_SIZE);
  await run("qemu-img", [
    "convert",
    "--object",
    `secret,id=sec0,data=${PASS}`,
    "-O",
    "qcow",
    "-o",
    "encrypt.format=aes,encrypt.key-secret=sec0",
    aesRaw,
    encrypted,
  ]);
  warm(encrypted);
  const ours: number[] = [];
  const theirs: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    ours.push(await qcowlabConvert(encrypted, out));
    theirs.push(await wallSeconds("qemu-img", qemuConvertArgs(encrypted, out)));
  }
  const expected = await Deno.readFile(aesRaw);
  const got = await Deno.readFile(out);
  if (expected.length !== got.length || !expected.every((b, i) => got[i] === b)) {
    throw new Error("The decrypted image differs from its source");
  }
  for (const path of [aesRaw, encrypted, out]) await Deno.remove(path);
  const aesA = AES_SIZE / MiB / median(ours);
  const aesB = AES_SIZE / MiB / median(theirs);
  rows.push([
    "AES read (convert to raw)",
    "MiB/s",
    formatFigure(aesA),
    formatFigure(aesB),
    `${(aesA / aesB).toFixed(2)}x`,
  ]);
  return () => {
    console.log(
      `\nqcow (version 1), ${IMAGE_SIZE / MiB} MiB image, 4 KiB clusters, median of ${RUNS} runs;` +
        ` qemu-img bench -f qcow -t writeback -i ${aio} (depth 64); writes into a fresh image` +
        ` end flushed for both; AES: ${AES_SIZE / MiB} MiB encrypted image converted to raw`,
    );
    printTable(["test", "unit", "qcowlab", "qemu-img", "ratio"], rows);
  };
}

if (import.meta.main) {
  await qemuImgVersion();
  const dir = await Deno.makeTempDir({ prefix: "qcowlab-qcow-bench-" });
  try {
    const print = await qcowBench(dir);
    print();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
