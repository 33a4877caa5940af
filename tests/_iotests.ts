/**
 * Helpers for the tests that re-express QEMU's iotests (039, 060, 061, 108) with qcowlab's CLI as
 * the actor and qemu-img as the judge.
 *
 * @module
 */

import assert from "node:assert/strict";
import { type CliRun, runCli } from "./_cli.ts";
import { firstDifference, qemuInfo, runTool, type ToolRun } from "./_qemu.ts";

export type { CliRun } from "./_cli.ts";

/**
 * Runs `cli.ts` in-process with the given arguments.
 *
 * @param args The arguments after `cli.ts`.
 * @returns Exit status and output.
 */
export function qcowlab(...args: string[]): Promise<CliRun> {
  return runCli(args);
}

/**
 * Runs `qemu-io` on a qcow2 image with one `-c` per command and a last `sigraise 9`: the process
 * dies with everything it wrote so far but nothing a clean close would write.
 *
 * @param path The image.
 * @param commands The commands before the crash.
 */
export async function crashQemuIo(path: string, commands: string[]): Promise<void> {
  const args = ["-f", "qcow2"];
  for (const command of [...commands, "sigraise 9"]) args.push("-c", command);
  const run = await runTool("qemu-io", [...args, path]);
  assert.equal(run.code, 137, `qemu-io was to be killed: ${run.stderr}`);
}

/**
 * `qemu-img check` with JSON output.
 *
 * @param path The image.
 * @param repair Optional `-r` mode.
 * @returns Its exit status and report.
 */
export async function qemuCheck(
  path: string,
  repair?: "leaks" | "all",
): Promise<{ code: number; report: Record<string, unknown>; run: ToolRun }> {
  const args = ["check", "-f", "qcow2", "--output=json", ...(repair ? ["-r", repair] : []), path];
  const run = await runTool("qemu-img", args);
  const json = run.stdout.slice(run.stdout.indexOf("{"));
  return { code: run.code, report: json ? JSON.parse(json) : {}, run };
}

/** qemu-img check's verdict on a clean image: status 0, nothing leaked or corrupt. */
export async function assertQemuClean(path: string): Promise<void> {
  const { code, report, run } = await qemuCheck(path);
  assert.equal(code, 0, `qemu-img check: ${run.stdout}${run.stderr}`);
  assert.equal(report.leaks, undefined);
  assert.equal(report.corruptions, undefined);
  assert.equal(report["check-errors"], 0);
}

/** The incompatible feature bits of a qcow2 image file (0 for version 2). */
export async function incompatibleBits(path: string): Promise<bigint> {
  const head = new Uint8Array(104);
  using file = await Deno.open(path);
  await file.read(head);
  const view = new DataView(head.buffer);
  return view.getUint32(4) < 3 ? 0n : view.getBigUint64(72);
}

/** Writes `bytes` into a file at `offset`. */
export async function poke(path: string, offset: number, bytes: number[]): Promise<void> {
  using file = await Deno.open(path, { write: true });
  await file.seek(offset, Deno.SeekMode.Start);
  await file.write(new Uint8Array(bytes));
}

/** A big-endian 64-bit value as 8 bytes. */
export function be64(value: number | bigint): number[] {
  const bytes = new Uint8Array(8);
  new DataView(bytes.buffer).setBigUint64(0, BigInt(value));
  return [...bytes];
}

/** The value of a qemu-img info JSON key for an image. */
export async function qemuInfoField(path: string, key: string): Promise<unknown> {
  const run = await runTool("qemu-img", ["info", "-f", "qcow2", "--output=json", path]);
  assert.equal(run.code, 0, run.stderr);
  return JSON.parse(run.stdout)[key];
}

/** qemu-img info's fields that must agree (not the file name or the space it takes). */
function infoFields(info: Record<string, unknown>): Record<string, unknown> {
  const { filename: _f, "actual-size": _a, "backing-filename": _b, ...rest } = info;
  delete rest["full-backing-filename"];
  return rest;
}

/**
 * Runs `qemu-img compare` on two qcow2 images (formats given, not probed).
 *
 * @param a One image.
 * @param b The other.
 * @returns Status (0 when their contents are the same) and output.
 */
export function qemuCompareQcow2(a: string, b: string): Promise<ToolRun> {
  return runTool("qemu-img", ["compare", "-f", "qcow2", "-F", "qcow2", a, b]);
}

/** The two amended copies. */
export interface Outcome {
  /** Both exit statuses and messages agreed, and the amended images were compared. */
  ours: string;
  theirs: string;
}

/**
 * Amends copies of `source` with `cli.ts amend` and `qemu-img amend`, and compares: exit status,
 * error message, and on success qemu-img info, a clean qemu-img check of ours, the virtual
 * contents, and the header cluster (or the whole file when `identical`).
 */
export async function compareAmend(
  dir: string,
  source: string,
  options: string,
  expect: { identical?: boolean; header?: boolean; fails?: string },
): Promise<Outcome> {
  const ours = `${dir}/ours.qcow2`;
  const theirs = `${dir}/theirs.qcow2`;
  await Deno.copyFile(source, ours);
  await Deno.copyFile(source, theirs);
  const mine = await qcowlab("amend", "-o", options, ours);
  const qemu = await runTool("qemu-img", ["amend", "-o", options, theirs]);
  assert.equal(mine.status, qemu.code === 0 ? 0 : 1, `${options}: ${mine.err} vs ${qemu.stderr}`);
  if (expect.fails !== undefined) {
    assert.notEqual(qemu.code, 0);
    assert.equal(qemu.stderr, `qemu-img: ${expect.fails}\n`);
    assert.equal(mine.err, `qcowlab: ${expect.fails}\n`);
    // A refusal changes nothing.
    assert.deepEqual(await Deno.readFile(ours), await Deno.readFile(source));
    return { ours, theirs };
  }
  assert.equal(qemu.code, 0, qemu.stderr);
  const check = await runTool("qemu-img", ["check", ours]);
  assert.equal(check.code, 0, check.stdout + check.stderr);
  assert.match(check.stdout, /No errors were found on the image/);
  assert.doesNotMatch(check.stdout, /leaked/);
  assert.deepEqual(infoFields(await qemuInfo(ours)), infoFields(await qemuInfo(theirs)));
  const compare = await qemuCompareQcow2(ours, theirs);
  assert.equal(compare.code, 0, `${options}: ${compare.stdout}${compare.stderr}`);
  const a = await Deno.readFile(ours);
  const b = await Deno.readFile(theirs);
  if (expect.identical) {
    assert.equal(a.length, b.length);
    assert.equal(firstDifference(a, b), -1, `${options}: the files differ`);
  } else if (expect.header) {
    const clusterSize = 2 ** new DataView(a.buffer).getUint32(20);
    assert.deepEqual(a.subarray(0, clusterSize), b.subarray(0, clusterSize));
  }
  return { ours, theirs };
}
