/**
 * Internal snapshot create and delete against `qemu-img snapshot -c` and `-d` on fully allocated
 * 4 GiB images, with the page cache on. Part of `deno task bench`; on its own: `deno run -A
 * bench/_snapshot.ts` (about a minute; the images are sparse files holding only metadata).
 *
 * The images come from `qemu-img create -o preallocation=metadata`: every cluster is allocated
 * (L1 and L2 tables and refcounts all written) but no guest data is, so the file stays sparse. A
 * snapshot create or delete touches metadata only (it raises or drops the refcount of every
 * cluster and rewrites the L2 tables' COPIED flags), so it does exactly the work it would on an
 * image whose 4 GiB had all been written.
 *
 * qcowlab is timed in-process from `FileDevice.open` to the end of `close()` (open, operation,
 * close, as one `qemu-img snapshot` run does). `qemu-img snapshot` is timed from spawning the
 * process until it exits, less a baseline: the same command on a 1 MiB image with the same
 * cluster size (process start, open, a trivial snapshot), run just before it in each round; the
 * figure is the median of those differences. Each round creates and then deletes one snapshot
 * with each tool, so the image is the same at the start of every operation of its kind. qcowlab
 * is also shown net of its own run on the 1 MiB image (measured like qemu-img's figure), and both
 * tools' CPU time (user + system) is shown, which a loaded machine disturbs far less. Before
 * any timing, a snapshot made by qcowlab must pass `qemu-img check` and read back through
 * `qemu-img snapshot -l`.
 *
 * @module
 */

import process from "node:process";
import { FileDevice, Qcow2Image } from "../mod.ts";
import { METADATA_IMAGE_SIZE, type MetadataCase, run, withMetadataImages } from "./_qemu.ts";
import { log, median, printTable, runStandalone } from "./_report.ts";

const KiB = 1024;
const GiB = 1024 * 1024 * KiB;
/** Timed rounds; untimed warm-up rounds come first. */
const RUNS = 7;
const WARMUP = 2;
const NAME = "bench";

type Op = "create" | "delete";

/** Seconds per timed round, by tool and operation (wall clock, and CPU time). */
interface CaseResult {
  test: MetadataCase;
  qcowlab: Record<Op, number[]>;
  qemuWall: Record<Op, number[]>;
  baseline: Record<Op, number[]>;
  qcowlabCpu: Record<Op, number[]>;
  /** qcowlab on the 1 MiB image, just before each timed run (as qemu-img's baseline). */
  qcowlabBaseline: Record<Op, number[]>;
  qemuCpu: Record<Op, number[]>;
  baselineCpu: Record<Op, number[]>;
}

/** A timing: wall-clock and CPU (user + system) seconds. */
interface Timing {
  wall: number;
  cpu: number;
}

function cpuSeconds(): number {
  const usage = process.cpuUsage();
  return (usage.user + usage.system) / 1e6;
}

async function timeQcowlab(path: string, op: Op): Promise<Timing> {
  const start = performance.now();
  const cpu = cpuSeconds();
  {
    await using device = FileDevice.open(path, { readOnly: false });
    await using image = await Qcow2Image.open(device, { readOnly: false });
    if (op === "create") await image.createSnapshot(NAME);
    else await image.deleteSnapshot(NAME, { match: "name" });
  }
  return { wall: (performance.now() - start) / 1000, cpu: cpuSeconds() - cpu };
}

/** Runs qemu-img under /usr/bin/time, which reports its CPU time (user + system). */
async function timeQemu(path: string, op: Op): Promise<Timing> {
  const start = performance.now();
  const args = ["snapshot", op === "create" ? "-c" : "-d", NAME, path];
  const output = await new Deno.Command("/usr/bin/time", {
    args: ["-f", "cpu %U %S", "qemu-img", ...args],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { LC_ALL: "C" },
  }).output();
  const wall = (performance.now() - start) / 1000;
  const stderr = new TextDecoder().decode(output.stderr);
  const match = /cpu ([\d.]+) ([\d.]+)\s*$/.exec(stderr);
  if (!output.success || !match) throw new Error(`qemu-img ${args.join(" ")} failed: ${stderr}`);
  return { wall, cpu: Number(match[1]) + Number(match[2]) };
}

/** Fails unless qemu-img finds qcowlab's snapshot sound and lists it. */
async function verify(test: MetadataCase): Promise<void> {
  await run("/usr/bin/time", ["-f", "%U", "true"]); // fails early without GNU time
  await timeQcowlab(test.path, "create");
  await run("qemu-img", ["check", "-q", test.path]);
  const listing = await run("qemu-img", ["snapshot", "-l", test.path]);
  if (!listing.includes(` ${NAME} `)) throw new Error(`qemu-img does not list the snapshot`);
  await timeQcowlab(test.path, "delete");
  await run("qemu-img", ["check", "-q", test.path]);
}

async function measure(test: MetadataCase): Promise<CaseResult> {
  await verify(test);
  const empty = (): Record<Op, number[]> => ({ create: [], delete: [] });
  const result: CaseResult = {
    test,
    qcowlab: empty(),
    qemuWall: empty(),
    baseline: empty(),
    qcowlabCpu: empty(),
    qcowlabBaseline: empty(),
    qemuCpu: empty(),
    baselineCpu: empty(),
  };
  for (let round = -WARMUP; round < RUNS; round++) {
    const order = round % 2 === 0 ? ["qcowlab", "qemu"] : ["qemu", "qcowlab"];
    for (const tool of order) {
      for (const op of ["create", "delete"] as const) {
        if (tool === "qcowlab") {
          const b = await timeQcowlab(test.baselinePath, op);
          const s = await timeQcowlab(test.path, op);
          if (round >= 0) {
            result.qcowlabBaseline[op].push(b.wall);
            result.qcowlab[op].push(s.wall);
            result.qcowlabCpu[op].push(s.cpu);
          }
        } else {
          const b = await timeQemu(test.baselinePath, op);
          const s = await timeQemu(test.path, op);
          if (round >= 0) {
            result.baseline[op].push(b.wall);
            result.qemuWall[op].push(s.wall);
            result.baselineCpu[op].push(b.cpu);
            result.qemuCpu[op].push(s.cpu);
          }
        }
      }
    }
  }
  const ms = (v: number[]): string => v.map((s) => (s * 1000).toFixed(0)).join("/");
  for (const op of ["create", "delete"] as const) {
    log(
      `  ${test.clusterSize / KiB} KiB clusters, ${op} (ms): qcowlab ${ms(result.qcowlab[op])} ` +
        `(CPU ${ms(result.qcowlabCpu[op])}); qemu-img ${ms(result.qemuWall[op])} ` +
        `(CPU ${ms(result.qemuCpu[op])}); baseline ${ms(result.baseline[op])} ` +
        `(CPU ${ms(result.baselineCpu[op])})`,
    );
  }
  return result;
}

/**
 * Runs the snapshot benchmark in `dir` (which it leaves as it found it) and returns a function
 * that prints its table.
 *
 * @param dir A temporary directory (the images take about 11 MiB of disk).
 * @returns Prints the table to stdout.
 */
export async function snapshotBench(dir: string): Promise<() => void> {
  log(
    `Timing snapshot create and delete against qemu-img snapshot, ${WARMUP} untimed then ` +
      `${RUNS} rounds (figures per round):`,
  );
  const results = await withMetadataImages(dir, "snapshot", measure);
  return () => printResults(results);
}

function printResults(results: CaseResult[]): void {
  console.log(
    `\nSnapshot create and delete on FileDevice vs qemu-img snapshot -c / -d, ` +
      `${METADATA_IMAGE_SIZE / GiB} GiB images fully allocated with qemu-img create -o ` +
      `preallocation=metadata; page cache warm; median of ${RUNS} rounds`,
  );
  const ms = (s: number): string => (s * 1000).toFixed(1);
  const rows: string[][] = [];
  for (const r of results) {
    for (const op of ["create", "delete"] as const) {
      const ours = median(r.qcowlab[op]);
      const theirs = Math.max(
        median(r.qemuWall[op].map((w, i) => w - r.baseline[op][i]!)),
        1e-6,
      );
      const oursCpu = Math.max(median(r.qcowlabCpu[op]), 1e-6);
      const oursNet = Math.max(
        median(r.qcowlab[op].map((w, i) => w - r.qcowlabBaseline[op][i]!)),
        1e-6,
      );
      const theirsCpu = median(r.qemuCpu[op].map((c, i) => c - r.baselineCpu[op][i]!));
      rows.push([
        `${r.test.clusterSize / KiB} KiB`,
        op,
        ms(ours),
        ms(theirs),
        (theirs / ours).toFixed(2),
        ms(oursNet),
        (theirs / oursNet).toFixed(2),
        ms(oursCpu),
        ms(theirsCpu),
        (theirsCpu / oursCpu).toFixed(2),
        ms(median(r.qemuWall[op])),
        ms(median(r.baseline[op])),
      ]);
    }
  }
  printTable(
    [
      "cluster size",
      "operation",
      "qcowlab ms",
      "qemu-img ms",
      "ratio",
      "qcowlab net ms",
      "net ratio",
      "qcowlab CPU ms",
      "qemu-img CPU ms",
      "CPU ratio",
      "qemu-img wall ms",
      "baseline ms",
    ],
    rows,
  );
  console.log(
    [
      "  Before timing, a qcowlab snapshot passes qemu-img check and is listed by qemu-img.",
      "  qcowlab: FileDevice.open + Qcow2Image.open + createSnapshot/deleteSnapshot + close,",
      "    timed in-process.",
      "  qemu-img: wall-clock time of qemu-img snapshot -c/-d less the baseline run just before",
      "    it in the same round (the same command on a 1 MiB image with the same cluster size);",
      "    median of those differences.",
      "  ratio: qemu-img ms / qcowlab ms; >= 1 means qcowlab is at least as fast.",
      "  qcowlab net: qcowlab's time less its own run of the same operation on the 1 MiB image",
      "    just before (the fixed cost of an operation: open, header and table writes, fsyncs,",
      "    close), measured the way qemu-img's figure is; net ratio: qemu-img ms / qcowlab net ms.",
      "  CPU: user + system time, qcowlab's from process.cpuUsage() around the same span,",
      "    qemu-img's from /usr/bin/time less its baseline run's; steadier than wall clock on a",
      "    loaded machine (CPU time at 10 ms granularity for qemu-img).",
    ].join("\n"),
  );
}

if (import.meta.main) await runStandalone("snapshot", snapshotBench);
