import assert from "node:assert/strict";
import { runCli as run } from "./_cli.ts";
import { HAVE_QEMU, makeTempDir, qemuImg, qemuIo } from "./_qemu.ts";

function qemuCheck(args: string[]): { status: number; out: string } {
  const output = new Deno.Command("qemu-img", {
    args: ["check", ...args],
    stdout: "piped",
    stderr: "null",
  })
    .outputSync();
  return { status: output.code, out: new TextDecoder().decode(output.stdout) };
}

/** Sets the 16-bit refcount of cluster `index` in the first refcount block. */
async function setRefcount(path: string, index: number, value: number): Promise<void> {
  const bytes = await Deno.readFile(path);
  const view = new DataView(bytes.buffer);
  const table = Number(view.getBigUint64(48));
  const block = Number(view.getBigUint64(table));
  view.setUint16(block + index * 2, value);
  await Deno.writeFile(path, bytes);
}

Deno.test({
  name: "cli check prints what qemu-img check prints and exits as it does, before and after -r all",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    const image = `${dir.path}/img.qcow2`;
    await qemuImg("create", "-q", "-f", "qcow2", image, "4M");
    await qemuIo(image, ["write -P 1 0 200k", "write -P 2 1M 64k"]);

    const clean = await run(["check", image]);
    assert.equal(clean.status, 0);
    assert.equal(clean.out, qemuCheck([image]).out);

    await setRefcount(image, 9, 1); // a leak past the data
    await setRefcount(image, 5, 0); // a used cluster without a refcount
    for (const output of ["human", "json"]) {
      const ours = await run(["check", "--output", output, image]);
      const theirs = qemuCheck(["--output", output, image]);
      assert.equal(ours.status, theirs.status);
      assert.equal(ours.out, theirs.out);
    }
    assert.equal((await run(["check", image])).status, 2);
    assert.match((await run(["check", image])).err, /ERROR cluster 5 refcount=0 reference=1/);

    const repaired = await run(["check", "-r", "all", image]);
    assert.equal(repaired.status, 0, repaired.err);
    assert.match(repaired.out, /Double checking the fixed image now/);
    assert.equal(qemuCheck([image]).status, 0);
  },
});

Deno.test("cli check refuses raw images with qemu-img's status 63 and bad -r values", async () => {
  await using dir = await makeTempDir();
  const raw = `${dir.path}/disk.raw`;
  await Deno.writeFile(raw, new Uint8Array(4096));
  const result = await run(["check", raw]);
  assert.equal(result.status, 63);
  assert.match(result.err, /does not support checks/);
  const bad = await run(["check", "-r", "everything", raw]);
  assert.equal(bad.status, 1);
  assert.match(bad.err, /^qcowlab: Unknown option for -r/);
});
