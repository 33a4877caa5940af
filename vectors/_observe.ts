/**
 * Observing what an implementation does with one vector's image: open behaviour, info, virtual
 * contents, check, repair and the check after it. qcowlab is observed through the library, and
 * qemu-img through qemu-img and qemu-io processes.
 *
 * @module
 */

import type { BlockDevice } from "../core/block_device.ts";
import { isQcowError, QcowError } from "../core/errors.ts";
import { MemoryDevice } from "../core/memory_device.ts";
import { FileDevice } from "../core/file_device.ts";
import { runTool } from "../core/_run_tool.ts";
import type { Image } from "../drivers/image.ts";
import { mapImage } from "../drivers/map_image.ts";
import { openImage } from "../drivers/open_image.ts";
import { checkExitStatus, checkQcow2, type CheckResult } from "../drivers/qcow2/check.ts";
import { CHUNK, ChunkedDigest, chunksOf, FULL_HASH_LIMIT, sha256Hex } from "./_hash.ts";
import type { CheckExpect, ContentsExpect, Expect, InfoExpect } from "./manifest.ts";

/** The image under test of one vector, on disk. */
export interface Target {
  /** Directory holding the vector's files. */
  dir: string;
  /** File name of the image under test inside `dir`. */
  image: string;
  /** Its format ("qcow2" or "qcow"). */
  format: string;
}

/** Copies a vector's directory (every file) into a fresh temporary directory. */
async function copyVector(dir: string): Promise<string> {
  const copy = await Deno.makeTempDir({ prefix: "qcowlab-vector-" });
  for await (const entry of Deno.readDir(dir)) {
    if (entry.isFile) await Deno.copyFile(`${dir}/${entry.name}`, `${copy}/${entry.name}`);
  }
  return copy;
}

async function withCopy<T>(dir: string, fn: (copy: string) => Promise<T>): Promise<T> {
  const copy = await copyVector(dir);
  try {
    return await fn(copy);
  } finally {
    await Deno.remove(copy, { recursive: true });
  }
}

function codeOf(error: unknown): string {
  if (isQcowError(error)) return error.code;
  throw error;
}

function pickInfo(info: Record<string, unknown>): InfoExpect {
  const out: InfoExpect = {
    format: String(info.format),
    "virtual-size": Number(info["virtual-size"]),
    "dirty-flag": Boolean(info["dirty-flag"] ?? false),
  };
  if (info["cluster-size"] !== undefined) out["cluster-size"] = Number(info["cluster-size"]);
  if (info["backing-filename"] !== undefined) {
    out["backing-filename"] = String(info["backing-filename"]);
  }
  if (info["backing-filename-format"] !== undefined) {
    out["backing-filename-format"] = String(info["backing-filename-format"]);
  }
  const specific = (info["format-specific"] as { data?: Record<string, unknown> } | undefined)
    ?.data;
  if (specific) {
    const data: Record<string, string | number | boolean> = {};
    for (const key of Object.keys(specific).sort()) {
      const value = specific[key];
      if (typeof value === "string" || typeof value === "number" || typeof value === "boolean") {
        data[key] = value;
      }
    }
    out["format-specific"] = data;
  }
  return out;
}

function checkNumbers(result: Record<string, unknown>, exitStatus: number): CheckExpect {
  const n = (key: string): number => Number(result[key] ?? 0);
  const out: CheckExpect = {
    opened: true,
    exitStatus,
    corruptions: n("corruptions"),
    leaks: n("leaks"),
    checkErrors: n("check-errors"),
  };
  if (result["corruptions-fixed"] !== undefined || result["leaks-fixed"] !== undefined) {
    out.corruptionsFixed = n("corruptions-fixed");
    out.leaksFixed = n("leaks-fixed");
  }
  return out;
}

const NOT_OPENED: CheckExpect = {
  opened: false,
  exitStatus: 1,
  corruptions: 0,
  leaks: 0,
  checkErrors: 0,
};

/** Digests contents given a reader and the ranges that may hold non-zero bytes. */
async function digestContents(
  size: number,
  read: (buffer: Uint8Array, offset: number) => Promise<void>,
  maybeData: () => Promise<[number, number][]>,
): Promise<ContentsExpect> {
  const chunked = new ChunkedDigest(size);
  if (size <= FULL_HASH_LIMIT) {
    const all = new Uint8Array(size);
    if (size > 0) await read(all, 0);
    for (let c = 0; c * CHUNK < size; c++) {
      await chunked.add(c, all.subarray(c * CHUNK, Math.min(size, (c + 1) * CHUNK)));
    }
    return {
      sha256: await sha256Hex(all),
      chunkedSha256: await chunked.hex(),
      nonZeroChunks: chunked.nonZeroChunks,
    };
  }
  for (const c of chunksOf(await maybeData(), size)) {
    const buffer = new Uint8Array(Math.min(CHUNK, size - c * CHUNK));
    await read(buffer, c * CHUNK);
    await chunked.add(c, buffer);
  }
  return { chunkedSha256: await chunked.hex(), nonZeroChunks: chunked.nonZeroChunks };
}

// ---------------------------------------------------------------------------------------------
// qcowlab

function labInfo(image: Image): InfoExpect {
  return pickInfo(image.info() as unknown as Record<string, unknown>);
}

async function labContents(image: Image): Promise<ContentsExpect> {
  try {
    return await digestContents(
      image.size,
      (buffer, offset) => image.read(buffer, offset),
      async () =>
        (await mapImage(image)).filter((e) => e.data || !e.zero).map((e) => [e.start, e.length]),
    );
  } catch (error) {
    return { error: codeOf(error) };
  }
}

async function labCheck(
  device: BlockDevice,
  repair: "none" | "all",
): Promise<CheckResult | undefined> {
  try {
    return await checkQcow2(device, { repair });
  } catch (error) {
    codeOf(error);
    return undefined;
  }
}

function labNumbers(result: CheckResult | undefined): CheckExpect {
  if (result === undefined) return NOT_OPENED;
  return checkNumbers(result as unknown as Record<string, unknown>, checkExitStatus(result));
}

/** Every file of a vector's directory, in memory, so writes go to copies and not to the corpus. */
async function readVector(dir: string): Promise<Map<string, Uint8Array>> {
  const files = new Map<string, Uint8Array>();
  const names: string[] = [];
  for await (const entry of Deno.readDir(dir)) if (entry.isFile) names.push(entry.name);
  for (const name of names.sort()) files.set(name, await Deno.readFile(`${dir}/${name}`));
  return files;
}

/** What qcowlab does with a vector. */
export async function observeQcowlab(target: Target): Promise<Expect> {
  const path = `${target.dir}/${target.image}`;
  const format = target.format as "qcow" | "qcow2";
  const files = await readVector(target.dir);
  const copy = (name: string): MemoryDevice => {
    const bytes = files.get(name);
    if (bytes === undefined) throw new QcowError("NOT_FOUND", `No file ${name} in ${target.dir}`);
    return MemoryDevice.from(bytes, { name });
  };
  let expect: Expect;
  let image: Image | undefined;
  try {
    image = await openImage(path, { format });
  } catch (error) {
    expect = { open: { status: "refused", code: codeOf(error) }, check: NOT_OPENED };
  }
  if (image !== undefined) {
    try {
      expect = {
        open: { status: "opens" },
        info: labInfo(image),
        contents: await labContents(image),
        check: NOT_OPENED,
      };
    } finally {
      await image.close();
    }
    try {
      const rw = await openImage(copy(target.image), {
        format,
        readOnly: false,
        resolveBacking: (name) => copy(name),
      });
      await rw.close();
    } catch (error) {
      codeOf(error);
      expect.open = { status: "read-only" };
    }
  }
  if (format !== "qcow2") {
    // As qemu-img, which has no check for other formats: exit status 63 and no report (1 when
    // the image does not even open).
    expect!.check = { ...NOT_OPENED, exitStatus: image === undefined ? 1 : 63 };
    return expect!;
  }
  {
    await using device = FileDevice.open(path);
    expect!.check = labNumbers(await labCheck(device, "none"));
  }
  if (expect!.check.opened) {
    const device = copy(target.image);
    expect!.repair = labNumbers(await labCheck(device, "all"));
    expect!.afterRepair = labNumbers(await labCheck(device, "none"));
  }
  return expect!;
}

// ---------------------------------------------------------------------------------------------
// qemu-img

/** Whether qemu-img and qemu-io can be run. */
export function haveQemu(): boolean {
  for (const command of ["qemu-img", "qemu-io"]) {
    try {
      const output = new Deno.Command(command, {
        args: ["--version"],
        stdout: "null",
        stderr: "null",
      })
        .outputSync();
      if (!output.success) return false;
    } catch {
      return false;
    }
  }
  return true;
}

async function qemuCheck(dir: string, image: string, format: string, repair: boolean) {
  const args = ["check", "--output=json", "-f", format];
  if (repair) args.push("-r", "all");
  const run = await runTool("qemu-img", [...args, image], dir);
  if (run.stdout.trim() === "") return { ...NOT_OPENED, exitStatus: run.code };
  return checkNumbers(JSON.parse(run.stdout) as Record<string, unknown>, run.code);
}

async function qemuContents(target: Target, size: number): Promise<ContentsExpect> {
  const dir = target.dir;
  const scratch = await Deno.makeTempDir({ prefix: "qcowlab-qemu-" });
  try {
    if (size <= FULL_HASH_LIMIT) {
      const out = `${scratch}/contents.raw`;
      const run = await runTool(
        "qemu-img",
        ["convert", "-f", target.format, "-O", "raw", target.image, out],
        dir,
      );
      if (run.code !== 0) return { error: "qemu-img convert failed" };
      const raw = await Deno.readFile(out);
      return await digestContents(
        size,
        (buffer, offset) =>
          Promise.resolve(buffer.set(raw.subarray(offset, offset + buffer.length))),
        () => Promise.resolve([[0, size]]),
      );
    }
    const map = await runTool(
      "qemu-img",
      ["map", "--output=json", "-f", target.format, target.image],
      dir,
    );
    if (map.code !== 0) return { error: "qemu-img map failed" };
    const entries = JSON.parse(map.stdout) as {
      start: number;
      length: number;
      data: boolean;
      zero: boolean;
    }[];
    const ranges = entries.filter((e) => e.data || !e.zero).map((e) =>
      [e.start, e.length] as [number, number]
    );
    let failed = false;
    const result = await digestContents(size, async (buffer, offset) => {
      const run = await runTool("qemu-io", [
        "-r",
        "-f",
        target.format,
        "-c",
        `read -v ${offset} ${buffer.length}`,
        target.image,
      ], dir);
      if (run.code !== 0 || run.stdout.includes("failed")) {
        failed = true;
        return;
      }
      parseHexDump(run.stdout, buffer, offset);
    }, () => Promise.resolve(ranges));
    return failed ? { error: "qemu-io read failed" } : result;
  } finally {
    await Deno.remove(scratch, { recursive: true });
  }
}

/** Fills `buffer` from qemu-io's `read -v` dump (lines: `offset:  hex bytes  ascii`). */
function parseHexDump(text: string, buffer: Uint8Array, base: number): void {
  for (const line of text.split("\n")) {
    const match = /^([0-9a-f]{8,}):\s+((?:[0-9a-f]{2} ){1,16})/.exec(line);
    if (!match) continue;
    const at = parseInt(match[1]!, 16) - base;
    const bytes = match[2]!.trim().split(" ");
    for (let i = 0; i < bytes.length; i++) buffer[at + i] = parseInt(bytes[i]!, 16);
  }
}

/** What qemu-img (with qemu-io) does with a vector. */
export async function observeQemu(target: Target): Promise<Expect> {
  const info = await runTool(
    "qemu-img",
    ["info", "--output=json", "-f", target.format, target.image],
    target.dir,
  );
  let expect: Expect;
  if (info.code !== 0) {
    expect = { open: { status: "refused" }, check: NOT_OPENED };
  } else {
    const parsed = pickInfo(JSON.parse(info.stdout) as Record<string, unknown>);
    expect = {
      open: { status: "opens" },
      info: parsed,
      contents: await qemuContents(target, parsed["virtual-size"]),
      check: NOT_OPENED,
    };
    const writable = await withCopy(target.dir, async (copy) => {
      const run = await runTool(
        "qemu-io",
        ["-f", target.format, "-c", "flush", target.image],
        copy,
      );
      // A dirty image is repaired as it opens, which qemu-io reports on stderr: only the status counts.
      return run.code === 0;
    });
    if (!writable) expect.open = { status: "read-only" };
  }
  expect.check = await qemuCheck(target.dir, target.image, target.format, false);
  // Without a report qemu-img's failure to open cannot be told from a check that failed, so the
  // repair is always tried.
  await withCopy(target.dir, async (copy) => {
    expect.repair = await qemuCheck(copy, target.image, target.format, true);
    expect.afterRepair = await qemuCheck(copy, target.image, target.format, false);
  });
  return expect;
}
