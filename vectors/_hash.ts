/**
 * Hashing helpers for the corpus: WebCrypto sha256, and the chunked digest of virtual contents.
 *
 * @module
 */

import { isZero, writeU64 } from "../core/bytes.ts";

/** Chunk size of the chunked digest. */
export const CHUNK = 64 * 1024;
/** Largest virtual size whose plain sha256 is recorded. */
export const FULL_HASH_LIMIT = 8 * 1024 * 1024;
const LABEL = new TextEncoder().encode("qcowlab-chunked-sha256/1\n");

/** sha256 of `bytes`, as lowercase hex. */
export async function sha256Hex(bytes: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>);
  return toHex(new Uint8Array(digest));
}

function toHex(bytes: Uint8Array): string {
  let out = "";
  for (const b of bytes) out += b.toString(16).padStart(2, "0");
  return out;
}

/**
 * Accumulates the chunked digest: sha256 of the label, the size (u64), then for each 64 KiB chunk
 * that is not all zeros, in order, its index (u64) and the raw sha256 of its bytes. Chunks must
 * be added in increasing order; chunks never added count as zeros.
 */
export class ChunkedDigest {
  #parts: Uint8Array[] = [];
  #last = -1;
  #nonZero = 0;

  constructor(size: number) {
    const head = new Uint8Array(LABEL.length + 8);
    head.set(LABEL);
    writeU64(head, LABEL.length, size);
    this.#parts.push(head);
  }

  /** Adds chunk `index` (its bytes, the last chunk may be short). */
  async add(index: number, bytes: Uint8Array): Promise<void> {
    if (index <= this.#last) throw new Error(`chunk ${index} added out of order`);
    this.#last = index;
    if (isZero(bytes)) return;
    this.#nonZero++;
    const entry = new Uint8Array(40);
    writeU64(entry, 0, index);
    const digest = await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>);
    entry.set(new Uint8Array(digest), 8);
    this.#parts.push(entry);
  }

  /** Chunks added that were not all zeros. */
  get nonZeroChunks(): number {
    return this.#nonZero;
  }

  /** The digest, as lowercase hex. */
  async hex(): Promise<string> {
    const total = this.#parts.reduce((n, p) => n + p.length, 0);
    const all = new Uint8Array(total);
    let at = 0;
    for (const part of this.#parts) {
      all.set(part, at);
      at += part.length;
    }
    return await sha256Hex(all);
  }
}

/**
 * Merges ranges that may hold non-zero bytes into the sorted list of chunk indices they touch.
 */
export function chunksOf(ranges: Iterable<[number, number]>, size: number): number[] {
  const out: number[] = [];
  for (const [start, length] of ranges) {
    if (length <= 0) continue;
    const first = Math.floor(start / CHUNK);
    const last = Math.floor((Math.min(start + length, size) - 1) / CHUNK);
    for (let c = first; c <= last; c++) {
      if (out.length === 0 || out[out.length - 1]! < c) out.push(c);
    }
  }
  return out;
}
