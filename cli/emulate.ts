/**
 * `cli.ts emulate`: a workload or a fault scenario run against a fault-injecting device.
 *
 * @module
 */

import { FileDevice } from "../core/file_device.ts";
import { isQcowError, QcowError } from "../core/errors.ts";
import { MemoryDevice } from "../core/memory_device.ts";
import type { BlockDevice } from "../core/block_device.ts";
import { readU32 } from "../core/bytes.ts";
import type { Image } from "../drivers/image.ts";
import { openImage } from "../drivers/open_image.ts";
import { checkQcow2 } from "../drivers/qcow2/check.ts";
import type { CheckResult } from "../drivers/qcow2/check_report.ts";
import { FaultyDevice } from "../emulator/faulty_device.ts";
import type { FaultRule } from "../emulator/fault_rule.ts";
import { loadScenario, parseFaultRules } from "../emulator/scenario.ts";
import {
  type CliCommand,
  fail,
  formatOption,
  list,
  onePath,
  outputOption,
  parse,
  showHelp,
} from "./_common.ts";
import { type IoCommand, parseIoCommand } from "./io.ts";

const HELP = `Usage: cli.ts emulate [-f FMT] [-s SCENARIO] [--rule JSON ...] [-c COMMAND ...]
                      [--in-place] [--output human|json] FILE

Runs qemu-io style commands (the scenario's workload, then every -c COMMAND) on FILE through a
fault-injecting device, and reports what each request returned, which faults fired, and the
state of the image afterwards: qemu-img check's counts and the dirty and corrupt bits.
  -f, --format FMT       the image's format (raw, qcow or qcow2); probed when omitted
  -s, --scenario FILE    a JSON scenario: { "rules": [...], "workload": ["write 0 64k", ...] }
      --rule JSON        one more fault rule, such as
                         '{"kind":"inject-error","event":"l2_update","once":true}'
  -c, --cmd COMMAND      read, write, discard, flush, truncate, as for \`cli.ts io\`
      --in-place         change FILE itself (default: work on a copy in memory)
      --output FMT       human (default) or json
Rule kinds (see emulator/README.md): io-error, disk-full, inject-error, set-state, latency.
Exit status: 0 when every request succeeded and the image has no corruption, 1 when some request
failed but the image has no corruption, 2 when the image is corrupt or cannot be checked.
`;

/** What one request returned. */
interface RequestResult {
  command: string;
  ok: boolean;
  code?: string;
  message?: string;
}

async function runRequest(image: Image, command: IoCommand): Promise<void> {
  const { offset, length } = command;
  switch (command.name) {
    case "read": {
      const buffer = new Uint8Array(Math.min(length, 1 << 22));
      for (let done = 0; done < length; done += buffer.length) {
        const part = buffer.subarray(0, Math.min(buffer.length, length - done));
        await image.read(part, offset + done);
        if (command.pattern !== undefined) {
          const i = part.findIndex((byte) => byte !== command.pattern);
          if (i >= 0) {
            throw new QcowError(
              "INVALID_ARGUMENT",
              `Pattern verification failed at offset ${offset + done + i}`,
            );
          }
        }
      }
      return;
    }
    case "write": {
      if (command.zero) return image.writeZeroes(offset, length, { mayUnmap: command.unmap });
      const data = new Uint8Array(length).fill(command.pattern ?? 0xcd);
      if (command.compressed) return image.writeCompressed(data, offset);
      return image.write(data, offset);
    }
    case "discard":
      return image.discard(offset, length);
    case "flush":
      return image.flush();
    case "truncate":
      return image.resize(length, { shrink: true });
  }
}

/** The dirty and corrupt bits of a version 3 qcow2 header (false for anything else). */
async function headerBits(device: BlockDevice): Promise<{ dirty: boolean; corrupt: boolean }> {
  if (device.size < 80) return { dirty: false, corrupt: false };
  const head = new Uint8Array(80);
  await device.read(head, 0);
  const qcow2 = readU32(head, 0) === 0x514649fb && readU32(head, 4) >= 3;
  const low = readU32(head, 76);
  return { dirty: qcow2 && (low & 1) !== 0, corrupt: qcow2 && (low & 2) !== 0 };
}

const emulateRun: CliCommand["run"] = async (args, io) => {
  const { values, positionals } = parse(args, {
    format: { type: "string", short: "f" },
    scenario: { type: "string", short: "s" },
    rule: { type: "string", multiple: true },
    cmd: { type: "string", short: "c", multiple: true },
    "in-place": { type: "boolean" },
    output: { type: "string" },
  });
  if (values.help) return showHelp(HELP, io);
  const path = onePath(positionals, "image");
  const output = outputOption(values.output);
  const format = formatOption(values.format);
  const rules: FaultRule[] = [];
  const texts: string[] = [];
  if (typeof values.scenario === "string") {
    const scenario = await loadScenario(values.scenario);
    rules.push(...scenario.rules);
    texts.push(...(scenario.workload ?? []));
  }
  for (const text of list(values.rule)) {
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      throw new QcowError("INVALID_SCENARIO", `--rule is not JSON: ${text}`);
    }
    rules.push(...parseFaultRules([value]));
  }
  texts.push(...list(values.cmd));
  // Every command is parsed before the image is touched.
  const commands = texts.map((text) => ({ text, command: parseIoCommand(text) }));
  if (commands.length === 0) fail("Expected a workload: -c COMMAND or a scenario with one");

  const inPlace = values["in-place"] === true;
  const storage: BlockDevice = inPlace
    ? FileDevice.open(path, { readOnly: false })
    : MemoryDevice.from(await readImage(path), { name: path });
  const faulty = new FaultyDevice(storage, { rules });
  const results: RequestResult[] = [];
  let opened: RequestResult = { command: "open", ok: true };
  let image: Image | undefined;
  try {
    image = await openImage(faulty, { readOnly: false, ...(format ? { format } : {}) });
  } catch (error) {
    if (!isQcowError(error)) throw error;
    opened = { command: "open", ok: false, code: error.code, message: error.message };
  }
  let closed: RequestResult = { command: "close", ok: true };
  if (image) {
    for (const { text, command } of commands) {
      try {
        await runRequest(image, command);
        results.push({ command: text, ok: true });
      } catch (error) {
        if (!isQcowError(error)) throw error;
        results.push({ command: text, ok: false, code: error.code, message: error.message });
      }
    }
    try {
      await image.close();
    } catch (error) {
      if (!isQcowError(error)) throw error;
      closed = { command: "close", ok: false, code: error.code, message: error.message };
    }
  }
  const stats = faulty.stats;
  // The state after: checked without faults, on what the storage holds now.
  let check: CheckResult | undefined;
  let checkFailure: string | undefined;
  const bits = await headerBits(storage);
  try {
    check = await checkQcow2(storage, { filename: path });
  } catch (error) {
    if (!isQcowError(error)) throw error;
    checkFailure = error.message;
  }
  await storage.close();

  const requests = [opened, ...results, ...(image ? [closed] : [])];
  const failed = requests.some((r) => !r.ok);
  const broken = checkFailure !== undefined || (check?.corruptions ?? 0) > 0 ||
    (check?.["check-errors"] ?? 0) > 0 || bits.corrupt;
  if (output === "json") {
    io.stdout(
      JSON.stringify(
        {
          filename: path,
          "in-place": inPlace,
          requests,
          faults: stats.faults,
          io: stats.io,
          events: stats.events,
          state: stats.state,
          image: {
            dirty: bits.dirty,
            corrupt: bits.corrupt,
            ...(check
              ? {
                corruptions: check.corruptions ?? 0,
                leaks: check.leaks ?? 0,
                "check-errors": check["check-errors"],
              }
              : { "check-failure": checkFailure }),
          },
        },
        null,
        2,
      ) + "\n",
    );
  } else {
    const lines: string[] = [];
    lines.push(
      `${path} (${inPlace ? "in place" : "copy in memory"}), ${rules.length} fault rule(s)`,
    );
    requests.forEach((r, i) => {
      lines.push(
        `${String(i).padStart(3)} ${r.command}: ${r.ok ? "ok" : `${r.code}: ${r.message}`}`,
      );
    });
    lines.push(`faults injected: ${stats.faults.length}`);
    for (const f of stats.faults) {
      lines.push(
        `  ${f.name}: ${f.errno} on ${f.io} at ${f.offset} (${f.length} bytes)` +
          (f.event ? ` after ${f.event}` : "") + (f.persisted ? `, ${f.persisted} bytes torn` : ""),
      );
    }
    const io_ = stats.io;
    const eventCount = Object.values(stats.events).reduce((a, b) => a + b, 0);
    lines.push(
      `device I/O: ${io_.read} reads, ${io_.write} writes, ${io_.flush} flushes, ` +
        `${io_.truncate} truncates; ${eventCount} driver events`,
    );
    const checked = check
      ? `${check.corruptions ?? 0} corruptions, ${check.leaks ?? 0} leaked clusters, ` +
        `${check["check-errors"]} check errors`
      : `check failed: ${checkFailure}`;
    lines.push(
      `image after: ${checked}; dirty ${bits.dirty ? "yes" : "no"}, corrupt ${
        bits.corrupt ? "yes" : "no"
      }`,
    );
    io.stdout(lines.join("\n") + "\n");
  }
  return broken ? 2 : failed ? 1 : 0;
};

async function readImage(path: string): Promise<Uint8Array> {
  try {
    return await Deno.readFile(path);
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) {
      throw new QcowError("NOT_FOUND", `Could not open '${path}': No such file or directory`);
    }
    throw new QcowError("IO", `Could not read '${path}': ${(error as Error).message}`);
  }
}

/** `cli.ts emulate`. */
export const emulateCommand: CliCommand = {
  name: "emulate",
  summary: "run a workload or fault scenario through a fault-injecting device",
  run: emulateRun,
};
