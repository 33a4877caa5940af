/**
 * `cli.ts create`: a new empty image, as qemu-img create makes it.
 *
 * @module
 */

import { isQcowError, QcowError } from "../core/errors.ts";
import { FileDevice } from "../core/file_device.ts";
import { parseSize } from "../core/parse_size.ts";
import { resolveBackingPath } from "../drivers/backing_path.ts";
import type { Image } from "../drivers/image.ts";
import { openImage } from "../drivers/open_image.ts";
import { createQcow2, type CreateQcow2Options } from "../drivers/qcow2/create.ts";
import { encryptNewQcow2 } from "../drivers/encrypt_new_qcow2.ts";
import { createQcowRun, takeEncryption } from "./_qcow.ts";
import {
  type CliCommand,
  fail,
  formatOption,
  list,
  parse,
  roundUp512,
  showHelp,
} from "./_common.ts";
import {
  formattingLine,
  imageOptions,
  keyValues,
  QCOW2_OPTION_HELP,
  RAW_OPTION_HELP,
  validateQcow2,
} from "./_create_options.ts";

const HELP = `Usage: cli.ts create [-f FMT] [-o OPTIONS] [-b BACKING -F FMT] [-q] FILE [SIZE]

Creates FILE as an empty image of SIZE bytes (k, M, G, T suffixes; default: the backing file's
virtual size), printing qemu-img's "Formatting ..." line.
  -f, --format FMT     qcow2 (the default here; qemu-img's is raw), qcow (version 1: options
                       backing_file, backing_fmt, encrypt.format=aes) or raw (a sparse file)
  -o OPTIONS           comma-separated key=value create options ("-o help" lists them):
                       compat=0.10|1.1, cluster_size=SIZE, refcount_bits=N,
                       lazy_refcounts=on|off, extended_l2=on|off, preallocation=off|metadata,
                       backing_file=NAME, backing_fmt=FMT, size=SIZE,
                       encrypt.format=aes (or encryption=on): legacy AES, qcow and qcow2; the
                       passphrase is given when the image is opened (--passphrase-file/-env)
  -b, --backing NAME   the backing file, stored as given and found beside FILE
  -F, --backing-format FMT  the backing file's format (raw or qcow2), required with -b
  -q, --quiet          print nothing on success
`;

function agree<T extends string>(flag: string, value: T, option: T | undefined): T {
  if (option !== undefined && option !== value) fail(`${flag} ${value} contradicts -o ${option}`);
  return value;
}

/** Opens the backing file a new image will name, to check it and learn its size. */
async function backingSize(
  path: string,
  options: Omit<CreateQcow2Options, "size">,
): Promise<number> {
  const name = options.backingFile!;
  const where = resolveBackingPath(path, name);
  let image: Image;
  try {
    image = await openImage(where, {
      backing: false,
      ...(options.backingFormat ? { format: options.backingFormat } : {}),
    });
  } catch (error) {
    if (!isQcowError(error)) throw error;
    throw new QcowError(error.code, `${path}: Could not open backing image: ${error.message}`, {
      cause: error,
    });
  }
  try {
    if (options.backingFormat === undefined) {
      // As qemu-img 7.2: probing the backing format at every open is unsafe, so it must be named.
      fail(
        `${path}: Backing file specified without backing format (detected format of ${image.format}; use -F ${image.format})`,
      );
    }
    return image.size;
  } finally {
    await image.close();
  }
}

const createRun: CliCommand["run"] = async (args, io) => {
  const { values, positionals } = parse(args, {
    format: { type: "string", short: "f" },
    options: { type: "string", short: "o", multiple: true },
    backing: { type: "string", short: "b" },
    "backing-format": { type: "string", short: "F" },
    quiet: { type: "boolean", short: "q" },
  });
  if (values.help) return showHelp(HELP, io);
  const format = formatOption(values.format) ?? "qcow2";
  if (format === "qcow") return await createQcowRun(values, positionals, io);
  const encryption = takeEncryption(keyValues(list(values.options)));
  if (encryption.encrypt && format === "raw") fail("Encryption is not supported for raw images");
  const options = imageOptions(encryption.pairs, format);
  if (options.given.has("help")) {
    io.stdout(format === "raw" ? RAW_OPTION_HELP : QCOW2_OPTION_HELP);
    return 0;
  }
  if (positionals.length < 1 || positionals.length > 2) {
    fail(`Expected FILE and an optional SIZE, got ${positionals.length} arguments`);
  }
  const [path, sizeText] = positionals as [string, string | undefined];
  const q = options.qcow2;
  const backing = typeof values.backing === "string" ? values.backing : undefined;
  const backingFormat = formatOption(values["backing-format"]);
  if (format === "raw" && (backing ?? backingFormat) !== undefined) {
    fail(`${path}: Backing file not supported for file format 'raw'`);
  }
  if (backing !== undefined) q.backingFile = agree("-b", backing, q.backingFile);
  if (backingFormat !== undefined) q.backingFormat = agree("-F", backingFormat, q.backingFormat);
  let size = sizeText === undefined ? options.size : parseSize(sizeText);
  if (q.backingFile !== undefined) {
    const base = await backingSize(path, q);
    size ??= base;
  }
  if (size === undefined) fail(`${path}: Image creation needs a size parameter`);
  if (!values.quiet) io.stdout(formattingLine(path, format, size, options));

  if (format === "raw") {
    await using device = FileDevice.open(path, { readOnly: false, create: true, truncate: true });
    await device.truncate(roundUp512(size));
    return 0;
  }
  // qcow2 rounds the size up to whole sectors, as qemu-img does.
  const full: CreateQcow2Options = { ...q, size: roundUp512(size) };
  validateQcow2(path, full);
  await using device = FileDevice.open(path, { readOnly: false, create: true, truncate: true });
  await createQcow2(device, full);
  if (encryption.encrypt) await encryptNewQcow2(device);
  return 0;
};

/** `cli.ts create`. */
export const createCommand: CliCommand = {
  name: "create",
  summary: "create a qcow2, qcow or raw image (like qemu-img create)",
  run: createRun,
};
