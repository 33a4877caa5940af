/**
 * A sparse in-memory block device.
 *
 * @module
 */

import type { BlockDevice } from "./block_device.ts";
import { QcowError } from "./errors.ts";
import { assertInside, assertOffset, assertWriteRange } from "./_checks.ts";
import { forEachPiece } from "./_pieces.ts";
import { settle } from "./_settle.ts";

/** Options for {@linkcode MemoryDevice}. */
export interface MemoryDeviceOptions {
  /** Initial size in bytes; default 0. */
  size?: number;
  /** Refuse writes; default false. */
  readOnly?: boolean;
  /** Name used in messages; default "memory". */
  name?: string;
  /** Bytes per allocation chunk, a power of two; default 64 KiB. */
  chunkSize?: number;
}

const DEFAULT_CHUNK = 64 * 1024;

/**
 * A block device held in memory. Storage is allocated in chunks on first write, so a 16 TiB device
 * with a few MiB written uses a few MiB; unwritten ranges read as zeros.
 *
 * @example A sparse 16 TiB device
 * ```ts
 * import { MemoryDevice } from "@qcowlab/qcowlab";
 *
 * const device = new MemoryDevice({ size: 2 ** 44 });
 * await device.write(new Uint8Array([1, 2, 3]), 2 ** 43);
 * const back = new Uint8Array(3);
 * await device.read(back, 2 ** 43);
 * console.log(back); // Uint8Array(3) [ 1, 2, 3 ]
 * console.log(device.allocatedBytes); // 65536
 * ```
 */
export class MemoryDevice implements BlockDevice {
  #chunks = new Map<number, Uint8Array>();
  #size: number;
  #readOnly: boolean;
  #name: string;
  #chunkBits: number;
  #closed = false;

  /**
   * Creates an empty (all-zero) device.
   *
   * @param options Size, name, read-only flag and chunk size.
   */
  constructor(options: MemoryDeviceOptions = {}) {
    const size = options.size ?? 0;
    assertOffset(size, "Size");
    const chunk = options.chunkSize ?? DEFAULT_CHUNK;
    if (!Number.isInteger(chunk) || chunk < 512 || (chunk & (chunk - 1)) !== 0 || chunk > 2 ** 24) {
      throw new QcowError("INVALID_ARGUMENT", `Chunk size must be a power of two, got ${chunk}`);
    }
    this.#size = size;
    this.#readOnly = options.readOnly ?? false;
    this.#name = options.name ?? "memory";
    this.#chunkBits = Math.log2(chunk);
  }

  /**
   * Creates a device holding a copy of `bytes`.
   *
   * @example
   * ```ts
   * import { MemoryDevice } from "@qcowlab/qcowlab";
   *
   * const device = MemoryDevice.from(new Uint8Array([9, 8, 7]));
   * console.log(device.size); // 3
   * ```
   *
   * @param bytes The initial contents.
   * @param options Options as for the constructor; `size` is taken from `bytes`.
   * @returns The new device.
   */
  static from(bytes: Uint8Array, options: Omit<MemoryDeviceOptions, "size"> = {}): MemoryDevice {
    const device = new MemoryDevice({ ...options, size: bytes.length, readOnly: false });
    device.#put(bytes, 0);
    device.#readOnly = options.readOnly ?? false;
    return device;
  }

  /** Current size in bytes. */
  get size(): number {
    return this.#size;
  }

  /** Whether writes are refused. */
  get readOnly(): boolean {
    return this.#readOnly;
  }

  /** The name given at creation. */
  get name(): string {
    return this.#name;
  }

  /** Bytes of memory held by written chunks. */
  get allocatedBytes(): number {
    // Not a shift: 32-bit shifts wrap negative at 2 GiB.
    return this.#chunks.size * 2 ** this.#chunkBits;
  }

  /** Copies the whole contents into one new array (for tests and small devices). */
  toBytes(): Uint8Array {
    this.#assertOpen();
    const out = new Uint8Array(this.#size);
    this.#get(out, 0);
    return out;
  }

  /** Fills `buffer` from `offset`. */
  read(buffer: Uint8Array, offset: number): Promise<void> {
    return settle(() => {
      this.#assertOpen();
      assertInside(offset, buffer.length, this.#size, this.#name);
      this.#get(buffer, offset);
    });
  }

  /** Writes `data` at `offset`, growing the device when a non-empty write ends past its size. */
  write(data: Uint8Array, offset: number): Promise<void> {
    return settle(() => {
      this.#assertWritable();
      assertWriteRange(offset, data.length, this.#name);
      this.#put(data, offset);
      // Like pwrite, an empty write leaves the size alone.
      if (data.length > 0 && offset + data.length > this.#size) this.#size = offset + data.length;
    });
  }

  /** Nothing to make durable in memory; only checks that the device is open. */
  flush(): Promise<void> {
    return settle(() => this.#assertOpen());
  }

  /** Sets the size; bytes past a shrink point are forgotten and read as zero if regrown. */
  truncate(size: number): Promise<void> {
    return settle(() => {
      this.#assertWritable();
      assertOffset(size, "Size");
      if (size < this.#size) {
        const chunkSize = 1 << this.#chunkBits;
        for (const index of [...this.#chunks.keys()]) {
          const start = index * chunkSize;
          if (start >= size) this.#chunks.delete(index);
          else if (start + chunkSize > size) this.#chunks.get(index)!.fill(0, size - start);
        }
      }
      this.#size = size;
    });
  }

  /** Releases the memory. */
  close(): Promise<void> {
    this.#closed = true;
    this.#chunks.clear();
    return Promise.resolve();
  }

  /** Same as {@linkcode MemoryDevice.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  #assertOpen(): void {
    if (this.#closed) throw new QcowError("CLOSED", `Device ${this.#name} is closed`);
  }

  #assertWritable(): void {
    this.#assertOpen();
    if (this.#readOnly) throw new QcowError("READ_ONLY", `Device ${this.#name} is read-only`);
  }

  #get(buffer: Uint8Array, offset: number): void {
    forEachPiece(offset, buffer.length, 1 << this.#chunkBits, (index, within, done, n) => {
      const chunk = this.#chunks.get(index);
      if (chunk) buffer.set(chunk.subarray(within, within + n), done);
      else buffer.fill(0, done, done + n);
    });
  }

  #put(data: Uint8Array, offset: number): void {
    const chunkSize = 1 << this.#chunkBits;
    forEachPiece(offset, data.length, chunkSize, (index, within, done, n) => {
      let chunk = this.#chunks.get(index);
      if (!chunk) {
        chunk = new Uint8Array(chunkSize);
        this.#chunks.set(index, chunk);
      }
      chunk.set(data.subarray(done, done + n), within);
    });
  }
}
