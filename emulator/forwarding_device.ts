/**
 * The base of the device wrappers: a {@linkcode BlockDevice} that forwards every call to the
 * device it wraps, so a wrapper only overrides the calls it watches or changes.
 *
 * @module
 */

import type { BlockDevice } from "../core/block_device.ts";
import type { DriverEvent } from "../core/driver_event.ts";

/**
 * Forwards everything to `inner`. Subclasses override what they observe or alter and reach the
 * wrapped device through {@linkcode ForwardingDevice.inner}.
 *
 * @example A wrapper that counts reads
 * ```ts
 * import { MemoryDevice } from "../core/memory_device.ts";
 * import { ForwardingDevice } from "./forwarding_device.ts";
 *
 * class CountingDevice extends ForwardingDevice {
 *   reads = 0;
 *   override read(buffer: Uint8Array, offset: number): Promise<void> {
 *     this.reads++;
 *     return super.read(buffer, offset);
 *   }
 * }
 * const device = new CountingDevice(MemoryDevice.from(new Uint8Array(512)));
 * await device.read(new Uint8Array(16), 0);
 * console.log(device.reads, device.size); // 1 512
 * ```
 */
export class ForwardingDevice implements BlockDevice {
  #inner: BlockDevice;

  /**
   * Wraps `inner`.
   *
   * @param inner The device to forward to.
   */
  constructor(inner: BlockDevice) {
    this.#inner = inner;
  }

  /** The wrapped device. */
  get inner(): BlockDevice {
    return this.#inner;
  }

  /** The wrapped device's size. */
  get size(): number {
    return this.#inner.size;
  }

  /** Whether the wrapped device refuses writes. */
  get readOnly(): boolean {
    return this.#inner.readOnly;
  }

  /** The wrapped device's name. */
  get name(): string {
    return this.#inner.name;
  }

  /** Reads from the wrapped device. */
  read(buffer: Uint8Array, offset: number): Promise<void> {
    return this.#inner.read(buffer, offset);
  }

  /** Writes to the wrapped device. */
  write(data: Uint8Array, offset: number): Promise<void> {
    return this.#inner.write(data, offset);
  }

  /** Flushes the wrapped device. */
  flush(): Promise<void> {
    return this.#inner.flush();
  }

  /** Truncates the wrapped device. */
  truncate(size: number): Promise<void> {
    return this.#inner.truncate(size);
  }

  /** Closes the wrapped device. */
  close(): Promise<void> {
    return this.#inner.close();
  }

  /** Passes the driver event on to the wrapped device. */
  event(name: DriverEvent): void {
    this.#inner.event?.(name);
  }

  /** Same as {@linkcode ForwardingDevice.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
