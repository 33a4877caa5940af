/**
 * A small qcow2 workload that reaches every allocation event, run over a fault-injecting device,
 * with a model of what must read back afterwards.
 *
 * @module
 */

import { MemoryDevice } from "../core/memory_device.ts";
import { isQcowError } from "../core/errors.ts";
import { createQcow2 } from "../drivers/qcow2/create.ts";
import { openImage } from "../drivers/open_image.ts";
import type { Qcow2Image } from "../drivers/qcow2/qcow2_image.ts";
import { FaultyDevice } from "../emulator/faulty_device.ts";
import type { FaultRule } from "../emulator/fault_rule.ts";

/** Image geometry of the workload: tiny clusters and wide refcounts, so tables fill up fast. */
export const GEOMETRY = { size: 4 << 20, clusterSize: 512, refcountBits: 64 } as const;

/** What one run did. */
export interface FaultRun {
  /** The image file's bytes after the run and a close attempt. */
  bytes: Uint8Array;
  /** Each request and what it returned ("ok" or an error code). */
  results: string[];
  /** Whether the final close succeeded. */
  closed: boolean;
  /** Virtual contents every acknowledged request implies. */
  model: Uint8Array;
  /** 1 where the model cannot know the contents (a request there failed). */
  unknown: Uint8Array;
  /** Faults injected. */
  faults: number;
  /** Final virtual size. */
  size: number;
  /** Driver events announced, by name. */
  events: Readonly<Record<string, number>>;
  /** I/O requests that reached the device, by kind. */
  io: Readonly<Record<string, number>>;
}

type Op = [
  string,
  (image: Qcow2Image) => Promise<void>,
  (model: Uint8Array) => void,
  number,
  number,
];

function pattern(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = (i * 31 + seed * 7 + 1) & 0xff;
  return out;
}

function ops(growth: boolean): Op[] {
  const cs = GEOMETRY.clusterSize;
  const list: Op[] = [];
  const write = (offset: number, length: number, seed: number): void => {
    const data = pattern(length, seed);
    list.push([
      `write ${offset} ${length}`,
      (image) => image.write(data, offset),
      (model) => model.set(data, offset),
      offset,
      length,
    ]);
  };
  const flush = (): void => {
    list.push(["flush", (image) => image.flush(), () => {}, 0, 0]);
  };
  write(0, 8 * cs, 1); // first L2 table, L1 update, data clusters
  write(100 * cs + 17, 700, 2); // partial clusters
  const back = new Uint8Array(8 * cs);
  list.push(["read", (image) => image.read(back, 0), () => {}, 0, 0]);
  flush();
  const packed = new Uint8Array(cs).fill(0x5a);
  list.push([
    "write -c",
    (image) => image.writeCompressed(packed, 40 * cs),
    (model) => model.set(packed, 40 * cs),
    40 * cs,
    cs,
  ]);
  flush();
  write(40 * cs + 10, 20, 3); // copy-on-write out of the compressed cluster
  list.push([
    "discard",
    (image) => image.discard(0, 4 * cs),
    (model) => model.fill(0, 0, 4 * cs),
    0,
    4 * cs,
  ]);
  list.push([
    "write -z",
    (image) => image.writeZeroes(100 * cs, 2 * cs),
    (model) => model.fill(0, 100 * cs, 102 * cs),
    100 * cs,
    2 * cs,
  ]);
  flush();
  // Enough clusters to need new refcount blocks (and, with `growth`, a bigger refcount table).
  write(1 << 20, (growth ? 4200 : 300) * cs, 4);
  write(3.5 * (1 << 20), 40 * cs, 5);
  flush();
  list.push(["resize", (image) => image.resize(GEOMETRY.size * 2), () => {}, 0, 0]);
  write(GEOMETRY.size * 2 - cs, cs, 6); // through the grown L1 table
  write(GEOMETRY.size - 64 * cs, 2 * cs, 7); // a new L2 table of the old range, after the growth
  flush();
  return list;
}

/** Names of the requests of the workload, in order. */
export const OPERATIONS: readonly string[] = ops(false).map((op) => op[0]);

/**
 * Creates the image, runs the workload over a FaultyDevice with `rules`, closes it. With `growth`
 * the workload writes enough (2 MiB) to make the refcount table grow, which takes ten times longer.
 */
export async function runFaultWorkload(rules: FaultRule[], growth = false): Promise<FaultRun> {
  const memory = new MemoryDevice({ name: "fault.qcow2" });
  await createQcow2(memory, GEOMETRY);
  const faulty = new FaultyDevice(memory, { rules });
  const size = GEOMETRY.size * 2;
  const model = new Uint8Array(size);
  const unknown = new Uint8Array(size);
  const results: string[] = [];
  let image: Qcow2Image;
  try {
    image = await openImage(faulty, { readOnly: false }) as Qcow2Image;
  } catch (error) {
    if (!isQcowError(error)) throw error;
    // Nothing was written: the image is as created.
    return {
      bytes: memory.toBytes(),
      results: [`open ${error.code}`],
      closed: false,
      model,
      unknown,
      faults: faulty.stats.faults.length,
      size: GEOMETRY.size,
      events: faulty.stats.events,
      io: faulty.stats.io,
    };
  }
  for (const [, run, apply, offset, length] of ops(growth)) {
    try {
      await run(image);
      apply(model);
      results.push("ok");
    } catch (error) {
      if (!isQcowError(error)) throw error;
      results.push(error.code);
      unknown.fill(1, offset, offset + length);
    }
  }
  let closed = true;
  try {
    await image.close();
  } catch (error) {
    if (!isQcowError(error)) throw error;
    closed = false;
  }
  return {
    bytes: memory.toBytes(),
    results,
    closed,
    model,
    unknown,
    faults: faulty.stats.faults.length,
    size: image.size,
    events: faulty.stats.events,
    io: faulty.stats.io,
  };
}
