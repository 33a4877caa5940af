/**
 * Running an external program (qemu-img, qemu-io) and collecting what it printed, for the code that
 * compares qcowlab with QEMU's tools.
 *
 * @module
 */

/** What a finished tool printed, and its exit status. */
export interface ToolRun {
  /** Exit status. */
  code: number;
  /** Standard output. */
  stdout: string;
  /** Standard error. */
  stderr: string;
}

const decoder = new TextDecoder();

/**
 * Runs a command in the C locale without standard input and returns its status and output, failed
 * or not.
 *
 * @example
 * ```ts ignore
 * import { runTool } from "./_run_tool.ts";
 *
 * const run = await runTool("qemu-img", ["--version"]);
 * console.log(run.code, run.stdout.startsWith("qemu-img version"));
 * ```
 *
 * @param command The program, such as `qemu-img`.
 * @param args Its arguments.
 * @param cwd The working directory; default the current one.
 * @returns Status and output.
 */
export async function runTool(command: string, args: string[], cwd?: string): Promise<ToolRun> {
  const output = await new Deno.Command(command, {
    args,
    ...(cwd === undefined ? {} : { cwd }),
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { LC_ALL: "C" },
  }).output();
  return {
    code: output.code,
    stdout: decoder.decode(output.stdout),
    stderr: decoder.decode(output.stderr),
  };
}
