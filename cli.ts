/**
 * The qcowlab command line: `deno run -A cli.ts <command> [options]`.
 *
 * Every command takes `--help`; `cli.ts help` lists them. Errors go to stderr as one line, and
 * the exit status is non-zero. Each command lives in its own file under `cli/`.
 *
 * @example Running a command from code
 * ```ts
 * import { main } from "@qcowlab/qcowlab/cli";
 *
 * const path = await Deno.makeTempFile();
 * await Deno.writeFile(path, new Uint8Array(4096));
 * const status = await main(["info", "--output", "json", path]);
 * console.log(status); // 0
 * ```
 *
 * @module
 */

import { amendCommand } from "./cli/amend.ts";
import { compareCommand } from "./cli/compare.ts";
import { checkCommand } from "./cli/check.ts";
import { convertCommand } from "./cli/convert.ts";
import { crashCommand } from "./cli/crash.ts";
import { emulateCommand } from "./cli/emulate.ts";
import { createCommand } from "./cli/create.ts";
import { infoCommand } from "./cli/info.ts";
import { ioCommand } from "./cli/io.ts";
import { mapCommand } from "./cli/map.ts";
import { resizeCommand } from "./cli/resize.ts";
import { snapshotCommand } from "./cli/snapshot.ts";
import { vectorsCommand } from "./cli/vectors.ts";
import { type CliCommand, type CliIo, report } from "./cli/_common.ts";

export type { CliIo } from "./cli/_common.ts";

/** The commands, in the order the usage text lists them. */
const COMMANDS: readonly CliCommand[] = [
  infoCommand,
  mapCommand,
  checkCommand,
  amendCommand,
  createCommand,
  resizeCommand,
  convertCommand,
  compareCommand,
  crashCommand,
  emulateCommand,
  snapshotCommand,
  ioCommand,
  vectorsCommand,
];

const encoder = new TextEncoder();
const defaultIo: CliIo = {
  stdout: (text) => void Deno.stdout.writeSync(encoder.encode(text)),
  stderr: (text) => void Deno.stderr.writeSync(encoder.encode(text)),
  terminal: Deno.stderr.isTerminal(),
};

function usage(): string {
  const width = Math.max(...COMMANDS.map((c) => c.name.length)) + 2;
  const lines = COMMANDS.map((c) => `  ${c.name.padEnd(width)}${c.summary}`);
  return `qcowlab: emulate, inspect and check qcow disk images

Usage: deno run -A cli.ts <command> [options]

Commands:
${lines.join("\n")}

Run 'cli.ts <command> --help' for a command's options.
`;
}

/**
 * Runs one CLI command.
 *
 * @param args The arguments after `cli.ts`, starting with the command.
 * @param io Where output goes; defaults to the process's streams.
 * @returns The exit status.
 */
export async function main(args: string[], io: CliIo = defaultIo): Promise<number> {
  const [name, ...rest] = args;
  if (name === undefined || name === "help" || name === "--help" || name === "-h") {
    io.stdout(usage());
    return name === undefined ? 1 : 0;
  }
  const command = COMMANDS.find((c) => c.name === name);
  if (!command) {
    io.stderr(`qcowlab: unknown command '${name}'\n${usage()}`);
    return 1;
  }
  try {
    return await command.run(rest, io);
  } catch (error) {
    report(error, io);
    return 1;
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
