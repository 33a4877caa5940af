import assert from "node:assert/strict";
import { main } from "../cli.ts";
import { generateWorkload } from "../emulator/workload.ts";

function capture(): {
  io: { stdout: (t: string) => void; stderr: (t: string) => void; terminal: boolean };
  out: () => string;
  err: () => string;
} {
  let out = "";
  let err = "";
  return {
    io: { stdout: (t) => void (out += t), stderr: (t) => void (err += t), terminal: false },
    out: () => out,
    err: () => err,
  };
}

Deno.test("cli.ts crash prints the summary table and exits 0 without violations", async () => {
  const c = capture();
  const status = await main(
    ["crash", "-o", "size=1M,cluster_size=4k", "--ops", "8", "--states", "40", "--torn"],
    c.io,
  );
  assert.equal(status, 0, c.err());
  assert.match(c.out(), /crash states +40 /);
  assert.match(c.out(), /\(d\) flushed data reads back exactly +40 \/ 40/);
  assert.match(c.out(), /violations +0 state/);
  assert.match(c.err(), /crash states: 100%/);
});

Deno.test("cli.ts crash --output json and --shard split the same states", async () => {
  const run = async (extra: string[]): Promise<Record<string, unknown>> => {
    const c = capture();
    const status = await main(
      [
        "crash",
        "-o",
        "size=1M,cluster_size=4k",
        "--ops",
        "6",
        "--states",
        "30",
        "--output",
        "json",
        ...extra,
      ],
      c.io,
    );
    assert.equal(status, 0, c.err());
    assert.equal(c.err(), "");
    return JSON.parse(c.out());
  };
  const whole = await run([]);
  const a = await run(["--shard", "0/2"]);
  const b = await run(["--shard", "1/2"]);
  assert.equal(whole.states, 30);
  assert.equal((a.states as number) + (b.states as number), 30);
});

Deno.test("cli.ts crash rejects bad options with one line", async () => {
  for (
    const [args, message] of [
      [["--shard", "2/2"], /Bad --shard/],
      [["--ops", "0"], /--ops expects a positive integer/],
      [["-o", "backing_file=x"], /not for crash exploration/],
      [
        ["--format", "qcow", "-o", "lazy_refcounts=on"],
        /Invalid parameter 'lazy_refcounts' for qcow/,
      ],
      [["--format", "qcow", "--snapshots"], /--snapshots needs --format qcow2/],
      [["--export", "x"], /--export needs --replay/],
    ] as const
  ) {
    const c = capture();
    assert.equal(await main(["crash", ...args], c.io), 1);
    assert.match(c.err(), message);
    assert.equal(c.err().trim().split("\n").length, 1, c.err());
  }
});

Deno.test("cli.ts crash runs a workload file and replays a reproducer", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const workload = generateWorkload({
      seed: 2,
      ops: 5,
      image: { size: 1 << 20, clusterSize: 4096 },
    });
    await Deno.writeTextFile(`${dir}/w.json`, JSON.stringify(workload));
    let c = capture();
    assert.equal(
      await main(["crash", "--workload", `${dir}/w.json`, "--states", "20"], c.io),
      0,
      c.err(),
    );
    assert.match(c.out(), /crash states +20 /);
    await Deno.writeTextFile(
      `${dir}/r.json`,
      JSON.stringify({
        version: 1,
        kind: "qcowlab-crash-reproducer",
        workload,
        crashStates: {},
        state: "4",
        failures: [],
      }),
    );
    c = capture();
    assert.equal(
      await main(["crash", "--replay", `${dir}/r.json`, "--export", `${dir}/x.qcow2`], c.io),
      0,
      c.err(),
    );
    assert.match(c.out(), /\(d\) flushed data reads back exactly: pass/);
    assert.ok((await Deno.stat(`${dir}/x.qcow2`)).size > 0);
    await Deno.writeTextFile(`${dir}/bad.json`, '{"version":1}');
    c = capture();
    assert.equal(await main(["crash", "--replay", `${dir}/bad.json`], c.io), 1);
    assert.match(c.err(), /Invalid reproducer: kind/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli.ts crash --faults runs the workloads over a fault injector", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(
      `${dir}/faults.json`,
      JSON.stringify({
        rules: [
          { kind: "inject-error", event: "l2_update", nth: 2, once: true },
          { kind: "inject-error", event: "refblock_update", nth: 3, once: true },
        ],
      }),
    );
    const c = capture();
    const status = await main(
      [
        "crash",
        "-o",
        "size=2M,cluster_size=4k",
        "--ops",
        "20",
        "--states",
        "120",
        "--faults",
        `${dir}/faults.json`,
      ],
      c.io,
    );
    assert.match(c.out(), /\(\d+ requests failed by injected faults\)/);
    assert.equal(status, 0, c.out());
    await Deno.writeTextFile(`${dir}/bad.json`, '{"rules":[{"kind":"bogus"}]}');
    const bad = capture();
    assert.equal(await main(["crash", "--faults", `${dir}/bad.json`], bad.io), 1);
    assert.match(bad.err(), /Invalid scenario: rules\.0\.kind/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli.ts crash --format qcow explores qcow images", async () => {
  const c = capture();
  const status = await main(
    ["crash", "-f", "qcow", "-o", "size=1M", "--ops", "20", "--states", "150", "--torn"],
    c.io,
  );
  assert.equal(status, 0, c.out() + c.err());
  assert.match(c.out(), /image +qcow v1, 1 MiB virtual, 4 KiB clusters, no refcounts/);
  assert.match(c.out(), /\(d\) flushed data reads back exactly +150 \/ 150/);
  assert.match(c.out(), /violations +0 state/);
});

Deno.test("cli.ts crash --snapshots judges snapshot requests (g)", async () => {
  const c = capture();
  const status = await main(
    [
      "crash",
      "-o",
      "size=1M,cluster_size=4k",
      "--ops",
      "40",
      "--seed",
      "3",
      "--states",
      "300",
      "--torn",
      "--snapshots",
      "--output",
      "json",
    ],
    c.io,
  );
  assert.equal(status, 0, c.out() + c.err());
  const result = JSON.parse(c.out());
  assert.equal(result.invariants.g.checked, 300);
  assert.equal(result.invariants.g.passed, 300);
  assert.equal(typeof result.allowedCopied, "number");
});
