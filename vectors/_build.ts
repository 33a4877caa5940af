/**
 * Builds a vector's files in memory from its declaration: creates each layer, runs its content
 * recipe, leaves the top image in the declared state.
 *
 * @module
 */

import { MemoryDevice } from "../core/memory_device.ts";
import { mulberry32 } from "../core/_random.ts";
import { QcowError } from "../core/errors.ts";
import type { Image } from "../drivers/image.ts";
import { openImage } from "../drivers/open_image.ts";
import { createQcow, type CreateQcowOptions } from "../drivers/qcow/create.ts";
import { createQcow2, type CreateQcow2Options } from "../drivers/qcow2/create.ts";
import { Qcow2Image } from "../drivers/qcow2/qcow2_image.ts";
import { applyEdits } from "./_edits.ts";
import { fillPattern, hashSeed } from "./_prng.ts";
import type { Layer, Step, VectorSpec } from "./spec.ts";

/** One generated file. */
export interface BuiltFile {
  name: string;
  format: "raw" | "qcow" | "qcow2";
  bytes: Uint8Array;
}

/** Largest buffer a single step writes at once. */
const STEP_CHUNK = 4 * 1024 * 1024;

async function writeSpread(
  image: Image,
  offset: number,
  length: number,
  pattern: number | "random" | "compressible",
  next: () => number,
  compressed: boolean,
): Promise<void> {
  for (let done = 0; done < length;) {
    const n = Math.min(STEP_CHUNK, length - done);
    const data = new Uint8Array(n);
    fillPattern(data, pattern, next);
    if (compressed) await image.writeCompressed(data, offset + done);
    else await image.write(data, offset + done);
    done += n;
  }
}

function qcow2Of(image: Image, op: string): Qcow2Image {
  if (!(image instanceof Qcow2Image)) {
    throw new QcowError(
      "INVALID_ARGUMENT",
      `A ${op} step needs a qcow2 image, not ${image.format}`,
    );
  }
  return image;
}

/** Runs one step of a recipe. */
async function runStep(image: Image, step: Step, seed: number): Promise<void> {
  const next = mulberry32(seed);
  switch (step.op) {
    case "write":
      return await writeSpread(image, step.offset, step.length, step.pattern, next, false);
    case "compressed":
      return await writeSpread(image, step.offset, step.length, step.pattern, next, true);
    case "zero":
      return await image.writeZeroes(step.offset, step.length, { mayUnmap: step.unmap ?? false });
    case "discard":
      return await image.discard(step.offset, step.length);
    case "resize":
      return await image.resize(step.size);
    case "scatter":
      for (let i = 0; i < step.count; i++) {
        const length = 1 + (next() % step.maxLength);
        const offset = next() % Math.max(1, image.size - length);
        const data = new Uint8Array(length).fill(1 + (next() % 255));
        await image.write(data, offset);
      }
      return;
    case "snapshot":
      await qcow2Of(image, step.op).createSnapshot(step.name, {
        date: (step.dateSeconds ?? 0) * 1000,
      });
      return;
    case "revert":
      await qcow2Of(image, step.op).applySnapshot(step.name);
      return;
  }
}

function createOptions(layer: Layer, below: Layer | undefined): CreateQcow2Options {
  const options: CreateQcow2Options = { size: layer.create.size };
  const c = layer.create;
  if (c.compat !== undefined) options.compat = c.compat;
  if (c.clusterSize !== undefined) options.clusterSize = c.clusterSize;
  if (c.refcountBits !== undefined) options.refcountBits = c.refcountBits;
  if (c.lazyRefcounts !== undefined) options.lazyRefcounts = c.lazyRefcounts;
  if (c.extendedL2 !== undefined) options.extendedL2 = c.extendedL2;
  if (c.preallocation !== undefined) options.preallocation = c.preallocation;
  if (below !== undefined) {
    options.backingFile = below.name;
    if (layer.backingFormat ?? true) options.backingFormat = below.format as "raw" | "qcow2";
  }
  return options;
}

function qcowOptions(layer: Layer, below: Layer | undefined): CreateQcowOptions {
  const options: CreateQcowOptions = { size: layer.create.size };
  if (layer.create.clusterSize !== undefined) options.clusterSize = layer.create.clusterSize;
  if (layer.create.l2Entries !== undefined) options.l2Entries = layer.create.l2Entries;
  if (below !== undefined) options.backingFile = below.name;
  return options;
}

/**
 * Builds every file of a vector. `seed` is the catalog seed; each step draws from its own
 * generator, seeded by the vector id, layer name and step number.
 */
export async function buildVector(spec: VectorSpec, seed: number): Promise<BuiltFile[]> {
  const devices = new Map<string, MemoryDevice>();
  const files: BuiltFile[] = [];
  for (let i = 0; i < spec.layers.length; i++) {
    const layer = spec.layers[i]!;
    const below = spec.layers[i - 1];
    const top = i === spec.layers.length - 1;
    const state = top ? spec.state ?? { kind: "clean" as const } : { kind: "clean" as const };
    const device = new MemoryDevice({ name: layer.name });
    if (layer.format === "raw") await device.truncate(layer.create.size);
    else if (layer.format === "qcow") await createQcow(device, qcowOptions(layer, below));
    else await createQcow2(device, createOptions(layer, below));
    const image = await openImage(device, {
      format: layer.format,
      readOnly: false,
      resolveBacking: (name) => {
        const found = devices.get(name);
        if (!found) throw new QcowError("BACKING_MISSING", `No layer named ${name}`);
        return found;
      },
    });
    for (let s = 0; s < layer.steps.length; s++) {
      await runStep(image, layer.steps[s]!, hashSeed(seed, `${spec.id}/${layer.name}/${s}`));
    }
    if (state.kind === "dirty-crash") {
      // Everything but the deferred refcounts reaches the device; the image is never closed.
      await image.flush();
    } else {
      await image.close();
    }
    let bytes = device.toBytes();
    if (state.kind === "damaged") bytes = applyEdits(bytes, state.edits);
    devices.set(layer.name, MemoryDevice.from(bytes, { name: layer.name }));
    files.push({ name: layer.name, format: layer.format, bytes });
  }
  return files;
}
