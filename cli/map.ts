/**
 * `cli.ts map`: how an image's ranges are stored, as qemu-img map shows it.
 *
 * @module
 */

import { QcowError } from "../core/errors.ts";
import { mapImage } from "../drivers/map_image.ts";
import { type CliCommand, outputOption, parse, showHelp } from "./_common.ts";
import { PASSPHRASE_HELP } from "./_qcow.ts";
import { openViewedImage, VIEW_OPTIONS } from "./_view_image.ts";

const HELP = `Usage: cli.ts map [-f FMT] [--output human|json] FILE

Lists how each range of FILE and its backing chain is stored.
  -f, --format FMT     the image's format (raw or qcow2); probed when omitted
  --output FORMAT      human (default: ranges stored as data, with their host offsets) or json
                       (every range, with depth, present, zero, data and offset, as qemu-img)
${PASSPHRASE_HELP}`;

const mapRun: CliCommand["run"] = async (args, io) => {
  const { values, positionals } = parse(args, VIEW_OPTIONS);
  if (values.help) return showHelp(HELP, io);
  const output = outputOption(values.output);
  await using image = await openViewedImage(values, positionals);
  const entries = await mapImage(image);
  if (output === "json") {
    const lines = entries.map((e) => {
      const offset = e.offset === undefined ? "" : `, "offset": ${e.offset}`;
      return `{ "start": ${e.start}, "length": ${e.length}, "depth": ${e.depth}, "present": ${e.present}, "zero": ${e.zero}, "data": ${e.data}${offset}}`;
    });
    io.stdout(`[${lines.join(",\n")}]\n`);
  } else {
    const hex = (n: number): string => (n === 0 ? "0" : `0x${n.toString(16)}`).padEnd(16);
    let text = `${"Offset".padEnd(16)}${"Length".padEnd(16)}${"Mapped to".padEnd(16)}File\n`;
    for (const e of entries) {
      if (e.data && e.offset === undefined) {
        // As qemu-img: the table has no way to show where compressed data lies.
        throw new QcowError(
          "UNSUPPORTED_FEATURE",
          "File contains external, encrypted or compressed clusters (use --output json)",
        );
      }
      if (e.data && e.offset !== undefined) {
        text += `${hex(e.start)}${hex(e.length)}${hex(e.offset)}${e.filename}\n`;
      }
    }
    io.stdout(text);
  }
  return 0;
};

/** `cli.ts map`. */
export const mapCommand: CliCommand = {
  name: "map",
  summary: "show how an image's ranges are allocated (like qemu-img map)",
  run: mapRun,
};
