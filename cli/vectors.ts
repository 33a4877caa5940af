/**
 * `cli.ts vectors`: generate the test-vector corpus, or verify one against qcowlab or qemu-img.
 *
 * @module
 */

import { generateVectors } from "../vectors/generate.ts";
import { type VerifyReport, verifyVectors } from "../vectors/verify.ts";
import { type CliCommand, type CliIo, fail, outputOption, parse, showHelp } from "./_common.ts";

const HELP = `Usage: cli.ts vectors generate [--out DIR] [--filter GLOB] [-q]
       cli.ts vectors verify DIR [--impl qcowlab|qemu-img] [--filter GLOB] [--output human|json]

generate  builds the catalog's test vectors into DIR (default: vectors-out), one directory per
          vector, and writes DIR/manifest.json with every file's sha256 and what a conforming
          implementation must do with each image (open, info, contents, check, repair).
          Prints the digest of the whole set (the sha256 of manifest.json).
verify    holds an implementation against a generated corpus: qcowlab's drivers (default), or
          qemu-img and qemu-io. Prints a table of pass/fail per vector and per expectation.
  --out DIR            where generate writes
  --filter GLOB        only vectors whose id matches (* and ?, comma-separated alternatives)
  --impl IMPL          qcowlab (default) or qemu-img
  --output FORMAT      human (default) or json
  -q, --quiet          generate: print only the digest
Exit status: 0 when every expectation holds, 1 otherwise.
`;

const COLUMNS = ["files", "open", "info", "contents", "check", "repair", "afterRepair"];

function table(report: VerifyReport): string {
  const width = Math.max(6, ...report.vectors.map((v) => v.id.length)) + 2;
  const lines = [`${"vector".padEnd(width)}${COLUMNS.map((c) => c.padEnd(12)).join("")}`.trimEnd()];
  const notes: string[] = [];
  for (const vector of report.vectors) {
    const cells = COLUMNS.map((name) => {
      const e = vector.expectations.find((x) => x.name === name);
      return (e?.status ?? "-").padEnd(12);
    });
    lines.push(`${vector.id.padEnd(width)}${cells.join("")}`.trimEnd());
    for (const e of vector.expectations) {
      if (e.status === "fail") notes.push(`FAIL ${vector.id} ${e.name}: ${e.detail ?? ""}`);
    }
  }
  lines.push(
    "",
    ...notes,
    `${report.total - report.failed} of ${report.total} vectors pass with ${report.impl}`,
  );
  return lines.join("\n") + "\n";
}

async function generate(args: string[], io: CliIo): Promise<number> {
  const { values, positionals } = parse(args, {
    out: { type: "string" },
    filter: { type: "string" },
    quiet: { type: "boolean", short: "q" },
  });
  if (values.help) return showHelp(HELP, io);
  if (positionals.length > 0) fail(`Unexpected argument '${positionals[0]}'`);
  const out = typeof values.out === "string" ? values.out : "vectors-out";
  const options: Parameters<typeof generateVectors>[1] = {};
  if (typeof values.filter === "string") options.filter = values.filter;
  if (!values.quiet) {
    options.onVector = (id, index, total) => io.stderr(`[${index + 1}/${total}] ${id}\n`);
  }
  const { manifest, digest } = await generateVectors(out, options);
  if (!values.quiet) io.stdout(`${manifest.vectors.length} vectors written to ${out}\n`);
  io.stdout(`digest ${digest}\n`);
  return 0;
}

async function verify(args: string[], io: CliIo): Promise<number> {
  const { values, positionals } = parse(args, {
    impl: { type: "string" },
    filter: { type: "string" },
    output: { type: "string" },
  });
  if (values.help) return showHelp(HELP, io);
  if (positionals.length !== 1) fail(`Expected one corpus directory, got ${positionals.length}`);
  const impl = values.impl ?? "qcowlab";
  if (impl !== "qcowlab" && impl !== "qemu-img") {
    fail(`--impl must be qcowlab or qemu-img, not '${String(impl)}'`);
  }
  const output = outputOption(values.output);
  const options: Parameters<typeof verifyVectors>[1] = { impl };
  if (typeof values.filter === "string") options.filter = values.filter;
  const report = await verifyVectors(positionals[0]!, options);
  io.stdout(output === "json" ? JSON.stringify(report, null, 2) + "\n" : table(report));
  return report.failed === 0 ? 0 : 1;
}

const vectorsRun: CliCommand["run"] = async (args, io) => {
  const [sub, ...rest] = args;
  if (sub === undefined || sub === "--help" || sub === "-h" || sub === "help") {
    return showHelp(HELP, io);
  }
  if (sub === "generate") return await generate(rest, io);
  if (sub === "verify") return await verify(rest, io);
  fail(`Unknown vectors command '${sub}' (expected generate or verify)`);
};

/** `cli.ts vectors`. */
export const vectorsCommand: CliCommand = {
  name: "vectors",
  summary: "generate the test-vector corpus, or verify it (qcowlab or qemu-img)",
  run: vectorsRun,
};
