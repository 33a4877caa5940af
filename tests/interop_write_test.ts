/**
 * Interoperability of the write path with QEMU: images written by qcowlab must pass
 * `qemu-img check` with no errors and no leaks and read as the model says (`qemu-img compare`),
 * images written by qemu-io and qcowlab in turn must too, and the same operations run through
 * qemu-io and through qcowlab must leave disks that read the same.
 *
 * Environment: QCOWLAB_INTEROP_SEED and QCOWLAB_INTEROP_CASES change the random sample.
 *
 * @module
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import { isQcowError } from "../core/errors.ts";
import { FileDevice } from "../core/file_device.ts";
import type { Image } from "../drivers/image.ts";
import { openImage } from "../drivers/open_image.ts";
import { createQcow2, type CreateQcow2Options } from "../drivers/qcow2/create.ts";
import { MemoryDevice } from "../core/memory_device.ts";
import { assertStructure, type StructureSummary } from "./_structure.ts";
import {
  DiskModel,
  fillRandom,
  type ImageOptions,
  opArbitrary,
  optionsArbitrary,
  runScenario,
} from "./_model.ts";
import {
  firstDifference,
  HAVE_QEMU,
  makeTempDir,
  qemuImg,
  runTool,
  seededRandom,
} from "./_qemu.ts";

if (!HAVE_QEMU) {
  console.warn("qemu-img or qemu-io is not installed: skipping the qemu write interop tests");
}

const KiB = 1024;
const MiB = 1024 * KiB;
const SEED = Number(Deno.env.get("QCOWLAB_INTEROP_SEED") ?? 0x1ea5e);
const CASES = Number(Deno.env.get("QCOWLAB_INTEROP_CASES") ?? 40);

function interop(name: string, fn: () => Promise<void>): void {
  Deno.test({
    name: HAVE_QEMU ? name : `${name} (skipped: qemu-img not installed)`,
    ignore: !HAVE_QEMU,
    fn,
  });
}

/** `qemu-img check` must find no errors and no leaks; returns its JSON report. */
async function assertQemuCheck(path: string): Promise<Record<string, unknown>> {
  let report: Record<string, unknown>;
  try {
    report = JSON.parse(await qemuImg("check", "--output=json", path));
  } catch (error) {
    // qemu-img check exits 2 or 3 with problems found; show what it says in words.
    const words = await new Deno.Command("qemu-img", { args: ["check", path], stdout: "piped" })
      .output();
    throw new Error(`qemu-img check ${path}:\n${new TextDecoder().decode(words.stdout)}`, {
      cause: error,
    });
  }
  assert.equal(report["check-errors"], 0, `check errors in ${path}`);
  assert.equal(report["corruptions"] ?? 0, 0, `corruptions in ${path}`);
  assert.equal(report["leaks"] ?? 0, 0, `leaks in ${path}`);
  return report;
}

/** `qemu-img compare` must call the two disks identical. */
async function assertQemuIdentical(
  image: string,
  other: string,
  otherFormat: "raw" | "qcow2",
): Promise<void> {
  const out = await qemuImg("compare", "-f", "qcow2", "-F", otherFormat, image, other);
  assert.match(out, /Images are identical/);
}

/** Opens a qcow2 file for writing with qcowlab (its backing file from the same directory). */
function openFile(path: string): Promise<Image> {
  return openImage(path, { readOnly: false });
}

/** Runs `fn` on a file with qcowlab, closes it and checks its structure. */
async function withQcowlab(path: string, fn: (image: Image) => Promise<void>): Promise<void> {
  const image = await openFile(path);
  try {
    await fn(image);
  } finally {
    await image.close();
  }
  const device = FileDevice.open(path, { readOnly: true });
  try {
    await assertStructure(device);
  } finally {
    await device.close();
  }
}

// --- Differential cases: the same steps through qemu-io and through qcowlab. -------------------

/** A step both writers can take; patterns are byte values. */
type Step =
  | ["write", number, number, number]
  | ["zero", number, number]
  | ["zero-unmap", number, number]
  | ["discard", number, number]
  | ["compress", number, number, number]
  | ["resize", number]
  | ["shrink", number];

/** How a differential case creates its images (qemu-img create options). */
interface DiffImage {
  size: number;
  compat?: "0.10" | "1.1";
  clusterSize?: number;
  extendedL2?: boolean;
  refcountBits?: number;
  /** A raw backing file of this many bytes of 0x11, named base.raw. */
  backingSize?: number;
  /** preallocation=metadata. */
  preallocate?: boolean;
}

function qemuCreateArgs(spec: DiffImage, path: string): string[] {
  const o = [`compat=${spec.compat ?? "1.1"}`];
  if (spec.clusterSize) o.push(`cluster_size=${spec.clusterSize}`);
  if (spec.extendedL2) o.push("extended_l2=on");
  if (spec.refcountBits) o.push(`refcount_bits=${spec.refcountBits}`);
  if (spec.preallocate) o.push("preallocation=metadata");
  const args = ["create", "-q", "-f", "qcow2", "-o", o.join(",")];
  if (spec.backingSize !== undefined) args.push("-b", "base.raw", "-F", "raw");
  return [...args, path, String(spec.size)];
}

function createOptionsOf(spec: DiffImage): CreateQcow2Options {
  const options: CreateQcow2Options = { size: spec.size, compat: spec.compat ?? "1.1" };
  if (spec.clusterSize) options.clusterSize = spec.clusterSize;
  if (spec.extendedL2) options.extendedL2 = true;
  if (spec.refcountBits) options.refcountBits = spec.refcountBits;
  if (spec.preallocate) options.preallocation = "metadata";
  if (spec.backingSize !== undefined) {
    options.backingFile = "base.raw";
    options.backingFormat = "raw";
  }
  return options;
}

/**
 * Runs qemu-io commands on a qcow2 image with `-t unsafe` (flushes skipped: thousands of small
 * writes would otherwise take seconds of fsync; the clean exit still writes everything), failing
 * when any command fails.
 */
async function qemuIoUnsafe(path: string, commands: string[]): Promise<void> {
  const args = ["-t", "unsafe", "-f", "qcow2", ...commands.flatMap((c) => ["-c", c]), path];
  const output = await runTool("qemu-io", args);
  const text = output.stdout + output.stderr;
  const failure = text.split("\n").find((line) => /failed|error/i.test(line));
  if (output.code !== 0 || failure !== undefined) {
    throw new Error(
      `qemu-io on ${path} failed (${output.code}): ${failure ?? text.slice(0, 2000)}`,
    );
  }
}

/** Runs steps through qemu-io / qemu-img; returns, per resize step, whether it was refused. */
async function qemuSteps(path: string, steps: Step[]): Promise<boolean[]> {
  const refused: boolean[] = [];
  let batch: string[] = [];
  const runBatch = async (): Promise<void> => {
    if (batch.length > 0) await qemuIoUnsafe(path, batch);
    batch = [];
  };
  for (const step of steps) {
    switch (step[0]) {
      case "write":
        batch.push(`write -P ${step[3]} ${step[1]} ${step[2]}`);
        break;
      case "zero":
        batch.push(`write -z ${step[1]} ${step[2]}`);
        break;
      case "zero-unmap":
        batch.push(`write -z -u ${step[1]} ${step[2]}`);
        break;
      case "discard":
        batch.push(`discard ${step[1]} ${step[2]}`);
        break;
      case "compress":
        batch.push(`write -c -P ${step[3]} ${step[1]} ${step[2]}`);
        break;
      case "resize":
      case "shrink": {
        await runBatch();
        const args = ["resize", "-q", "-f", "qcow2"];
        if (step[0] === "shrink") args.push("--shrink");
        const output = await new Deno.Command("qemu-img", {
          args: [...args, path, String(step[1])],
          stdout: "piped",
          stderr: "piped",
        }).output();
        refused.push(!output.success);
      }
    }
  }
  await runBatch();
  return refused;
}

/** Runs steps through qcowlab; returns, per resize step, whether it was refused. */
async function qcowlabSteps(image: Image, steps: Step[]): Promise<boolean[]> {
  const refused: boolean[] = [];
  for (const step of steps) {
    switch (step[0]) {
      case "write":
        await image.write(new Uint8Array(step[2]).fill(step[3]), step[1]);
        break;
      case "zero":
        await image.writeZeroes(step[1], step[2]);
        break;
      case "zero-unmap":
        await image.writeZeroes(step[1], step[2], { mayUnmap: true });
        break;
      case "discard":
        await image.discard(step[1], step[2]);
        break;
      case "compress":
        await image.writeCompressed(new Uint8Array(step[2]).fill(step[3]), step[1]);
        break;
      case "resize":
      case "shrink":
        try {
          await image.resize(step[1], { shrink: step[0] === "shrink" });
          refused.push(false);
        } catch (error) {
          if (!isQcowError(error)) throw error;
          refused.push(true);
        }
    }
  }
  return refused;
}

/**
 * Creates the same image with qemu-img and with qcowlab, applies `steps` with qemu-io and with
 * qcowlab, and requires identical disks, the same refusals, and clean checks of both; the model
 * (`_model.ts`) must agree with QEMU too, so these cases also check the model's rules.
 */
async function differential(spec: DiffImage, steps: Step[]): Promise<void> {
  await using dir = await makeTempDir();
  let backing: Uint8Array | undefined;
  if (spec.backingSize !== undefined) {
    backing = new Uint8Array(spec.backingSize).fill(0x11);
    await Deno.writeFile(`${dir.path}/base.raw`, backing);
  }
  const byQemu = `${dir.path}/qemu.qcow2`;
  const byQcowlab = `${dir.path}/qcowlab.qcow2`;
  await qemuImg(...qemuCreateArgs(spec, byQemu));
  const qemuRefused = await qemuSteps(byQemu, steps);

  const device = FileDevice.open(byQcowlab, { create: true, readOnly: false });
  try {
    await createQcow2(device, createOptionsOf(spec));
  } finally {
    await device.close();
  }
  let ourRefused: boolean[] = [];
  await withQcowlab(byQcowlab, async (image) => {
    ourRefused = await qcowlabSteps(image, steps);
  });
  assert.deepEqual(ourRefused, qemuRefused, "qcowlab and QEMU refuse different resizes");
  await assertQemuCheck(byQemu);
  await assertQemuCheck(byQcowlab);
  await assertQemuIdentical(byQcowlab, byQemu, "qcow2");
  const cs = spec.clusterSize ?? 64 * KiB;
  const model = modelSteps(new DiskModel(spec.size, cs, spec.compat !== "0.10", backing), steps);
  await Deno.writeFile(`${dir.path}/model.raw`, model.bytes);
  await assertQemuIdentical(byQemu, `${dir.path}/model.raw`, "raw");
}

/**
 * `count` seeded steps QEMU accepts: unaligned writes, zeroing writes, discards, grows, and
 * compressed writes into clusters nothing has touched yet (QEMU refuses others).
 */
function randomSteps(seed: number, spec: DiffImage, count: number): Step[] {
  const random = seededRandom(seed);
  const cs = spec.clusterSize ?? 64 * KiB;
  const touched = new Set<number>();
  const touch = (offset: number, length: number): void => {
    for (let c = Math.floor(offset / cs); c * cs < offset + length; c++) touched.add(c);
  };
  let size = spec.size;
  const steps: Step[] = [];
  const range = (): [number, number] => {
    const aligned = random() < 0.3;
    let offset = Math.floor(random() * size);
    if (aligned) offset -= offset % cs;
    const longest = Math.min(size - offset, 3 * cs);
    let length = 1 + Math.floor(random() * longest);
    if (aligned) length = Math.min(size - offset, Math.max(cs, length - (length % cs)));
    return [offset, length];
  };
  for (let k = 0; k < count; k++) {
    const r = random();
    if (r < 0.35) {
      const [offset, length] = range();
      steps.push(["write", offset, length, 1 + (k % 250)]);
      touch(offset, length);
    } else if (r < 0.55) {
      const [offset, length] = range();
      steps.push([random() < 0.5 ? "zero" : "zero-unmap", offset, length]);
      touch(offset, length);
    } else if (r < 0.75) {
      const [offset, length] = range();
      steps.push(["discard", offset, length]);
      touch(offset, length);
    } else if (r < 0.92) {
      const clusters = Math.ceil(size / cs);
      const c = Math.floor(random() * clusters);
      if (touched.has(c)) continue;
      const length = Math.min(cs, size - c * cs);
      steps.push(["compress", c * cs, length, 1 + (k % 250)]);
      touch(c * cs, length);
    } else {
      const grown = size + 512 * (1 + Math.floor(random() * ((2 * cs) / 512)));
      steps.push(["resize", grown]);
      // Refused (and so tested) where a version 2 image would expose its backing file.
      const refused = spec.compat === "0.10" && (spec.backingSize ?? 0) > size &&
        grown > Math.ceil(size / cs) * cs;
      // QEMU may write zeros over the rest of the old last cluster, which allocates it.
      touch(size - 1, 1);
      if (!refused) size = grown;
    }
  }
  return steps;
}

/** The images the random differential cases cycle through. */
const DIFFERENTIAL_IMAGES: DiffImage[] = [
  { size: 300 * KiB },
  { size: 300 * KiB, compat: "0.10" },
  { size: 260 * KiB, backingSize: 200 * KiB },
  { size: 260 * KiB, compat: "0.10", backingSize: 200 * KiB },
  { size: 200 * KiB, compat: "0.10", backingSize: 320 * KiB },
  { size: 128 * KiB, clusterSize: 32 * KiB, extendedL2: true, backingSize: 160 * KiB },
  { size: 70 * KiB, clusterSize: 4 * KiB, refcountBits: 1 },
  { size: 20 * KiB, clusterSize: 512, refcountBits: 64, backingSize: 8 * KiB },
  { size: 100 * KiB, clusterSize: 16 * KiB, extendedL2: true },
  { size: 100 * KiB, clusterSize: 2 * KiB, refcountBits: 8, backingSize: 120 * KiB },
];

interop("qemu-io and qcowlab leave the same disk after the same random steps", async () => {
  const rounds = 3;
  for (let round = 0; round < rounds; round++) {
    for (const [i, spec] of DIFFERENTIAL_IMAGES.entries()) {
      const seed = SEED + round * 100 + i;
      const steps = randomSteps(seed, spec, 24);
      try {
        await differential(spec, steps);
      } catch (error) {
        if (error instanceof Error) {
          error.message = `image ${JSON.stringify(spec)}, seed ${seed}, steps ${
            JSON.stringify(steps)
          }\n${error.message}`;
        }
        throw error;
      }
    }
  }
});

interop(
  "discard frees whole clusters and leaves partial ones, as qemu-io's discard does",
  () =>
    differential({ size: 256 * KiB }, [
      ["write", 0, 256 * KiB, 0xaa],
      ["discard", 0, 64 * KiB],
      ["discard", 96 * KiB, 32 * KiB],
      ["discard", 136 * KiB, 16 * KiB],
      ["discard", 160 * KiB, 96 * KiB],
    ]),
);

interop(
  "discard in a version 2 image without a backing file reads back as zeros",
  () =>
    differential({ size: 256 * KiB, compat: "0.10" }, [
      ["write", 0, 256 * KiB, 0xaa],
      ["discard", 0, 64 * KiB],
      ["discard", 100 * KiB, 156 * KiB],
    ]),
);

interop(
  "discard in a version 3 image over a backing file reads back as zeros",
  () =>
    differential({ size: 256 * KiB, backingSize: 256 * KiB }, [
      ["write", 0, 192 * KiB, 0xaa],
      ["discard", 0, 64 * KiB],
      ["discard", 128 * KiB, 128 * KiB],
    ]),
);

interop(
  "discard leaves a version 2 image with a backing file unchanged, as QEMU does",
  () =>
    differential({ size: 256 * KiB, compat: "0.10", backingSize: 256 * KiB }, [
      ["write", 0, 192 * KiB, 0xaa],
      ["discard", 0, 64 * KiB],
      ["discard", 128 * KiB, 128 * KiB],
    ]),
);

interop(
  "discard ignores subclusters of extended L2 clusters, as QEMU does",
  () =>
    differential({ size: 256 * KiB, clusterSize: 32 * KiB, extendedL2: true }, [
      ["write", 0, 256 * KiB, 0xaa],
      ["discard", 0, 16 * KiB],
      ["discard", 33 * KiB, 2 * KiB],
      ["discard", 64 * KiB, 32 * KiB],
      ["discard", 100 * KiB, 60 * KiB],
    ]),
);

interop(
  "discard of the partial last cluster counts only when it reaches the end of the disk",
  () =>
    differential({ size: 196 * KiB }, [
      ["write", 0, 196 * KiB, 0xaa],
      ["discard", 192 * KiB, 2 * KiB],
      ["discard", 128 * KiB, 66 * KiB],
      ["write", 0, 196 * KiB, 0xbb],
      ["discard", 192 * KiB, 4 * KiB],
    ]),
);

interop(
  "growing over a longer backing file reads zeros in version 3, as qemu-img resize does",
  () =>
    differential({ size: 100 * KiB, backingSize: 256 * KiB }, [
      ["write", 70 * KiB, 2 * KiB, 0xaa],
      ["resize", 320 * KiB],
      ["write", 300 * KiB, 4 * KiB, 0xbb],
    ]),
);

interop(
  "growing over a longer backing file is refused in version 2, as qemu-img resize does",
  () =>
    differential({ size: 64 * KiB, compat: "0.10", backingSize: 256 * KiB }, [
      ["write", 0, 4 * KiB, 0xaa],
      ["resize", 320 * KiB],
    ]),
);

interop(
  "growing a version 2 image over a longer backing file works inside its last cluster",
  () =>
    differential({ size: 200 * KiB, compat: "0.10", backingSize: 320 * KiB }, [
      ["write", 190 * KiB, 4 * KiB, 0xaa],
      ["resize", 215 * KiB],
      ["resize", 256 * KiB],
      ["resize", 257 * KiB],
    ]),
);

interop(
  "growing past a shorter backing file works in version 2 and reads zeros",
  () =>
    differential({ size: 256 * KiB, compat: "0.10", backingSize: 128 * KiB }, [
      ["write", 120 * KiB, 16 * KiB, 0xaa],
      ["resize", 512 * KiB],
    ]),
);

interop(
  "growing an extended L2 image over a longer backing file reads zeros",
  () =>
    differential(
      { size: 100 * KiB, clusterSize: 32 * KiB, extendedL2: true, backingSize: 1 * MiB },
      [
        ["write", 66 * KiB, 3 * KiB, 0xaa],
        ["resize", 200 * KiB],
        ["resize", 400 * KiB],
      ],
    ),
);

interop(
  "zeroing writes read back as zeros in every mode, as qemu-io's write -z does",
  () =>
    differential({ size: 512 * KiB, backingSize: 300 * KiB }, [
      // QEMU's compressed writes only go to unallocated clusters.
      ["compress", 64 * KiB, 64 * KiB, 0x5c],
      ["write", 0, 64 * KiB, 0xaa],
      ["write", 128 * KiB, 384 * KiB, 0xaa],
      ["zero", 1000, 70 * KiB],
      ["zero-unmap", 128 * KiB, 200 * KiB],
      ["zero", 400 * KiB, 112 * KiB],
    ]),
);

interop(
  "zeroing writes in a version 2 image with a backing file read back as zeros",
  () =>
    differential({ size: 512 * KiB, compat: "0.10", backingSize: 300 * KiB }, [
      ["write", 64 * KiB, 64 * KiB, 0xaa],
      ["zero", 0, 200 * KiB],
      ["zero-unmap", 256 * KiB, 256 * KiB],
    ]),
);

interop(
  "preallocated extended L2 clusters read the backing file, as qemu-img create makes them",
  () =>
    differential(
      {
        size: 256 * KiB,
        clusterSize: 32 * KiB,
        extendedL2: true,
        preallocate: true,
        backingSize: 192 * KiB,
      },
      [
        ["write", 33 * KiB, 1000, 0xaa],
        ["zero", 70 * KiB, 2 * KiB],
        ["write", 100 * KiB, 40 * KiB, 0xbb],
      ],
    ),
);

interop(
  "preallocated clusters take writes in place, as qemu-img create makes them",
  () =>
    differential({ size: 1 * MiB, clusterSize: 4 * KiB, preallocate: true }, [
      ["write", 5000, 10000, 0xaa],
      ["zero", 64 * KiB, 64 * KiB],
      ["discard", 200 * KiB, 100 * KiB],
      ["write", 210 * KiB, 1, 0xcc],
    ]),
);

// --- Random sequences: qcowlab writes, qemu-img judges. ----------------------------------------

/**
 * Options for sample case `i`, cycling through the matrix so every combination class turns up:
 * both versions, cluster sizes from 512 B to 2 MiB, every refcount width, extended L2, lazy
 * refcounts, preallocation, raw and qcow2 backing files. Sizes and seeds come from `sampled`.
 */
function matrixOptions(i: number, sampled: ImageOptions): ImageOptions {
  const sizes = [512, 1024, 4096, 16 * KiB, 32 * KiB, 64 * KiB];
  const clusterSize = i === 20 ? 2 * MiB : sizes[i % sizes.length]!;
  const v3 = i % 5 !== 4;
  const extendedL2 = v3 && clusterSize >= 16 * KiB && i % 2 === 0;
  const backingFormat = (["none", "raw", "qcow2"] as const)[i % 3]!;
  const options: ImageOptions = {
    compat: v3 ? "1.1" : "0.10",
    clusterSize,
    refcountBits: v3 ? 2 ** (i % 7) : 16,
    lazyRefcounts: v3 && i % 4 === 1,
    extendedL2,
    preallocation: i % 9 === 0 && (backingFormat === "none" || extendedL2),
    size: sampled.size,
    l2CacheTables: sampled.l2CacheTables,
  };
  if (backingFormat !== "none") {
    options.backing = {
      format: backingFormat,
      size: sampled.backing?.size ?? sampled.size,
      seed: sampled.backing?.seed ?? i,
      clusterSize: sampled.backing?.clusterSize ?? 64 * KiB,
    };
  }
  return options;
}

interop(
  `qemu-img check and compare accept what qcowlab writes in ${CASES} random sequences`,
  async () => {
    const sampled = fc.sample(optionsArbitrary, { seed: SEED, numRuns: CASES });
    const sequences = fc.sample(fc.array(opArbitrary, { minLength: 10, maxLength: 30 }), {
      seed: SEED + 1,
      numRuns: CASES,
    });
    for (let i = 0; i < CASES; i++) {
      const options = matrixOptions(i, sampled[i]!);
      const label = `case ${i} (seed ${SEED}): ${JSON.stringify(options)}`;
      try {
        const result = await runScenario({ options, ops: sequences[i]! });
        await using dir = await makeTempDir();
        const path = `${dir.path}/image.qcow2`;
        await Deno.writeFile(path, result.device.toBytes());
        if (result.backing) {
          await Deno.writeFile(
            `${dir.path}/${result.backing.name}`,
            result.backing.device.toBytes(),
          );
        }
        await Deno.writeFile(`${dir.path}/model.raw`, result.model.bytes);
        await assertQemuCheck(path);
        await assertQemuIdentical(path, `${dir.path}/model.raw`, "raw");
      } catch (error) {
        if (error instanceof Error) error.message = `${label}\n${error.message}`;
        throw error;
      }
    }
  },
);

// --- Mixed writers: qemu-io and qcowlab take turns on one image. --------------------------------

type Writer = "qemu" | "qcowlab";

/** Applies steps to the model with QEMU's semantics. */
function modelSteps(model: DiskModel, steps: Step[]): DiskModel {
  for (const step of steps) {
    switch (step[0]) {
      case "write":
      case "compress":
        model.write(new Uint8Array(step[2]).fill(step[3]), step[1]);
        break;
      case "zero":
      case "zero-unmap":
        model.zero(step[1], step[2]);
        break;
      case "discard":
        model.discard(step[1], step[2]);
        break;
      case "resize":
      case "shrink":
        if (step[0] === "shrink" || !model.growRefused(step[1])) model.resize(step[1]);
    }
  }
  return model;
}

/** A mixed case: how the image starts, then who does what in turn. */
interface MixedCase {
  image: DiffImage;
  /** Raw bytes to convert into the starting image with `qemu-img convert -c` instead. */
  convertCompressed?: Uint8Array;
  turns: [Writer, Step[]][];
}

/**
 * Runs the turns on one image file (qcowlab's turns in memory, for speed, written back to the
 * file), checks the structure after every turn, and at the end requires a clean `qemu-img check`
 * and a disk identical to the model.
 */
async function mixed(spec: MixedCase): Promise<StructureSummary> {
  await using dir = await makeTempDir();
  const path = `${dir.path}/mixed.qcow2`;
  const { image } = spec;
  let backing: Uint8Array | undefined;
  if (image.backingSize !== undefined) {
    backing = new Uint8Array(image.backingSize).fill(0x11);
    await Deno.writeFile(`${dir.path}/base.raw`, backing);
  }
  let model: DiskModel;
  const cs = image.clusterSize ?? 64 * KiB;
  if (spec.convertCompressed) {
    const source = `${dir.path}/source.raw`;
    await Deno.writeFile(source, spec.convertCompressed);
    const o = [`compat=${image.compat ?? "1.1"}`, `cluster_size=${cs}`];
    if (image.refcountBits) o.push(`refcount_bits=${image.refcountBits}`);
    if (image.extendedL2) o.push("extended_l2=on");
    await qemuImg("convert", "-c", "-f", "raw", "-O", "qcow2", "-o", o.join(","), source, path);
    model = new DiskModel(image.size, cs, image.compat !== "0.10", backing);
    model.write(spec.convertCompressed, 0);
  } else {
    await qemuImg(...qemuCreateArgs(image, path));
    model = new DiskModel(image.size, cs, image.compat !== "0.10", backing);
  }
  let summary: StructureSummary | undefined;
  for (const [turn, [writer, steps]] of spec.turns.entries()) {
    const refused = writer === "qemu" ? await qemuSteps(path, steps) : await inMemory(path, steps);
    // Every resize in these cases is expected to work.
    assert.ok(!refused.includes(true), `a resize was refused in turn ${turn}`);
    modelSteps(model, steps);
    const device = FileDevice.open(path, { readOnly: true });
    try {
      summary = await assertStructure(device, { label: `after turn ${turn} (${writer})` });
    } finally {
      await device.close();
    }
  }
  await Deno.writeFile(`${dir.path}/model.raw`, model.bytes);
  await assertQemuCheck(path);
  await assertQemuIdentical(path, `${dir.path}/model.raw`, "raw");
  return summary!;
}

/** Runs steps with qcowlab on a copy of the file in memory, then writes the copy back. */
async function inMemory(path: string, steps: Step[]): Promise<boolean[]> {
  const device = MemoryDevice.from(await Deno.readFile(path), { name: path });
  const image = await openImage(device, { readOnly: false });
  let refused: boolean[];
  try {
    refused = await qcowlabSteps(image, steps);
  } finally {
    await image.close();
  }
  await Deno.writeFile(path, device.toBytes());
  return refused;
}

interop("qcowlab overwrites, zeroes and discards in an image qemu-io wrote", async () => {
  await mixed({
    image: { size: 2 * MiB },
    turns: [
      ["qemu", [
        ["write", 0, 300 * KiB, 1],
        ["compress", 384 * KiB, 128 * KiB, 2],
        ["zero", 640 * KiB, 64 * KiB],
        ["write", 1 * MiB, 100, 3],
        ["discard", 128 * KiB, 64 * KiB],
      ]],
      ["qcowlab", [
        ["write", 390 * KiB, 1000, 4],
        ["write", 640 * KiB + 10, 20, 5],
        ["write", 100 * KiB, 200 * KiB, 6],
        ["discard", 0, 64 * KiB],
        ["zero-unmap", 448 * KiB, 64 * KiB],
        ["compress", 1536 * KiB, 192 * KiB, 7],
      ]],
    ],
  });
});

interop("qemu-io writes on over an image qcowlab wrote", async () => {
  await mixed({
    image: { size: 2 * MiB, clusterSize: 4 * KiB },
    turns: [
      ["qemu", []],
      ["qcowlab", [
        ["write", 1000, 70 * KiB, 1],
        ["compress", 128 * KiB, 64 * KiB, 2],
        ["zero", 200 * KiB, 64 * KiB],
        ["discard", 8 * KiB, 16 * KiB],
        ["resize", 3 * MiB],
      ]],
      ["qemu", [
        ["write", 130 * KiB, 100, 3],
        ["write", 0, 4 * KiB, 4],
        ["discard", 128 * KiB, 8 * KiB],
        ["compress", 2 * MiB, 64 * KiB, 5],
        ["write", 3 * MiB - 512, 512, 6],
      ]],
      ["qcowlab", [["write", 2 * MiB + 5, 10, 7], ["write", 129 * KiB, 3, 8]]],
    ],
  });
});

interop("qcowlab partially overwrites compressed clusters qemu-img convert -c wrote", async () => {
  const size = 1 * MiB;
  // Half random (incompressible), half patterned, so the compressed streams have uneven lengths
  // and some share host clusters or straddle two.
  const source = new Uint8Array(size);
  const random = seededRandom(7);
  for (let at = 0; at < size; at += 16 * KiB) {
    const chunk = source.subarray(at, at + 16 * KiB);
    if (random() < 0.5) fillRandom(chunk, at);
    else chunk.fill(at / (16 * KiB));
  }
  for (const clusterSize of [4 * KiB, 64 * KiB]) {
    const summary = await mixed({
      image: { size, clusterSize },
      convertCompressed: source,
      turns: [
        ["qcowlab", [
          ["write", 5000, 100, 1],
          ["write", 70 * KiB, 20 * KiB, 2],
          ["discard", 256 * KiB, 64 * KiB],
          ["zero", 400 * KiB, 100 * KiB],
          ["compress", 512 * KiB, 128 * KiB, 3],
          ["write", 513 * KiB, 1, 4],
        ]],
        ["qemu", [["write", 6000, 10, 5]]],
      ],
    });
    assert.ok(summary.compressedClusters > 0, "no compressed clusters left to test");
  }
});

interop("extended L2 images take subcluster writes from qemu-io and qcowlab in turn", async () => {
  await mixed({
    image: { size: 1 * MiB, clusterSize: 32 * KiB, extendedL2: true, backingSize: 768 * KiB },
    turns: [
      ["qemu", [
        ["write", 1 * KiB, 1 * KiB, 1],
        ["write", 40 * KiB, 100, 2],
        ["zero", 64 * KiB, 3 * KiB],
        ["compress", 128 * KiB, 32 * KiB, 3],
        ["discard", 192 * KiB, 32 * KiB],
      ]],
      ["qcowlab", [
        ["write", 2 * KiB + 7, 3000, 4],
        ["write", 65 * KiB, 512, 5],
        ["write", 129 * KiB, 10, 6],
        ["zero-unmap", 40 * KiB, 4 * KiB],
        ["write", 700 * KiB, 200 * KiB, 7],
        ["resize", 1536 * KiB],
      ]],
      ["qemu", [["write", 3 * KiB, 2 * KiB, 8], ["write", 1500 * KiB, 1 * KiB, 9]]],
    ],
  });
});

/** `count` seeded single writes of `length` bytes scattered over `[from, to)`. */
function scattered(seed: number, count: number, to: number, length: number, from = 0): Step[] {
  const random = seededRandom(seed);
  const steps: Step[] = [];
  for (let k = 0; k < count; k++) {
    const at = from + Math.floor((random() * (to - from - length)) / 512) * 512;
    steps.push(["write", at, length, 1 + (k % 250)]);
  }
  return steps;
}

interop(
  "512-byte clusters in a 64 MiB sparse image grow the refcount table for both writers",
  async () => {
    const size = 64 * MiB;
    // 16-bit refcounts in 512-byte clusters: a refcount table cluster covers 8 MiB of file.
    const first = await mixed({
      image: { size, clusterSize: 512 },
      turns: [
        ["qcowlab", scattered(1, 2500, size, 4 * KiB)],
        ["qemu", scattered(2, 300, size, 2 * KiB)],
        ["qcowlab", scattered(3, 300, size, 3 * KiB)],
      ],
    });
    assert.ok(first.refcountTableClusters > 1, "qcowlab never grew the refcount table");
    const second = await mixed({
      image: { size, clusterSize: 512 },
      turns: [
        ["qemu", scattered(4, 2500, size, 4 * KiB)],
        // QEMU leaves a 2-cluster table (16 MiB of file); this takes the file past that.
        ["qcowlab", scattered(5, 2500, size, 4 * KiB)],
      ],
    });
    assert.ok(second.refcountTableClusters > 2, "qcowlab did not grow QEMU's refcount table");
  },
);

for (const refcountBits of [1, 64]) {
  interop(
    `images with ${refcountBits}-bit refcounts take compressed and plain writes from both`,
    async () => {
      const summary = await mixed({
        image: { size: 4 * MiB, clusterSize: 4 * KiB, refcountBits },
        turns: [
          ["qemu", [
            ["compress", 0, 64 * KiB, 1],
            ["write", 64 * KiB, 64 * KiB, 2],
            ["discard", 16 * KiB, 8 * KiB],
          ]],
          ["qcowlab", [
            ["compress", 128 * KiB, 64 * KiB, 3],
            ["write", 130 * KiB, 100, 4],
            ["write", 1000, 10, 5],
            ["zero", 64 * KiB, 8 * KiB],
            ...scattered(6, 200, 3 * MiB, 8 * KiB, 256 * KiB),
          ]],
          // QEMU compresses only into unallocated clusters.
          ["qemu", [["compress", 3 * MiB, 64 * KiB, 6], ["write", 129 * KiB, 2, 7]]],
        ],
      });
      if (refcountBits === 1) assert.equal(summary.maxRefcount, 1);
      else {assert.ok(
          summary.sharedHostClusters > 0,
          "no host cluster shared by compressed clusters",
        );}
    },
  );
}

interop("a version 2 image with a backing file keeps discarded data for both writers", async () => {
  await mixed({
    image: { size: 512 * KiB, compat: "0.10", backingSize: 384 * KiB },
    turns: [
      ["qemu", [["write", 0, 256 * KiB, 1], ["discard", 0, 128 * KiB]]],
      ["qcowlab", [
        ["discard", 128 * KiB, 128 * KiB],
        ["write", 300 * KiB, 10 * KiB, 2],
        ["zero", 64 * KiB, 64 * KiB],
      ]],
      ["qemu", [["discard", 256 * KiB, 256 * KiB], ["write", 100, 100, 3]]],
    ],
  });
});

// --- Concurrency. -------------------------------------------------------------------------------

/** A write in flight: its range and the byte it writes (which names the writer). */
interface Flight {
  offset: number;
  length: number;
  value: number;
  /** How it is written; default a plain write. */
  how?: "zeroes" | "compressed";
}

/**
 * Checks that `disk` is what some serial order of `writes` over `initial` leaves: every byte is
 * the initial byte (if no write covers it) or the value of a covering write, and the "written
 * after" relation those choices imply has no cycle.
 */
function assertSerializable(disk: Uint8Array, initial: Uint8Array, writes: Flight[]): void {
  const after = writes.map(() => new Set<number>());
  const byValue = new Map(writes.map((w, i) => [w.value, i]));
  for (let at = 0; at < disk.length; at++) {
    const covering: number[] = [];
    for (const [i, w] of writes.entries()) {
      if (at >= w.offset && at < w.offset + w.length) covering.push(i);
    }
    if (covering.length === 0) {
      assert.equal(disk[at], initial[at], `byte ${at} written by nobody changed`);
      continue;
    }
    const winner = byValue.get(disk[at]!);
    assert.ok(
      winner !== undefined && covering.includes(winner),
      `byte ${at} is ${disk[at]}, which none of the writes covering it wrote`,
    );
    for (const i of covering) if (i !== winner) after[winner]!.add(i);
  }
  // Kahn's algorithm: a cycle means no serial order explains the disk.
  const pending = after.map((s) => s.size);
  const waiting = writes.map(() => [] as number[]);
  after.forEach((set, w) => set.forEach((i) => waiting[i]!.push(w)));
  const ready = pending.flatMap((n, i) => (n === 0 ? [i] : []));
  let ordered = 0;
  while (ready.length > 0) {
    const i = ready.pop()!;
    ordered++;
    for (const w of waiting[i]!) if (--pending[w]! === 0) ready.push(w);
  }
  assert.equal(ordered, writes.length, "the disk matches no serial order of the writes");
}

async function concurrentCase(useFile: boolean): Promise<void> {
  await using dir = await makeTempDir();
  const cs = 4 * KiB;
  const size = 1 * MiB;
  const initial = new Uint8Array(size).fill(0xee);
  await Deno.writeFile(`${dir.path}/base.raw`, initial);
  const path = `${dir.path}/busy.qcow2`;
  await qemuImg(...qemuCreateArgs({ size, clusterSize: cs, backingSize: size }, path));
  const device = useFile
    ? FileDevice.open(path, { readOnly: false })
    : MemoryDevice.from(await Deno.readFile(path), { name: path });
  const image = await openImage(device, { readOnly: false, l2CacheSize: 2 * cs });
  const random = seededRandom(useFile ? 11 : 12);
  const writes: Flight[] = [];
  // Disjoint writes in the first half, overlapping ones crowded into the second.
  for (let k = 0; k < 32; k++) {
    const slot = (size / 2) / 32;
    const length = 1 + Math.floor(random() * (slot - 1));
    writes.push({
      offset: k * slot + Math.floor(random() * (slot - length)),
      length,
      value: k + 1,
    });
  }
  for (let k = 32; k < 64; k++) {
    const length = 1 + Math.floor(random() * 3 * cs);
    const offset = size / 2 + Math.floor(random() * (64 * KiB - length));
    writes.push({ offset, length, value: k + 1 });
  }
  // One zeroing write (the only writer of 0) and compressed whole clusters among them.
  writes.push({ offset: size / 2 + 5000, length: 3 * cs, value: 0, how: "zeroes" });
  for (let k = 0; k < 4; k++) {
    const offset = size / 2 + Math.floor(random() * 15) * cs;
    writes.push({ offset, length: cs, value: 100 + k, how: "compressed" });
  }
  const reads = Array.from({ length: 32 }, () => {
    const length = 1 + Math.floor(random() * 8 * cs);
    return { offset: Math.floor(random() * (size - length)), buffer: new Uint8Array(length) };
  });
  const jobs: Promise<void>[] = [];
  for (const [k, w] of writes.entries()) {
    const data = new Uint8Array(w.length).fill(w.value);
    if (w.how === "zeroes") jobs.push(image.writeZeroes(w.offset, w.length));
    else if (w.how === "compressed") jobs.push(image.writeCompressed(data, w.offset));
    else jobs.push(image.write(data, w.offset));
    const r = reads[k >> 1];
    if (k % 2 === 0 && r) jobs.push(image.read(r.buffer, r.offset));
  }
  await Promise.all(jobs);
  const disk = new Uint8Array(size);
  await image.read(disk, 0);
  await image.close();
  if (useFile) await device.close();

  assertSerializable(disk, initial, writes);
  for (const [k, w] of writes.entries()) {
    if (k >= 32) break;
    const at = firstDifference(
      disk.subarray(w.offset, w.offset + w.length),
      new Uint8Array(w.length).fill(w.value),
    );
    assert.equal(at, -1, `disjoint write ${k} is not all there`);
  }
  // A read sees, byte by byte, the initial data or a write covering that byte.
  for (const r of reads) {
    for (let i = 0; i < r.buffer.length; i++) {
      const at = r.offset + i;
      const v = r.buffer[i]!;
      if (v === initial[at]) continue;
      const w = writes.find((candidate) => candidate.value === v);
      assert.ok(w && at >= w.offset && at < w.offset + w.length, `read byte ${at} is ${v}`);
    }
  }
  if (!useFile) await Deno.writeFile(path, (device as MemoryDevice).toBytes());
  const check = FileDevice.open(path, { readOnly: true });
  try {
    await assertStructure(check);
  } finally {
    await check.close();
  }
  await Deno.writeFile(`${dir.path}/expected.raw`, disk);
  await assertQemuCheck(path);
  await assertQemuIdentical(path, `${dir.path}/expected.raw`, "raw");
}

interop(
  "writes and reads in flight together leave a serial result in memory",
  () => concurrentCase(false),
);

interop(
  "writes and reads in flight together leave a serial result in a file",
  () => concurrentCase(true),
);
