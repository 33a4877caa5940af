/**
 * The test-vector corpus: the whole catalog is generated into a temporary directory, its digest
 * compared with the one recorded in vectors/digest.json, and the corpus verified with qcowlab and,
 * where installed, with qemu-img (every disagreement with the manifest fails).
 *
 * @module
 */

import { deepStrictEqual, equal, match, ok, rejects } from "node:assert/strict";
import { QcowError } from "../core/errors.ts";
import { CATALOG } from "../vectors/catalog.ts";
import { generateVectors, type GenerateVectorsResult } from "../vectors/generate.ts";
import { parseManifest } from "../vectors/manifest.ts";
import { type VerifyReport, verifyVectors } from "../vectors/verify.ts";
import { HAVE_QEMU } from "./_qemu.ts";

const KiB = 1024;
const RECORDED = JSON.parse(
  await Deno.readTextFile(new URL("../vectors/digest.json", import.meta.url)),
) as { digest: string; vectors: number; seed: number };

let corpus: Promise<GenerateVectorsResult & { dir: string }> | undefined;

const CLI = new URL("../cli.ts", import.meta.url).pathname;

/** Runs `cli.ts` in a process of its own (so each run's memory is its own); returns its output. */
async function cli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decoder = new TextDecoder();
  return {
    code: output.code,
    stdout: decoder.decode(output.stdout),
    stderr: decoder.decode(output.stderr),
  };
}

/** The whole catalog, generated once for every test of this file, by the CLI. */
function generated(): Promise<GenerateVectorsResult & { dir: string }> {
  corpus ??= (async () => {
    const dir = await Deno.makeTempDir({ prefix: "qcowlab-vectors-" });
    const run = await cli("vectors", "generate", "-q", "--out", dir);
    if (run.code !== 0) throw new Error(`vectors generate failed: ${run.stderr}`);
    const digest = /^digest ([0-9a-f]{64})$/m.exec(run.stdout)?.[1];
    ok(digest, `no digest in: ${run.stdout}`);
    const manifest = parseManifest(await Deno.readTextFile(`${dir}/manifest.json`));
    return { dir, manifest, digest };
  })();
  return corpus;
}

/** `cli.ts vectors verify --output json` of the whole corpus. */
async function verifyWith(impl: "qcowlab" | "qemu-img"): Promise<VerifyReport> {
  const { dir } = await generated();
  const run = await cli("vectors", "verify", dir, "--impl", impl, "--output", "json");
  ok(run.stdout.startsWith("{"), `vectors verify failed (${run.code}): ${run.stderr}`);
  const report = JSON.parse(run.stdout) as VerifyReport;
  equal(run.code, report.failed === 0 ? 0 : 1);
  return report;
}

function failures(report: VerifyReport): string {
  return report.vectors.flatMap((v) =>
    v.expectations.filter((e) => e.status === "fail").map((e) => `${v.id} ${e.name}: ${e.detail}`)
  ).join("\n");
}

Deno.test("vectors: the catalog covers what issue 6 asks for", () => {
  ok(CATALOG.length >= 150, `only ${CATALOG.length} vectors`);
  const tops = CATALOG.map((v) => v.layers[v.layers.length - 1]!);
  const clusterSizes = new Set(tops.map((l) => l.create.clusterSize ?? 64 * KiB));
  for (let bits = 9; bits <= 21; bits++) {
    ok(clusterSizes.has(2 ** bits), `cluster size ${2 ** bits}`);
  }
  const widths = new Set(tops.map((l) => l.create.refcountBits ?? 16));
  for (const width of [1, 2, 4, 8, 16, 32, 64]) ok(widths.has(width), `refcount width ${width}`);
  ok(tops.some((l) => l.create.extendedL2), "extended L2");
  ok(tops.some((l) => l.create.compat === "0.10"), "version 2");
  ok(CATALOG.some((v) => v.layers.length >= 3), "a chain of three");
  ok(CATALOG.some((v) => v.layers[0]!.format === "raw"), "a raw base");
  ok(tops.some((l) => l.create.size > 2 ** 40), "a size above 2^40");
  const tags = new Set(CATALOG.flatMap((v) => v.tags));
  for (
    const tag of [
      "dirty",
      "corrupt-bit",
      "leak",
      "refcount-too-low",
      "copied-flag",
      "unaligned-entry",
      "out-of-range-entry",
      "into-metadata",
      "missing-refcount-table",
      "shared-cluster",
      "malformed-header",
      "compressed",
      "subclusters",
    ]
  ) ok(tags.has(tag), `a vector tagged ${tag}`);
  const steps = new Set<string>(
    CATALOG.flatMap((v) => v.layers.flatMap((l) => l.steps.map((s) => s.op))),
  );
  for (const op of ["write", "zero", "discard", "compressed", "resize", "scatter", "snapshot"]) {
    ok(steps.has(op), `a ${op} step`);
  }
  ok(CATALOG.filter((v) => v.tags.includes("malformed-header")).length >= 40);
});

Deno.test("vectors: the generated set has the digest recorded in vectors/digest.json", async () => {
  const { manifest, digest } = await generated();
  equal(manifest.vectors.length, RECORDED.vectors, "vector count");
  equal(manifest.seed, RECORDED.seed, "seed");
  equal(
    digest,
    RECORDED.digest,
    "The generated corpus changed. If that is intended, record the new digest in " +
      "vectors/digest.json in the same commit (`deno run -A cli.ts vectors generate -q --out DIR` " +
      "prints it).",
  );
});

Deno.test("vectors: generating twice gives byte-identical files", async () => {
  const filter = "chain-*,dirty-crash-*,qcow2-v3-scatter-*,qcow2-v3-all-compressed";
  const a = await Deno.makeTempDir();
  const b = await Deno.makeTempDir();
  try {
    const first = await generateVectors(a, { filter });
    const second = await generateVectors(b, { filter });
    ok(first.manifest.vectors.length >= 10);
    equal(first.digest, second.digest);
    for (const vector of first.manifest.vectors) {
      for (const file of vector.files) {
        deepStrictEqual(
          await Deno.readFile(`${a}/${file.path}`),
          await Deno.readFile(`${b}/${file.path}`),
        );
      }
    }
  } finally {
    await Deno.remove(a, { recursive: true });
    await Deno.remove(b, { recursive: true });
  }
});

Deno.test("vectors: qcowlab meets every expectation of the corpus", async () => {
  const { manifest } = await generated();
  const report = await verifyWith("qcowlab");
  equal(report.total, manifest.vectors.length);
  equal(report.failed, 0, failures(report));
});

Deno.test({
  name: HAVE_QEMU
    ? "vectors: qemu-img meets every expectation of the corpus"
    : "vectors: qemu-img meets every expectation of the corpus (skipped: no qemu-img)",
  ignore: !HAVE_QEMU,
  async fn() {
    const { manifest } = await generated();
    const report = await verifyWith("qemu-img");
    equal(report.total, manifest.vectors.length);
    equal(report.failed, 0, failures(report));
  },
});

Deno.test("vectors: the verifier fails a changed file and a wrong expectation", async () => {
  const { dir } = await generated();
  const copy = await Deno.makeTempDir();
  try {
    const ids = ["qcow2-v3-cluster-4k", "damaged-v3-leak-free-cluster"];
    const manifest = parseManifest(await Deno.readTextFile(`${dir}/manifest.json`));
    manifest.vectors = manifest.vectors.filter((v) => ids.includes(v.id));
    for (const vector of manifest.vectors) {
      await Deno.mkdir(`${copy}/${vector.id}`);
      for (const file of vector.files) {
        await Deno.copyFile(`${dir}/${file.path}`, `${copy}/${file.path}`);
      }
    }
    // One byte of the first image changed; one leak too many expected of the second.
    const image = `${copy}/${manifest.vectors[0]!.image}`;
    const bytes = await Deno.readFile(image);
    bytes[bytes.length - 1] = bytes[bytes.length - 1]! ^ 0xff;
    await Deno.writeFile(image, bytes);
    manifest.vectors[1]!.expect.check.leaks += 1;
    await Deno.writeTextFile(`${copy}/manifest.json`, JSON.stringify(manifest));

    const report = await verifyVectors(copy);
    equal(report.failed, 2);
    const [changed, wrong] = report.vectors;
    deepStrictEqual(changed!.expectations.map((e) => [e.name, e.status]), [["files", "fail"]]);
    const check = wrong!.expectations.find((e) => e.name === "check")!;
    equal(check.status, "fail");
    match(check.detail!, /leaks 2 != 1/);
  } finally {
    await Deno.remove(copy, { recursive: true });
  }
});

Deno.test("vectors: bad manifests and options are refused with QcowError codes", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await rejects(verifyVectors(dir), (e) => e instanceof QcowError && e.code === "NOT_FOUND");
    await Deno.writeTextFile(`${dir}/manifest.json`, "{");
    await rejects(
      verifyVectors(dir),
      (e) => e instanceof QcowError && e.code === "INVALID_ARGUMENT",
    );
    await Deno.writeTextFile(`${dir}/manifest.json`, JSON.stringify({ manifestVersion: 9 }));
    await rejects(verifyVectors(dir), /Invalid manifest/);
    await rejects(
      generateVectors(dir, { filter: "no-such-vector" }),
      (e) => e instanceof QcowError && e.code === "INVALID_ARGUMENT",
    );
    await rejects(
      verifyVectors(dir, { impl: "bochs" as "qemu-img" }),
      (e) => e instanceof QcowError && e.code === "INVALID_ARGUMENT",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("vectors: the corpus directory is removed after the run", async () => {
  if (corpus === undefined) return;
  const { dir } = await corpus;
  await Deno.remove(dir, { recursive: true });
  corpus = undefined;
  await rejects(Deno.stat(dir));
});
