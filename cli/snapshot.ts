/**
 * `cli.ts snapshot`: list, create, apply and delete internal snapshots, as qemu-img snapshot does.
 *
 * @module
 */

import { formatSize } from "../core/format_size.ts";
import { QcowError } from "../core/errors.ts";
import { openImage } from "../drivers/open_image.ts";
import { Qcow2Image } from "../drivers/qcow2/qcow2_image.ts";
import type { SnapshotInfo } from "../drivers/qcow2/snapshot_ops.ts";
import { type CliCommand, fail, formatOption, onePath, parse, showHelp } from "./_common.ts";

const HELP = `Usage: cli.ts snapshot [-l | -c NAME | -a NAME | -d NAME] [-f FMT] [-q] FILE

Manages the internal snapshots of the qcow2 image FILE, as qemu-img snapshot does.
  -l                   list the snapshots (ID, TAG, VM SIZE, DATE, VM CLOCK, ICOUNT)
  -c NAME              create a snapshot named NAME of the current state
  -a NAME              apply (revert to) the snapshot with id or name NAME
  -d NAME              delete the snapshot named NAME
  -f, --format FMT     the image's format (qcow2); probed when omitted
  -q, --quiet          print nothing on success
`;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Pads `text` to `width` bytes (as C's printf counts), on the right or the left. */
function pad(text: string, width: number, left = false): string {
  const fill = " ".repeat(Math.max(0, width - encoder.encode(text).length));
  return left ? text + fill : fill + text;
}

/** The first `max` bytes of `text`, as QEMU copies ids and names into fixed buffers. */
function truncateBytes(text: string, max: number): string {
  const bytes = encoder.encode(text);
  return bytes.length <= max ? text : decoder.decode(bytes.subarray(0, max));
}

function two(n: number): string {
  return String(n).padStart(2, "0");
}

/** `YYYY-MM-DD HH:MM:SS` in local time, as qemu-img prints snapshot dates. */
function formatDate(seconds: number): string {
  const d = new Date(seconds * 1000);
  return `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())} ` +
    `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
}

/** The guest clock as `HH:MM:SS.mmm` (hours not wrapped), as qemu-img 7.2 prints it. */
function formatClock(nsec: bigint): string {
  const secs = nsec / 1_000_000_000n;
  const ms = (nsec / 1_000_000n) % 1000n;
  return `${two(Number(secs / 3600n))}:${two(Number((secs / 60n) % 60n))}:${
    two(Number(secs % 60n))
  }.${String(ms).padStart(3, "0")}`;
}

/** The listing `qemu-img snapshot -l` prints (nothing without snapshots). */
function formatList(snapshots: readonly SnapshotInfo[]): string {
  if (snapshots.length === 0) return "";
  const lines = [
    "Snapshot list:",
    pad("ID", 10, true) + pad("TAG", 17, true) + pad("VM SIZE", 8) + pad("DATE", 20) +
    pad("VM CLOCK", 13) + pad("ICOUNT", 11),
  ];
  for (const sn of snapshots) {
    // ICOUNT is printed as a signed 64-bit number.
    const icount = sn.icount === undefined ? "" : BigInt.asIntN(64, sn.icount).toString();
    lines.push(
      pad(truncateBytes(sn.id, 127), 9, true) + " " + pad(truncateBytes(sn.name, 255), 16, true) +
        " " + pad(formatSize(sn.vmStateSize), 8) + pad(formatDate(sn.dateSec), 20) +
        pad(formatClock(sn.vmClockNsec), 13) + pad(icount, 11),
    );
  }
  return lines.join("\n") + "\n";
}

function action(values: Record<string, unknown>): ["l" | "c" | "a" | "d", string] | undefined {
  const given = (["l", "c", "a", "d"] as const).filter((key) => values[key] !== undefined);
  if (given.length > 1) fail("Cannot mix '-l', '-a', '-c', '-d'");
  const key = given[0];
  if (key === undefined) return undefined;
  return [key, key === "l" ? "" : String(values[key])];
}

const snapshotRun: CliCommand["run"] = async (args, io) => {
  const { values, positionals } = parse(args, {
    l: { type: "boolean", short: "l" },
    c: { type: "string", short: "c" },
    a: { type: "string", short: "a" },
    d: { type: "string", short: "d" },
    format: { type: "string", short: "f" },
    quiet: { type: "boolean", short: "q" },
  });
  if (values.help) return showHelp(HELP, io);
  const path = onePath(positionals, "FILE");
  const format = formatOption(values.format);
  const chosen = action(values);
  const readOnly = chosen === undefined || chosen[0] === "l";
  await using image = await openImage(path, { readOnly, ...(format ? { format } : {}) });
  if (!(image instanceof Qcow2Image)) {
    throw new QcowError(
      "UNSUPPORTED_FEATURE",
      `Image ${path} is ${image.format}: only qcow2 images have internal snapshots`,
    );
  }
  if (chosen === undefined) return 0;
  const [key, name] = chosen;
  const attempt = async (verb: string, op: () => Promise<unknown>): Promise<void> => {
    try {
      await op();
    } catch (error) {
      if (!(error instanceof QcowError)) throw error;
      const reason = error.code === "NOT_FOUND" ? "snapshot not found" : error.message;
      throw new QcowError(error.code, `Could not ${verb} snapshot '${name}': ${reason}`, {
        cause: error,
      });
    }
  };
  switch (key) {
    case "l":
      io.stdout(formatList(await image.listSnapshots()));
      break;
    case "c":
      // qemu-img keeps at most 255 bytes of a name.
      await attempt("create", () => image.createSnapshot(truncateBytes(name, 255)));
      break;
    case "a":
      await attempt("apply", () => image.applySnapshot(name));
      break;
    case "d":
      await attempt("delete", () => image.deleteSnapshot(name, { match: "name" }));
      break;
  }
  return 0;
};

/** `cli.ts snapshot`. */
export const snapshotCommand: CliCommand = {
  name: "snapshot",
  summary: "list, create, apply or delete internal snapshots (like qemu-img snapshot)",
  run: snapshotRun,
};
