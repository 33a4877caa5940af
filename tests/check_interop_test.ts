/**
 * `checkQcow2` against `qemu-img check`: every image is built by qemu-img and qemu-io, damaged by
 * byte edits here, then checked by both. qcowlab must report what qemu-img reports (the JSON
 * output and the human one byte for byte, the diagnostic lines, the exit status), and its repairs
 * must leave an image that qemu-img finds clean whenever qemu-img's own repair does, with the same
 * virtual contents as qemu-img's repair keeps.
 *
 * @module
 */

import { deepStrictEqual, equal, ok } from "node:assert/strict";
import { readU32, readU64, writeU32 } from "../core/bytes.ts";
import { FileDevice } from "../core/file_device.ts";
import {
  checkExitStatus,
  checkQcow2,
  type CheckRepair,
  type CheckResult,
  formatCheckReport,
} from "../drivers/qcow2/check.ts";
import { entryOffset } from "../drivers/qcow2/entries.ts";
import { INCOMPAT_EXTENDED_L2, parseQcow2Header } from "../drivers/qcow2/header.ts";
import { readRefcount, refcountsPerBlock, writeRefcount } from "../drivers/qcow2/refcount_math.ts";
import { HAVE_QEMU, makeTempDir, runTool, seededRandom } from "./_qemu.ts";

if (!HAVE_QEMU) {
  console.warn("qemu-img or qemu-io is not installed: skipping the check interoperability tests");
}

const KiB = 1024;
const MiB = 1024 * KiB;
const TiB = 1024 * 1024 * MiB;
const COPIED = 0x80000000;

// ---------------------------------------------------------------------------------------------
// Running QEMU's tools

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function tool(dir: string, command: string, args: string[]): Promise<Run> {
  return runTool(command, args, dir);
}

/** Runs a command that must succeed; returns its standard output. */
async function must(dir: string, command: string, ...args: string[]): Promise<string> {
  const run = await tool(dir, command, args);
  if (run.code !== 0) {
    throw new Error(`${command} ${args.join(" ")} failed (${run.code}):\n${run.stderr}`);
  }
  return run.stdout;
}

/** How qemu-img names an image: a file name, or image options with secrets. */
interface ImageSpec {
  /** Arguments before the image (`--object`, `--image-opts`). */
  prefix: string[];
  /** The image argument, which qemu-img also reports as `filename`. */
  name: string;
}

const PLAIN: ImageSpec = { prefix: [], name: "img.qcow2" };
const LUKS: ImageSpec = {
  prefix: ["--object", "secret,id=sec0,data=abc", "--image-opts"],
  name: "driver=qcow2,file.filename=img.qcow2,encrypt.key-secret=sec0",
};

function qemuCheck(dir: string, spec: ImageSpec, extra: string[]): Promise<Run> {
  return tool(dir, "qemu-img", ["check", ...extra, ...spec.prefix, spec.name]);
}

/** Whether two images hold the same virtual contents, per `qemu-img compare`; null if unreadable. */
async function sameContents(
  spec: ImageSpec,
  a: string,
  b: string,
): Promise<boolean | null> {
  const withDir = (dir: string): string =>
    spec.prefix.length > 0
      ? spec.name.replace("file.filename=", `file.filename=${dir}/`)
      : `${dir}/${spec.name}`;
  const args = ["compare", ...spec.prefix.slice(0, 2)];
  if (spec.prefix.length > 0) args.push("--image-opts");
  else args.push("-f", "qcow2", "-F", "qcow2");
  const run = await tool(a, "qemu-img", [...args, withDir(a), withDir(b)]);
  if (run.code === 0) return true;
  if (run.code === 1) return false;
  return null;
}

// ---------------------------------------------------------------------------------------------
// Finding and damaging metadata

interface Meta {
  clusterSize: number;
  refcountOrder: number;
  l1Offset: number;
  reftableOffset: number;
  entryBytes: number;
}

function meta(bytes: Uint8Array): Meta {
  const header = parseQcow2Header(bytes.subarray(0, 2 ** readU32(bytes, 20)));
  return {
    clusterSize: 2 ** header.clusterBits,
    refcountOrder: header.refcountOrder,
    l1Offset: header.l1TableOffset,
    reftableOffset: header.refcountTableOffset,
    entryBytes: (header.incompatibleFeatures & INCOMPAT_EXTENDED_L2) !== 0n ? 16 : 8,
  };
}

/** The refcount block holding `cluster`'s refcount, and the index in it. */
function refcountSpot(bytes: Uint8Array, cluster: number): [Uint8Array, number, number] {
  const m = meta(bytes);
  const perBlock = refcountsPerBlock(Math.log2(m.clusterSize), m.refcountOrder);
  const block = readU64(bytes, m.reftableOffset + Math.floor(cluster / perBlock) * 8);
  return [bytes.subarray(block, block + m.clusterSize), cluster % perBlock, m.refcountOrder];
}

function getRefcount(bytes: Uint8Array, cluster: number): number {
  const [block, index, order] = refcountSpot(bytes, cluster);
  return readRefcount(block, index, order);
}

function setRefcount(bytes: Uint8Array, cluster: number, value: number): void {
  const [block, index, order] = refcountSpot(bytes, cluster);
  writeRefcount(block, index, order, value);
}

/** File position of the active L1 entry `index`. */
function l1Position(bytes: Uint8Array, index: number): number {
  return meta(bytes).l1Offset + index * 8;
}

/** File position of the L2 entry mapping guest offset `guest`. */
function l2Position(bytes: Uint8Array, guest: number): number {
  const m = meta(bytes);
  const perTable = m.clusterSize / m.entryBytes;
  const cluster = Math.floor(guest / m.clusterSize);
  const at = l1Position(bytes, Math.floor(cluster / perTable));
  const l2 = entryOffset(readU32(bytes, at), readU32(bytes, at + 4));
  return l2 + (cluster % perTable) * m.entryBytes;
}

/** The host cluster an L2 entry at `position` points to (for compressed ones: where it starts). */
function hostCluster(bytes: Uint8Array, position: number): number {
  const hi = readU32(bytes, position);
  const lo = readU32(bytes, position + 4);
  const clusterSize = meta(bytes).clusterSize;
  if ((hi & 0x40000000) !== 0) {
    const bits = 70 - Math.log2(clusterSize) - 32;
    const offset = (hi & ((1 << bits) - 1)) * 2 ** 32 + lo;
    return Math.floor(offset / clusterSize);
  }
  return entryOffset(hi, lo) / clusterSize;
}

/** The first cluster inside the file that nothing uses (refcount 0). */
function freeCluster(bytes: Uint8Array): number {
  const clusterSize = meta(bytes).clusterSize;
  for (let c = 1; c * clusterSize < bytes.length; c++) if (getRefcount(bytes, c) === 0) return c;
  throw new Error("the image has no free cluster inside the file");
}

/** Offset of the snapshot table. */
function snapshotTable(bytes: Uint8Array): number {
  return readU64(bytes, 64);
}

function editWord(bytes: Uint8Array, at: number, change: (word: number) => number): void {
  writeU32(bytes, at, change(readU32(bytes, at)) >>> 0);
}

// ---------------------------------------------------------------------------------------------
// Building images

/** A 1 MiB image with guest clusters 0, 2 and 3 written and cluster 1 discarded (a hole). */
async function basic(dir: string, options: string[] = [], more: string[] = []): Promise<void> {
  await must(dir, "qemu-img", "create", "-q", "-f", "qcow2", ...options, "img.qcow2", "1M");
  const io = ["write -P 1 0 256k", "discard 64k 64k", ...more].flatMap((c) => ["-c", c]);
  await must(dir, "qemu-io", "-f", "qcow2", ...io, "img.qcow2");
}

async function snapshot(dir: string): Promise<void> {
  await must(dir, "qemu-img", "snapshot", "-c", "s1", "img.qcow2");
}

// ---------------------------------------------------------------------------------------------
// The cases

/** How qcowlab's repair is allowed to differ from qemu-img's. */
interface Difference {
  /** Members of the repair's JSON report that may differ. */
  members?: string[];
  /** The diagnostic lines may differ. */
  messages?: boolean;
  /** qemu-img's repair fails where qcowlab's succeeds (and keeps the contents). */
  qemuFails?: boolean;
  /** The status `qemu-img check` gives qcowlab's repaired image, when it is not qemu-img's. */
  after?: number;
}

interface Case {
  name: string;
  /** Creates img.qcow2 (and anything it needs) in the directory. */
  build: (dir: string) => Promise<void>;
  /** Damages the image's bytes in place. */
  damage?: (bytes: Uint8Array) => void;
  /** How qemu-img reaches the image. */
  spec?: ImageSpec;
  /** The repairs to compare; both by default. */
  repairs?: CheckRepair[];
  /** Where qcowlab's repair differs from qemu-img's, by mode. */
  differs?: Partial<Record<CheckRepair, Difference>>;
  /** Whether the repaired image must read like the undamaged one. */
  keepsContents?: boolean;
  /** What qemu-img must find in the damaged image, so the case tests what its name says. */
  expect?: (result: Record<string, unknown>, stderr: string) => boolean;
}

/** Rebuilding puts the new refcount structure after the end, not in the first holes as QEMU does. */
const REBUILT: Difference = { members: ["image-end-offset"] };

const corruptions = (n: number) => (r: Record<string, unknown>): boolean => r.corruptions === n;
const leaks = (n: number) => (r: Record<string, unknown>): boolean => r.leaks === n;

const CASES: Case[] = [
  {
    name: "a leaked cluster",
    build: (dir) => basic(dir),
    damage: (bytes) => setRefcount(bytes, freeCluster(bytes), 1),
    keepsContents: true,
    expect: leaks(1),
  },
  {
    name: "refcount 0 on a used data cluster",
    build: (dir) => basic(dir),
    damage: (bytes) => setRefcount(bytes, hostCluster(bytes, l2Position(bytes, 0)), 0),
    differs: { all: REBUILT },
    keepsContents: true,
    expect: corruptions(2),
  },
  {
    name: "refcount lowered but not 0 on a shared compressed host cluster",
    build: async (dir) => {
      await must(dir, "qemu-img", "create", "-q", "-f", "qcow2", "img.qcow2", "1M");
      await must(
        dir,
        "qemu-io",
        ...["-f", "qcow2", "-c", "write -c -P 1 0 64k", "-c", "write -c -P 2 64k 64k"],
        ...["-c", "write -c -P 3 128k 64k", "-c", "write -P 4 256k 64k", "img.qcow2"],
      );
    },
    damage: (bytes) => {
      const host = hostCluster(bytes, l2Position(bytes, 0));
      equal(getRefcount(bytes, host), 3);
      setRefcount(bytes, host, 1);
    },
    keepsContents: true,
    expect: corruptions(1),
  },
  {
    name: "COPIED missing on an L1 entry",
    build: (dir) => basic(dir),
    damage: (bytes) => editWord(bytes, l1Position(bytes, 0), (w) => w & ~COPIED),
    keepsContents: true,
    expect: corruptions(1),
  },
  {
    name: "COPIED missing on an L2 entry",
    build: (dir) => basic(dir),
    damage: (bytes) => editWord(bytes, l2Position(bytes, 128 * KiB), (w) => w & ~COPIED),
    keepsContents: true,
    expect: corruptions(1),
  },
  {
    name: "COPIED set on an L1 entry whose table a snapshot shares",
    build: async (dir) => {
      await basic(dir);
      await snapshot(dir);
    },
    damage: (bytes) => editWord(bytes, l1Position(bytes, 0), (w) => w | COPIED),
    keepsContents: true,
    expect: corruptions(1),
  },
  {
    name: "COPIED set on an L2 entry whose cluster a snapshot shares",
    build: async (dir) => {
      await basic(dir);
      await snapshot(dir);
    },
    damage: (bytes) => editWord(bytes, l2Position(bytes, 0), (w) => w | COPIED),
    keepsContents: true,
    expect: corruptions(1),
  },
  {
    // Neither tool can repair this: the entry keeps pointing into the middle of a cluster.
    name: "unaligned L2 entry of a data cluster",
    build: (dir) => basic(dir),
    damage: (bytes) => editWord(bytes, l2Position(bytes, 0) + 4, (w) => w + 0x200),
    expect: (_r, stderr) => stderr.includes("Data cluster is not properly aligned"),
  },
  {
    name: "unaligned L2 entry of a preallocated zero cluster",
    build: (dir) => basic(dir, [], ["write -z 128k 64k"]),
    damage: (bytes) => editWord(bytes, l2Position(bytes, 128 * KiB) + 4, (w) => w + 0x200),
    keepsContents: true,
    expect: (_r, stderr) => stderr.includes("Preallocated cluster is not properly aligned"),
  },
  {
    name: "unaligned extended L2 entry of a preallocated zero cluster",
    build: (dir) => basic(dir, ["-o", "extended_l2=on"], ["write -z 128k 64k"]),
    damage: (bytes) => editWord(bytes, l2Position(bytes, 128 * KiB) + 4, (w) => w + 0x200),
    keepsContents: true,
    expect: (_r, stderr) => stderr.includes("Preallocated cluster is not properly aligned"),
  },
  {
    name: "extended L2 entries with invalid subcluster bitmaps",
    build: (dir) => basic(dir, ["-o", "extended_l2=on"]),
    damage: (bytes) => {
      const at = l2Position(bytes, 0);
      writeU32(bytes, at + 8, 1); // a subcluster both allocated and zero
      writeU32(bytes, l2Position(bytes, 512 * KiB) + 12, 0xf); // allocated without a cluster
    },
    expect: corruptions(2),
  },
  {
    // QEMU refuses the COPIED repair, which would write an active L2 table that is the L1 table,
    // and marks the image corrupt.
    name: "L2 table pointing into the L1 table",
    build: (dir) => basic(dir),
    damage: (bytes) => {
      const at = l1Position(bytes, 0);
      writeU32(bytes, at, COPIED);
      writeU32(bytes, at + 4, meta(bytes).l1Offset);
    },
    expect: (r) => r.corruptions === 1 && r.leaks === 4,
  },
  {
    name: "two L2 entries sharing a cluster",
    build: (dir) => basic(dir),
    damage: (bytes) => {
      const from = l2Position(bytes, 128 * KiB);
      bytes.copyWithin(l2Position(bytes, 192 * KiB), from, from + 8);
    },
    expect: (r) => r.corruptions === 1 && r.leaks === 1,
  },
  {
    // QEMU grows the file to hold the block, then rebuilds anyway; qcowlab only rebuilds, so it
    // counts one corruption less (the block's own cluster) and never grows the file.
    name: "refcount block pointing past the end of the file",
    build: (dir) => basic(dir),
    damage: (bytes) => {
      const m = meta(bytes);
      const past = (Math.ceil(bytes.length / m.clusterSize) + 7) * m.clusterSize;
      writeU32(bytes, m.reftableOffset + 4, past);
    },
    differs: { all: { members: ["image-end-offset", "corruptions-fixed"], messages: true } },
    keepsContents: true,
    expect: (_r, stderr) => stderr.includes("refcount block 0 is outside image"),
  },
  {
    name: "refcount table missing its first entry",
    build: (dir) => basic(dir),
    damage: (bytes) => bytes.fill(0, meta(bytes).reftableOffset, meta(bytes).reftableOffset + 8),
    differs: { all: REBUILT },
    keepsContents: true,
    expect: corruptions(11),
  },
  {
    name: "refcount table missing: every entry zeroed",
    build: (dir) => basic(dir),
    damage: (bytes) =>
      bytes.fill(0, meta(bytes).reftableOffset, meta(bytes).reftableOffset + 65536),
    differs: { all: REBUILT },
    keepsContents: true,
    expect: (r) => (r.corruptions as number) > 0,
  },
  {
    name: "refcount table missing: its offset past the end of the file",
    build: (dir) => basic(dir),
    damage: (bytes) => writeU32(bytes, 52, 64 * 65536),
    differs: { all: REBUILT },
    keepsContents: true,
    expect: (r) => (r.corruptions as number) > 0,
  },
  {
    // QEMU 7.2 allocates the new block over the old, misaligned one and its overlap check stops
    // the rebuild; qcowlab rebuilds after the end of the image.
    name: "unaligned refcount block",
    build: (dir) => basic(dir),
    damage: (bytes) => editWord(bytes, meta(bytes).reftableOffset + 4, (w) => w + 0x200),
    differs: { all: { qemuFails: true } },
    keepsContents: true,
    expect: (r) => r["check-errors"] === 9,
  },
  {
    name: "reserved bits in a refcount table entry",
    build: (dir) => basic(dir),
    damage: (bytes) => editWord(bytes, meta(bytes).reftableOffset + 4, (w) => w | 1),
    differs: { all: { qemuFails: true } },
    keepsContents: true,
    expect: (_r, stderr) => stderr.includes("has reserved bits set"),
  },
  {
    name: "dirty image with stale refcounts after a lazy-refcounts crash",
    build: async (dir) => {
      await must(
        dir,
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "lazy_refcounts=on",
        "img.qcow2",
        "1M",
      );
      await must(dir, "qemu-io", "-f", "qcow2", "-c", "write -P 1 0 64k", "img.qcow2");
      const crash = await tool(dir, "sh", [
        "-c",
        "ulimit -c 0; qemu-io -f qcow2 -c 'write -P 2 64k 128k' -c 'write -P 3 512k 64k' " +
        "-c 'sigraise 9' img.qcow2",
      ]);
      equal(crash.code, 137, `qemu-io was to be killed: ${crash.stderr}`);
    },
    differs: { all: REBUILT },
    expect: (r) => r.corruptions === 6,
  },
  {
    name: "1-bit refcounts: a leaked cluster",
    build: (dir) => basic(dir, ["-o", "refcount_bits=1"]),
    damage: (bytes) => setRefcount(bytes, freeCluster(bytes), 1),
    keepsContents: true,
    expect: leaks(1),
  },
  {
    name: "1-bit refcounts: refcount 0 on a used cluster",
    build: (dir) => basic(dir, ["-o", "refcount_bits=1"]),
    damage: (bytes) => setRefcount(bytes, hostCluster(bytes, l2Position(bytes, 0)), 0),
    differs: { all: REBUILT },
    keepsContents: true,
    expect: corruptions(2),
  },
  {
    name: "1-bit refcounts: a cluster referenced twice overflows",
    build: (dir) => basic(dir, ["-o", "refcount_bits=1"]),
    damage: (bytes) => {
      const from = l2Position(bytes, 128 * KiB);
      bytes.copyWithin(l2Position(bytes, 192 * KiB), from, from + 8);
    },
    expect: (_r, stderr) => stderr.includes("ERROR: overflow cluster"),
  },
  {
    name: "64-bit refcounts: a leaked cluster",
    build: (dir) => basic(dir, ["-o", "refcount_bits=64"]),
    damage: (bytes) => setRefcount(bytes, freeCluster(bytes), 7),
    keepsContents: true,
    expect: leaks(1),
  },
  {
    name: "64-bit refcounts: refcount 0 on a used cluster",
    build: (dir) => basic(dir, ["-o", "refcount_bits=64"]),
    damage: (bytes) => setRefcount(bytes, hostCluster(bytes, l2Position(bytes, 0)), 0),
    differs: { all: REBUILT },
    keepsContents: true,
    expect: corruptions(2),
  },
  {
    name: "16 TiB sparse image, undamaged",
    build: async (dir) => {
      await must(dir, "qemu-img", "create", "-q", "-f", "qcow2", "img.qcow2", "16T");
      const io = ["write -P 1 0 64k", "write -P 2 8T 64k", "write -P 3 16383G 64k"];
      await must(dir, "qemu-io", "-f", "qcow2", ...io.flatMap((c) => ["-c", c]), "img.qcow2");
    },
    repairs: [],
    expect: (r) => r["total-clusters"] === 16 * TiB / 65536,
  },
  {
    name: "16 TiB sparse image: refcount 0 on the cluster at 8 TiB",
    build: async (dir) => {
      await must(dir, "qemu-img", "create", "-q", "-f", "qcow2", "img.qcow2", "16T");
      const io = ["write -P 1 0 64k", "write -P 2 8T 64k", "write -P 3 16383G 64k"];
      await must(dir, "qemu-io", "-f", "qcow2", ...io.flatMap((c) => ["-c", c]), "img.qcow2");
    },
    damage: (bytes) => setRefcount(bytes, hostCluster(bytes, l2Position(bytes, 8 * TiB)), 0),
    differs: { all: REBUILT },
    keepsContents: true,
    expect: corruptions(2),
  },
  {
    name: "snapshot: refcount 0 on a cluster the snapshot shares",
    build: async (dir) => {
      await basic(dir);
      await snapshot(dir);
    },
    damage: (bytes) => setRefcount(bytes, hostCluster(bytes, l2Position(bytes, 0)), 0),
    keepsContents: true,
    expect: (_r, stderr) => stderr.includes("refcount=0 reference=2"),
  },
  {
    name: "snapshot table entry without the disk size",
    build: async (dir) => {
      await basic(dir);
      await snapshot(dir);
    },
    // Extra data cut from 24 to 8 bytes: the VM state size only.
    damage: (bytes) => writeU32(bytes, snapshotTable(bytes) + 36, 8),
    keepsContents: true,
    expect: (_r, stderr) => stderr.includes("snapshot table entry 0 is incomplete"),
  },
  {
    name: "snapshot table entry with too much extra data",
    build: async (dir) => {
      await basic(dir);
      await snapshot(dir);
    },
    damage: (bytes) => writeU32(bytes, snapshotTable(bytes) + 36, 2000),
    keepsContents: true,
    expect: (_r, stderr) => stderr.includes("Too much extra metadata"),
  },
  {
    name: "snapshot table past the end of the file",
    build: async (dir) => {
      await basic(dir);
      await snapshot(dir);
    },
    damage: (bytes) => writeU32(bytes, 68, 32 * 65536),
    keepsContents: true,
    expect: (r) => r.corruptions === 2 && r.leaks === 6,
  },
  {
    name: "snapshot L1 table not aligned",
    build: async (dir) => {
      await basic(dir);
      await snapshot(dir);
    },
    damage: (bytes) => editWord(bytes, snapshotTable(bytes) + 4, (w) => w + 0x200),
    expect: (_r, stderr) => stderr.includes("L1 table is not cluster aligned"),
  },
  {
    name: "persistent bitmap: refcount 0 on a cluster of bitmap data",
    build: async (dir) => {
      await basic(dir);
      await must(dir, "qemu-img", "bitmap", "--add", "img.qcow2", "bm0");
      // Writes through a writable open dirty the bitmap, which then gets data clusters.
      await must(dir, "qemu-io", "-f", "qcow2", "-c", "write -P 7 640k 64k", "img.qcow2");
    },
    damage: (bytes) => {
      const header = parseQcow2Header(bytes.subarray(0, 65536));
      const table = readU64(bytes, header.bitmaps!.directoryOffset);
      const data = entryOffset(readU32(bytes, table), readU32(bytes, table + 4));
      ok(data !== 0, "the case needs a bitmap with data");
      setRefcount(bytes, data / 65536, 0);
    },
    // Both refuse to repair leaks only, but qemu-img then stores the bitmaps at close, allocating
    // with the broken refcounts: its image no longer opens. qcowlab's stays as it was.
    differs: { all: REBUILT, leaks: { after: 2 } },
    keepsContents: true,
    expect: corruptions(1),
  },
  {
    name: "compressed clusters spanning host clusters: refcount 0 on a shared one",
    build: async (dir) => {
      const random = seededRandom(7);
      const raw = new Uint8Array(MiB);
      for (let i = 0; i < 600000; i++) raw[i] = Math.floor(random() * 16);
      await Deno.writeFile(`${dir}/source.raw`, raw);
      await must(
        dir,
        "qemu-img",
        "convert",
        "-c",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "source.raw",
        "img.qcow2",
      );
    },
    damage: (bytes) => {
      const host = hostCluster(bytes, l2Position(bytes, 64 * KiB)) + 1;
      ok(getRefcount(bytes, host) > 1, "the case needs a host cluster shared by several");
      setRefcount(bytes, host, 0);
    },
    keepsContents: true,
    expect: (r) => (r.corruptions as number) > 0 && (r["compressed-clusters"] as number) > 0,
  },
  {
    name: "corrupt and dirty bits with a leaked cluster",
    build: (dir) => basic(dir),
    damage: (bytes) => {
      setRefcount(bytes, freeCluster(bytes), 1);
      writeU32(bytes, 76, 3);
    },
    keepsContents: true,
    expect: leaks(1),
  },
  {
    name: "version 2 image: refcount 0 on a used cluster",
    build: (dir) => basic(dir, ["-o", "compat=0.10"]),
    damage: (bytes) => setRefcount(bytes, hostCluster(bytes, l2Position(bytes, 0)), 0),
    differs: { all: REBUILT },
    keepsContents: true,
    expect: corruptions(2),
  },
  {
    name: "L1 table past the end of the file",
    build: (dir) => basic(dir),
    damage: (bytes) => writeU32(bytes, 44, 32 * 65536),
    expect: (r) => r.corruptions === 1 && r.leaks === 5,
  },
  {
    name: "external data file: a leaked cluster",
    build: async (dir) => {
      const create = ["create", "-q", "-f", "qcow2", "-o", "data_file=data.raw", "img.qcow2", "1M"];
      await must(dir, "qemu-img", ...create);
      await must(dir, "qemu-io", "-f", "qcow2", "-c", "write -P 3 0 128k", "img.qcow2");
    },
    damage: (bytes) => {
      const end = Math.ceil(bytes.length / 65536);
      setRefcount(bytes, end - 1, getRefcount(bytes, end - 1) + 1);
    },
    keepsContents: true,
    expect: leaks(1),
  },
  {
    name: "LUKS: refcount 0 on a cluster of the encryption header",
    build: async (dir) => {
      const secret = ["--object", "secret,id=sec0,data=abc"];
      const options = "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10";
      // LUKS key setup times itself, and now and then fails to ("accurate CPU usage").
      const create = ["create", "-q", "-f", "qcow2", ...secret, "-o", options, "img.qcow2", "1M"];
      for (let attempt = 1;; attempt++) {
        const run = await tool(dir, "qemu-img", create);
        if (run.code === 0) break;
        if (attempt >= 5 || !run.stderr.includes("accurate CPU usage")) throw new Error(run.stderr);
      }
      await must(dir, "qemu-io", ...secret, "--image-opts", "-c", "write -P 5 0 128k", LUKS.name);
    },
    // The header extension says where the encryption header is; count on its second cluster.
    damage: (bytes) => setRefcount(bytes, 5, 0),
    spec: LUKS,
    differs: { all: REBUILT },
    keepsContents: true,
    expect: corruptions(1),
  },
];

// ---------------------------------------------------------------------------------------------
// Running a case

/** What qemu-img would print on standard error for a qcowlab result. */
function stderrLines(result: CheckResult): string[] {
  const lines = [...result.messages];
  if (checkExitStatus(result) === 1) {
    lines.push(
      result.failure ? `qemu-img: Check failed: ${result.failure}` : "qemu-img: Check failed",
    );
  }
  return lines;
}

function lines(text: string): string[] {
  return text === "" ? [] : text.replace(/\n$/, "").split("\n");
}

async function labCheck(dir: string, spec: ImageSpec, repair: CheckRepair): Promise<CheckResult> {
  await using device = FileDevice.open(`${dir}/img.qcow2`, { readOnly: repair === "none" });
  return await checkQcow2(device, { repair, filename: spec.name });
}

/** Copies every file of `from` into a new directory `to`. */
async function copyDir(from: string, to: string): Promise<void> {
  await Deno.mkdir(to);
  for await (const entry of Deno.readDir(from)) {
    if (entry.isFile) await Deno.copyFile(`${from}/${entry.name}`, `${to}/${entry.name}`);
  }
}

function withoutMembers(json: string, members: string[]): Record<string, unknown> {
  if (json === "") return {};
  const parsed = JSON.parse(json) as Record<string, unknown>;
  for (const member of members) delete parsed[member];
  return parsed;
}

/** The dirty and corrupt bits, as `qemu-img info` shows them. */
async function flags(
  dir: string,
  spec: ImageSpec,
): Promise<{ dirty: boolean; corrupt: boolean } | null> {
  const run = await tool(dir, "qemu-img", ["info", "--output=json", ...spec.prefix, spec.name]);
  if (run.code !== 0) return null; // an image qemu-img cannot open at all
  const info = JSON.parse(run.stdout) as {
    "dirty-flag"?: boolean;
    "format-specific"?: { data?: { corrupt?: boolean } };
  };
  return {
    dirty: info["dirty-flag"] ?? false,
    corrupt: info["format-specific"]?.data?.corrupt ?? false,
  };
}

async function runCase(test: Case, base: string): Promise<void> {
  const spec = test.spec ?? PLAIN;
  const pristine = `${base}/pristine`;
  const damaged = `${base}/damaged`;
  await Deno.mkdir(pristine);
  await test.build(pristine);
  await copyDir(pristine, damaged);
  if (test.damage) {
    const bytes = await Deno.readFile(`${damaged}/img.qcow2`);
    test.damage(bytes);
    await Deno.writeFile(`${damaged}/img.qcow2`, bytes);
  }

  // The check alone: everything qemu-img prints must be the same.
  const json = await qemuCheck(damaged, spec, ["--output=json"]);
  const human = await qemuCheck(damaged, spec, []);
  if (test.expect && !test.expect(withoutMembers(json.stdout, []), json.stderr)) {
    throw new Error(`The case is built wrong; qemu-img reports:\n${json.stdout}${json.stderr}`);
  }
  const result = await labCheck(damaged, spec, "none");
  equal(formatCheckReport(result, "json"), json.stdout, "JSON report");
  equal(formatCheckReport(result), human.stdout, "human report");
  deepStrictEqual(stderrLines(result), lines(json.stderr), "diagnostics");
  equal(checkExitStatus(result), json.code, "exit status");

  for (const repair of test.repairs ?? ["leaks", "all"] as CheckRepair[]) {
    const difference = test.differs?.[repair] ?? {};
    const qemuDir = `${base}/qemu-${repair}`;
    const labDir = `${base}/lab-${repair}`;
    await copyDir(damaged, qemuDir);
    await copyDir(damaged, labDir);
    const qemu = await qemuCheck(qemuDir, spec, ["-r", repair, "--output=json"]);
    const lab = await labCheck(labDir, spec, repair);
    const what = `-r ${repair}`;
    if (difference.qemuFails) {
      equal(qemu.code, 1, `${what}: qemu-img was expected to fail`);
      equal(checkExitStatus(lab), 0, `${what}: exit status`);
    } else {
      equal(checkExitStatus(lab), qemu.code, `${what}: exit status`);
      const ignored = difference.members ?? [];
      deepStrictEqual(
        withoutMembers(formatCheckReport(lab, "json"), ignored),
        withoutMembers(qemu.stdout, ignored),
        `${what}: JSON report`,
      );
      if (!difference.messages) {
        deepStrictEqual(stderrLines(lab), lines(qemu.stderr), `${what}: diagnostics`);
      }
    }

    // The repaired images, as qemu-img sees them.
    const qemuAfter = await qemuCheck(qemuDir, spec, ["--output=json"]);
    const labAfter = await qemuCheck(labDir, spec, ["--output=json"]);
    if (difference.after !== undefined) {
      equal(labAfter.code, difference.after, `${what}: qemu-img check after the repair`);
    } else if (qemuAfter.code === 0 || difference.qemuFails) {
      equal(labAfter.code, 0, `${what}: qemu-img check after the repair:\n${labAfter.stderr}`);
    } else {
      equal(labAfter.code, qemuAfter.code, `${what}: qemu-img check after the repair`);
    }
    // The dirty and corrupt bits: cleared by a repair that leaves nothing broken, kept otherwise.
    // (When qemu-img's repair fails it still clears the dirty bit as it closes; qcowlab keeps it.)
    if (difference.qemuFails) {
      const clean = { dirty: false, corrupt: false };
      deepStrictEqual(await flags(labDir, spec), clean, `${what}: header bits`);
    } else if (qemu.code !== 1) {
      deepStrictEqual(
        await flags(labDir, spec),
        await flags(qemuDir, spec),
        `${what}: header bits`,
      );
    }
    const reference = difference.qemuFails ? damaged : qemuDir;
    const same = await sameContents(spec, reference, labDir);
    if (same !== null) ok(same, `${what}: contents differ from qemu-img's repair`);
    if (test.keepsContents && labAfter.code === 0) {
      ok(await sameContents(spec, pristine, labDir), `${what}: contents differ from the original`);
    }
  }
}

for (const test of CASES) {
  Deno.test({
    name: HAVE_QEMU
      ? `checkQcow2() matches qemu-img check: ${test.name}`
      : `${test.name} (skipped)`,
    ignore: !HAVE_QEMU,
    async fn() {
      await using dir = await makeTempDir();
      await runCase(test, dir.path);
    },
  });
}
