/**
 * Running `cli.ts` in-process from tests, with its output captured.
 *
 * @module
 */

import { main } from "../cli.ts";
import type { CliIo } from "../cli.ts";

/** A {@linkcode CliIo} that keeps what the CLI prints. */
export interface CapturedIo extends CliIo {
  /** Everything printed on stdout so far. */
  out: string;
  /** Everything printed on stderr so far. */
  err: string;
}

/** What a CLI run printed, and its exit status. */
export interface CliRun {
  status: number;
  out: string;
  err: string;
}

/**
 * An io object for `main` that collects stdout and stderr in its `out` and `err` fields.
 *
 * @param terminal What the CLI is told about stderr being a terminal; default false.
 * @returns The io object, empty.
 */
export function captureIo(terminal = false): CapturedIo {
  const io: CapturedIo = {
    out: "",
    err: "",
    terminal,
    stdout: (text) => void (io.out += text),
    stderr: (text) => void (io.err += text),
  };
  return io;
}

/**
 * Runs `cli.ts` in-process with the given arguments (stderr is not a terminal).
 *
 * @param args The arguments after `cli.ts`.
 * @returns Exit status and output.
 */
export async function runCli(args: string[]): Promise<CliRun> {
  const io = captureIo();
  const status = await main(args, io);
  return { status, out: io.out, err: io.err };
}
