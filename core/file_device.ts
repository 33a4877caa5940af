/**
 * A block device backed by a file.
 *
 * @module
 */

import * as fs from "node:fs";
import type { BlockDevice } from "./block_device.ts";
import { QcowError } from "./errors.ts";
import { assertInside, assertOffset, assertWriteRange } from "./_checks.ts";

/** Options for {@linkcode FileDevice.open}. */
export interface FileDeviceOptions {
  /** Open without write access; default true. */
  readOnly?: boolean;
  /** Create the file when missing (needs `readOnly: false`); default false. */
  create?: boolean;
  /** Empty an existing file (needs `readOnly: false`); default false. */
  truncate?: boolean;
  /**
   * Bytes written after which the device asks the kernel, in the background, to start writing
   * dirty data out (an fdatasync on a worker thread, not awaited), so that a later `flush` has
   * less left to wait for; 0 turns this off. Default 128 MiB. Durability is unchanged: only
   * `flush` promises anything, and it reports a failure of a background sync.
   */
  writeBehind?: number;
}

/** Default of {@linkcode FileDeviceOptions.writeBehind}. */
const WRITE_BEHIND = 128 * 1024 * 1024;

/** Turns an operating-system error into a QcowError with a useful code. */
function osError(error: unknown, action: string, path: string): QcowError {
  if (error instanceof QcowError) return error;
  const code = (error as { code?: string } | null)?.code;
  if (code === "ENOENT") {
    return new QcowError("NOT_FOUND", `Cannot ${action} ${path}: no such file`, { cause: error });
  }
  const detail = error instanceof Error ? error.message : String(error);
  return new QcowError("IO", `Cannot ${action} ${path}: ${detail}`, { cause: error });
}

/**
 * A file on the local file system, read and written with positional synchronous system calls
 * (pread, pwrite, fdatasync) wrapped in promises: the asynchronous file API costs far more per
 * request than a small read does.
 *
 * @example Reading the first bytes of a file
 * ```ts
 * import { FileDevice } from "@qcowlab/qcowlab";
 *
 * const path = await Deno.makeTempFile();
 * await Deno.writeFile(path, new Uint8Array([1, 2, 3, 4]));
 * await using device = FileDevice.open(path);
 * const head = new Uint8Array(2);
 * await device.read(head, 1);
 * console.log(head); // Uint8Array(2) [ 2, 3 ]
 * ```
 */
export class FileDevice implements BlockDevice {
  #fd: number;
  #size: number;
  #readOnly: boolean;
  #path: string;
  #closed = false;
  #writeBehind: number;
  /** Bytes written since the last sync was started. */
  #unsynced = 0;
  /** The background sync in flight, if any. */
  #syncing: Promise<void> | undefined;
  /** A background sync's failure, reported by the next flush. */
  #syncError: unknown;

  private constructor(
    fd: number,
    size: number,
    readOnly: boolean,
    path: string,
    writeBehind: number,
  ) {
    this.#fd = fd;
    this.#size = size;
    this.#readOnly = readOnly;
    this.#path = path;
    this.#writeBehind = writeBehind;
  }

  /**
   * Opens a file.
   *
   * @param path The file's path.
   * @param options Access mode and creation.
   * @returns The open device.
   * @throws {QcowError} `NOT_FOUND` when the file is missing, `IO` for other failures.
   */
  static open(path: string, options: FileDeviceOptions = {}): FileDevice {
    const readOnly = options.readOnly ?? true;
    const behind = options.writeBehind;
    if (behind !== undefined && !(Number.isSafeInteger(behind) && behind >= 0)) {
      throw new QcowError("INVALID_ARGUMENT", `writeBehind must be a byte count, not ${behind}`);
    }
    if (readOnly && (options.create || options.truncate)) {
      throw new QcowError("INVALID_ARGUMENT", "create and truncate need readOnly: false");
    }
    let flags = readOnly ? fs.constants.O_RDONLY : fs.constants.O_RDWR;
    if (options.create) flags |= fs.constants.O_CREAT;
    if (options.truncate) flags |= fs.constants.O_TRUNC;
    let fd: number;
    try {
      fd = fs.openSync(path, flags, 0o644);
    } catch (error) {
      throw osError(error, "open", path);
    }
    try {
      const stat = fs.fstatSync(fd);
      if (stat.isDirectory()) throw new QcowError("IO", `Cannot open ${path}: it is a directory`);
      const writeBehind = options.writeBehind ?? WRITE_BEHIND;
      return new FileDevice(fd, stat.size, readOnly, path, writeBehind);
    } catch (error) {
      fs.closeSync(fd);
      throw osError(error, "open", path);
    }
  }

  /** Current size in bytes. */
  get size(): number {
    return this.#size;
  }

  /** Whether writes are refused. */
  get readOnly(): boolean {
    return this.#readOnly;
  }

  /** The path the file was opened with. */
  get name(): string {
    return this.#path;
  }

  /** Bytes the file occupies on disk (allocated blocks), like `du`. */
  get allocatedBytes(): number {
    this.#assertOpen();
    const stat = fs.fstatSync(this.#fd);
    return typeof stat.blocks === "number" ? stat.blocks * 512 : stat.size;
  }

  /** Fills `buffer` from `offset` with pread. */
  read(buffer: Uint8Array, offset: number): Promise<void> {
    try {
      this.#assertOpen();
      assertInside(offset, buffer.length, this.#size, this.#path);
      let done = 0;
      while (done < buffer.length) {
        const n = fs.readSync(this.#fd, buffer, done, buffer.length - done, offset + done);
        if (n === 0) {
          // The file shrank under us: what is gone reads as zeros.
          buffer.fill(0, done);
          break;
        }
        done += n;
      }
      return Promise.resolve();
    } catch (error) {
      return Promise.reject(osError(error, "read", this.#path));
    }
  }

  /** Writes `data` at `offset` with pwrite. */
  write(data: Uint8Array, offset: number): Promise<void> {
    try {
      this.#assertWritable();
      assertWriteRange(offset, data.length, this.#path);
      let done = 0;
      while (done < data.length) {
        done += fs.writeSync(this.#fd, data, done, data.length - done, offset + done);
      }
      // pwrite of nothing does not extend the file, so the size must not move either.
      if (data.length > 0 && offset + data.length > this.#size) this.#size = offset + data.length;
      this.#unsynced += data.length;
      if (this.#writeBehind > 0 && this.#unsynced >= this.#writeBehind) this.#startSync();
      return Promise.resolve();
    } catch (error) {
      return Promise.reject(osError(error, "write", this.#path));
    }
  }

  /** Makes completed writes durable with fdatasync. */
  async flush(): Promise<void> {
    try {
      this.#assertOpen();
      if (this.#readOnly) return;
      await this.#syncing;
      const failed = this.#syncError;
      this.#syncError = undefined;
      if (failed !== undefined) throw failed;
      this.#unsynced = 0;
      fs.fdatasyncSync(this.#fd);
    } catch (error) {
      throw osError(error, "flush", this.#path);
    }
  }

  /** Starts an fdatasync on a worker thread unless one is running. */
  #startSync(): void {
    if (this.#syncing) return;
    this.#unsynced = 0;
    this.#syncing = new Promise((resolve) => {
      fs.fdatasync(this.#fd, (error) => {
        if (error) this.#syncError = error;
        this.#syncing = undefined;
        resolve();
      });
    });
  }

  /** Sets the file's size with ftruncate. */
  truncate(size: number): Promise<void> {
    try {
      this.#assertWritable();
      assertOffset(size, "Size");
      fs.ftruncateSync(this.#fd, size);
      this.#size = size;
      return Promise.resolve();
    } catch (error) {
      return Promise.reject(osError(error, "truncate", this.#path));
    }
  }

  /** Closes the file descriptor (after any background sync ends). Closing twice is harmless. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#syncing;
    try {
      fs.closeSync(this.#fd);
    } catch (error) {
      throw osError(error, "close", this.#path);
    }
  }

  /** Same as {@linkcode FileDevice.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  #assertOpen(): void {
    if (this.#closed) throw new QcowError("CLOSED", `Device ${this.#path} is closed`);
  }

  #assertWritable(): void {
    this.#assertOpen();
    if (this.#readOnly) throw new QcowError("READ_ONLY", `Device ${this.#path} is read-only`);
  }
}
