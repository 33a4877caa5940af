/**
 * Helpers for the driver tests, on top of `_qemu.ts`: small backing chains made with QEMU's tools,
 * and a check for leaked file descriptors.
 *
 * @module
 */

import { HAVE_QEMU, qemuImg, qemuIo } from "./_qemu.ts";

/** Prints, once per test module, why the QEMU-based tests of that module are skipped. */
export function warnIfNoQemu(module: string): void {
  if (!HAVE_QEMU) {
    console.warn(`${module}: qemu-img or qemu-io not found; skipping the tests that need them`);
  }
}

/**
 * The files under `dir` this process holds open, from /proc/self/fd. Deno's sanitizers do not see
 * descriptors opened through node:fs, so tests that must not leak files check this. Returns an
 * empty list where /proc is missing.
 *
 * @param dir An absolute directory path.
 * @returns The open files' paths.
 */
export function openFilesUnder(dir: string): string[] {
  const open: string[] = [];
  let entries: Iterable<Deno.DirEntry>;
  try {
    entries = Deno.readDirSync("/proc/self/fd");
  } catch {
    return open;
  }
  for (const entry of entries) {
    try {
      const target = Deno.readLinkSync(`/proc/self/fd/${entry.name}`);
      if (target.startsWith(`${dir}/`)) open.push(target);
    } catch {
      // The descriptor closed while the directory was listed.
    }
  }
  return open;
}

/** Paths of the images {@linkcode makeChain} creates. */
export interface Chain {
  /** A 1 MiB qcow2 image: data, a zero cluster, a compressed cluster, more data. */
  base: string;
  /** A 2 MiB qcow2 overlay of `base`, with data inside and past the end of `base`. */
  top: string;
  /** A 256 KiB raw file, fully written. */
  raw: string;
  /** A 1 MiB qcow2 overlay of `raw`. */
  overRaw: string;
}

/**
 * Creates two small backing chains in `dir`, with relative backing file names. Every write covers
 * whole 64 KiB clusters: `qemu-img map` also reports holes of the host file inside partly written
 * clusters, which qcowlab does not look for.
 *
 * @param dir An absolute directory path.
 * @returns The images' paths.
 */
export async function makeChain(dir: string): Promise<Chain> {
  const chain: Chain = {
    base: `${dir}/base.qcow2`,
    top: `${dir}/top.qcow2`,
    raw: `${dir}/short.raw`,
    overRaw: `${dir}/over.qcow2`,
  };
  await qemuImg("create", "-q", "-f", "qcow2", chain.base, "1M");
  await qemuIo(chain.base, [
    "write -P 0xaa 0 64k",
    "write -z 128k 64k",
    "write -c -P 0x44 256k 64k",
    "write -P 0x11 512k 64k",
  ]);
  await qemuImg("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", chain.top, "2M");
  await qemuIo(chain.top, [
    "write -P 0xbb 64k 64k",
    "write -z 512k 64k",
    "write -P 0xcc 1536k 64k",
  ]);
  // Written in full: a sparse raw file has holes that qemu-img map reports and qcowlab does not.
  await Deno.writeFile(chain.raw, new Uint8Array(256 * 1024).fill(0x22));
  await qemuImg("create", "-q", "-f", "qcow2", "-b", "short.raw", "-F", "raw", chain.overRaw, "1M");
  await qemuIo(chain.overRaw, ["write -P 0x33 512k 64k"]);
  return chain;
}
