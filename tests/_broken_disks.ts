/**
 * Deliberately broken disks for proving that the crash explorer can fail: wrap a device with them
 * through `recordWorkload(workload, { wrap })`.
 *
 * @module
 */

import type { BlockDevice } from "../core/block_device.ts";
import { ForwardingDevice } from "../emulator/forwarding_device.ts";

/**
 * A disk whose flush does nothing: a driver that believes its refcount blocks reached the disk
 * before the L2 tables that use them, with nothing ordering them.
 */
export function droppingFlushes(inner: BlockDevice): BlockDevice {
  return new (class extends ForwardingDevice {
    override flush(): Promise<void> {
      return Promise.resolve();
    }
  })(inner);
}

/**
 * A disk that silently loses its `n`th write (counted from 1).
 *
 * @returns A wrapper for `recordWorkload`'s `wrap` option.
 */
export function losingWrite(n: number): (inner: BlockDevice) => BlockDevice {
  let writes = 0;
  return (inner) =>
    new (class extends ForwardingDevice {
      override write(data: Uint8Array, offset: number): Promise<void> {
        return ++writes === n ? Promise.resolve() : super.write(data, offset);
      }
    })(inner);
}
