/**
 * The error type every qcowlab failure is reported with.
 *
 * @module
 */

/**
 * Stable error codes. The CLI maps them to exit statuses and tests match on them; a code is never
 * renamed once released.
 */
export type QcowErrorCode =
  /** An option or argument is invalid. */
  | "INVALID_ARGUMENT"
  /** A request reaches past the end of a device or image. */
  | "OUT_OF_RANGE"
  /** A write was attempted on something opened read-only. */
  | "READ_ONLY"
  /** The device or image has been closed. */
  | "CLOSED"
  /** A file does not exist. */
  | "NOT_FOUND"
  /** The operating system reported an I/O failure. */
  | "IO"
  /** The image does not start with the format's magic. */
  | "BAD_MAGIC"
  /** The image has a format version this library does not read. */
  | "UNSUPPORTED_VERSION"
  /** A header field is out of range or inconsistent. */
  | "BAD_HEADER"
  /** A header extension is malformed. */
  | "BAD_EXTENSION"
  /** The image uses a feature this library does not support (yet). */
  | "UNSUPPORTED_FEATURE"
  /** A metadata table (L1, refcount table, snapshot table) lies outside the image or is unaligned. */
  | "BAD_TABLE"
  /** Metadata found during I/O is inconsistent (for example an unaligned L2 table offset). */
  | "CORRUPT_METADATA"
  /** A compressed cluster cannot be decompressed. */
  | "BAD_COMPRESSED_DATA"
  /** An offset or size needs more than 53 bits and cannot be represented exactly. */
  | "TOO_LARGE"
  /** A backing file named by an image cannot be found. */
  | "BACKING_MISSING"
  /** A backing chain refers back to one of its own images, or is too deep. */
  | "BACKING_LOOP"
  /** An encrypted image was opened without its passphrase. */
  | "PASSPHRASE_REQUIRED"
  /** The storage has no space left (ENOSPC), for example a disk made full by a fault rule. */
  | "NO_SPACE"
  /** A fault scenario (file or rules) is malformed. */
  | "INVALID_SCENARIO";

/**
 * An error with a stable {@linkcode QcowErrorCode}.
 *
 * @example Matching on the code
 * ```ts
 * import { QcowError } from "@qcowlab/qcowlab";
 *
 * const error = new QcowError("BAD_MAGIC", "Not a qcow2 image");
 * console.log(error.code === "BAD_MAGIC"); // true
 * ```
 */
export class QcowError extends Error {
  /** The stable code of this error. */
  readonly code: QcowErrorCode;

  /**
   * Creates an error.
   *
   * @param code The stable code.
   * @param message One sentence saying what failed.
   * @param options Standard error options, such as a `cause`.
   */
  constructor(code: QcowErrorCode, message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "QcowError";
    this.code = code;
  }
}

/**
 * Tells whether a value is a {@linkcode QcowError}, optionally with a given code.
 *
 * @example Checking a code
 * ```ts
 * import { isQcowError, QcowError } from "@qcowlab/qcowlab";
 *
 * console.log(isQcowError(new QcowError("IO", "disk gone"), "IO")); // true
 * ```
 *
 * @param value Anything that was thrown.
 * @param code When given, the code the error must have.
 * @returns Whether `value` is such an error.
 */
export function isQcowError(value: unknown, code?: QcowErrorCode): value is QcowError {
  return value instanceof QcowError && (code === undefined || value.code === code);
}
