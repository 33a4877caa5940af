/**
 * Helpers shared by the read and write benchmarks: progress lines, medians, number formatting and
 * plain-text tables, and the standalone entry point of a benchmark part.
 *
 * @module
 */

import { qemuImgVersion } from "./_qemu.ts";

/** Writes a progress line to stderr (the tables go to stdout). */
export function log(message: string): void {
  console.error(message);
}

/**
 * The median of some values.
 *
 * @param values At least one value.
 * @returns The middle value, or the mean of the two middle ones.
 */
export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/**
 * A figure rounded to a whole number with thousands separators, or "-" when absent.
 *
 * @param value The figure.
 * @returns The text.
 */
export function formatFigure(value: number | undefined): string {
  if (value === undefined) return "-";
  return Math.round(value).toLocaleString("en-US");
}

/**
 * Prints a table to stdout: the first column left-aligned, the others right-aligned.
 *
 * @param header Column titles.
 * @param rows Cells, one array per row.
 */
export function printTable(header: string[], rows: string[][]): void {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]): string =>
    cells.map((c, i) => i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!)).join("  ");
  console.log(line(header));
  console.log(widths.map((w) => "-".repeat(w)).join("  "));
  for (const row of rows) console.log(line(row));
}

/**
 * The one-minute load average, to show whether other work shared the machine; "?" when unknown.
 *
 * @returns The figure as text.
 */
export function loadAverage(): string {
  try {
    return Deno.readTextFileSync("/proc/loadavg").split(" ")[0] ?? "?";
  } catch {
    return "?";
  }
}

/**
 * The `main` of a benchmark part run on its own: makes a temporary directory (removed at the end,
 * and on Ctrl-C), runs the part, prints a line naming the versions, CPUs and load, then the part's
 * table and the total time.
 *
 * @param name The part's name in the heading ("check", "write", ...).
 * @param bench Runs the part in the directory and returns the function that prints its table.
 */
export async function runStandalone(
  name: string,
  bench: (dir: string, version: [number, number]) => Promise<() => void>,
): Promise<void> {
  const started = performance.now();
  const version = await qemuImgVersion();
  const dir = await Deno.makeTempDir({ prefix: `qcowlab-${name}-bench-` });
  const onInterrupt = (): void => {
    Deno.removeSync(dir, { recursive: true });
    Deno.exit(130);
  };
  Deno.addSignalListener("SIGINT", onInterrupt);
  try {
    const loadBefore = loadAverage();
    const print = await bench(dir, version);
    console.log(
      `qcowlab ${name} benchmark: Deno ${Deno.version.deno}, qemu-img ${version.join(".")}, ` +
        `${navigator.hardwareConcurrency} CPUs, load average ${loadBefore} before, ` +
        `${loadAverage()} after`,
    );
    print();
    console.log(`\nTotal time ${((performance.now() - started) / 1000).toFixed(0)} s`);
  } finally {
    Deno.removeSignalListener("SIGINT", onInterrupt);
    await Deno.remove(dir, { recursive: true });
  }
}
