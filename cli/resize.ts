/**
 * `cli.ts resize`: a new virtual size, as qemu-img resize sets it.
 *
 * @module
 */

import { parseSize } from "../core/parse_size.ts";
import { openImage } from "../drivers/open_image.ts";
import { type CliCommand, fail, formatOption, parse, reportRepair, showHelp } from "./_common.ts";

const HELP = `Usage: cli.ts resize [--shrink] [-f FMT] [-q] FILE [+|-]SIZE

Sets the virtual size of FILE to SIZE, or grows (+) or shrinks (-) it by SIZE (k, M, G, T
suffixes). A negative size needs no "--" before it.
  --shrink             allow making the image smaller (a qcow2 image only loses an unallocated tail)
  -f, --format FMT     the image's format (raw or qcow2); probed when omitted
  -q, --quiet          print nothing on success
`;

/** Moves "-1M"-like sizes behind "--", so they need no "--" of their own. */
function negativeSizesLast(args: string[]): string[] {
  if (args.includes("--")) return args;
  const negative = (a: string): boolean => /^-\d/.test(a);
  if (!args.some(negative)) return args;
  return [...args.filter((a) => !negative(a)), "--", ...args.filter(negative)];
}

const resizeRun: CliCommand["run"] = async (args, io) => {
  const { values, positionals } = parse(negativeSizesLast(args), {
    format: { type: "string", short: "f" },
    shrink: { type: "boolean" },
    quiet: { type: "boolean", short: "q" },
  });
  if (values.help) return showHelp(HELP, io);
  if (positionals.length !== 2) fail(`Expected FILE and SIZE, got ${positionals.length} arguments`);
  const [path, sizeText] = positionals as [string, string];
  const sign = sizeText[0] === "+" || sizeText[0] === "-" ? sizeText[0] : "";
  const amount = parseSize(sign ? sizeText.slice(1) : sizeText);
  const format = formatOption(values.format);
  // With its backing chain: growing over a longer backing file must zero what would show through.
  await using image = await openImage(path, { readOnly: false, ...(format ? { format } : {}) });
  reportRepair(image, io);
  const size = sign === "+" ? image.size + amount : sign === "-" ? image.size - amount : amount;
  if (size < 0) fail("New image size must be positive");
  if (size < image.size && !values.shrink) {
    fail("Use the --shrink option to perform a shrink operation.");
  }
  await image.resize(size, { shrink: true });
  if (!values.quiet) io.stdout("Image resized.\n");
  return 0;
};

/** `cli.ts resize`. */
export const resizeCommand: CliCommand = {
  name: "resize",
  summary: "change an image's virtual size (like qemu-img resize)",
  run: resizeRun,
};
