/**
 * Human-readable sizes as qemu-img prints them.
 *
 * @module
 */

const SUFFIXES = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

/**
 * Formats a byte count the way qemu-img does: binary units, three significant digits ("324 KiB",
 * "1.5 GiB", "1.02e+03 KiB").
 *
 * @example
 * ```ts
 * import { formatSize } from "@qcowlab/qcowlab";
 *
 * console.log(formatSize(2 * 1024 * 1024)); // "2 MiB"
 * ```
 *
 * @param bytes A non-negative byte count.
 * @returns The formatted size.
 */
export function formatSize(bytes: number): string {
  const unit = bytes < 1 ? 0 : Math.min(Math.floor(Math.floor(Math.log2(bytes)) / 10), 6);
  const value = bytes / 2 ** (unit * 10);
  return `${formatG3(value)} ${SUFFIXES[unit]}`;
}

/** C's `%0.3g`: three significant digits, trailing zeros dropped, two-digit exponents. */
function formatG3(value: number): string {
  if (value === 0) return "0";
  const exponent = Math.floor(Math.log10(Math.abs(value)));
  if (exponent < -4 || exponent >= 3) {
    const [mantissa, exp] = value.toExponential(2).split("e");
    const trimmed = mantissa!.includes(".") ? mantissa!.replace(/\.?0+$/, "") : mantissa!;
    const n = Number(exp);
    return `${trimmed}e${n < 0 ? "-" : "+"}${String(Math.abs(n)).padStart(2, "0")}`;
  }
  const fixed = value.toPrecision(3);
  return fixed.includes(".") ? fixed.replace(/\.?0+$/, "") : fixed;
}
