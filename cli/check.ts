/**
 * `cli.ts check`: a qcow2 image's metadata checked (and repaired), as qemu-img check does.
 *
 * @module
 */

import { FileDevice } from "../core/file_device.ts";
import { probeFormat } from "../drivers/probe.ts";
import { checkExitStatus, checkQcow2, formatCheckReport } from "../drivers/qcow2/check.ts";
import {
  type CliCommand,
  fail,
  formatOption,
  onePath,
  outputOption,
  parse,
  showHelp,
} from "./_common.ts";
import { runQcowCheck } from "./_qcow.ts";

const HELP = `Usage: cli.ts check [-f FMT] [-r leaks|all] [--output human|json] [-q] FILE

Checks a qcow2 image's metadata the way qemu-img check does: rebuilds the refcounts from every
reference and compares them with the stored ones, and checks COPIED flags and table offsets.
  -r leaks             free leaked clusters
  -r all               repair everything it can, rebuilding the refcount structure if needed
  --output FORMAT      human (default) or json, with qemu-img's field names
  -q, --quiet          print no report (human output)
Exit status: 0 clean, 1 the check failed, 2 corruptions, 3 leaks (after -r: the state after
repair), 63 for formats without checks (raw).
`;

const checkRun: CliCommand["run"] = async (args, io) => {
  const { values, positionals } = parse(args, {
    format: { type: "string", short: "f" },
    output: { type: "string" },
    repair: { type: "string", short: "r" },
    quiet: { type: "boolean", short: "q" },
  });
  if (values.help) return showHelp(HELP, io);
  const output = outputOption(values.output);
  const repair = values.repair ?? "none";
  if (repair !== "none" && repair !== "leaks" && repair !== "all") {
    fail(`Unknown option for -r: '${String(repair)}' (expected leaks or all)`);
  }
  const path = onePath(positionals, "image");
  await using device = FileDevice.open(path, { readOnly: repair === "none" });
  const format = formatOption(values.format) ?? await probeFormat(device);
  if (format === "qcow") {
    // qemu-img has no check for qcow (it exits 63); this one goes beyond it, and repairs nothing.
    if (repair !== "none") fail("qcow images have no refcounts: there is nothing to repair");
    return await runQcowCheck(path, output, io);
  }
  if (format !== "qcow2") {
    io.stderr(`qcowlab: This image format does not support checks\n`);
    return 63;
  }
  const result = await checkQcow2(device, { repair, filename: path });
  for (const line of result.messages) io.stderr(`${line}\n`);
  const status = checkExitStatus(result);
  if (!values.quiet || output === "json") io.stdout(formatCheckReport(result, output));
  if (status === 1) {
    io.stderr(`qcowlab: Check failed${result.failure ? `: ${result.failure}` : ""}\n`);
  }
  return status;
};

/** `cli.ts check`. */
export const checkCommand: CliCommand = {
  name: "check",
  summary: "check (and repair) a qcow2 image's metadata (like qemu-img check)",
  run: checkRun,
};
