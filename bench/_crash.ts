/**
 * The crash-exploration benchmark: crash states verified per second for a 64 MiB qcow2 image with
 * 64 KiB clusters and a 200-request workload, peak memory while verifying, and the speed-up of
 * splitting the same states over 2 processes with `cli.ts crash --shard i/2`.
 *
 * Run alone with `deno run -A bench/_crash.ts [MEMORY_STATES]` (default 20,000), or as part of
 * `deno task bench`.
 *
 * Memory is measured in a child process, twice: with V8's default heap sizing, and with
 * `--v8-flags=--max-semi-space-size=2`, the setting documented for long campaigns (the live heap
 * stays around 20 to 40 MiB; with the default young generation V8 lets garbage, and the 4 KiB
 * page buffers of crash-state devices it keeps alive, pile up to a few hundred MiB of RSS before
 * collecting it).
 *
 * @module
 */

import { cpuUsage } from "node:process";
import { runCampaign } from "../emulator/explore_campaign.ts";
import type { WorkloadImage } from "../emulator/workload.ts";
import { log, printTable } from "./_report.ts";

const MiB = 1024 * 1024;
const IMAGE: WorkloadImage = { format: "qcow2", size: 64 * MiB, clusterSize: 64 * 1024 };
const OPS = 200;
const TARGET = 1000;
const MEMORY_LIMIT = 256 * MiB;
/** A budget larger than any workload's state count: every state is verified. */
const ALL = 1_000_000;

interface CrashFigures {
  states: number;
  oneCore: number;
  perCpuSecond: number;
  reused: number;
  memoryStates: number;
  peakRss: number;
  peakRssTuned: number;
  oneProcessSeconds: number;
  twoProcessSeconds: number;
  shardStates: number[];
}

async function cliRun(states: number, shard: string | undefined): Promise<number> {
  // Same workload and states as the in-process run; the CLI also records it and starts Deno.
  const cli = new URL("../cli.ts", import.meta.url).pathname;
  const args = [
    "run",
    "-A",
    cli,
    "crash",
    "-o",
    "size=64M,cluster_size=64k",
    "--ops",
    String(OPS),
    "--states",
    String(states),
    "--torn",
    "--output",
    "json",
  ];
  if (shard) args.push("--shard", shard);
  const out = await new Deno.Command(Deno.execPath(), { args, stdout: "piped", stderr: "null" })
    .output();
  const text = new TextDecoder().decode(out.stdout);
  if (out.code !== 0 && out.code !== 2) throw new Error(`cli.ts crash exited ${out.code}`);
  return JSON.parse(text).states;
}

/** The V8 setting documented for long campaigns. */
const TUNED = "--v8-flags=--max-semi-space-size=2";

/** The campaign of the memory figure, run in this process; returns the peak RSS sampled. */
async function memoryCampaign(states: number, workloads: number): Promise<number> {
  let peak = Deno.memoryUsage().rss;
  await runCampaign({
    image: IMAGE,
    ops: OPS,
    workloads,
    states,
    torn: true,
    shrink: false,
    onProgress: (done) => {
      if (done % 100 === 0) peak = Math.max(peak, Deno.memoryUsage().rss);
    },
  });
  return Math.max(peak, Deno.memoryUsage().rss);
}

/** Runs {@linkcode memoryCampaign} in a fresh process with the given Deno flags. */
async function childPeak(states: number, workloads: number, flags: string[]): Promise<number> {
  const self = new URL(import.meta.url).pathname;
  const args = ["run", "-A", ...flags, self, "--memory-child", String(states), String(workloads)];
  const out = await new Deno.Command(Deno.execPath(), { args, stdout: "piped", stderr: "inherit" })
    .output();
  if (out.code !== 0) throw new Error(`the memory child exited ${out.code}`);
  return JSON.parse(new TextDecoder().decode(out.stdout)).peakRss;
}

async function measure(memoryStates: number): Promise<CrashFigures> {
  log(
    `Crash exploration: every state of a ${OPS}-request workload (torn writes, subsets, at most ` +
      `16 per crash point), 64 MiB, 64 KiB clusters`,
  );
  const cpu = cpuUsage();
  const first = await runCampaign({
    image: IMAGE,
    ops: OPS,
    states: ALL,
    torn: true,
    shrink: false,
  });
  const used = cpuUsage(cpu);
  const cpuSeconds = (used.user + used.system) / 1e6;
  const workloads = Math.ceil(memoryStates / first.states);
  log(`Peak memory while verifying ${memoryStates} states (default V8 flags)`);
  const peakRss = await childPeak(memoryStates, workloads, []);
  log(`Peak memory while verifying ${memoryStates} states (${TUNED})`);
  const peakRssTuned = await childPeak(memoryStates, workloads, [TUNED]);
  log("Scaling: the same states in 1 process, then split over 2 with --shard");
  let start = performance.now();
  await cliRun(ALL, undefined);
  const oneProcessSeconds = (performance.now() - start) / 1000;
  start = performance.now();
  const shardStates = await Promise.all([cliRun(ALL, "0/2"), cliRun(ALL, "1/2")]);
  const twoProcessSeconds = (performance.now() - start) / 1000;
  return {
    states: first.states,
    oneCore: first.statesPerSecond,
    perCpuSecond: first.states / cpuSeconds,
    reused: first.reused,
    memoryStates,
    peakRss,
    peakRssTuned,
    oneProcessSeconds,
    twoProcessSeconds,
    shardStates,
  };
}

function print(f: CrashFigures): void {
  console.log(
    `\nCrash exploration (64 MiB qcow2, 64 KiB clusters, ${OPS} requests, torn writes on)`,
  );
  printTable(["figure", "value", "target"], [
    [
      "states verified per second, one core",
      f.oneCore.toFixed(0),
      `${TARGET} (${f.oneCore >= TARGET ? "met" : "NOT met"})`,
    ],
    [
      "states per CPU second (recording included)",
      f.perCpuSecond.toFixed(0),
      "",
    ],
    ["observations reused", `${f.reused} of ${f.states}`, ""],
    [
      `peak RSS verifying ${f.memoryStates} states, default V8 flags`,
      `${(f.peakRss / MiB).toFixed(0)} MiB`,
      `${MEMORY_LIMIT / MiB} MiB (${f.peakRss < MEMORY_LIMIT ? "met" : "NOT met"})`,
    ],
    [
      `peak RSS verifying ${f.memoryStates} states, ${TUNED}`,
      `${(f.peakRssTuned / MiB).toFixed(0)} MiB`,
      `${MEMORY_LIMIT / MiB} MiB (${f.peakRssTuned < MEMORY_LIMIT ? "met" : "NOT met"})`,
    ],
    ["1 process (wall, incl. start and recording)", `${f.oneProcessSeconds.toFixed(1)} s`, ""],
    [
      `2 processes --shard i/2 (${f.shardStates.join(" + ")} states)`,
      `${f.twoProcessSeconds.toFixed(1)} s`,
      `speed-up ${(f.oneProcessSeconds / f.twoProcessSeconds).toFixed(2)}x`,
    ],
  ]);
}

/**
 * Runs the crash-exploration benchmark and returns a function printing its table.
 *
 * @param memoryStates States for the memory figure (100,000 takes several minutes).
 * @returns The printer.
 */
export async function crashBench(memoryStates = 20_000): Promise<() => void> {
  const figures = await measure(memoryStates);
  return () => print(figures);
}

if (import.meta.main) {
  if (Deno.args[0] === "--memory-child") {
    const peakRss = await memoryCampaign(Number(Deno.args[1]), Number(Deno.args[2]));
    console.log(JSON.stringify({ peakRss }));
  } else {
    const printer = await crashBench(Number(Deno.args[0] ?? 20_000));
    printer();
  }
}
