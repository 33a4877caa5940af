/**
 * The names of the moments a driver announces to its device, as QEMU's blkdebug knows them.
 *
 * @module
 */

/**
 * Every driver event name, in QEMU's blkdebug spelling. A driver announces one on its device
 * right before the I/O the event names, so a fault injector can fail exactly that I/O and a
 * write log can say why each write happened.
 *
 * @example Listing the L2 events
 * ```ts
 * import { DRIVER_EVENTS } from "@qcowlab/qcowlab/emulator";
 *
 * console.log(DRIVER_EVENTS.filter((name) => name.startsWith("l2_")).length); // 5
 * ```
 */
export const DRIVER_EVENTS = [
  "l1_update",
  "l1_grow_alloc_table",
  "l1_grow_write_table",
  "l1_grow_activate_table",
  "l2_load",
  "l2_update",
  "l2_update_compressed",
  "l2_alloc_cow_read",
  "l2_alloc_write",
  "read_aio",
  "read_backing_aio",
  "read_compressed",
  "write_aio",
  "write_compressed",
  "vmstate_load",
  "vmstate_save",
  "cow_read",
  "cow_write",
  "reftable_load",
  "reftable_grow",
  "reftable_update",
  "refblock_load",
  "refblock_update",
  "refblock_update_part",
  "refblock_alloc",
  "refblock_alloc_hookup",
  "refblock_alloc_write",
  "refblock_alloc_write_blocks",
  "refblock_alloc_write_table",
  "refblock_alloc_switch_table",
  "cluster_alloc",
  "cluster_alloc_bytes",
  "cluster_free",
  "flush_to_os",
  "flush_to_disk",
  "pwritev_rmw_head",
  "pwritev_rmw_after_head",
  "pwritev_rmw_tail",
  "pwritev_rmw_after_tail",
  "pwritev",
  "pwritev_zero",
  "pwritev_done",
  "empty_image_prepare",
  "l1_shrink_write_table",
  "l1_shrink_free_l2_clusters",
  "cor_write",
  "cluster_alloc_space",
  "none",
] as const;

/** One of {@linkcode DRIVER_EVENTS}: a blkdebug event name. */
export type DriverEvent = typeof DRIVER_EVENTS[number];

/**
 * Tells whether a string is a {@linkcode DriverEvent} name.
 *
 * @example
 * ```ts
 * import { isDriverEvent } from "@qcowlab/qcowlab/emulator";
 *
 * console.log(isDriverEvent("l2_update"), isDriverEvent("l2_updat")); // true false
 * ```
 *
 * @param name Any string.
 * @returns Whether it names a driver event.
 */
export function isDriverEvent(name: string): name is DriverEvent {
  return EVENT_SET.has(name);
}

const EVENT_SET: ReadonlySet<string> = new Set(DRIVER_EVENTS);
