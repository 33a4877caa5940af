/**
 * The contract every storage backend implements.
 *
 * @module
 */

import type { DriverEvent } from "./driver_event.ts";

/**
 * A byte-addressed storage device: a file, a region of memory, a device that injects faults.
 *
 * Every method is asynchronous so remote or deliberately slow devices fit the same contract.
 * Buffers belong to the caller: implementations must not keep a reference to a buffer passed to
 * `read` or `write` after the returned promise settles.
 *
 * Errors are {@linkcode QcowError}s: `OUT_OF_RANGE` for a read past {@linkcode BlockDevice.size},
 * `READ_ONLY` for a write or truncate on a read-only device, `CLOSED` after `close`, `IO` for
 * failures of the underlying storage.
 */
export interface BlockDevice extends AsyncDisposable {
  /** Current size in bytes. */
  readonly size: number;
  /** Whether writes and truncation are refused. */
  readonly readOnly: boolean;
  /**
   * A name for messages and for resolving relative backing file names: the path of a file, or a
   * label for other devices.
   */
  readonly name: string;
  /** Fills `buffer` with the bytes at `offset`; the whole range must lie below `size`. */
  read(buffer: Uint8Array, offset: number): Promise<void>;
  /** Writes `data` at `offset`, growing the device when a non-empty write ends past `size`. */
  write(data: Uint8Array, offset: number): Promise<void>;
  /** Makes every completed write durable. */
  flush(): Promise<void>;
  /** Sets the size, dropping or zero-filling the tail. */
  truncate(size: number): Promise<void>;
  /** Releases the device; further calls fail with `CLOSED`. Closing twice is harmless. */
  close(): Promise<void>;
  /**
   * Optional hook: a driver announces a {@linkcode DriverEvent} right before the I/O the event
   * names, as QEMU's `BLKDBG_EVENT` does, calling it as `device.event?.("l2_update")` so that it
   * costs nothing on devices without the hook. Fault injectors count events and arm rules on
   * them; write logs tag the following writes with them. A device that wraps another forwards
   * the call. It must not throw.
   */
  event?(name: DriverEvent): void;
}
