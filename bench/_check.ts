/**
 * `checkQcow2` (no repair) against `qemu-img check` on fully allocated 4 GiB images, with the
 * page cache on. Part of `deno task bench`; on its own: `deno run -A bench/_check.ts` (well under a
 * minute; the images are sparse files holding only metadata, about 11 MiB on disk).
 *
 * The images come from `qemu-img create -o preallocation=metadata`: every cluster is allocated
 * (L1 and L2 tables and refcounts all written) but no guest data is, so the file stays sparse and
 * nothing has to write 4 GiB. A check reads metadata only, so it does exactly the work it would on
 * an image whose 4 GiB had all been written.
 *
 * qcowlab is timed in-process from `FileDevice.open` to the end of `close()`. `qemu-img check`
 * prints no time of its own, so it is timed from spawning the process until it exits, less a
 * baseline: the time of `qemu-img check` on a 1 MiB image with the same cluster size (starting
 * the process, opening the image, a trivial check), run just before it in each round; the figure
 * is the median of those differences. Before any timing, qcowlab's result
 * must equal the JSON `qemu-img check --output=json` prints for the same file.
 *
 * @module
 */

import { checkQcow2, type CheckResult, FileDevice } from "../mod.ts";
import { METADATA_IMAGE_SIZE, type MetadataCase, run, withMetadataImages } from "./_qemu.ts";
import { log, median, printTable, runStandalone } from "./_report.ts";

const KiB = 1024;
const GiB = 1024 * 1024 * KiB;
/** Timed rounds; untimed warm-up rounds come first. */
const RUNS = 15;
const WARMUP = 2;
/** Extra untimed qcowlab runs before the rounds, so that the JIT has settled. */
const JIT_WARMUP = 15;

/** Timings of one case, seconds per timed round. */
interface CaseResult {
  test: MetadataCase;
  totalClusters: number;
  /** The first qcowlab check of this image in the process (the JIT still cold for the first case). */
  first: number;
  qcowlab: number[];
  /** Wall-clock time of the full `qemu-img check` process. */
  qemuWall: number[];
  /** Wall-clock time of `qemu-img check` on the 1 MiB image, run just before `qemuWall`'s. */
  baseline: number[];
}

function checkArgs(path: string): string[] {
  return ["check", "-f", "qcow2", "--output=json", path];
}

async function qcowlabCheck(path: string): Promise<CheckResult> {
  await using device = FileDevice.open(path);
  return await checkQcow2(device, { filename: path });
}

async function timeQcowlab(path: string): Promise<number> {
  const start = performance.now();
  await qcowlabCheck(path);
  return (performance.now() - start) / 1000;
}

async function timeQemu(path: string): Promise<number> {
  const start = performance.now();
  await run("qemu-img", checkArgs(path));
  return (performance.now() - start) / 1000;
}

/** Fails unless qcowlab's result is exactly qemu-img's JSON (plus an empty `messages`). */
async function verify(test: MetadataCase): Promise<number> {
  const theirs = JSON.parse(await run("qemu-img", checkArgs(test.path))) as Record<string, unknown>;
  const { messages, ...ours } = await qcowlabCheck(test.path);
  const sorted = (o: Record<string, unknown>): string =>
    JSON.stringify(Object.fromEntries(Object.entries(o).sort(([a], [b]) => a.localeCompare(b))));
  if (messages.length > 0 || sorted(ours) !== sorted(theirs)) {
    throw new Error(
      `checkQcow2 and qemu-img check disagree on ${test.path}:\n  qcowlab  ${sorted(ours)} ${
        JSON.stringify(messages)
      }\n  qemu-img ${sorted(theirs)}`,
    );
  }
  if (ours["allocated-clusters"] !== ours["total-clusters"]) {
    throw new Error(`${test.path} is not fully allocated: ${sorted(ours)}`);
  }
  return ours["total-clusters"] ?? 0;
}

async function measure(test: MetadataCase): Promise<CaseResult> {
  const first = await timeQcowlab(test.path);
  const totalClusters = await verify(test);
  const result: CaseResult = {
    test,
    totalClusters,
    first,
    qcowlab: [],
    qemuWall: [],
    baseline: [],
  };
  for (let i = 0; i < JIT_WARMUP; i++) await timeQcowlab(test.path);
  for (let round = -WARMUP; round < RUNS; round++) {
    // Alternate which tool goes first.
    const order = round % 2 === 0 ? ["qcowlab", "qemu"] : ["qemu", "qcowlab"];
    for (const tool of order) {
      if (tool === "qcowlab") {
        const s = await timeQcowlab(test.path);
        if (round >= 0) result.qcowlab.push(s);
      } else {
        const b = await timeQemu(test.baselinePath);
        const s = await timeQemu(test.path);
        if (round >= 0) {
          result.baseline.push(b);
          result.qemuWall.push(s);
        }
      }
    }
  }
  const ms = (v: number[]): string => v.map((s) => (s * 1000).toFixed(0)).join("/");
  log(
    `  ${test.clusterSize / KiB} KiB clusters (ms): qcowlab first ${ms([first])}, then ` +
      `${ms(result.qcowlab)}; ` +
      `qemu-img ${ms(result.qemuWall)}; baseline ${ms(result.baseline)}`,
  );
  return result;
}

/**
 * Runs the check benchmark in `dir` (which it leaves as it found it) and returns a function that
 * prints its table.
 *
 * @param dir A temporary directory (the images take about 11 MiB of disk).
 * @returns Prints the table to stdout.
 */
export async function checkBench(dir: string): Promise<() => void> {
  log(
    `Timing checkQcow2 against qemu-img check, ${WARMUP} untimed then ${RUNS} rounds ` +
      `(figures per round):`,
  );
  const results = await withMetadataImages(dir, "check", measure);
  return () => printResults(results);
}

function printResults(results: CaseResult[]): void {
  console.log(
    `\ncheckQcow2 (no repair) on FileDevice vs qemu-img check, ` +
      `${METADATA_IMAGE_SIZE / GiB} GiB images fully allocated with qemu-img create -o ` +
      `preallocation=metadata (all L2 tables and refcounts written, no guest data, so the ` +
      `files are sparse); page cache warm; median of ${RUNS} rounds`,
  );
  const ms = (s: number): string => (s * 1000).toFixed(1);
  printTable(
    [
      "cluster size",
      "clusters",
      "qcowlab ms",
      "qemu-img ms",
      "ratio",
      "qemu-img wall ms",
      "baseline ms",
      "qcowlab 1st run ms",
    ],
    results.map((r) => {
      const ours = median(r.qcowlab);
      const wall = median(r.qemuWall);
      const base = median(r.baseline);
      const theirs = Math.max(median(r.qemuWall.map((w, i) => w - r.baseline[i]!)), 1e-6);
      return [
        `${r.test.clusterSize / KiB} KiB`,
        r.totalClusters.toLocaleString("en-US"),
        ms(ours),
        ms(theirs),
        (theirs / ours).toFixed(2),
        ms(wall),
        ms(base),
        ms(r.first),
      ];
    }),
  );
  console.log(
    [
      "  Before timing, checkQcow2's result equals qemu-img check --output=json on the same file.",
      "  qcowlab: FileDevice.open(path) + checkQcow2(device) + close, timed in-process after",
      `    ${JIT_WARMUP} untimed runs (JIT settled); 1st run: the first one on that image in the`,
      "    process (for the first row, with the JIT cold).",
      "  qemu-img: wall-clock time of the qemu-img check -f qcow2 --output=json process less the",
      "    baseline run just before it in the same round (the same command on a 1 MiB image with",
      "    the same cluster size: process start, open, trivial check); median of those differences.",
      "  qemu-img wall / baseline: medians of the raw process times.",
      "  ratio: qcowlab speed / qemu-img speed (qemu-img ms / qcowlab ms); >= 1 means qcowlab",
      "    is at least as fast.",
    ].join("\n"),
  );
}

if (import.meta.main) await runStandalone("check", checkBench);
