/**
 * A device wrapper that injects faults by rule.
 *
 * @module
 */

import type { BlockDevice } from "../core/block_device.ts";
import type { DriverEvent } from "../core/driver_event.ts";
import { QcowError } from "../core/errors.ts";
import type { Errno, FaultRule, IoKind } from "./fault_rule.ts";
import { parseFaultRules } from "./scenario.ts";
import { ForwardingDevice } from "./forwarding_device.ts";

/** One fault a {@linkcode FaultyDevice} injected. */
export interface InjectedFault {
  /** Index of the rule in the device's rule list. */
  readonly rule: number;
  /** The rule's name, or `rule <index>`. */
  readonly name: string;
  /** The I/O that failed. */
  readonly io: IoKind;
  /** Its offset (0 for flush). */
  readonly offset: number;
  /** Its length in bytes (0 for flush; the new size for truncate). */
  readonly length: number;
  /** The error reported. */
  readonly errno: Errno;
  /** For a torn write, the bytes that still reached the device. */
  readonly persisted: number;
  /** The driver event announced last before the I/O. */
  readonly event: DriverEvent | undefined;
}

/** Counters of a {@linkcode FaultyDevice}. */
export interface FaultStats {
  /** I/O requests seen, by kind (failed ones included). */
  readonly io: Readonly<Record<IoKind, number>>;
  /** Bytes that reached the wrapped device through writes. */
  readonly bytesWritten: number;
  /** Announcements seen, by event name. */
  readonly events: Readonly<Record<string, number>>;
  /** Faults injected, in order. */
  readonly faults: readonly InjectedFault[];
  /** The blkdebug-style state (starts at 1). */
  readonly state: number;
}

/** Options for {@linkcode FaultyDevice}. */
export interface FaultyDeviceOptions {
  /** The rules, validated on construction; more can be added with `addRule`. */
  rules?: FaultRule[];
}

interface RuleState {
  rule: FaultRule;
  index: number;
  /** Matching I/Os seen (io-error) or announcements counted (event rules). */
  seen: number;
  retired: boolean;
}

const SECTOR = 512;
const ALL_IO: readonly IoKind[] = ["read", "write", "flush", "truncate"];

/**
 * Wraps a {@linkcode BlockDevice} and fails or delays its I/O by rule: the nth read, write, flush
 * or truncate; I/O touching a byte range; writes once N bytes were written (a full disk); I/O
 * after a driver event, as QEMU's blkdebug does, with blkdebug's states. A failure is a
 * {@linkcode QcowError} with code `IO` (EIO) or `NO_SPACE` (ENOSPC) whose message names the rule;
 * a torn write lets its first sectors through first. Counters say what ran and what fired.
 * Closing is never failed by rule.
 *
 * Put a {@linkcode RecordingDevice} under it (not over it) to log what really reached the disk.
 *
 * @example Failing the L1 table update of a first write
 * ```ts
 * import { createQcow2, isQcowError, MemoryDevice, openImage } from "@qcowlab/qcowlab";
 * import { FaultyDevice } from "@qcowlab/qcowlab/emulator";
 *
 * const disk = new MemoryDevice();
 * await createQcow2(disk, { size: 1 << 30, clusterSize: 65536 });
 * const faulty = new FaultyDevice(disk, {
 *   rules: [{ kind: "inject-error", event: "l1_update", once: true, name: "no L1" }],
 * });
 * await using image = await openImage(faulty, { readOnly: false });
 * const error = await image.write(new Uint8Array(512), 0).catch((e) => e);
 * console.log(isQcowError(error, "IO"), faulty.stats.faults[0]?.name); // true no L1
 * await image.write(new Uint8Array(512), 0); // the rule is spent: this one succeeds
 * ```
 */
export class FaultyDevice extends ForwardingDevice {
  #rules: RuleState[] = [];
  #armed: RuleState[] = [];
  #state = 1;
  #io: Record<IoKind, number> = { read: 0, write: 0, flush: 0, truncate: 0 };
  #bytesWritten = 0;
  #events: Record<string, number> = {};
  #faults: InjectedFault[] = [];
  #lastEvent: DriverEvent | undefined;

  /**
   * Wraps `inner`.
   *
   * @param inner The device to forward to.
   * @param options The rules.
   * @throws {QcowError} `INVALID_SCENARIO` for a malformed rule.
   */
  constructor(inner: BlockDevice, options: FaultyDeviceOptions = {}) {
    super(inner);
    for (const rule of parseFaultRules(options.rules ?? [])) this.#push(rule);
  }

  /**
   * Adds a rule (validated) after the existing ones.
   *
   * @param rule The rule.
   * @returns Its index.
   */
  addRule(rule: FaultRule): number {
    const [checked] = parseFaultRules([rule]);
    return this.#push(checked!);
  }

  /** Retires every rule and disarms everything; I/O passes through from now on. */
  clearRules(): void {
    for (const rule of this.#rules) rule.retired = true;
    this.#armed = [];
  }

  /** Counters: I/O by kind, bytes written, events, faults injected, state. */
  get stats(): FaultStats {
    return {
      io: { ...this.#io },
      bytesWritten: this.#bytesWritten,
      events: { ...this.#events },
      faults: this.#faults.slice(),
      state: this.#state,
    };
  }

  /** Reads, unless a rule fails it. */
  override async read(buffer: Uint8Array, offset: number): Promise<void> {
    await this.#before("read", offset, buffer.length);
    return this.inner.read(buffer, offset);
  }

  /** Writes, unless a rule fails it (a torn write lets its first sectors through first). */
  override async write(data: Uint8Array, offset: number): Promise<void> {
    await this.#before("write", offset, data.length, data);
    await this.inner.write(data, offset);
    this.#bytesWritten += data.length;
  }

  /** Flushes, unless a rule fails it. */
  override async flush(): Promise<void> {
    await this.#before("flush", 0, 0);
    return this.inner.flush();
  }

  /** Truncates, unless a rule fails it. */
  override async truncate(size: number): Promise<void> {
    await this.#before("truncate", size, 0);
    return this.inner.truncate(size);
  }

  /** Counts the event, applies the event rules (blkdebug semantics), and forwards it. */
  override event(name: DriverEvent): void {
    this.#lastEvent = name;
    this.#events[name] = (this.#events[name] ?? 0) + 1;
    let newState = this.#state;
    let armedAny = false;
    for (const entry of this.#rules) {
      const rule = entry.rule;
      if (entry.retired || (rule.kind !== "inject-error" && rule.kind !== "set-state")) continue;
      if (rule.event !== name || (rule.state && rule.state !== this.#state)) continue;
      entry.seen++;
      if (rule.kind === "set-state") {
        newState = rule.newState;
        continue;
      }
      const nth = rule.nth ?? 1;
      if (entry.seen < nth || (rule.nth !== undefined && rule.once && entry.seen > nth)) continue;
      // As in blkdebug, the first inject-error rule an event arms replaces those armed before.
      if (!armedAny) this.#armed = [];
      armedAny = true;
      this.#armed.push(entry);
    }
    this.#state = newState;
    this.inner.event?.(name);
  }

  #push(rule: FaultRule): number {
    const index = this.#rules.length;
    this.#rules.push({ rule, index, seen: 0, retired: false });
    return index;
  }

  async #before(io: IoKind, offset: number, length: number, data?: Uint8Array): Promise<void> {
    this.#io[io]++;
    let delay = 0;
    for (const entry of this.#rules) {
      const rule = entry.rule;
      if (entry.retired) continue;
      if (rule.kind === "latency" && (rule.io ?? ALL_IO).includes(io)) delay += rule.ms;
    }
    if (delay > 0) await new Promise((resolve) => setTimeout(resolve, delay));
    const hit = this.#match(io, offset, length, data);
    if (!hit) return;
    const { entry, errno } = hit;
    const rule = entry.rule;
    let persisted = 0;
    const torn = rule.kind === "io-error" || rule.kind === "inject-error" ? rule.torn : undefined;
    if (io === "write" && data && torn !== undefined && torn > 0) {
      const end = (Math.floor(offset / SECTOR) + torn) * SECTOR;
      persisted = Math.max(0, Math.min(data.length, end - offset));
      if (persisted > 0) {
        await this.inner.write(data.subarray(0, persisted), offset);
        this.#bytesWritten += persisted;
      }
    }
    const name = rule.name ?? `rule ${entry.index}`;
    this.#faults.push({
      rule: entry.index,
      name,
      io,
      offset,
      length,
      errno,
      persisted,
      event: this.#lastEvent,
    });
    const where = io === "flush"
      ? "flush"
      : io === "truncate"
      ? `truncate to ${offset} bytes`
      : `${io} of ${length} bytes at offset ${offset}`;
    const why = rule.kind === "inject-error" ? ` (armed by ${rule.event})` : "";
    const tornText = persisted > 0 ? `, ${persisted} bytes torn through` : "";
    throw new QcowError(
      errno === "ENOSPC" ? "NO_SPACE" : "IO",
      `Injected ${errno} on ${this.inner.name}: ${where}, by ${name}${why}${tornText}`,
      { cause: { errno, rule: entry.index } },
    );
  }

  #match(
    io: IoKind,
    offset: number,
    length: number,
    data: Uint8Array | undefined,
  ): { entry: RuleState; errno: Errno } | undefined {
    for (const entry of this.#rules) {
      const rule = entry.rule;
      if (entry.retired) continue;
      if (rule.kind === "disk-full") {
        if (io === "write" && data && this.#bytesWritten + data.length > rule.afterBytes) {
          return { entry, errno: rule.errno ?? "ENOSPC" };
        }
        continue;
      }
      if (rule.kind !== "io-error") continue;
      if (!(rule.io ?? ALL_IO).includes(io) || !touches(rule, io, offset, length)) continue;
      entry.seen++;
      const nth = rule.nth ?? 1;
      if (entry.seen < nth) continue;
      if (rule.once) entry.retired = true;
      return { entry, errno: rule.errno ?? "EIO" };
    }
    for (const entry of this.#armed) {
      const rule = entry.rule;
      if (entry.retired || rule.kind !== "inject-error") continue;
      if (!(rule.io ?? ALL_IO).includes(io) || !touches(rule, io, offset, length)) continue;
      if (rule.once) {
        entry.retired = true;
        this.#armed = this.#armed.filter((armed) => armed !== entry);
      }
      return { entry, errno: rule.errno ?? "EIO" };
    }
    return undefined;
  }
}

/** Whether the I/O touches the rule's byte range (every I/O when the rule has none). */
function touches(
  rule: { offset?: number; length?: number },
  io: IoKind,
  offset: number,
  length: number,
): boolean {
  if (rule.offset === undefined) return true;
  if (io === "flush" || io === "truncate") return false;
  const end = rule.offset + (rule.length ?? 1);
  return offset < end && rule.offset < offset + length;
}
