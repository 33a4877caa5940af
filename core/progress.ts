/**
 * Progress display for long operations.
 *
 * @module
 */

/** Options for {@linkcode Progress}. */
export interface ProgressOptions {
  /** What is being done, printed before the figures; default "progress". */
  label?: string;
  /** Whether to draw a bar in place; default: whether stderr is a terminal. */
  terminal?: boolean;
  /** Where text goes; default stderr. */
  write?: (text: string) => void;
  /** Print nothing at all; default false. */
  quiet?: boolean;
}

const BAR_WIDTH = 30;

/**
 * Reports how far a job has come: on a terminal a bar redrawn in place, elsewhere a plain line at
 * each tenth of the way, so logs stay readable.
 *
 * @example
 * ```ts
 * import { Progress } from "@qcowlab/qcowlab";
 *
 * const lines: string[] = [];
 * const progress = new Progress(100, { terminal: false, write: (t) => lines.push(t) });
 * progress.update(50);
 * progress.done();
 * console.log(lines.length); // 2
 * ```
 */
export class Progress {
  #total: number;
  #label: string;
  #terminal: boolean;
  #write: (text: string) => void;
  #quiet: boolean;
  #lastStep = -1;
  #lastDraw = 0;

  /**
   * Creates a reporter.
   *
   * @param total The amount that means "finished" (bytes, items).
   * @param options Label, terminal mode and output.
   */
  constructor(total: number, options: ProgressOptions = {}) {
    this.#total = Math.max(total, 0);
    this.#label = options.label ?? "progress";
    this.#terminal = options.terminal ?? Deno.stderr.isTerminal();
    const encoder = new TextEncoder();
    this.#write = options.write ?? ((text) => Deno.stderr.writeSync(encoder.encode(text)));
    this.#quiet = options.quiet ?? false;
  }

  /** Reports that `done` of the total is finished. */
  update(done: number): void {
    if (this.#quiet) return;
    const fraction = this.#total === 0 ? 1 : Math.min(done / this.#total, 1);
    if (this.#terminal) {
      const now = performance.now();
      if (fraction < 1 && now - this.#lastDraw < 100) return;
      this.#lastDraw = now;
      const filled = Math.round(fraction * BAR_WIDTH);
      const bar = "#".repeat(filled) + "-".repeat(BAR_WIDTH - filled);
      this.#write(`\r${this.#label} [${bar}] ${(fraction * 100).toFixed(1).padStart(5)}%`);
    } else {
      const step = Math.floor(fraction * 10);
      if (step === this.#lastStep) return;
      this.#lastStep = step;
      this.#write(`${this.#label}: ${step * 10}%\n`);
    }
  }

  /** Reports completion and ends the bar's line. */
  done(): void {
    if (this.#quiet) return;
    this.update(this.#total);
    if (this.#terminal) this.#write("\n");
  }
}
