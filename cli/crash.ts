/**
 * `cli.ts crash`: crash exploration of generated workloads, or the replay of a saved reproducer.
 *
 * @module
 */

import { formatSize } from "../core/format_size.ts";
import { parseSize } from "../core/parse_size.ts";
import { Progress } from "../core/progress.ts";
import { type CampaignResult, runCampaign } from "../emulator/explore_campaign.ts";
import { INVARIANT_TEXT, INVARIANTS } from "../emulator/invariants.ts";
import { parseReproducer, replayReproducer } from "../emulator/replay.ts";
import { workloadClusterSize, type WorkloadImage } from "../emulator/workload.ts";
import { parseWorkload } from "../emulator/workload_file.ts";
import type { RecordOptions } from "../emulator/workload_run.ts";
import { FaultyDevice } from "../emulator/faulty_device.ts";
import { loadScenario } from "../emulator/scenario.ts";
import {
  type CliCommand,
  type CliIo,
  fail,
  list,
  outputOption,
  parse,
  showHelp,
} from "./_common.ts";
import { imageOptions, keyValues } from "./_create_options.ts";

const HELP = `Usage: cli.ts crash [--format qcow2|qcow] [-o OPTIONS] [--ops N] [--seed S]
                    [--workloads K] [--states N] [--torn] [--in-order] [--snapshots] [--faults FILE]
                    [--workload FILE] [--output human|json] [--shard i/n] [--save FILE]
       cli.ts crash --replay FILE [--export PATH] [--output human|json]

Runs generated workloads (seeded random writes, zero writes, discards, compressed writes,
resizes, flushes and, with --snapshots, snapshot create/apply/delete) on an in-memory image, records every write and flush, and verifies the crash
states a disk could be left in: every prefix, subsets of the writes since the last flush (unless
--in-order) and torn writes (--torn). Each state is checked, opened (a dirty image is repaired),
read back and checked after repair, against the invariants:
${INVARIANTS.map((n) => `  (${n}) ${INVARIANT_TEXT[n]}`).join("\n")}

  -f, --format FMT     image format: qcow2 (default) or qcow
  -o OPTIONS           create options: size (default 64M), compat, cluster_size, refcount_bits,
                       lazy_refcounts, extended_l2, backing_size (a raw backing file of that size);
                       qcow takes size, cluster_size and backing_size only (it has no refcounts:
                       a crash may leak appended space, which (b) and (c) allow)
  --ops N              requests per workload (default 50)
  --seed S             seed of the first workload (default 1)
  --workloads K        number of workloads, seeds S, S+1, ... (default 1)
  --states N           crash states to verify in all shards together (default 2000)
  --torn               also torn writes (the first k sectors of a write persisted)
  --in-order           only in-order prefixes, no subsets of pending writes
  --snapshots          generated workloads also create, apply and delete internal snapshots
                       (qcow2); a crash inside one must leave the state before or after it (g)
  --faults FILE        a fault scenario (JSON rules, see emulator/README.md) applied to the
                       disk of every workload; failed requests count as neither done nor undone
  --workload FILE      run this workload (JSON) instead of generated ones
  --shard i/n          verify only shard i (from 0) of n: the same command with i = 0..n-1
                       splits a campaign across processes
  --save FILE          where to write the reproducer of a violation (default
                       crash-reproducer.json)
  --replay FILE        rerun a saved reproducer's crash state
  --export PATH        with --replay: write the crashed image (and backing.raw) for qemu-img
  --output FMT         human (default) or json

Long campaigns: deno run -A --v8-flags=--max-semi-space-size=2 cli.ts crash ... keeps the
process's memory under 256 MiB (V8's default young generation lets it reach about 300 MiB).

Exit status: 0 no violation, 2 violations found, 1 error.
`;

function parseShard(text: string): { index: number; count: number } {
  const match = /^(\d+)\/(\d+)$/.exec(text);
  const index = Number(match?.[1]);
  const count = Number(match?.[2]);
  if (!match || count < 1 || index >= count) fail(`Bad --shard '${text}': expected i/n with i < n`);
  return { index, count };
}

function positiveInteger(value: string | undefined, name: string, fallback: number): number {
  if (value === undefined) return fallback;
  if (!/^\d+$/.test(value) || Number(value) < 1 || !Number.isSafeInteger(Number(value))) {
    fail(`--${name} expects a positive integer, got '${value}'`);
  }
  return Number(value);
}

function imageFrom(format: string, options: string[]): WorkloadImage {
  if (format !== "qcow2" && format !== "qcow") {
    fail(`Unknown format '${format}' (expected qcow2 or qcow)`);
  }
  const pairs = keyValues(options);
  let backingSize: number | undefined;
  const rest = pairs.filter(([key, value]) => {
    if (key === "backing_size") backingSize = parseSize(value);
    else if (key === "backing_file" || key === "backing_fmt" || key === "preallocation") {
      fail(`Option '${key}' is not for crash exploration (use backing_size)`);
    } else if (format === "qcow" && key !== "size" && key !== "cluster_size") {
      fail(`Invalid parameter '${key}' for qcow (size, cluster_size and backing_size only)`);
    }
    return key !== "backing_size";
  });
  const parsed = imageOptions(rest, "qcow2");
  const image: WorkloadImage = {
    format,
    size: parsed.size ?? 64 * 1024 * 1024,
    ...parsed.qcow2 as Omit<WorkloadImage, "format" | "size">,
  };
  if (backingSize !== undefined) {
    if (backingSize % 512 !== 0 || backingSize > image.size) {
      fail("backing_size must be a multiple of 512 and not larger than the disk");
    }
    image.backingSize = backingSize;
  }
  return image;
}

function describeImage(image: WorkloadImage): string {
  const parts = [
    `${image.format} ${image.format === "qcow2" ? (image.compat === "0.10" ? "v2" : "v3") : "v1"}`,
    `${formatSize(image.size)} virtual`,
    `${formatSize(workloadClusterSize(image))} clusters`,
  ];
  if (image.refcountBits !== undefined) parts.push(`${image.refcountBits}-bit refcounts`);
  if (image.format === "qcow") parts.push("no refcounts (leaks allowed)");
  else parts.push(`lazy refcounts ${image.lazyRefcounts ? "on" : "off"}`);
  if (image.extendedL2) parts.push("extended L2");
  if (image.backingSize !== undefined) parts.push(`${formatSize(image.backingSize)} backing file`);
  return parts.join(", ");
}

/**
 * The summary table of a campaign, as `cli.ts crash` and the demo print it.
 *
 * @param result The campaign's result.
 * @param image The image it ran on.
 * @returns Lines of text, ending in a newline.
 */
export function formatCampaign(result: CampaignResult, image: WorkloadImage): string {
  const rows: string[] = [];
  rows.push(`image            ${describeImage(image)}`);
  rows.push(
    `workloads        ${result.workloads}` +
      (result.failedRequests > 0
        ? ` (${result.failedRequests} requests failed by injected faults)`
        : ""),
  );
  rows.push(
    `crash states     ${result.states} (observations reused for ${result.reused} of them)`,
  );
  rows.push("invariant                                                   passed / checked");
  for (const name of INVARIANTS) {
    const c = result.invariants[name];
    const label = `(${name}) ${INVARIANT_TEXT[name]}`.padEnd(58);
    rows.push(`  ${label}${String(c.passed).padStart(6)} / ${c.checked}`);
  }
  if (result.allowedCopied > 0) {
    rows.push(
      `  (b) passed by the documented exception in ${result.allowedCopied} state(s): only ` +
        "OFLAG_COPIED mismatches before repair,",
      "      in a snapshot operation's crash window (QEMU's write order leaves the same; " +
        "check -r all fixes them)",
    );
  }
  rows.push(`violations       ${result.violatingStates} state(s)`);
  rows.push(
    `speed            ${result.statesPerSecond.toFixed(1)} states/s (${
      result.seconds.toFixed(1)
    } s verifying)`,
  );
  for (const v of result.violations.slice(0, 5)) {
    rows.push(`  seed ${v.seed}, state ${v.stateId}:`);
    for (const f of v.failures) rows.push(`    (${f.invariant}) ${f.message}`);
  }
  return rows.join("\n") + "\n";
}

async function replay(
  path: string,
  exportPath: string | undefined,
  json: boolean,
  io: CliIo,
): Promise<number> {
  const reproducer = parseReproducer(await Deno.readTextFile(path));
  const result = await replayReproducer(
    reproducer,
    exportPath === undefined ? {} : { exportPath },
  );
  const failures = result.verdict.failures;
  if (json) {
    io.stdout(
      JSON.stringify(
        { state: reproducer.state, ...result.verdict, exported: result.exported },
        null,
        2,
      ) + "\n",
    );
  } else {
    io.stdout(
      `state ${reproducer.state} of a ${reproducer.workload.ops.length}-request workload\n`,
    );
    for (const name of INVARIANTS) {
      const r = result.verdict.results[name];
      io.stdout(
        `  (${name}) ${INVARIANT_TEXT[name]}: ${r === undefined ? "n/a" : r ? "pass" : "FAIL"}\n`,
      );
    }
    for (const f of failures) io.stdout(`  (${f.invariant}) ${f.message}\n`);
    for (const file of result.exported) io.stdout(`wrote ${file}\n`);
  }
  return failures.length > 0 ? 2 : 0;
}

const crashRun: CliCommand["run"] = async (args, io) => {
  const { values } = parse(args, {
    format: { type: "string", short: "f" },
    options: { type: "string", short: "o", multiple: true },
    ops: { type: "string" },
    seed: { type: "string" },
    workloads: { type: "string" },
    states: { type: "string" },
    torn: { type: "boolean" },
    "in-order": { type: "boolean" },
    snapshots: { type: "boolean" },
    faults: { type: "string" },
    workload: { type: "string" },
    output: { type: "string" },
    shard: { type: "string" },
    save: { type: "string" },
    replay: { type: "string" },
    export: { type: "string" },
  });
  if (values.help) return showHelp(HELP, io);
  const json = outputOption(values.output) === "json";
  if (typeof values.replay === "string") {
    return await replay(values.replay, values.export as string | undefined, json, io);
  }
  if (values.export !== undefined) fail("--export needs --replay");
  let record: RecordOptions | undefined;
  if (typeof values.faults === "string") {
    // Each workload gets a fresh fault injector; failed requests are recorded, not fatal.
    const { rules } = await loadScenario(values.faults);
    record = { wrap: (device) => new FaultyDevice(device, { rules }), tolerateErrors: true };
  }
  const workload = typeof values.workload === "string"
    ? parseWorkload(await Deno.readTextFile(values.workload))
    : undefined;
  const image = workload?.image ??
    imageFrom((values.format as string | undefined) ?? "qcow2", list(values.options));
  if (values.snapshots === true && image.format !== "qcow2") {
    fail("--snapshots needs --format qcow2 (qcow has no internal snapshots)");
  }
  const seed = values.seed === undefined ? 1 : Number(values.seed);
  if (!Number.isSafeInteger(seed)) fail(`--seed expects an integer, got '${values.seed}'`);
  const progress = new Progress(1, {
    label: "crash states",
    terminal: io.terminal,
    write: io.stderr,
    quiet: json,
  });
  let total = 1;
  const result = await runCampaign({
    image,
    ...(workload ? { workload } : {}),
    ops: positiveInteger(values.ops as string | undefined, "ops", 50),
    seed,
    workloads: positiveInteger(values.workloads as string | undefined, "workloads", 1),
    states: positiveInteger(values.states as string | undefined, "states", 2000),
    torn: values.torn === true,
    subsets: values["in-order"] !== true,
    snapshots: values.snapshots === true,
    ...(typeof values.shard === "string" ? { shard: parseShard(values.shard) } : {}),
    ...(record ? { record } : {}),
    onProgress: (done, all) => {
      if (all !== total) {
        total = all;
      }
      progress.update(all === 0 ? 1 : done / all);
    },
  });
  progress.done();
  let saved: string | undefined;
  if (result.reproducer) {
    saved = (values.save as string | undefined) ?? "crash-reproducer.json";
    await Deno.writeTextFile(saved, JSON.stringify(result.reproducer, null, 2) + "\n");
  }
  if (json) {
    const { reproducer: _, ...rest } = result;
    io.stdout(
      JSON.stringify({ image, ...rest, ...(saved ? { reproducer: saved } : {}) }, null, 2) + "\n",
    );
  } else {
    io.stdout(formatCampaign(result, image));
    if (saved) {
      io.stdout(
        `reproducer (${result.reproducer!.workload.ops.length} requests, state ${
          result.reproducer!.state
        }) ` +
          `saved to ${saved}; rerun with: cli.ts crash --replay ${saved}\n`,
      );
    }
  }
  return result.violatingStates > 0 ? 2 : 0;
};

/** `cli.ts crash`. */
export const crashCommand: CliCommand = {
  name: "crash",
  summary: "explore the crash states of random workloads and check the invariants",
  run: crashRun,
};
