/**
 * `cli.ts convert`: an image's contents copied to a new raw or qcow2 image, as qemu-img convert does.
 *
 * @module
 */

import { isZero } from "../core/bytes.ts";
import { QcowError } from "../core/errors.ts";
import { FileDevice } from "../core/file_device.ts";
import { Progress } from "../core/progress.ts";
import type { Image } from "../drivers/image.ts";
import { mapImage } from "../drivers/map_image.ts";
import { createQcow2, type CreateQcow2Options } from "../drivers/qcow2/create.ts";
import { Qcow2Image } from "../drivers/qcow2/qcow2_image.ts";
import { encryptNewQcow2 } from "../drivers/encrypt_new_qcow2.ts";
import {
  PASSPHRASE_HELP,
  PASSPHRASE_OPTIONS,
  QCOW_OPTION_HELP,
  qcowOptions,
  qcowTarget,
  readPassphrase,
  takeEncryption,
} from "./_qcow.ts";
import {
  type CliCommand,
  fail,
  formatOption,
  list,
  open,
  parse,
  roundUp512,
  showHelp,
} from "./_common.ts";
import {
  imageOptions,
  keyValues,
  QCOW2_OPTION_HELP,
  RAW_OPTION_HELP,
  validateQcow2,
} from "./_create_options.ts";
import { clusterTarget, type ConvertTarget } from "./_convert_target.ts";

const HELP =
  `Usage: cli.ts convert [-f FMT] [-l SNAPSHOT] [-O raw|qcow2] [-c] [-o OPTIONS] [-q] SRC DST

Writes the virtual contents of SRC (with its backing chain) to DST, skipping ranges that read as
zeros: a sparse raw file, or a new qcow2 image without a backing file.
  -f, --format FMT     the source's format; probed when omitted
  -l SNAPSHOT          copy the internal snapshot SNAPSHOT of SRC (an id or name, or
                       snapshot.id=ID,snapshot.name=NAME) instead of its current state
  -O FMT               the output format: raw (default), qcow2 or qcow
  -c, --compress       write qcow2 data clusters compressed
  -o OPTIONS           qcow2 create options for DST, as for create (no size or backing file)
  -q, --quiet          no progress output (progress: a bar on a terminal, plain lines otherwise)
  -o encrypt.format=aes  encrypt DST (qcow or qcow2) with legacy AES, with the passphrase below
${PASSPHRASE_HELP}`;

const CONVERT_CHUNK = 1024 * 1024;

/**
 * Copies every non-zero `granularity`-sized piece of `image` to `target`, reading only what the
 * map says may hold data: like qemu-img convert, zero ranges are skipped, not written.
 */
async function copyNonZero(image: Image, target: ConvertTarget, progress: Progress): Promise<void> {
  const g = target.granularity;
  const chunkSize = Math.max(CONVERT_CHUNK, g);
  const buffer = new Uint8Array(chunkSize);
  // Entries rounded out to whole pieces may overlap; nothing below `copied` is read twice.
  let copied = 0;
  for (const entry of await mapImage(image)) {
    const end = entry.start + entry.length;
    if (!entry.zero) {
      const stop = Math.min(image.size, Math.ceil(end / g) * g);
      for (let at = Math.max(copied, entry.start - (entry.start % g)); at < stop;) {
        const chunk = buffer.subarray(0, Math.min(chunkSize, stop - at));
        await image.read(chunk, at);
        await writeNonZeroRuns(chunk, at, target);
        at += chunk.length;
        progress.update(at);
      }
      copied = Math.max(copied, stop);
    }
    progress.update(end);
  }
}

async function writeNonZeroRuns(
  chunk: Uint8Array,
  at: number,
  target: ConvertTarget,
): Promise<void> {
  const g = target.granularity;
  let run = -1;
  for (let i = 0; i < chunk.length; i += g) {
    const zero = isZero(chunk.subarray(i, i + g));
    if (!zero && run < 0) run = i;
    if (zero && run >= 0) {
      await target.write(chunk.subarray(run, i), at + run);
      run = -1;
    }
  }
  if (run >= 0) await target.write(chunk.subarray(run), at + run);
}

/** A sparse raw file: pieces of 4 KiB, qemu-img convert's default sparse size. */
async function rawTarget(path: string, size: number): Promise<ConvertTarget> {
  const device = FileDevice.open(path, { readOnly: false, create: true, truncate: true });
  try {
    await device.truncate(size);
  } catch (error) {
    await device.close();
    throw error;
  }
  return {
    granularity: 4096,
    write: (data, at) => device.write(data, at),
    finish: () => device.flush(),
    [Symbol.asyncDispose]: () => device.close(),
  };
}

/** A new qcow2 image, written a cluster at a time, compressed with `compress`. */
async function qcow2Target(
  path: string,
  options: CreateQcow2Options,
  compress: boolean,
  passphrase?: string,
): Promise<ConvertTarget> {
  validateQcow2(path, options);
  const device = FileDevice.open(path, { readOnly: false, create: true, truncate: true });
  let image: Qcow2Image;
  try {
    await createQcow2(device, options);
    if (passphrase !== undefined) await encryptNewQcow2(device);
    image = await Qcow2Image.open(device, {
      readOnly: false,
      ownsDevice: true,
      ...(passphrase === undefined ? {} : { passphrase }),
    });
  } catch (error) {
    await device.close();
    throw error;
  }
  return clusterTarget(image, compress);
}

/**
 * The read-only view of the snapshot `spec` names (an id or name, as qemu-img looks it up, or
 * `snapshot.id=ID,snapshot.name=NAME` with either or both), with the image's current size as
 * qemu-img reads it.
 */
async function snapshotSource(image: Image, spec: string): Promise<Image> {
  if (!(image instanceof Qcow2Image)) fail(`Image ${image.filename} has no internal snapshots`);
  const missing = (): never => {
    throw new QcowError("NOT_FOUND", "Failed to load snapshot: Can't find snapshot");
  };
  if (!spec.startsWith("snapshot.")) {
    const found = (await image.listSnapshots()).some((s) => s.id === spec || s.name === spec);
    if (!found) missing();
    return await image.snapshotView(spec, { size: image.size });
  }
  const wanted = new Map<string, string>();
  for (const part of spec.split(",")) {
    const [key, ...rest] = part.split("=");
    if ((key !== "snapshot.id" && key !== "snapshot.name") || rest.length === 0) {
      fail(`Invalid snapshot option '${part}' (expected snapshot.id=ID or snapshot.name=NAME)`);
    }
    wanted.set(key, rest.join("="));
  }
  const id = wanted.get("snapshot.id");
  const name = wanted.get("snapshot.name");
  const match = (await image.listSnapshots()).find((s) =>
    (id === undefined || s.id === id) && (name === undefined || s.name === name)
  );
  if (match === undefined) missing();
  return await image.snapshotView(match!.id, { match: "id", size: image.size });
}

const convertRun: CliCommand["run"] = async (args, io) => {
  const { values, positionals } = parse(args, {
    format: { type: "string", short: "f" },
    O: { type: "string", short: "O" },
    compress: { type: "boolean", short: "c" },
    options: { type: "string", short: "o", multiple: true },
    quiet: { type: "boolean", short: "q" },
    snapshot: { type: "string", short: "l" },
    ...PASSPHRASE_OPTIONS,
  });
  if (values.help) return showHelp(HELP, io);
  const outFormat = formatOption(values.O) ?? "raw";
  const pairs = keyValues(list(values.options));
  const encryption = takeEncryption(pairs);
  if (encryption.encrypt && outFormat === "raw") {
    fail("Encryption is not supported for raw images");
  }
  const qcow = outFormat === "qcow" ? qcowOptions(pairs) : undefined;
  const options = imageOptions(
    outFormat === "qcow" ? [] : encryption.pairs,
    outFormat === "qcow" ? "qcow2" : outFormat,
  );
  if (options.given.has("help") || pairs.some(([key]) => key === "help")) {
    const help = outFormat === "qcow" ? QCOW_OPTION_HELP : QCOW2_OPTION_HELP;
    io.stdout(outFormat === "raw" ? RAW_OPTION_HELP : help);
    return 0;
  }
  if (qcow && (qcow.size !== undefined || qcow.backingFile !== undefined)) {
    fail("Options 'size' and 'backing_file' are not supported by convert");
  }
  const passphrase = await readPassphrase(values);
  if (encryption.encrypt && passphrase === undefined) {
    throw new QcowError(
      "PASSPHRASE_REQUIRED",
      "An encrypted target needs a passphrase (--passphrase-file or --passphrase-env)",
    );
  }
  for (const key of ["size", "backing_file", "backing_fmt"]) {
    if (options.given.has(key)) fail(`Option '${key}' is not supported by convert`);
  }
  if (values.compress && outFormat === "raw") {
    fail("Compression not supported for this file format");
  }
  if (positionals.length !== 2) fail(`Expected SRC and DST, got ${positionals.length} paths`);
  const [src, dst] = positionals as [string, string];
  await using whole = await open(src, formatOption(values.format), passphrase);
  await using image = values.snapshot === undefined
    ? whole
    : await snapshotSource(whole, String(values.snapshot));
  const compress = values.compress === true;
  await using target = outFormat === "raw"
    ? await rawTarget(dst, image.size)
    : outFormat === "qcow"
    ? await qcowTarget(dst, roundUp512(image.size), {
      compress,
      encrypt: encryption.encrypt,
      ...(passphrase === undefined ? {} : { passphrase }),
    })
    : await qcow2Target(
      dst,
      { ...options.qcow2, size: roundUp512(image.size) },
      compress,
      encryption.encrypt ? passphrase : undefined,
    );
  const progress = new Progress(image.size, {
    label: "convert",
    terminal: io.terminal,
    write: io.stderr,
    quiet: values.quiet === true,
  });
  await copyNonZero(image, target, progress);
  await target.finish();
  progress.done();
  return 0;
};

/** `cli.ts convert`. */
export const convertCommand: CliCommand = {
  name: "convert",
  summary: "copy an image to raw, qcow2 or qcow (like qemu-img convert)",
  run: convertRun,
};
