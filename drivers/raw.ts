/**
 * The raw format: the device's bytes are the virtual disk.
 *
 * @module
 */

import type { BlockDevice } from "../core/block_device.ts";
import { QcowError } from "../core/errors.ts";
import { assertInside } from "../core/_checks.ts";
import type { BlockStatus, Image, ImageInfo } from "./image.ts";

/** Options for {@linkcode RawImage}. */
export interface RawImageOptions {
  /** Close the device when the image is closed; default false. */
  ownsDevice?: boolean;
  /** Refuse writes; default: whether the device is read-only. */
  readOnly?: boolean;
}

/**
 * A raw image: virtual offset N is byte N of the device.
 *
 * @example
 * ```ts
 * import { MemoryDevice, RawImage } from "@qcowlab/qcowlab";
 *
 * await using image = new RawImage(MemoryDevice.from(new Uint8Array([5, 6, 7])));
 * const out = new Uint8Array(2);
 * await image.read(out, 1);
 * console.log(out); // Uint8Array(2) [ 6, 7 ]
 * ```
 */
export class RawImage implements Image {
  #device: BlockDevice;
  #ownsDevice: boolean;
  #readOnly: boolean;
  #closed = false;

  /**
   * Wraps a device as a raw image.
   *
   * @param device The device.
   * @param options Device ownership.
   */
  constructor(device: BlockDevice, options: RawImageOptions = {}) {
    this.#device = device;
    this.#ownsDevice = options.ownsDevice ?? false;
    this.#readOnly = options.readOnly ?? device.readOnly;
  }

  /** Always "raw". */
  get format(): "raw" {
    return "raw";
  }

  /** The device's size. */
  get size(): number {
    return this.#device.size;
  }

  /** The device. */
  get device(): BlockDevice {
    return this.#device;
  }

  /** The device's name. */
  get filename(): string {
    return this.#device.name;
  }

  /** Raw images have no backing file. */
  get backing(): undefined {
    return undefined;
  }

  /** Raw images have no backing file. */
  get backingName(): undefined {
    return undefined;
  }

  /** Raw images have no backing file. */
  get backingFormat(): undefined {
    return undefined;
  }

  /** Refuses a backing image: raw has none. */
  setBacking(backing: Image | undefined): void {
    if (backing) throw new QcowError("INVALID_ARGUMENT", "A raw image cannot have a backing file");
  }

  /** Reads device bytes. */
  read(buffer: Uint8Array, offset: number): Promise<void> {
    if (this.#closed) {
      return Promise.reject(new QcowError("CLOSED", `Image ${this.filename} is closed`));
    }
    return this.#device.read(buffer, offset);
  }

  /** Whether writes are refused. */
  get readOnly(): boolean {
    return this.#readOnly;
  }

  /** Writes device bytes. */
  write(data: Uint8Array, offset: number): Promise<void> {
    try {
      this.#assertWritable();
      assertInside(offset, data.length, this.size, this.filename);
      return this.#device.write(data, offset);
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /** Writes zeros (a raw file has no way to mark them). */
  async writeZeroes(offset: number, length: number): Promise<void> {
    this.#assertWritable();
    assertInside(offset, length, this.size, this.filename);
    const chunk = new Uint8Array(Math.min(length, 1024 * 1024));
    for (let done = 0; done < length; done += chunk.length) {
      await this.#device.write(
        chunk.subarray(0, Math.min(chunk.length, length - done)),
        offset + done,
      );
    }
  }

  /** Discarded bytes of a raw image read as zeros here (QEMU punches a hole). */
  discard(offset: number, length: number): Promise<void> {
    return this.writeZeroes(offset, length);
  }

  /** Raw images cannot store compressed data. */
  writeCompressed(): Promise<void> {
    return Promise.reject(
      new QcowError("UNSUPPORTED_FEATURE", "The raw format cannot store compressed clusters"),
    );
  }

  /** Sets the device's size. */
  async resize(size: number, options: { shrink?: boolean } = {}): Promise<void> {
    this.#assertWritable();
    if (size < this.size && !options.shrink) {
      throw new QcowError(
        "INVALID_ARGUMENT",
        `Refusing to shrink ${this.filename} without shrink: true`,
      );
    }
    await this.#device.truncate(size);
  }

  /** Flushes the device. */
  flush(): Promise<void> {
    return this.#device.flush();
  }

  #assertWritable(): void {
    if (this.#closed) throw new QcowError("CLOSED", `Image ${this.filename} is closed`);
    if (this.#readOnly) throw new QcowError("READ_ONLY", `Image ${this.filename} is read-only`);
  }

  /** Everything is data at the same offset. */
  blockStatus(offset: number, length: number): Promise<BlockStatus> {
    try {
      if (this.#closed) throw new QcowError("CLOSED", `Image ${this.filename} is closed`);
      assertInside(offset, Math.max(length, 1), this.size, this.filename);
      const n = Math.max(1, Math.min(length, this.size - offset));
      return Promise.resolve({ length: n, kind: "data", hostOffset: offset });
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /** What `qemu-img info` reports for raw files. */
  info(): ImageInfo {
    const info: ImageInfo = {
      "virtual-size": this.size,
      filename: this.filename,
      format: "raw",
      "dirty-flag": false,
    };
    const actual = (this.#device as { allocatedBytes?: number }).allocatedBytes;
    if (typeof actual === "number") info["actual-size"] = actual;
    return info;
  }

  /** Closes the device if owned. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#ownsDevice) await this.#device.close();
  }

  /** Same as {@linkcode RawImage.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
