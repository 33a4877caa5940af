/**
 * `cli.ts vectors generate` and `cli.ts vectors verify`.
 *
 * @module
 */

import { equal, match } from "node:assert/strict";
import { main } from "../cli.ts";
import { captureIo as capture } from "./_cli.ts";

Deno.test("cli vectors: generate then verify a filtered corpus, human and JSON", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const gen = capture();
    const args = ["vectors", "generate", "--out", dir, "--filter", "qcow2-v3-cluster-4k,chain-v2"];
    equal(await main(args, gen), 0, gen.err);
    match(gen.out, /^2 vectors written to .*\ndigest [0-9a-f]{64}\n$/);
    match(gen.err, /\[2\/2\] chain-v2/);

    const human = capture();
    equal(await main(["vectors", "verify", dir], human), 0, human.out);
    match(human.out, /^vector +files +open +info +contents +check +repair +afterRepair\n/);
    match(human.out, /2 of 2 vectors pass with qcowlab\n$/);

    const json = capture();
    equal(await main(["vectors", "verify", "--output", "json", dir], json), 0);
    const report = JSON.parse(json.out) as { total: number; failed: number };
    equal(report.total, 2);
    equal(report.failed, 0);

    // A file changed on disk fails its vector, and the command.
    const path = `${dir}/chain-v2/top.qcow2`;
    const bytes = await Deno.readFile(path);
    bytes[0] = 0;
    await Deno.writeFile(path, bytes);
    const failed = capture();
    equal(await main(["vectors", "verify", dir], failed), 1);
    match(failed.out, /FAIL chain-v2 files: chain-v2\/top\.qcow2 differs from the manifest/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli vectors: bad arguments fail with one line and status 1", async () => {
  for (
    const args of [
      ["vectors", "frobnicate"],
      ["vectors", "verify"],
      ["vectors", "verify", "x", "--impl", "bochs"],
      ["vectors", "generate", "--filter", "no-such-vector", "--out", "/nonexistent/x"],
    ]
  ) {
    const io = capture();
    equal(await main(args, io), 1, args.join(" "));
    equal(io.err.trimEnd().split("\n").length, 1, io.err);
  }
  const help = capture();
  equal(await main(["vectors", "--help"], help), 0);
  match(help.out, /cli\.ts vectors generate/);
});
