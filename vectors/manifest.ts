/**
 * The manifest written next to a generated corpus (`manifest.json`), and its reader.
 *
 * @module
 */

import { QcowError } from "../core/errors.ts";
import { manifestSchema } from "./_schemas.ts";

/** Version of the manifest format; bumped when a field changes meaning. */
export const MANIFEST_VERSION = 1;

/** A check's numbers, as `qemu-img check --output=json` reports them. */
export interface CheckExpect {
  /** Whether there is a report (qemu-img prints none when the image does not open). */
  opened: boolean;
  /** 0 clean, 1 check failed, 2 corruptions, 3 leaks, 63 no check for the format. */
  exitStatus: number;
  /** Corruptions found (left, after a repair). */
  corruptions: number;
  /** Leaked clusters found (left, after a repair). */
  leaks: number;
  /** Errors that stopped parts of the check. */
  checkErrors: number;
  /** Repairs only: corruptions fixed. */
  corruptionsFixed?: number | undefined;
  /** Repairs only: leaks fixed. */
  leaksFixed?: number | undefined;
}

/** The `qemu-img info --output=json` fields that do not depend on where the file is. */
export interface InfoExpect {
  /** The format. */
  format: string;
  /** Virtual size in bytes. */
  "virtual-size": number;
  /** Cluster size. */
  "cluster-size"?: number | undefined;
  /** Whether the dirty bit is set. */
  "dirty-flag": boolean;
  /** The backing file name as stored. */
  "backing-filename"?: string | undefined;
  /** The backing format as stored. */
  "backing-filename-format"?: string | undefined;
  /** `format-specific.data`. */
  "format-specific"?: Record<string, string | number | boolean> | undefined;
}

/** Expected virtual contents, or a read failure. */
export type ContentsExpect =
  | {
    /** sha256 (hex) of all virtual bytes; only for images of at most 8 MiB. */
    sha256?: string | undefined;
    /** The chunked digest (see the README); defined for every size. */
    chunkedSha256: string;
    /** 64 KiB chunks that are not all zeros. */
    nonZeroChunks: number;
  }
  /** Reading fails; `error` is qcowlab's error code. */
  | { error: string };

/**
 * Where qemu-img is known to behave differently from the manifest's expectations, with what it
 * does instead: each member given replaces that expectation when verifying with qemu-img (`null`:
 * qemu-img does not get that far).
 */
export interface Difference {
  /** Why they differ (shown by the verifier). */
  reason: string;
  /** qemu-img's open behaviour. */
  open?: "opens" | "read-only" | "refused" | undefined;
  /** The contents qemu-img reads. */
  contents?: ContentsExpect | undefined;
  /** qemu-img's check. */
  check?: CheckExpect | undefined;
  /** qemu-img's repair. */
  repair?: CheckExpect | null | undefined;
  /** qemu-img's check after its repair. */
  afterRepair?: CheckExpect | null | undefined;
}

/** What a conforming implementation does with one vector. */
export interface Expect {
  /**
   * `opens`: for reading and for writing; `read-only`: for reading only; `refused`: not at all,
   * with qcowlab's error `code`.
   */
  open: { status: "opens" | "read-only" | "refused"; code?: string | undefined };
  /** Present when the image opens. */
  info?: InfoExpect | undefined;
  /** Present when the image opens. */
  contents?: ContentsExpect | undefined;
  /** `qemu-img check` of the image as generated. */
  check: CheckExpect;
  /** `qemu-img check -r all` of a copy, when the check opens the image. */
  repair?: CheckExpect | undefined;
  /** A fresh `qemu-img check` of that repaired copy. */
  afterRepair?: CheckExpect | undefined;
}

/** One file of a vector. */
export interface FileEntry {
  /** Path relative to the corpus directory (`<id>/<name>`). */
  path: string;
  /** Its format. */
  format: "raw" | "qcow" | "qcow2";
  /** Bytes. */
  size: number;
  /** sha256 (hex). */
  sha256: string;
}

/** One vector of the manifest. */
export interface ManifestVector {
  /** The vector's id. */
  id: string;
  /** One sentence. */
  description: string;
  /** Labels. */
  tags: string[];
  /** The image under test (a path like the files'). */
  image: string;
  /** `qcow`, `qcow2-v2` or `qcow2-v3`. */
  format: string;
  /** Every file, the backing chain first. */
  files: FileEntry[];
  /** What a conforming implementation does. */
  expect: Expect;
  /** A known qemu-img difference. */
  qemu?: Difference | undefined;
}

/** The whole manifest. */
export interface Manifest {
  /** {@linkcode MANIFEST_VERSION}. */
  manifestVersion: number;
  /** What wrote it. */
  generator: string;
  /** The seed of the content recipes. */
  seed: number;
  /** Every vector. */
  vectors: ManifestVector[];
}

/**
 * Parses and validates a manifest's JSON text.
 *
 * @example Reading a manifest
 * ```ts
 * import { parseManifest } from "@qcowlab/qcowlab/vectors";
 *
 * const text = JSON.stringify({ manifestVersion: 1, generator: "x", seed: 1, vectors: [] });
 * console.log(parseManifest(text).vectors.length); // 0
 * ```
 *
 * @param text The contents of `manifest.json`.
 * @returns The manifest.
 * @throws {QcowError} `INVALID_ARGUMENT` when it is not JSON or not a manifest.
 */
export function parseManifest(text: string): Manifest {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    throw new QcowError("INVALID_ARGUMENT", `manifest.json is not JSON: ${String(error)}`);
  }
  const parsed = manifestSchema.safeParse(value);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new QcowError(
      "INVALID_ARGUMENT",
      `Invalid manifest at ${issue.path.join(".") || "(top)"}: ${issue.message}`,
    );
  }
  return parsed.data as Manifest;
}
