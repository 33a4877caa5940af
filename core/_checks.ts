import { QcowError } from "./errors.ts";

/** Throws INVALID_ARGUMENT unless `value` is a safe non-negative integer. */
export function assertOffset(value: number, what: string): void {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new QcowError("INVALID_ARGUMENT", `${what} must be a non-negative integer, got ${value}`);
  }
}

/** Throws OUT_OF_RANGE when `[offset, offset + length)` does not lie inside `[0, size)`. */
export function assertInside(offset: number, length: number, size: number, name: string): void {
  assertOffset(offset, "Offset");
  // A NaN length would slip through the comparison below.
  assertOffset(length, "Length");
  if (offset + length > size) {
    throw new QcowError(
      "OUT_OF_RANGE",
      `Request at ${offset} for ${length} bytes ends past the end of ${name} (${size} bytes)`,
    );
  }
}

/** Throws unless a write of `length` bytes at `offset` ends at a size a number holds exactly. */
export function assertWriteRange(offset: number, length: number, name: string): void {
  assertOffset(offset, "Offset");
  if (offset + length > Number.MAX_SAFE_INTEGER) {
    throw new QcowError(
      "TOO_LARGE",
      `Write at ${offset} for ${length} bytes would grow ${name} past 2^53 - 1 bytes`,
    );
  }
}
