/**
 * The rules a {@linkcode FaultyDevice} applies.
 *
 * @module
 */

import type { DriverEvent } from "../core/driver_event.ts";

/** The kinds of device I/O a rule can target. */
export type IoKind = "read" | "write" | "flush" | "truncate";

/** The error an injected fault reports: EIO (code `IO`) or ENOSPC (code `NO_SPACE`). */
export type Errno = "EIO" | "ENOSPC";

/** Fields shared by the rules that fail I/O. */
export interface FailureFields {
  /** Which I/O kinds fail; default all of read, write, flush and truncate. */
  io?: IoKind[];
  /** Only I/O touching `[offset, offset + length)` fails; default any offset. */
  offset?: number;
  /** Length of the range at `offset`; default 1. */
  length?: number;
  /** The error to report; default EIO. */
  errno?: Errno;
  /** Fail one I/O and retire the rule (true), or keep failing (false, the default). */
  once?: boolean;
  /** For a failing write: the first `torn` 512-byte sectors still reach the device. */
  torn?: number;
  /** A name for messages and counters; default `rule <index>`. */
  name?: string;
}

/**
 * Fails device I/O by count: the `nth` matching I/O (1-based) and, unless `once`, every one
 * after it; without `nth`, every matching I/O.
 */
export interface IoErrorRule extends FailureFields {
  /** Discriminator. */
  kind: "io-error";
  /** The first matching I/O that fails; default 1. */
  nth?: number;
}

/** Emulates a full disk: a write that would take the bytes written past `afterBytes` fails. */
export interface DiskFullRule {
  /** Discriminator. */
  kind: "disk-full";
  /** Bytes that can be written through the device before it is full. */
  afterBytes: number;
  /** The error to report; default ENOSPC. */
  errno?: Errno;
  /** A name for messages and counters. */
  name?: string;
}

/**
 * blkdebug's `inject-error`: when the driver announces `event` while the device is in `state`
 * (any state when absent), the rule is armed, and then fails the next matching I/O (and, unless
 * `once`, every matching I/O after it until another `inject-error` rule is armed, as in blkdebug).
 * With `nth`, only the nth announcement in that state arms it (every one from the nth on, unless
 * `once`).
 */
export interface InjectErrorRule extends FailureFields {
  /** Discriminator. */
  kind: "inject-error";
  /** The driver event that arms the rule. */
  event: DriverEvent;
  /** The state the device must be in; default any. States start at 1, as in blkdebug. */
  state?: number;
  /** Which announcement of the event (counted in that state) arms the rule; default every. */
  nth?: number;
}

/** blkdebug's `set-state`: when `event` is announced in `state` (any when absent), go to `newState`. */
export interface SetStateRule {
  /** Discriminator. */
  kind: "set-state";
  /** The driver event. */
  event: DriverEvent;
  /** The state the device must be in; default any. */
  state?: number;
  /** The state to move to. */
  newState: number;
  /** A name for messages and counters. */
  name?: string;
}

/** Delays I/O by `ms` milliseconds before it runs. */
export interface LatencyRule {
  /** Discriminator. */
  kind: "latency";
  /** Milliseconds added to every matching I/O. */
  ms: number;
  /** Which I/O kinds are delayed; default all. */
  io?: IoKind[];
  /** A name for messages and counters. */
  name?: string;
}

/** A rule of a {@linkcode FaultyDevice}. */
export type FaultRule = IoErrorRule | DiskFullRule | InjectErrorRule | SetStateRule | LatencyRule;
