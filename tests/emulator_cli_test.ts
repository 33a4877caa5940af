import assert from "node:assert/strict";
import { main } from "../cli.ts";
import { captureIo as capture } from "./_cli.ts";
import { HAVE_QEMU, makeTempDir, runTool } from "./_qemu.ts";

Deno.test("emulate runs a scenario file and reports requests, faults and the image after", async () => {
  await using dir = await makeTempDir();
  const image = `${dir.path}/disk.qcow2`;
  assert.equal(await main(["create", "-o", "cluster_size=4k", image, "64M"], capture()), 0);
  const before = await Deno.readFile(image);
  const scenario = `${dir.path}/scenario.json`;
  await Deno.writeTextFile(
    scenario,
    JSON.stringify({
      rules: [
        { kind: "set-state", event: "l1_update", state: 1, newState: 2 },
        { kind: "inject-error", event: "l2_update", state: 2, once: true, name: "second table" },
      ],
      workload: ["write -P 0xab 0 64k", "write -P 0xcd 32M 4k", "flush", "read -P 0xab 0 64k"],
    }),
  );
  const io = capture();
  const status = await main(["emulate", "-s", scenario, "--output", "json", image], io);
  const report = JSON.parse(io.out);
  assert.deepEqual(
    report.requests.map((r: { command: string; ok: boolean }) => [r.command, r.ok]),
    [
      ["open", true],
      ["write -P 0xab 0 64k", true],
      ["write -P 0xcd 32M 4k", false],
      ["flush", true],
      ["read -P 0xab 0 64k", true],
      ["close", true],
    ],
  );
  // The first write's L1 update moves to state 2, so the second write's new L2 table fails.
  assert.equal(report.requests[2].code, "IO");
  assert.match(report.requests[2].message, /second table \(armed by l2_update\)/);
  assert.equal(report.faults.length, 1);
  assert.equal(report.state, 2);
  assert.equal(report.image.corruptions, 0);
  assert.equal(report.image.corrupt, false);
  assert.equal(status, 1);
  // Without --in-place the file is left alone.
  assert.deepEqual(await Deno.readFile(image), before);
});

Deno.test({
  name: "emulate --in-place leaves an image whose qemu-img check matches the report",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    const image = `${dir.path}/disk.qcow2`;
    assert.equal(await main(["create", "-o", "cluster_size=4k", image, "64M"], capture()), 0);
    const io = capture();
    const status = await main([
      "emulate",
      "--in-place",
      "--output",
      "json",
      "--rule",
      '{"kind":"inject-error","event":"l2_update","nth":2,"once":true}',
      "-c",
      "write 0 8k",
      "-c",
      "write 16M 8k",
      "-c",
      "flush",
      image,
    ], io);
    const report = JSON.parse(io.out);
    assert.equal(report.faults.length, 1);
    assert.equal(status, 1);
    const qemu = await runTool("qemu-img", ["check", "--output", "json", image]);
    const theirs = JSON.parse(qemu.stdout);
    assert.equal(theirs.corruptions ?? 0, report.image.corruptions);
    assert.equal(theirs.leaks ?? 0, report.image.leaks);
  },
});

Deno.test("emulate refuses a bad scenario, naming the field, before touching the image", async () => {
  await using dir = await makeTempDir();
  const image = `${dir.path}/disk.qcow2`;
  assert.equal(await main(["create", image, "1M"], capture()), 0);
  const scenario = `${dir.path}/bad.json`;
  await Deno.writeTextFile(scenario, '{ "rules": [{ "kind": "io-error", "errno": "EPERM" }] }');
  const io = capture();
  assert.equal(await main(["emulate", "-s", scenario, "-c", "flush", image], io), 1);
  assert.match(io.err, /rules\.0\.errno/);
  const human = capture();
  assert.equal(await main(["emulate", "-c", "write 0 4k", image], human), 0);
  assert.match(human.out, /1 write 0 4k: ok/);
  assert.match(human.out, /image after: 0 corruptions, 0 leaked clusters/);
});
