/**
 * Measures the memory that opening, reading and mapping one image takes, in a process of its own
 * so earlier work does not hide it. Run by bench.ts as
 * `deno run -A --v8-flags=--expose-gc bench/_memory_probe.ts BIG WARMUP OFFSET...`: WARMUP is a
 * small image opened first so that compiled code is not counted; each OFFSET is read (64 KiB).
 * Prints one JSON object.
 *
 * @module
 */

import { mapImage, openImage } from "../mod.ts";

/** What the probe prints. */
export interface MemoryProbeResult {
  /** Resident set size before and after, bytes. */
  rssBefore: number;
  rssAfter: number;
  /** V8 heap in use plus external memory (array buffers) before and after, bytes. */
  heapBefore: number;
  heapAfter: number;
  /** Entries `mapImage` returned. */
  mapEntries: number;
  /** Bytes mapImage reports as data. */
  dataBytes: number;
  /** The first byte of each read, to check the reads saw the data. */
  firstBytes: number[];
}

function collect(): void {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (gc) {
    gc();
    gc();
  }
}

function heap(): number {
  const usage = Deno.memoryUsage();
  return usage.heapUsed + usage.external;
}

interface Exercised {
  mapEntries: number;
  dataBytes: number;
  firstBytes: number[];
}

/** Opens `path`, reads 64 KiB at each offset, maps it, then calls `whileOpen` before closing. */
async function exercise(
  path: string,
  offsets: number[],
  whileOpen: () => void = () => {},
): Promise<Exercised> {
  await using image = await openImage(path);
  const buffer = new Uint8Array(65536);
  const firstBytes: number[] = [];
  for (const offset of offsets) {
    await image.read(buffer, offset);
    firstBytes.push(buffer[0]!);
  }
  const map = await mapImage(image);
  let dataBytes = 0;
  for (const entry of map) if (entry.data) dataBytes += entry.length;
  whileOpen();
  return { mapEntries: map.length, dataBytes, firstBytes };
}

async function main(): Promise<void> {
  const [big, warmup, ...rest] = Deno.args;
  if (big === undefined || warmup === undefined) {
    throw new TypeError("usage: _memory_probe.ts BIG WARMUP OFFSET...");
  }
  const offsets = rest.map(Number);
  await exercise(warmup, [0]);
  collect();
  const rssBefore = Deno.memoryUsage().rss;
  const heapBefore = heap();
  let rssAfter = 0;
  let heapAfter = 0;
  // Measured with the image still open and the map still referenced: their memory counts.
  const seen = await exercise(big, offsets, () => {
    rssAfter = Deno.memoryUsage().rss;
    collect();
    heapAfter = heap();
  });
  const result: MemoryProbeResult = { rssBefore, rssAfter, heapBefore, heapAfter, ...seen };
  console.log(JSON.stringify(result));
}

if (import.meta.main) await main();
