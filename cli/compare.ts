/**
 * `cli.ts compare`: whether two images hold the same contents, as qemu-img compare says.
 *
 * @module
 */

import type { Image } from "../drivers/image.ts";
import { mapImage } from "../drivers/map_image.ts";
import { type CliCommand, fail, formatOption, open, parse, report, showHelp } from "./_common.ts";
import { PASSPHRASE_HELP, PASSPHRASE_OPTIONS, readPassphrase } from "./_qcow.ts";

/** Bytes compared per read. */
const CHUNK = 1024 * 1024;

const HELP = `Usage: cli.ts compare [-f FMT] [-F FMT] [-s] A B

Compares the virtual contents of A and B. Exit status 0 when identical, 1 when they differ (the
first differing offset is printed), 2 on an error. Without -s, an image that is larger than the
other compares equal when its extra part reads as zeros.
  -f FMT               format of A; -F FMT: format of B (probed when omitted)
  -s, --strict         images of different sizes differ
${PASSPHRASE_HELP}`;

async function firstDifference(a: Image, b: Image, end: number): Promise<number> {
  const bufA = new Uint8Array(CHUNK);
  const bufB = new Uint8Array(CHUNK);
  for (let at = 0; at < end; at += CHUNK) {
    const n = Math.min(CHUNK, end - at);
    const partA = bufA.subarray(0, n);
    const partB = bufB.subarray(0, n);
    await a.read(partA, at);
    await b.read(partB, at);
    for (let i = 0; i < n; i++) if (partA[i] !== partB[i]) return at + i;
  }
  return -1;
}

async function firstNonZero(image: Image, start: number): Promise<number> {
  const buffer = new Uint8Array(CHUNK);
  for (const entry of await mapImage(image, { start, length: image.size - start })) {
    if (entry.zero) continue;
    for (let at = entry.start; at < entry.start + entry.length; at += CHUNK) {
      const part = buffer.subarray(0, Math.min(CHUNK, entry.start + entry.length - at));
      await image.read(part, at);
      const i = part.findIndex((byte) => byte !== 0);
      if (i >= 0) return at + i;
    }
  }
  return -1;
}

const compareRun: CliCommand["run"] = async (args, io) => {
  const { values, positionals } = parse(args, {
    f: { type: "string", short: "f" },
    F: { type: "string", short: "F" },
    strict: { type: "boolean", short: "s" },
    ...PASSPHRASE_OPTIONS,
  });
  if (values.help) return showHelp(HELP, io);
  if (positionals.length !== 2) fail(`Expected two images, got ${positionals.length}`);
  try {
    const passphrase = await readPassphrase(values);
    await using a = await open(positionals[0]!, formatOption(values.f), passphrase);
    await using b = await open(positionals[1]!, formatOption(values.F), passphrase);
    if (values.strict && a.size !== b.size) {
      io.stdout("Strict mode: Image size mismatch!\n");
      return 1;
    }
    const common = Math.min(a.size, b.size);
    let at = await firstDifference(a, b, common);
    if (at < 0 && a.size !== b.size) at = await firstNonZero(a.size > b.size ? a : b, common);
    if (at >= 0) {
      // qemu-img compare works in 512-byte sectors and names the sector's first byte.
      io.stdout(`Content mismatch at offset ${at - (at % 512)}!\n`);
      return 1;
    }
    io.stdout("Images are identical.\n");
    return 0;
  } catch (error) {
    report(error, io);
    return 2;
  }
};

/** `cli.ts compare`. */
export const compareCommand: CliCommand = {
  name: "compare",
  summary: "compare the contents of two images (like qemu-img compare)",
  run: compareRun,
};
