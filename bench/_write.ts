/**
 * Write throughput of qcowlab against `qemu-img bench -w`, with the page cache on: sequential
 * writes into a freshly created image (every request allocates), over an allocated image, and
 * small writes into a fresh image; on files and in memory. Part of `deno task bench`; on its own:
 * `deno run -A bench/_write.ts` (about a minute, 2.5 GiB of temporary disk space).
 *
 * Both tools issue the same offsets one after the other (`qemu-img bench` at its default queue
 * depth, 64; qcowlab one awaited write at a time) and end with their data and metadata durable:
 * qcowlab's time runs from the first write until `close()` (which flushes) has resolved. The time
 * `qemu-img bench` prints stops before that final flush: in 7.2 the flush it issues at the end
 * (with `--flush-interval`) or at exit completes after "Run completed" is printed. So qemu-img is
 * timed from outside, from spawning the process until it exits, less the cost of a one-request
 * run (starting the process, opening and closing the image), and its own figure is shown too.
 *
 * Every qcowlab run is checked before its time counts: `qemu-img check` finds no errors or leaks,
 * and sampled requests read back (through qcowlab and through `qemu-io`) hold what was written
 * (the memory images are written to a file for that).
 *
 * @module
 */

import {
  createQcow2,
  FileDevice,
  type Image,
  MemoryDevice,
  openImage,
  Qcow2Image,
} from "../mod.ts";
import { type BenchWrap, qemuBenchOffsets } from "./_pattern.ts";
import {
  benchArgs,
  benchWrap,
  pickAio,
  qemuImgBenchTimed,
  qemuImgCheck,
  qemuIoHeads,
  run,
} from "./_qemu.ts";
import { formatFigure, log, median, printTable, runStandalone } from "./_report.ts";

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

const FILE_SIZE = GiB;
const MEMORY_SIZE = 256 * MiB;
const CLUSTER_SIZE = 64 * KiB;
const SMALL_COUNT = 65_536;
/**
 * Timed rounds; one more untimed round comes first. Even, so each tool goes first equally often:
 * on this machine the second run after a 1 GiB write is often slowed by the first one's writeback,
 * and an odd count hands the median to whichever tool went first more often.
 */
const RUNS = 8;
/** Bytes at the start of every request holding its index and the run's tag. */
const STAMP = 8;

/** One row of a write table. */
export interface WriteTest {
  name: string;
  unit: "MiB/s" | "IOPS";
  requestSize: number;
  /** Offsets in issue order (those `qemu-img bench -w -s SIZE -c COUNT` issues). */
  offsets: Float64Array;
  /** Start from a freshly created image; otherwise write over what the previous test left. */
  fresh: boolean;
  /** The byte every request holds after its stamp. */
  pattern: number;
}

/** Measured seconds of each variant, one entry per timed run. */
type Timings = Map<string, number[]>;

type Tool = "qcowlab" | "qemu-img";

function figure(test: WriteTest, seconds: number): number {
  const count = test.offsets.length;
  return test.unit === "MiB/s" ? count * test.requestSize / MiB / seconds : count / seconds;
}

function record(timings: Timings, key: string, seconds: number): void {
  const list = timings.get(key) ?? [];
  list.push(seconds);
  timings.set(key, list);
}

/**
 * The three write tests for an image of `imageSize` bytes: 64 KiB requests over the whole image
 * twice (allocating, then overwriting), then 4 KiB requests into a fresh image.
 *
 * @param imageSize Virtual size in bytes, a multiple of 64 KiB.
 * @param wrap How the matching qemu-img wraps offsets.
 * @returns The tests, in the order they must run.
 */
export function writeTests(imageSize: number, wrap: BenchWrap): WriteTest[] {
  const big = imageSize / (64 * KiB);
  const small = Math.min(SMALL_COUNT, imageSize / (4 * KiB));
  const offsets = (requestSize: number, count: number): Float64Array =>
    qemuBenchOffsets({ imageSize, requestSize, count, wrap });
  return [
    {
      name: "64 KiB sequential, fresh image (allocating)",
      unit: "MiB/s",
      requestSize: 64 * KiB,
      offsets: offsets(64 * KiB, big),
      fresh: true,
      pattern: 0xa5,
    },
    {
      name: "64 KiB sequential, same image again (overwrite)",
      unit: "MiB/s",
      requestSize: 64 * KiB,
      offsets: offsets(64 * KiB, big),
      fresh: false,
      pattern: 0x5a,
    },
    {
      name: `4 KiB sequential, fresh image (${small * 4 / 1024} MiB)`,
      unit: "IOPS",
      requestSize: 4 * KiB,
      offsets: offsets(4 * KiB, small),
      fresh: true,
      pattern: 0xc3,
    },
  ];
}

/**
 * Writes every request of `test` (each stamped with its index and `tag`), then closes the image.
 *
 * @param image An image open for writing; closed on return.
 * @param test The requests.
 * @param tag A number identifying this run, stored in every request.
 * @returns Seconds until the last write resolved and until `close()` resolved.
 */
export async function timeWrites(
  image: Image,
  test: WriteTest,
  tag: number,
): Promise<{ writes: number; total: number }> {
  const buffer = new Uint8Array(test.requestSize).fill(test.pattern);
  const view = new DataView(buffer.buffer);
  view.setUint32(4, tag);
  const offsets = test.offsets;
  let closing = false;
  try {
    const start = performance.now();
    for (let i = 0; i < offsets.length; i++) {
      view.setUint32(0, i);
      await image.write(buffer, offsets[i]!);
    }
    const written = performance.now();
    closing = true;
    await image.close();
    const end = performance.now();
    return { writes: (written - start) / 1000, total: (end - start) / 1000 };
  } finally {
    if (!closing) await image.close();
  }
}

const lastWriters = new WeakMap<WriteTest, Map<number, number>>();

/** The index of the request that last wrote each offset (offsets can repeat where they wrap). */
function lastWriter(test: WriteTest): Map<number, number> {
  let map = lastWriters.get(test);
  if (!map) {
    map = new Map();
    test.offsets.forEach((offset, i) => map!.set(offset, i));
    lastWriters.set(test, map);
  }
  return map;
}

/** About `n` request indices spread over the test, the last one included. */
function samples(test: WriteTest, n: number): number[] {
  const count = test.offsets.length;
  const every = Math.max(1, Math.floor(count / n));
  const picked: number[] = [];
  for (let i = 0; i < count; i += every) picked.push(i);
  if (picked[picked.length - 1] !== count - 1) picked.push(count - 1);
  return picked;
}

/** Checks that a request's bytes are the stamp of its last writer and then the pattern. */
function checkRequest(test: WriteTest, tag: number, index: number, got: Uint8Array): void {
  const offset = test.offsets[index]!;
  const want = lastWriter(test).get(offset)!;
  const view = new DataView(got.buffer, got.byteOffset, got.byteLength);
  const bad = (what: string): Error =>
    new Error(`${test.name}: the request at ${offset} reads back wrong (${what})`);
  if (view.getUint32(0) !== want) throw bad(`index ${view.getUint32(0)}, expected ${want}`);
  if (view.getUint32(4) !== tag) throw bad(`tag ${view.getUint32(4)}, expected ${tag}`);
  for (let j = STAMP; j < got.length; j++) {
    if (got[j] !== test.pattern) throw bad(`byte ${j} is ${got[j]}`);
  }
}

/**
 * Reads sampled requests back through qcowlab and checks them.
 *
 * @param image The image `timeWrites` wrote, open again.
 * @param test The requests it wrote.
 * @param tag The tag it wrote.
 * @throws {Error} Naming the first request that reads back wrong.
 */
export async function verifyImage(image: Image, test: WriteTest, tag: number): Promise<void> {
  const got = new Uint8Array(test.requestSize);
  for (const i of samples(test, 256)) {
    await image.read(got, test.offsets[i]!);
    checkRequest(test, tag, i, got);
  }
}

/**
 * Runs `qemu-img check`, then reads sampled requests back through qcowlab and through `qemu-io`.
 *
 * @param path The image file `timeWrites` wrote.
 * @param test The requests it wrote.
 * @param tag The tag it wrote.
 * @throws {Error} When qemu-img check finds anything or a request reads back wrong.
 */
export async function verifyFile(path: string, test: WriteTest, tag: number): Promise<void> {
  await qemuImgCheck(path);
  {
    await using image = await openImage(path, { format: "qcow2", backing: false });
    await verifyImage(image, test, tag);
  }
  const picked = samples(test, 4);
  const requests = picked.map((i) => ({ offset: test.offsets[i]!, length: test.requestSize }));
  const heads = await qemuIoHeads(path, requests, test.pattern, STAMP);
  heads.forEach((head, k) => {
    const got = new Uint8Array(test.requestSize).fill(test.pattern);
    got.set(head);
    checkRequest(test, tag, picked[k]!, got);
  });
}

async function removeIfPresent(path: string): Promise<void> {
  await Deno.remove(path).catch((error) => {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  });
}

async function createFile(tool: Tool, path: string): Promise<void> {
  await removeIfPresent(path);
  if (tool === "qemu-img") {
    const options = `cluster_size=${CLUSTER_SIZE}`;
    await run("qemu-img", ["create", "-q", "-f", "qcow2", "-o", options, path, String(FILE_SIZE)]);
    return;
  }
  await using device = FileDevice.open(path, { readOnly: false, create: true });
  await createQcow2(device, { size: FILE_SIZE, clusterSize: CLUSTER_SIZE });
}

/**
 * What starting `qemu-img bench -w`, opening and closing the image costs beyond the time it
 * prints: the least of five one-request runs.
 */
async function qemuOverhead(path: string, aio: string): Promise<number> {
  await createFile("qemu-img", path);
  const costs: number[] = [];
  for (let i = 0; i < 5; i++) {
    const t = await qemuImgBenchTimed(path, { requestSize: 4 * KiB, count: 1, aio, write: true });
    costs.push(t.wall - t.reported);
  }
  return Math.min(...costs);
}

function logRuns(tests: WriteTest[], timings: Map<WriteTest, Timings>): void {
  for (const test of tests) {
    const runs = [...timings.get(test)!].map(([k, v]) =>
      `${k} ${v.map((s) => formatFigure(figure(test, s))).join("/")}`
    );
    log(`  ${test.name} (${test.unit}): ${runs.join("; ")}`);
  }
}

/** Results of {@linkcode measureFileWrites}. */
interface FileResults {
  tests: WriteTest[];
  timings: Map<WriteTest, Timings>;
  aio: string;
  overhead: number;
}

async function measureFileWrites(dir: string, wrap: BenchWrap): Promise<FileResults> {
  const tests = writeTests(FILE_SIZE, wrap);
  const paths: Record<Tool, string> = {
    "qcowlab": `${dir}/write-qcowlab.qcow2`,
    "qemu-img": `${dir}/write-qemu.qcow2`,
  };
  await createFile("qemu-img", paths["qemu-img"]);
  const aio = await pickAio(paths["qemu-img"], true);
  const overhead = await qemuOverhead(paths["qemu-img"], aio);
  log(
    `Timing FileDevice writes (qemu-img -i ${aio}; its start, open and close take ` +
      `${(overhead * 1000).toFixed(1)} ms), an untimed round then ${RUNS} (figures per run):`,
  );
  const timings = new Map<WriteTest, Timings>(tests.map((t) => [t, new Map()]));
  let tag = 0;
  for (let round = 0; round <= RUNS; round++) {
    const tools: Tool[] = round % 2 === 0 ? ["qcowlab", "qemu-img"] : ["qemu-img", "qcowlab"];
    for (const test of tests) {
      const t = timings.get(test)!;
      for (const tool of tools) {
        const path = paths[tool];
        if (test.fresh) await createFile(tool, path);
        // Start each run with nothing left for the kernel to write back (deleted files included).
        await run("sync", []);
        if (tool === "qcowlab") {
          tag++;
          const image = await openImage(path, { readOnly: false, format: "qcow2", backing: false });
          const { writes, total } = await timeWrites(image, test, tag);
          await verifyFile(path, test, tag);
          if (round === 0) continue;
          record(t, "qcowlab", total);
          record(t, "qcowlab-writes", writes);
        } else {
          const { reported, wall } = await qemuImgBenchTimed(path, {
            requestSize: test.requestSize,
            count: test.offsets.length,
            aio,
            write: true,
            pattern: test.pattern,
          });
          if (round === 0) continue;
          record(t, "qemu-img", wall - overhead);
          record(t, "qemu-img-reported", reported);
        }
      }
    }
  }
  logRuns(tests, timings);
  return { tests, timings, aio, overhead };
}

/** Results of {@linkcode measureMemoryWrites}. */
interface MemoryResults {
  tests: WriteTest[];
  timings: Map<WriteTest, Timings>;
}

async function measureMemoryWrites(dir: string): Promise<MemoryResults> {
  const tests = writeTests(MEMORY_SIZE, "image");
  log(`Timing MemoryDevice writes, an untimed round then ${RUNS} (figures per run):`);
  const timings = new Map<WriteTest, Timings>(tests.map((t) => [t, new Map()]));
  let device = new MemoryDevice();
  let tag = 0;
  for (let round = 0; round <= RUNS; round++) {
    for (const test of tests) {
      if (test.fresh) {
        device = new MemoryDevice();
        await createQcow2(device, { size: MEMORY_SIZE, clusterSize: CLUSTER_SIZE });
      }
      tag++;
      const image = await Qcow2Image.open(device, { readOnly: false });
      const { writes, total } = await timeWrites(image, test, tag);
      // The bytes as a file, for qemu-img check and qemu-io (and qcowlab) to read back.
      const path = `${dir}/write-memory.qcow2`;
      await Deno.writeFile(path, device.toBytes());
      await verifyFile(path, test, tag);
      await Deno.remove(path);
      if (round === 0) continue;
      record(timings.get(test)!, "qcowlab", total);
      record(timings.get(test)!, "qcowlab-writes", writes);
    }
  }
  logRuns(tests, timings);
  return { tests, timings };
}

function printFile(results: FileResults, version: [number, number]): void {
  const { tests, timings, aio, overhead } = results;
  console.log(
    `\nFileDevice writes, ${FILE_SIZE / MiB} MiB qcow2 images (${CLUSTER_SIZE / KiB} KiB ` +
      `clusters, created by createQcow2 for qcowlab and qemu-img create for qemu-img), page ` +
      `cache on; median of ${RUNS} runs, each after sync`,
  );
  printTable(
    [
      "test",
      "unit",
      "qcowlab",
      "qemu-img",
      "ratio",
      "qcowlab before close",
      "qemu-img as printed",
      "ratio",
    ],
    tests.map((test) => {
      const t = timings.get(test)!;
      const [ours, theirs, oursWrites, theirsPrinted] = [
        "qcowlab",
        "qemu-img",
        "qcowlab-writes",
        "qemu-img-reported",
      ].map((key) => figure(test, median(t.get(key)!))) as [number, number, number, number];
      return [
        test.name,
        test.unit,
        formatFigure(ours),
        formatFigure(theirs),
        (ours / theirs).toFixed(2),
        formatFigure(oursWrites),
        formatFigure(theirsPrinted),
        (oursWrites / theirsPrinted).toFixed(2),
      ];
    }),
  );
  const v = version.join(".");
  console.log(
    [
      "  qcowlab: openImage(path, { readOnly: false }), one awaited write at a time, then close()",
      "    (its flush: dirty L2 tables and refcount blocks written, fdatasync); timed to the end",
      "    of close(). Every run then passes qemu-img check and sampled read-backs.",
      "  qemu-img: wall-clock time of the qemu-img bench process (queue depth 64) less " +
      `${(overhead * 1000).toFixed(1)} ms,`,
      "    the least wall-clock time beyond its printed time of a one-request run (start, open,",
      "    close); what is left includes the flush of data and metadata when the image closes.",
      `  as printed / before close: without that final flush (qemu-img ${v} prints its time`,
      "    before the final flush completes, even with --flush-interval).",
      "  Rounds alternate which tool goes first; each run starts after sync.",
    ].join("\n"),
  );
  for (const test of tests) {
    const args = benchArgs("IMAGE", {
      requestSize: test.requestSize,
      count: test.offsets.length,
      aio,
      write: true,
      pattern: test.pattern,
    });
    console.log(`  ${test.name}: qemu-img ${args.join(" ")}`);
  }
}

function printMemory(results: MemoryResults): void {
  console.log(
    `\nMemoryDevice writes, ${MEMORY_SIZE / MiB} MiB qcow2 image (createQcow2, then` +
      ` Qcow2Image.open(device, { readOnly: false })), same patterns; median of ${RUNS} runs`,
  );
  printTable(
    ["test", "unit", "qcowlab", "qcowlab before close"],
    results.tests.map((test) => {
      const t = results.timings.get(test)!;
      return [
        test.name,
        test.unit,
        formatFigure(figure(test, median(t.get("qcowlab")!))),
        formatFigure(figure(test, median(t.get("qcowlab-writes")!))),
      ];
    }),
  );
}

/**
 * Runs the write benchmark in `dir` (which it leaves as it found it) and returns a function that
 * prints its tables.
 *
 * @param dir A temporary directory with room for two 1 GiB images.
 * @param version The qemu-img version, from `qemuImgVersion` (bench/_qemu.ts).
 * @returns Prints the FileDevice and MemoryDevice tables to stdout.
 */
export async function writeBench(dir: string, version: [number, number]): Promise<() => void> {
  // Memory first: it also warms up the JIT for the write path.
  const memory = await measureMemoryWrites(dir);
  const file = await measureFileWrites(dir, benchWrap(version));
  for (const name of ["write-qcowlab.qcow2", "write-qemu.qcow2"]) {
    await removeIfPresent(`${dir}/${name}`);
  }
  return () => {
    printFile(file, version);
    printMemory(memory);
  };
}

if (import.meta.main) await runStandalone("write", writeBench);
