/**
 * Fault injection and crash replay for qcowlab: wrap a device to log its writes, then rebuild
 * every disk state a crash could leave.
 *
 * @example Logging a write and crashing before it
 * ```ts
 * import { MemoryDevice } from "@qcowlab/qcowlab";
 * import { crashDevice, enumerateCrashStates, RecordingDevice } from "@qcowlab/qcowlab/emulator";
 *
 * const base = new Uint8Array(4096);
 * const disk = new RecordingDevice(MemoryDevice.from(base));
 * await disk.write(new Uint8Array(512).fill(9), 0);
 * await disk.flush();
 * for (const state of enumerateCrashStates(disk.log)) {
 *   const device = crashDevice(base, disk.log, state);
 *   const first = new Uint8Array(1);
 *   await device.read(first, 0);
 *   console.log(state.id, first[0]); // "0 0", then "1 9", then "2 9"
 * }
 * ```
 *
 * @module
 */

export * from "../core/driver_event.ts";
export * from "./forwarding_device.ts";
export * from "./recording_device.ts";
export * from "./crash_states.ts";
export * from "./fault_rule.ts";
export * from "./faulty_device.ts";
export * from "./scenario.ts";
export * from "./workload.ts";
export * from "./workload_pattern.ts";
export * from "./workload_file.ts";
export * from "./workload_run.ts";
export * from "./invariants.ts";
export * from "./explore.ts";
export * from "./explore_format.ts";
export * from "./explore_campaign.ts";
export * from "./shrink.ts";
export * from "./replay.ts";
// Types the emulator's API names, so its documentation is complete on its own.
export type * from "../core/block_device.ts";
export type * from "../drivers/image.ts";
export type * from "../drivers/qcow2/check_report.ts";
