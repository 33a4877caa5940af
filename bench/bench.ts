/**
 * Read and write throughput of qcowlab against `qemu-img bench`, with a warm page cache, plus the
 * memory taken by a sparse 16 TiB image. Run with `deno task bench`; needs `qemu-img` and
 * `qemu-io`, about 2.5 GiB of temporary disk space and about two minutes.
 *
 * Every qcowlab read test issues exactly the offsets the matching `qemu-img bench` command issues
 * (see `qemuBenchOffsets`), one request at a time. qemu-img is shown at its default queue depth
 * (64) and at depth 1; the ratio column compares with depth 64, the command as written. The write
 * tests (`_write.ts`, which explains how they are timed) follow the same rules. `_check.ts` then
 * times `checkQcow2` against `qemu-img check` on fully allocated 4 GiB images.
 *
 * @module
 */

import * as fs from "node:fs";
import { type Image, mapImage, MemoryDevice, openImage, Qcow2Image, RawImage } from "../mod.ts";
import { mulberry32 } from "../core/_random.ts";
import { qemuBenchOffsets, randomOffsets } from "./_pattern.ts";
import { benchArgs, benchWrap, pickAio, qemuImgBench, qemuImgVersion, run } from "./_qemu.ts";
import type { MemoryProbeResult } from "./_memory_probe.ts";
import { formatFigure, loadAverage, log, median, printTable } from "./_report.ts";
import { writeBench } from "./_write.ts";
import { checkBench } from "./_check.ts";
import { qcowBench } from "./_qcow.ts";
import { crashBench } from "./_crash.ts";
import { snapshotBench } from "./_snapshot.ts";

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const TiB = 1024 * GiB;

const FILE_SIZE = GiB;
const MEMORY_SIZE = 256 * MiB;
const CLUSTER_SIZE = 64 * KiB;
const SMALL_COUNT = 200_000;
/**
 * An odd number of 4 KiB blocks near (1 GiB / 4 KiB) / golden ratio: successive requests land far
 * apart and 262,144 of them would visit every block of the 1 GiB image once.
 */
const SCATTER_STEP = 162_013 * 4 * KiB;
const RUNS = 5;
const SEED = 0x5eed;
const MEMORY_LIMIT = 64 * MiB;

/** One row of the table. */
interface Test {
  name: string;
  /** "MiB/s" or "IOPS". */
  unit: "MiB/s" | "IOPS";
  requestSize: number;
  /** Offsets in issue order. */
  offsets: Float64Array;
  /** The qemu-img pattern (absent for tests qemu-img cannot express). */
  qemu?: { count: number; step?: number };
}

/** Measured seconds of each variant, one entry per run. */
type Timings = Map<string, number[]>;

function figure(test: Test, seconds: number): number {
  return test.unit === "MiB/s"
    ? test.offsets.length * test.requestSize / MiB / seconds
    : test.offsets.length / seconds;
}

/** Writes `size` bytes of seeded noise, each 4 KiB block stamped with its index. */
function writeContents(path: string, size: number): void {
  const chunk = new Uint8Array(8 * MiB);
  const words = new Uint32Array(chunk.buffer);
  const view = new DataView(chunk.buffer);
  const next = mulberry32(SEED);
  const fd = fs.openSync(path, "w");
  try {
    for (let at = 0; at < size; at += chunk.length) {
      for (let i = 0; i < words.length; i++) words[i] = next();
      for (let b = 0; b < chunk.length; b += 4 * KiB) view.setUint32(b, (at + b) / (4 * KiB));
      const n = Math.min(chunk.length, size - at);
      fs.writeSync(fd, chunk, 0, n, at);
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** Reads a whole file once so that it sits in the page cache. */
function warmFile(path: string): void {
  const buffer = new Uint8Array(4 * MiB);
  const fd = fs.openSync(path, "r");
  try {
    let at = 0;
    for (let n; (n = fs.readSync(fd, buffer, 0, buffer.length, at)) > 0;) at += n;
  } finally {
    fs.closeSync(fd);
  }
}

async function timeImage(image: Image, test: Test, buffer: Uint8Array): Promise<number> {
  const offsets = test.offsets;
  const start = performance.now();
  for (let i = 0; i < offsets.length; i++) await image.read(buffer, offsets[i]!);
  return (performance.now() - start) / 1000;
}

function timeReadSync(fd: number, offsets: Float64Array, buffer: Uint8Array): number {
  const length = buffer.length;
  const start = performance.now();
  for (let i = 0; i < offsets.length; i++) fs.readSync(fd, buffer, 0, length, offsets[i]!);
  return (performance.now() - start) / 1000;
}

/** Where each request of `test` lies in the image file: the offsets a perfect driver would read. */
async function hostOffsets(image: Image, test: Test): Promise<Float64Array> {
  const hosts = new Float64Array(test.offsets.length);
  for (let i = 0; i < hosts.length; i++) {
    const status = await image.blockStatus(test.offsets[i]!, test.requestSize);
    if (status.kind !== "data" || status.length < test.requestSize || !status.hostOffset) {
      throw new Error(`${test.name}: request ${i} is not one run of data clusters`);
    }
    hosts[i] = status.hostOffset;
  }
  return hosts;
}

/** Checks a sample of the test's reads against the raw file, so a fast wrong answer shows up. */
async function verify(image: Image, fd: number, test: Test): Promise<void> {
  const got = new Uint8Array(test.requestSize);
  const want = new Uint8Array(test.requestSize);
  const every = Math.max(1, Math.floor(test.offsets.length / 500));
  for (let i = 0; i < test.offsets.length; i += every) {
    const offset = test.offsets[i]!;
    await image.read(got, offset);
    fs.readSync(fd, want, 0, want.length, offset);
    if (!got.every((v, j) => v === want[j])) {
      throw new Error(`${test.name}: ${image.filename} differs from the raw file at ${offset}`);
    }
  }
}

function record(timings: Timings, key: string, seconds: number): void {
  const list = timings.get(key) ?? [];
  list.push(seconds);
  timings.set(key, list);
}

interface Paths {
  qcow2: string;
  raw: string;
}

async function measureFiles(
  tests: Test[],
  paths: Paths,
  aio: string,
): Promise<Map<Test, Timings>> {
  const results = new Map<Test, Timings>();
  await using qcow2 = await openImage(paths.qcow2);
  await using raw = await openImage(paths.raw);
  const fd = fs.openSync(paths.raw, "r");
  const hostFd = fs.openSync(paths.qcow2, "r");
  try {
    for (const test of tests) {
      const timings: Timings = new Map();
      results.set(test, timings);
      const buffer = new Uint8Array(test.requestSize);
      await verify(qcow2, fd, test);
      const hosts = await hostOffsets(qcow2, test);
      // Another process may have pushed the files out of the page cache since the last test.
      warmFile(paths.raw);
      warmFile(paths.qcow2);
      // An untimed pass lets the JIT settle.
      await timeImage(qcow2, test, buffer);
      await timeImage(raw, test, buffer);
      timeReadSync(fd, test.offsets, buffer);
      timeReadSync(hostFd, hosts, buffer);
      for (let r = 0; r < RUNS; r++) {
        record(timings, "qcowlab", await timeImage(qcow2, test, buffer));
        record(timings, "qcowlab-raw", await timeImage(raw, test, buffer));
        record(timings, "readSync", timeReadSync(fd, test.offsets, buffer));
        record(timings, "readSync-host", timeReadSync(hostFd, hosts, buffer));
        if (test.qemu) {
          const options = { requestSize: test.requestSize, aio, ...test.qemu };
          record(timings, "qemu-d64", await qemuImgBench(paths.qcow2, options));
          record(timings, "qemu-d1", await qemuImgBench(paths.qcow2, { ...options, depth: 1 }));
        }
      }
      const runs = [...timings].map(([k, v]) =>
        `${k} ${v.map((s) => formatFigure(figure(test, s))).join("/")}`
      );
      log(`  ${test.name} (${test.unit}): ${runs.join("; ")}`);
    }
  } finally {
    fs.closeSync(fd);
    fs.closeSync(hostFd);
  }
  return results;
}

async function measureMemory(tests: Test[], paths: Paths): Promise<Map<Test, Timings>> {
  const results = new Map<Test, Timings>();
  const qcow2 = await Qcow2Image.open(MemoryDevice.from(await Deno.readFile(paths.qcow2)));
  const raw = new RawImage(MemoryDevice.from(await Deno.readFile(paths.raw)));
  const fd = fs.openSync(paths.raw, "r");
  try {
    for (const test of tests) {
      const timings: Timings = new Map();
      results.set(test, timings);
      const buffer = new Uint8Array(test.requestSize);
      await verify(qcow2, fd, test);
      await timeImage(qcow2, test, buffer);
      await timeImage(raw, test, buffer);
      for (let r = 0; r < RUNS; r++) {
        record(timings, "qcowlab", await timeImage(qcow2, test, buffer));
        record(timings, "qcowlab-raw", await timeImage(raw, test, buffer));
      }
    }
  } finally {
    fs.closeSync(fd);
    await qcow2.close();
    await raw.close();
  }
  return results;
}

function fileTests(wrap: "image" | "usable"): Test[] {
  const pattern = { imageSize: FILE_SIZE, wrap } as const;
  const seqCount = FILE_SIZE / (64 * KiB);
  return [
    {
      name: "64 KiB sequential, whole image",
      unit: "MiB/s",
      requestSize: 64 * KiB,
      offsets: qemuBenchOffsets({ ...pattern, requestSize: 64 * KiB, count: seqCount }),
      qemu: { count: seqCount, step: 64 * KiB },
    },
    {
      name: `4 KiB scattered (-S ${SCATTER_STEP})`,
      unit: "IOPS",
      requestSize: 4 * KiB,
      offsets: qemuBenchOffsets({
        ...pattern,
        requestSize: 4 * KiB,
        count: SMALL_COUNT,
        step: SCATTER_STEP,
      }),
      qemu: { count: SMALL_COUNT, step: SCATTER_STEP },
    },
    {
      name: "4 KiB sequential",
      unit: "IOPS",
      requestSize: 4 * KiB,
      offsets: qemuBenchOffsets({ ...pattern, requestSize: 4 * KiB, count: SMALL_COUNT }),
      qemu: { count: SMALL_COUNT },
    },
    {
      name: `4 KiB random (seed ${SEED}, no qemu-img mode)`,
      unit: "IOPS",
      requestSize: 4 * KiB,
      offsets: randomOffsets(SMALL_COUNT, { imageSize: FILE_SIZE, align: 4 * KiB, seed: SEED }),
    },
  ];
}

function memoryTests(): Test[] {
  const pattern = { imageSize: MEMORY_SIZE } as const;
  const seqCount = MEMORY_SIZE / (64 * KiB);
  return [
    {
      name: "64 KiB sequential, whole image",
      unit: "MiB/s",
      requestSize: 64 * KiB,
      offsets: qemuBenchOffsets({ ...pattern, requestSize: 64 * KiB, count: seqCount }),
    },
    {
      name: "4 KiB scattered (same step)",
      unit: "IOPS",
      requestSize: 4 * KiB,
      offsets: qemuBenchOffsets({
        ...pattern,
        requestSize: 4 * KiB,
        count: SMALL_COUNT,
        step: SCATTER_STEP,
      }),
    },
    {
      name: "4 KiB random",
      unit: "IOPS",
      requestSize: 4 * KiB,
      offsets: randomOffsets(SMALL_COUNT, { imageSize: MEMORY_SIZE, align: 4 * KiB, seed: SEED }),
    },
  ];
}

async function memoryProbe(dir: string, warmup: string): Promise<MemoryProbeResult> {
  const big = `${dir}/sparse-16t.qcow2`;
  await run("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "cluster_size=65536", big, "16T"]);
  // Eight 512 KiB writes spread over the whole 16 TiB, each in a different L2 table.
  const offsets = Array.from(
    { length: 8 },
    (_, i) => i * 2 * TiB + i * 37 * MiB + 3 * CLUSTER_SIZE,
  );
  const commands = offsets.flatMap((o, i) => ["-c", `write -P ${0x11 * (i + 1)} ${o} 512k`]);
  await run("qemu-io", ["-f", "qcow2", ...commands, big]);
  const probe = new URL("./_memory_probe.ts", import.meta.url).pathname;
  const reads = [...offsets, 5 * TiB + 12345 * CLUSTER_SIZE].map(String);
  const out = await run(Deno.execPath(), [
    "run",
    "-A",
    "--v8-flags=--expose-gc",
    probe,
    big,
    warmup,
    ...reads,
  ]);
  const result = JSON.parse(out) as MemoryProbeResult;
  const expected = [...offsets.map((_, i) => (0x11 * (i + 1)) & 0xff), 0];
  if (result.firstBytes.join() !== expected.join()) {
    throw new Error(`16 TiB image read back ${result.firstBytes}, expected ${expected}`);
  }
  return result;
}

function cpuName(): string {
  try {
    const info = Deno.readTextFileSync("/proc/cpuinfo");
    return /model name\s*:\s*(.*)/.exec(info)?.[1] ?? "unknown CPU";
  } catch {
    return "unknown CPU";
  }
}

async function main(): Promise<void> {
  const started = performance.now();
  const loadBefore = loadAverage();
  const version = await qemuImgVersion();
  const wrap = benchWrap(version);
  const dir = await Deno.makeTempDir({ prefix: "qcowlab-bench-" });
  // Interrupted runs would otherwise leave up to 2.5 GiB behind.
  const onInterrupt = (): void => {
    Deno.removeSync(dir, { recursive: true });
    Deno.exit(130);
  };
  Deno.addSignalListener("SIGINT", onInterrupt);
  try {
    const file: Paths = { raw: `${dir}/image.raw`, qcow2: `${dir}/image.qcow2` };
    const small: Paths = { raw: `${dir}/small.raw`, qcow2: `${dir}/small.qcow2` };
    log(`Writing ${FILE_SIZE / MiB} MiB and ${MEMORY_SIZE / MiB} MiB raw files in ${dir}`);
    writeContents(file.raw, FILE_SIZE);
    writeContents(small.raw, MEMORY_SIZE);
    log("Converting them to qcow2 (64 KiB clusters, every cluster allocated)");
    for (const p of [file, small]) {
      const o = `cluster_size=${CLUSTER_SIZE}`;
      await run("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", "-o", o, p.raw, p.qcow2]);
    }
    {
      await using image = await openImage(file.qcow2);
      const map = await mapImage(image);
      if (!map.every((entry) => entry.data && entry.depth === 0)) {
        throw new Error(`The qcow2 image is not fully allocated: ${JSON.stringify(map)}`);
      }
    }
    const aio = await pickAio(small.qcow2);
    for (const p of [file.raw, file.qcow2]) warmFile(p);

    log("Measuring the memory a sparse 16 TiB image takes");
    const memory = await memoryProbe(dir, small.qcow2);

    const tests = fileTests(wrap);
    log(`Timing FileDevice reads, ${RUNS} runs each (figures per run):`);
    const fileResults = await measureFiles(tests, file, aio);
    log("Timing MemoryDevice reads");
    const memTests = memoryTests();
    const memResults = await measureMemory(memTests, small);
    // The read files are done with; the write tests need room for two images of their own.
    for (const p of [file, small]) {
      await Deno.remove(p.raw);
      await Deno.remove(p.qcow2);
    }
    const printWrites = await writeBench(dir, version);
    const printChecks = await checkBench(dir);
    const printQcow = await qcowBench(dir);
    const printCrash = await crashBench();
    const printSnapshots = await snapshotBench(dir);

    const deno = Deno.version.deno;
    console.log(
      `\nqcowlab read and write benchmark: Deno ${deno}, qemu-img ${
        version.join(".")
      }, ${cpuName()}, ` +
        `${navigator.hardwareConcurrency} CPUs, load average ${loadBefore} before, ` +
        `${loadAverage()} after`,
    );
    console.log(
      `FileDevice reads, ${FILE_SIZE / MiB} MiB image, warm page cache; median of ${RUNS} runs.` +
        ` qemu-img: ${
          benchArgs("IMAGE", { requestSize: 0, count: 0, aio }).slice(0, 7).join(" ")
        }` +
        ` -s SIZE -c COUNT [-S STEP] [-d 1]; offsets wrap as in qemu-img ${version.join(".")}` +
        ` (offset %= ${wrap === "image" ? "image size" : "image size - request size"})`,
    );
    const header = [
      "test",
      "unit",
      "qcowlab",
      "qemu-img",
      "ratio",
      "qemu-img -d 1",
      "ratio -d 1",
      "qcowlab raw",
      "readSync raw",
      "readSync qcow2",
    ];
    const rows = tests.map((test) => {
      const t = fileResults.get(test)!;
      const get = (key: string): number | undefined => {
        const list = t.get(key);
        return list ? figure(test, median(list)) : undefined;
      };
      const ours = get("qcowlab")!;
      const d64 = get("qemu-d64");
      const d1 = get("qemu-d1");
      return [
        test.name,
        test.unit,
        formatFigure(ours),
        formatFigure(d64),
        d64 === undefined ? "-" : (ours / d64).toFixed(2),
        formatFigure(d1),
        d1 === undefined ? "-" : (ours / d1).toFixed(2),
        formatFigure(get("qcowlab-raw")),
        formatFigure(get("readSync")),
        formatFigure(get("readSync-host")),
      ];
    });
    printTable(header, rows);
    console.log(
      [
        "  qcowlab: openImage(qcow2) = Qcow2Image over FileDevice, one awaited read at a time.",
        "  qemu-img: qemu-img bench at its default depth (64) and at -d 1, same offsets.",
        "  qcowlab raw: openImage(raw) = RawImage over FileDevice, same offsets.",
        "  readSync raw: node:fs readSync on the raw file, same offsets (the ceiling).",
        "  readSync qcow2: readSync on the qcow2 file at the host offsets the requests map to.",
      ].join("\n"),
    );
    for (const test of tests) {
      if (!test.qemu) continue;
      const args = benchArgs(file.qcow2, { requestSize: test.requestSize, aio, ...test.qemu });
      console.log(`  ${test.name}: qemu-img ${args.slice(0, -1).join(" ")} IMAGE`);
    }

    console.log(
      `\nMemoryDevice reads, ${
        MEMORY_SIZE / MiB
      } MiB qcow2 image (Qcow2Image) and the same bytes as` +
        ` a raw image (RawImage); median of ${RUNS} runs`,
    );
    printTable(
      ["test", "unit", "qcowlab qcow2", "qcowlab raw"],
      memTests.map((test) => {
        const t = memResults.get(test)!;
        return [
          test.name,
          test.unit,
          formatFigure(figure(test, median(t.get("qcowlab")!))),
          formatFigure(figure(test, median(t.get("qcowlab-raw")!))),
        ];
      }),
    );

    printWrites();
    printChecks();
    printQcow();
    printCrash();
    printSnapshots();

    const rss = memory.rssAfter - memory.rssBefore;
    const heap = memory.heapAfter - memory.heapBefore;
    console.log(
      `\n16 TiB sparse qcow2 (4 MiB written at 8 places): openImage + 9 reads + mapImage` +
        ` (${memory.mapEntries} entries)`,
    );
    console.log(
      `  RSS delta ${(rss / MiB).toFixed(1)} MiB, heapUsed + external delta ` +
        `${(heap / MiB).toFixed(1)} MiB (limit ${MEMORY_LIMIT / MiB} MiB): ` +
        (Math.max(rss, heap) < MEMORY_LIMIT ? "ok" : "OVER THE LIMIT") +
        `; process RSS ${(memory.rssBefore / MiB).toFixed(0)} -> ${
          (memory.rssAfter / MiB).toFixed(0)
        } MiB`,
    );
    console.log(`\nTotal time ${((performance.now() - started) / 1000).toFixed(0)} s`);
  } finally {
    Deno.removeSignalListener("SIGINT", onInterrupt);
    await Deno.remove(dir, { recursive: true });
  }
}

if (import.meta.main) await main();
