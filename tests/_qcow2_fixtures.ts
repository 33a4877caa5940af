/**
 * Builds small qcow2 images with qemu-img / qemu-io and finds metadata inside them, for tests that
 * corrupt images byte by byte.
 *
 * @module
 */

import { readU32, readU64, writeU32, writeU64 } from "../core/bytes.ts";
import {
  INCOMPAT_EXTENDED_L2,
  parseQcow2Header,
  type Qcow2Header,
} from "../drivers/qcow2/header.ts";
import { entryOffset } from "../drivers/qcow2/entries.ts";

/** How to create one image. */
export interface ImageSpec {
  /** Virtual size as qemu-img takes it ("1M", "65536"). */
  size: string;
  /** Cluster size in bytes; qemu-img's default (64 KiB) when omitted. */
  clusterSize?: number;
  /** "0.10" for version 2, "1.1" (default) for version 3. */
  compat?: "0.10" | "1.1";
  /** 128-bit L2 entries with subclusters. */
  extendedL2?: boolean;
  /** Backing file name, relative to the image's directory. */
  backing?: string;
  /** Format of the backing file. */
  backingFormat?: "qcow2" | "raw";
  /** More `-o` options, such as "data_file=x.raw". */
  options?: string[];
  /** More command-line arguments before the file name (for `--object`). */
  args?: string[];
  /** qemu-io commands run on the new image, such as "write -c -P 1 0 64k". */
  io?: string[];
  /** Internal snapshots to take after the qemu-io commands. */
  snapshots?: string[];
  /** qemu-io commands run after the snapshots are taken. */
  ioAfterSnapshots?: string[];
}

async function run(command: string, args: string[], cwd: string): Promise<void> {
  const output = await new Deno.Command(command, { args, cwd, stdout: "piped", stderr: "piped" })
    .output();
  if (!output.success) {
    const stderr = new TextDecoder().decode(output.stderr);
    throw new Error(`${command} ${args.join(" ")} failed: ${stderr}`);
  }
}

/** Creates `name` in `dir` as described by `spec`, and returns its bytes. */
export async function createQcow2(dir: string, name: string, spec: ImageSpec): Promise<Uint8Array> {
  const options = [`compat=${spec.compat ?? "1.1"}`];
  if (spec.clusterSize !== undefined) options.push(`cluster_size=${spec.clusterSize}`);
  if (spec.extendedL2) options.push("extended_l2=on");
  options.push(...(spec.options ?? []));
  const args = ["create", "-q", "-f", "qcow2", "-o", options.join(","), ...(spec.args ?? [])];
  if (spec.backing !== undefined) {
    args.push("-b", spec.backing, "-F", spec.backingFormat ?? "qcow2", "-u");
  }
  args.push(name, spec.size);
  // LUKS key setup times itself and now and then fails with "Unable to get accurate CPU usage".
  for (let attempt = 1;; attempt++) {
    try {
      await run("qemu-img", args, dir);
      break;
    } catch (error) {
      if (attempt >= 5 || !String(error).includes("accurate CPU usage")) throw error;
    }
  }
  if (spec.io && spec.io.length > 0) {
    const ioArgs = spec.io.flatMap((c) => ["-c", c]);
    const image = spec.backing !== undefined ? [name] : ["-f", "qcow2", name];
    await run("qemu-io", [...ioArgs, ...image], dir);
  }
  for (const snapshot of spec.snapshots ?? []) {
    await run("qemu-img", ["snapshot", "-c", snapshot, name], dir);
  }
  if (spec.ioAfterSnapshots && spec.ioAfterSnapshots.length > 0) {
    const ioArgs = spec.ioAfterSnapshots.flatMap((c) => ["-c", c]);
    await run("qemu-io", [...ioArgs, "-f", "qcow2", name], dir);
  }
  return await Deno.readFile(`${dir}/${name}`);
}

/** Points `name` in `dir` at another backing file without opening either (`rebase -u`). */
export async function rebaseUnsafe(dir: string, name: string, backing: string): Promise<void> {
  await run("qemu-img", ["rebase", "-u", "-f", "qcow2", "-F", "qcow2", "-b", backing, name], dir);
}

/** Runs `qemu-img` with `args` in `dir`; returns whether it succeeded and what it printed. */
export async function qemuImg(
  dir: string,
  args: string[],
): Promise<{ success: boolean; stdout: string; stderr: string }> {
  const output = await new Deno.Command("qemu-img", {
    args,
    cwd: dir,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decoder = new TextDecoder();
  return {
    success: output.success,
    stdout: decoder.decode(output.stdout),
    stderr: decoder.decode(output.stderr),
  };
}

/** Runs `fn` with a fresh temporary directory that is removed afterwards. */
export async function withTempDir<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix: "qcowlab-test-" });
  try {
    return await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Where the metadata of an image lies. */
export interface Layout {
  /** The parsed header. */
  header: Qcow2Header;
  /** Cluster size in bytes. */
  clusterSize: number;
  /** Bytes per L2 entry (8, or 16 with extended L2). */
  l2EntryBytes: number;
  /** Offsets of the L2 tables named by the active L1 table, in L1 order (0 for none). */
  l2Offsets: number[];
}

/** Parses the header and active L1 table of a valid image. */
export function layout(bytes: Uint8Array): Layout {
  const header = parseQcow2Header(bytes.subarray(0, 2 ** readU32(bytes, 20)));
  const l2Offsets: number[] = [];
  for (let i = 0; i < header.l1Size; i++) {
    const at = header.l1TableOffset + i * 8;
    l2Offsets.push(entryOffset(readU32(bytes, at), readU32(bytes, at + 4)));
  }
  const extended = (header.incompatibleFeatures & INCOMPAT_EXTENDED_L2) !== 0n;
  return {
    header,
    clusterSize: 2 ** header.clusterBits,
    l2EntryBytes: extended ? 16 : 8,
    l2Offsets,
  };
}

/** File position of the L2 entry that maps guest offset `guest` (its L2 table must exist). */
export function l2EntryPosition(bytes: Uint8Array, guest: number): number {
  const { clusterSize, l2EntryBytes, l2Offsets } = layout(bytes);
  const perTable = clusterSize / l2EntryBytes;
  const cluster = Math.floor(guest / clusterSize);
  const l2 = l2Offsets[Math.floor(cluster / perTable)];
  if (!l2) throw new Error(`No L2 table maps guest offset ${guest}`);
  return l2 + (cluster % perTable) * l2EntryBytes;
}

/** Returns a copy of `bytes` with a big-endian u32 written at `offset`. */
export function withU32(bytes: Uint8Array, offset: number, value: number): Uint8Array {
  const copy = bytes.slice();
  writeU32(copy, offset, value);
  return copy;
}

/** Returns a copy of `bytes` with a big-endian u64 (given as two u32 halves) at `offset`. */
export function withU64(bytes: Uint8Array, offset: number, hi: number, lo: number): Uint8Array {
  const copy = bytes.slice();
  writeU32(copy, offset, hi);
  writeU32(copy, offset + 4, lo);
  return copy;
}

/** Returns a copy of `bytes` with an exact u64 (at most 2^53) written at `offset`. */
export function withU64Number(bytes: Uint8Array, offset: number, value: number): Uint8Array {
  const copy = bytes.slice();
  writeU64(copy, offset, value);
  return copy;
}

/** Reads a u64 (exact below 2^53). */
export function u64At(bytes: Uint8Array, offset: number): number {
  return readU64(bytes, offset);
}

/** Header field offsets. */
export const FIELD = {
  magic: 0,
  version: 4,
  backingFileOffset: 8,
  backingFileSize: 16,
  clusterBits: 20,
  size: 24,
  cryptMethod: 32,
  l1Size: 36,
  l1TableOffset: 40,
  refcountTableOffset: 48,
  refcountTableClusters: 56,
  nbSnapshots: 60,
  snapshotsOffset: 64,
  incompatibleFeatures: 72,
  compatibleFeatures: 80,
  autoclearFeatures: 88,
  refcountOrder: 96,
  headerLength: 100,
  compressionType: 104,
} as const;
