/**
 * Byte counts written the way qemu-img and qemu-io accept them ("64k", "1.5M", "0x200").
 *
 * @module
 */

import { QcowError } from "./errors.ts";

const UNITS: Record<string, bigint> = {
  b: 1n,
  k: 1n << 10n,
  m: 1n << 20n,
  g: 1n << 30n,
  t: 1n << 40n,
  p: 1n << 50n,
  e: 1n << 60n,
};

const DECIMAL = /^(\d+)(?:\.(\d*))?([bkmgtpe])?$/i;
const HEX = /^0x([0-9a-f]+)$/i;

/**
 * Parses a size as qemu-img does: a decimal number with an optional binary suffix (`b`, `k`, `M`,
 * `G`, `T`, `P`, `E`, in either case), or a hexadecimal number without one. A fraction needs a
 * suffix larger than bytes, and the result is truncated to whole bytes ("1.1k" is 1126).
 *
 * @example Sizes with suffixes
 * ```ts
 * import { parseSize } from "./parse_size.ts";
 *
 * console.log(parseSize("64k")); // 65536
 * console.log(parseSize("1.5M")); // 1572864
 * console.log(parseSize("0x200")); // 512
 * ```
 *
 * @param text The size as typed.
 * @returns The number of bytes.
 * @throws {QcowError} `INVALID_ARGUMENT` when the text is not a size, `TOO_LARGE` when it needs
 * more than 53 bits.
 */
export function parseSize(text: string): number {
  let bytes: bigint;
  const hex = HEX.exec(text);
  const decimal = hex ? null : DECIMAL.exec(text);
  if (hex) {
    bytes = BigInt(`0x${hex[1]}`);
  } else if (decimal) {
    const [, whole, fraction, suffix] = decimal;
    const unit = UNITS[(suffix ?? "b").toLowerCase()]!;
    if (fraction !== undefined && unit === 1n) throw invalid(text, "a fraction needs a suffix");
    // In integers, so "1.1k" truncates once, at the end, to 1126.
    const digits = fraction ?? "";
    bytes = (BigInt(whole! + digits) * unit) / 10n ** BigInt(digits.length);
  } else {
    throw invalid(text, "use a number with an optional k, M, G, T, P or E suffix");
  }
  if (bytes > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new QcowError("TOO_LARGE", `Invalid size '${text}': more than 2^53 - 1 bytes`);
  }
  return Number(bytes);
}

function invalid(text: string, why: string): QcowError {
  return new QcowError("INVALID_ARGUMENT", `Invalid size '${text}': ${why}`);
}
