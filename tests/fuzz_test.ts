/**
 * Seeded mutation fuzzing of the qcow2 reader: small valid images (made by qemu-img) are damaged
 * by bit flips, u32/u64 writes into header and metadata, byte fills and truncation, then opened,
 * inspected, mapped and read. Only QcowError may come out, and every case must finish.
 *
 * The cases run in workers so that a case stuck in a loop can be stopped and named.
 *
 * Environment:
 * - QCOWLAB_FUZZ_SEED: run seed (default below); every case derives from it and its index.
 * - QCOWLAB_FUZZ_CASES: number of cases (default 20,000).
 * - QCOWLAB_FUZZ_CASE: replay this one case in-process and print its mutations.
 */

import assert from "node:assert/strict";
import {
  describeMutation,
  type FuzzCase,
  FuzzFailure,
  makeCase,
  type Mutation,
  runCase,
  type Seed,
} from "./_fuzz.ts";
import { createQcow2 } from "./_qcow2_fixtures.ts";

const DEFAULT_SEED = 0x5eed2024;
const RUN_SEED = Number(Deno.env.get("QCOWLAB_FUZZ_SEED") ?? DEFAULT_SEED);
const CASES = Number(Deno.env.get("QCOWLAB_FUZZ_CASES") ?? 20_000);
const ONLY = Deno.env.get("QCOWLAB_FUZZ_CASE");
const WORKERS = Math.max(1, Math.min(2, navigator.hardwareConcurrency ?? 1));
/** A case silent for this long is reported as a hang and its worker stopped. */
const HANG_MS = 20_000;

async function buildSeeds(): Promise<Seed[]> {
  const dir = await Deno.makeTempDir({ prefix: "qcowlab-fuzz-" });
  try {
    const one = async (label: string, weight: number, spec: Parameters<typeof createQcow2>[2]) => ({
      label,
      weight,
      layers: [{ name: `${label}.qcow2`, bytes: await createQcow2(dir, `${label}.qcow2`, spec) }],
    });
    const seeds: Seed[] = [
      await one("v3-64k", 3, {
        size: "1M",
        io: [
          "write -P 0x11 0 64k",
          "write -z 128k 64k",
          "write -c -P 0x33 192k 64k",
          "write -c -P 0x44 256k 64k",
          "write -P 0x55 320k 64k",
        ],
      }),
      await one("v2-64k", 2, {
        size: "512k",
        compat: "0.10",
        io: ["write -P 1 0 64k", "write -c -P 2 64k 64k", "write -P 3 256k 4k"],
      }),
      await one("v3-512", 3, {
        size: "128k",
        clusterSize: 512,
        io: [
          "write -P 1 0 1k",
          "write -z 2k 1k",
          "write -c -P 3 4k 512",
          "write -c -P 4 4608 512",
          "write -P 5 40k 8k",
          "write -P 6 100k 512",
        ],
      }),
      await one("v2-512", 2, {
        size: "64k",
        compat: "0.10",
        clusterSize: 512,
        io: ["write -P 1 0 512", "write -c -P 2 1k 512", "write -P 3 33k 2k"],
      }),
      await one("v3-4k", 3, {
        size: "4M",
        clusterSize: 4096,
        io: [
          "write -P 1 0 8k",
          "write -c -P 2 16k 4k",
          "write -z 32k 4k",
          "write -P 3 2M 4k",
          "discard 4k 4k",
        ],
      }),
      await one("ext-64k", 3, {
        size: "1M",
        extendedL2: true,
        io: [
          "write -P 1 0 4k",
          "write -z 8k 4k",
          "write -P 2 64k 64k",
          "write -c -P 3 128k 64k",
          "write -P 4 200k 2k",
        ],
      }),
      await one("ext-16k", 2, {
        size: "256k",
        clusterSize: 16384,
        extendedL2: true,
        io: ["write -P 1 0 512", "write -P 2 1k 1k", "write -z 4k 2k", "write -c -P 3 16k 16k"],
      }),
      await one("v3-2m", 0.3, {
        size: "4M",
        clusterSize: 2 * 1024 * 1024,
        io: ["write -P 1 0 64k", "write -c -P 2 2M 2M"],
      }),
    ];

    const base = await createQcow2(dir, "base.qcow2", {
      size: "1M",
      io: ["write -P 0x0b 0 256k", "write -P 0x0c 512k 64k"],
    });
    const mid = await createQcow2(dir, "mid.qcow2", {
      size: "1M",
      compat: "0.10",
      clusterSize: 4096,
      backing: "base.qcow2",
      io: ["write -P 0x0d 64k 4k", "write -c -P 0x0e 128k 4k"],
    });
    const top = await createQcow2(dir, "top.qcow2", {
      size: "1M",
      clusterSize: 16384,
      extendedL2: true,
      backing: "mid.qcow2",
      io: ["write -P 0x0f 0 2k", "write -z 256k 16k", "write -P 0x10 600k 4k"],
    });
    seeds.push({
      label: "chain",
      weight: 3,
      layers: [
        { name: "top.qcow2", bytes: top },
        { name: "mid.qcow2", bytes: mid },
        { name: "base.qcow2", bytes: base },
      ],
    });

    const raw = new Uint8Array(256 * 1024).map((_, i) => (i * 7) & 0xff);
    await Deno.writeFile(`${dir}/base.raw`, raw);
    const overRaw = await createQcow2(dir, "over-raw.qcow2", {
      size: "320k",
      clusterSize: 512,
      backing: "base.raw",
      backingFormat: "raw",
      io: ["write -P 1 512 512", "write -c -P 2 64k 512"],
    });
    seeds.push({
      label: "raw-chain",
      weight: 1,
      layers: [{ name: "over-raw.qcow2", bytes: overRaw }, { name: "base.raw", bytes: raw }],
    });
    return seeds;
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const SEEDS = await buildSeeds();

function seedOf(fuzzCase: FuzzCase): Seed {
  return SEEDS.find((s) => s.label === fuzzCase.seed)!;
}

function describeCase(fuzzCase: FuzzCase): string {
  return [
    `case ${fuzzCase.index} of seed ${RUN_SEED} (0x${
      RUN_SEED.toString(16)
    }), image ${fuzzCase.seed}, ` +
    `chunk ${fuzzCase.chunk}, l2CacheSize ${fuzzCase.l2CacheSize ?? "default"}:`,
    ...fuzzCase.mutations.map((m) => `  ${describeMutation(m)}`),
    `replay: QCOWLAB_FUZZ_SEED=${RUN_SEED} QCOWLAB_FUZZ_CASE=${fuzzCase.index} deno test -A tests/fuzz_test.ts`,
  ].join("\n");
}

Deno.test("fuzz: every seed image reads cleanly before mutation", async () => {
  for (const seed of SEEDS) {
    const fuzzCase: FuzzCase = {
      index: -1,
      seed: seed.label,
      mutations: [],
      chunk: 65536,
      probes: [],
    };
    const outcome = await runCase(seed, fuzzCase);
    assert.deepEqual(outcome.codes, [], `${seed.label} fails unmutated`);
  }
});

/**
 * Bugs the fuzzer found (the slow case) and divergences from QEMU that comparing mutated images
 * with `qemu-img convert` found, kept as fixed cases: each must end with the given error codes
 * (all of them, in any order; none means it must read cleanly).
 */
const REGRESSIONS: {
  name: string;
  seed: string;
  mutations: Mutation[];
  codes: string[];
}[] = [
  {
    name: "a bad 2 MiB compressed cluster is inflated once, not once per 4 KiB read",
    seed: "v3-2m",
    mutations: [{ op: "u64", layer: 0, at: 0x800000, hi: 0x739a0000, lo: 0x00a00a0a }],
    codes: ["BAD_COMPRESSED_DATA"],
  },
  {
    name: "a zero flag in a version 2 L2 entry is corruption",
    seed: "v2-64k",
    mutations: [{ op: "u64", layer: 0, at: 0x40028, hi: 0, lo: 1 }],
    codes: ["CORRUPT_METADATA"],
  },
  {
    name: "an unaligned snapshot table offset that rounds to an aligned number is refused",
    seed: "v3-64k",
    mutations: [{ op: "u64", layer: 0, at: 0x40, hi: 0x40000000, lo: 0x557e019d }],
    codes: ["BAD_TABLE"],
  },
  {
    name: "an unaligned snapshot table offset is refused with no snapshots",
    seed: "v3-64k",
    mutations: [{ op: "u64", layer: 0, at: 0x40, hi: 0, lo: 0x72801 }],
    codes: ["BAD_TABLE"],
  },
  {
    name: "a snapshot entry with too much extra data is refused",
    seed: "v3-512",
    mutations: [{ op: "u32", layer: 0, at: 0x3c, value: 0x20 }],
    codes: ["BAD_TABLE"],
  },
  {
    name: "the raw external data bit without a data file is refused",
    seed: "v3-64k",
    mutations: [{ op: "u32", layer: 0, at: 0x5c, value: 0x7fff }],
    codes: ["BAD_HEADER"],
  },
  {
    name: "a compressed stream cut by the end of the file reads on as zeros",
    seed: "ext-16k",
    mutations: [{ op: "truncate", layer: 0, length: 98333 }],
    codes: [],
  },
];

for (const regression of REGRESSIONS) {
  Deno.test(`fuzz: regression: ${regression.name}`, async () => {
    const fuzzCase: FuzzCase = {
      index: -1,
      seed: regression.seed,
      mutations: regression.mutations,
      chunk: 4096,
      probes: [0.5, 0.25, 0.75],
    };
    const outcome = await runCase(seedOf(fuzzCase), fuzzCase);
    assert.deepEqual([...new Set(outcome.codes)].sort(), [...regression.codes].sort());
  });
}

interface WorkerReport {
  cases: number;
  codes: Record<string, number>;
  slowest: { index: number; ms: number };
}

type Message =
  | { type: "start"; index: number }
  | { type: "failure"; index: number; message: string }
  | ({ type: "done" } & WorkerReport);

function runWorker(first: number, stride: number, failures: string[]): Promise<WorkerReport> {
  const worker = new Worker(new URL("./_fuzz_worker.ts", import.meta.url).href, { type: "module" });
  return new Promise<WorkerReport>((resolve) => {
    let current = -1;
    let since = performance.now();
    const finish = (report: WorkerReport) => {
      clearInterval(watchdog);
      worker.terminate();
      resolve(report);
    };
    const watchdog = setInterval(() => {
      if (performance.now() - since > HANG_MS) {
        failures.push(
          `HANG (no progress for ${HANG_MS} ms)\n${
            describeCase(makeCase(SEEDS, RUN_SEED, current))
          }`,
        );
        finish({ cases: 0, codes: {}, slowest: { index: current, ms: HANG_MS } });
      }
    }, 500);
    worker.onmessage = (event: MessageEvent<Message>) => {
      const message = event.data;
      if (message.type === "start") {
        current = message.index;
        since = performance.now();
      } else if (message.type === "failure") {
        failures.push(
          `${message.message}\n${describeCase(makeCase(SEEDS, RUN_SEED, message.index))}`,
        );
      } else {
        finish(message);
      }
    };
    worker.onerror = (event: ErrorEvent) => {
      event.preventDefault();
      failures.push(
        `worker error during case ${current}: ${event.message}\n${
          current >= 0 ? describeCase(makeCase(SEEDS, RUN_SEED, current)) : ""
        }`,
      );
      finish({ cases: 0, codes: {}, slowest: { index: current, ms: 0 } });
    };
    worker.postMessage({ seeds: SEEDS, runSeed: RUN_SEED, first, end: CASES, stride });
  });
}

if (ONLY !== undefined) {
  Deno.test(`fuzz: replay case ${ONLY}`, async () => {
    const fuzzCase = makeCase(SEEDS, RUN_SEED, Number(ONLY));
    console.log(describeCase(fuzzCase));
    try {
      const outcome = await runCase(seedOf(fuzzCase), fuzzCase);
      console.log("outcome:", outcome.codes.length === 0 ? "ok" : outcome.codes.join(", "));
    } catch (error) {
      if (error instanceof FuzzFailure) console.error(error.message);
      throw error;
    }
  });
} else {
  Deno.test(`fuzz: ${CASES} mutated images fail only with QcowError and never hang`, async () => {
    const failures: string[] = [];
    const started = performance.now();
    const reports = await Promise.all(
      Array.from({ length: WORKERS }, (_, w) => runWorker(w, WORKERS, failures)),
    );
    const seconds = (performance.now() - started) / 1000;
    const cases = reports.reduce((sum, r) => sum + r.cases, 0);
    const codes: Record<string, number> = {};
    for (const report of reports) {
      for (const [code, n] of Object.entries(report.codes)) codes[code] = (codes[code] ?? 0) + n;
    }
    const slowest = reports.reduce((a, b) => (b.slowest.ms > a.slowest.ms ? b : a)).slowest;
    console.log(
      `fuzz seed 0x${RUN_SEED.toString(16)}: ${cases} cases in ${
        seconds.toFixed(1)
      } s on ${WORKERS} ` +
        `worker(s); slowest case ${slowest.index} took ${slowest.ms.toFixed(0)} ms`,
    );
    console.log(
      "first outcome per case:",
      Object.entries(codes).sort((a, b) => b[1] - a[1]).map(([c, n]) => `${c} ${n}`).join(", "),
    );
    if (failures.length > 0) {
      assert.fail(`${failures.length} failing case(s):\n\n${failures.slice(0, 10).join("\n\n")}`);
    }
    assert.equal(cases, CASES);
  });
}
