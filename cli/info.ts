/**
 * `cli.ts info`: what an image is, as qemu-img info shows it.
 *
 * @module
 */

import { formatSize } from "../core/format_size.ts";
import type { Image, ImageInfo } from "../drivers/image.ts";
import { type CliCommand, outputOption, parse, showHelp } from "./_common.ts";
import { PASSPHRASE_HELP } from "./_qcow.ts";
import { openViewedImage, VIEW_OPTIONS } from "./_view_image.ts";

const HELP = `Usage: cli.ts info [-f FMT] [--backing-chain] [--output human|json] FILE

Shows the format, virtual size, cluster size, backing file and format-specific details of FILE.
  -f, --format FMT     the image's format (raw or qcow2); probed when omitted
  --backing-chain      show every image of the backing chain
  --output FORMAT      human (default) or json, with qemu-img's field names
${PASSPHRASE_HELP}`;

function humanInfo(info: ImageInfo): string {
  const lines = [
    `image: ${info.filename}`,
    `file format: ${info.format}`,
    `virtual size: ${formatSize(info["virtual-size"])} (${info["virtual-size"]} bytes)`,
  ];
  if (info["actual-size"] !== undefined) {
    lines.push(`disk size: ${formatSize(info["actual-size"])}`);
  }
  if (info.encrypted) lines.push("encrypted: yes");
  if (info["cluster-size"] !== undefined) lines.push(`cluster_size: ${info["cluster-size"]}`);
  const backing = info["backing-filename"];
  if (backing !== undefined) {
    const full = info["full-backing-filename"];
    lines.push(
      `backing file: ${backing}${full && full !== backing ? ` (actual path: ${full})` : ""}`,
    );
  }
  if (info["backing-filename-format"]) {
    lines.push(`backing file format: ${info["backing-filename-format"]}`);
  }
  if (info["dirty-flag"]) lines.push("cleanly shut down: no");
  const specific = info["format-specific"];
  if (specific) {
    lines.push("Format specific information:");
    for (const [key, value] of Object.entries(specific.data)) {
      if (typeof value === "object") {
        lines.push(`    ${key.replaceAll("-", " ")}:`);
        for (const [k, v] of Object.entries(value)) lines.push(`        ${k}: ${v}`);
      } else {
        lines.push(`    ${key.replaceAll("-", " ")}: ${value}`);
      }
    }
  }
  return lines.join("\n") + "\n";
}

const infoRun: CliCommand["run"] = async (args, io) => {
  const { values, positionals } = parse(args, {
    ...VIEW_OPTIONS,
    "backing-chain": { type: "boolean" },
  });
  if (values.help) return showHelp(HELP, io);
  const output = outputOption(values.output);
  await using image = await openViewedImage(values, positionals);
  const chain: ImageInfo[] = [];
  for (let layer: Image | undefined = image; layer; layer = layer.backing) {
    chain.push(layer.info());
    if (!values["backing-chain"]) break;
  }
  if (output === "json") {
    io.stdout(JSON.stringify(values["backing-chain"] ? chain : chain[0], null, 4) + "\n");
  } else {
    io.stdout(chain.map(humanInfo).join("\n"));
  }
  return 0;
};

/** `cli.ts info`. */
export const infoCommand: CliCommand = {
  name: "info",
  summary: "show what an image is (like qemu-img info)",
  run: infoRun,
};
