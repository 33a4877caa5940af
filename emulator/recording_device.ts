/**
 * A device wrapper that logs every write and flush, for crash-state replay.
 *
 * @module
 */

import type { DriverEvent } from "../core/driver_event.ts";
import { ForwardingDevice } from "./forwarding_device.ts";

/**
 * One entry of a {@linkcode RecordingDevice}'s log: a write (with a private copy of its payload),
 * a flush barrier, or a size change. `event` is the last driver event announced before the I/O.
 */
export type WriteLogEntry =
  | {
    readonly kind: "write";
    readonly offset: number;
    readonly data: Uint8Array;
    readonly event: string | undefined;
  }
  | { readonly kind: "flush"; readonly event: string | undefined }
  | { readonly kind: "truncate"; readonly size: number; readonly event: string | undefined };

/**
 * Wraps a {@linkcode BlockDevice}, forwards everything to it and logs, in order, every write that
 * succeeded (copying its payload), every flush that succeeded and every truncation, each tagged
 * with the driver event announced last before it. Reads are not logged; closing leaves the log
 * readable.
 *
 * Put it directly over the storage (under a fault injector, if any), so that the part of a torn
 * write that reached the storage is logged as the write it really was.
 *
 * @example Logging an image's creation
 * ```ts
 * import { MemoryDevice } from "@qcowlab/qcowlab";
 * import { RecordingDevice } from "@qcowlab/qcowlab/emulator";
 *
 * const device = new RecordingDevice(new MemoryDevice());
 * await device.write(new Uint8Array(512).fill(7), 0);
 * device.event?.("flush_to_disk");
 * await device.flush();
 * console.log(device.log.map((entry) => entry.kind)); // [ "write", "flush" ]
 * console.log(device.log[1]?.event); // flush_to_disk
 * ```
 */
export class RecordingDevice extends ForwardingDevice {
  #log: WriteLogEntry[] = [];
  #event: DriverEvent | undefined;

  /** The log so far; entries are appended as I/O completes and never change. */
  get log(): readonly WriteLogEntry[] {
    return this.#log;
  }

  /** Writes through and logs a copy of `data` once the write succeeded. */
  override async write(data: Uint8Array, offset: number): Promise<void> {
    // Copied before the write, in case the caller reuses its buffer while the write is pending.
    const copy = data.slice();
    const event = this.#event;
    await this.inner.write(data, offset);
    this.#log.push({ kind: "write", offset, data: copy, event });
  }

  /** Flushes through and logs a barrier once the flush succeeded. */
  override async flush(): Promise<void> {
    const event = this.#event;
    await this.inner.flush();
    this.#log.push({ kind: "flush", event });
  }

  /** Truncates through and logs the new size once that succeeded. */
  override async truncate(size: number): Promise<void> {
    const event = this.#event;
    await this.inner.truncate(size);
    this.#log.push({ kind: "truncate", size, event });
  }

  /** Remembers the event for the next entries and forwards it. */
  override event(name: DriverEvent): void {
    this.#event = name;
    this.inner.event?.(name);
  }
}
