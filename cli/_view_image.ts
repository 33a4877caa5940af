/**
 * What the commands that only look at one image (`info`, `map`) share: their common options and
 * opening the image they name.
 *
 * @module
 */

import type { Image } from "../drivers/image.ts";
import { formatOption, onePath, open, type OptionSpec, type Values } from "./_common.ts";
import { PASSPHRASE_OPTIONS, readPassphrase } from "./_qcow.ts";

/** `-f FMT`, `--output human|json` and the passphrase options. */
export const VIEW_OPTIONS: Record<string, OptionSpec> = {
  format: { type: "string", short: "f" },
  output: { type: "string" },
  ...PASSPHRASE_OPTIONS,
};

/**
 * Opens the one image the command line names, read-only with its backing chain, in the format
 * `-f` gives (probed otherwise) and with the passphrase the options name.
 *
 * @param values The parsed options.
 * @param positionals The positional arguments: exactly one path.
 * @returns The open image.
 */
export async function openViewedImage(values: Values, positionals: string[]): Promise<Image> {
  return await open(
    onePath(positionals, "image"),
    formatOption(values.format),
    await readPassphrase(values),
  );
}
