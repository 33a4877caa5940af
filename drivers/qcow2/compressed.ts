/**
 * Decompression of compressed qcow2 clusters, without I/O.
 *
 * @module
 */

import { Inflate } from "fflate";
import { QcowError } from "../../core/errors.ts";

/**
 * Input bytes handed to the inflater at a time. Deflate expands at most about 1032:1, so no step
 * produces more than about 4 MiB however the stream is built, and decoding stops once the cluster
 * is full: a small descriptor cannot make a read run for seconds producing bytes nobody reads.
 */
const STEP = 4096;

/**
 * Inflates one compressed cluster: raw deflate, as qcow2's zlib compression type stores it (fflate
 * does the decoding). As in QEMU, the stream only has to fill the cluster: output past it and
 * input after that point are ignored, and input that stops short is fine once the cluster is full.
 *
 * @param input The compressed bytes (the descriptor's length, clamped to the end of the file).
 * @param clusterSize Bytes the cluster holds.
 * @param where Where the stream lies, for messages.
 * @returns A new buffer of `clusterSize` bytes.
 * @throws {QcowError} `BAD_COMPRESSED_DATA` when the stream is not valid deflate data or ends
 * before filling the cluster.
 */
export function inflateCluster(input: Uint8Array, clusterSize: number, where = "?"): Uint8Array {
  const out = new Uint8Array(clusterSize);
  let filled = 0;
  const inflater = new Inflate((chunk: Uint8Array) => {
    const n = Math.min(chunk.length, clusterSize - filled);
    out.set(chunk.subarray(0, n), filled);
    filled += n;
  });
  try {
    for (let at = 0; at < input.length && filled < clusterSize; at += STEP) {
      inflater.push(input.subarray(at, at + STEP), false);
    }
    if (filled < clusterSize) inflater.push(new Uint8Array(0), true);
  } catch (error) {
    if (filled >= clusterSize) return out;
    const detail = error instanceof Error ? error.message : String(error);
    throw new QcowError(
      "BAD_COMPRESSED_DATA",
      `Compressed cluster at ${where} is not valid deflate data: ${detail}`,
      { cause: error },
    );
  }
  if (filled < clusterSize) {
    throw new QcowError(
      "BAD_COMPRESSED_DATA",
      `Compressed cluster at ${where} inflates to ${filled} bytes, not a whole cluster of ${clusterSize}`,
    );
  }
  return out;
}
