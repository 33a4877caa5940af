/**
 * Verifying a generated corpus against an implementation: qcowlab itself, or qemu-img with
 * qemu-io.
 *
 * @module
 */

import { z } from "zod";
import { isDeepStrictEqual } from "node:util";
import { QcowError } from "../core/errors.ts";
import { sha256Hex } from "./_hash.ts";
import { haveQemu, observeQcowlab, observeQemu, type Target } from "./_observe.ts";
import {
  type CheckExpect,
  type ContentsExpect,
  type Difference,
  type Expect,
  type ManifestVector,
  parseManifest,
} from "./manifest.ts";
import { matchesGlob } from "./_glob.ts";

/** The implementations a corpus can be verified with. */
export type VerifyImplementation = "qcowlab" | "qemu-img";

/** Options for {@linkcode verifyVectors}. */
export interface VerifyVectorsOptions {
  /** Which implementation to hold against the manifest; default qcowlab. */
  impl?: VerifyImplementation;
  /** Only vectors whose id matches this glob. */
  filter?: string;
  /** Vectors verified at once (qemu-img: processes running at once); default 1, qemu-img 2. */
  concurrency?: number;
  /** Called after each vector, for progress output. */
  onVector?: (result: VectorResult, index: number, total: number) => void;
}

/** The outcome of one expectation of one vector. */
export interface ExpectationResult {
  /** `files`, `open`, `info`, `contents`, `check`, `repair` or `afterRepair`. */
  name: string;
  /** `pass`, `fail`, or `n/a` (does not apply to this implementation or vector). */
  status: "pass" | "fail" | "n/a";
  /** What differs, for failures; why, for known differences. */
  detail?: string;
}

/** The outcome of one vector. */
export interface VectorResult {
  /** The vector's id. */
  id: string;
  /** Whether every expectation passed (or did not apply). */
  pass: boolean;
  /** One entry per expectation. */
  expectations: ExpectationResult[];
}

/** The outcome of a verification. */
export interface VerifyReport {
  /** The implementation verified. */
  impl: VerifyImplementation;
  /** Vectors verified. */
  total: number;
  /** Vectors with a failed expectation. */
  failed: number;
  /** Every vector's outcome, in manifest order. */
  vectors: VectorResult[];
}

const optionsSchema = z.object({
  impl: z.enum(["qcowlab", "qemu-img"]).optional(),
  filter: z.string().min(1).optional(),
  concurrency: z.number().int().min(1).max(64).optional(),
  onVector: z.custom<(r: VectorResult, i: number, n: number) => void>((v) =>
    typeof v === "function"
  ).optional(),
}).strict();

const CHECK_FIELDS = [
  "opened",
  "exitStatus",
  "corruptions",
  "leaks",
  "checkErrors",
  "corruptionsFixed",
  "leaksFixed",
] as const;

function describe(value: unknown): string {
  return JSON.stringify(value);
}

function compareCheck(
  name: string,
  expected: CheckExpect | undefined | null,
  actual: CheckExpect | undefined,
  impl: VerifyImplementation,
): ExpectationResult {
  const want = expected ?? undefined;
  if (want === undefined && actual === undefined) return { name, status: "n/a" };
  // qemu-img's repair is always tried; failing without a report matches one that never ran.
  if (want === undefined && impl === "qemu-img" && actual?.opened === false) {
    return { name, status: "n/a" };
  }
  if (want === undefined || actual === undefined) {
    return {
      name,
      status: "fail",
      detail: `expected ${describe(want ?? null)}, got ${describe(actual ?? null)}`,
    };
  }
  // qemu-img prints no report when its check fails or cannot open the image: only the status.
  if (impl === "qemu-img" && !actual.opened) {
    return want.exitStatus === actual.exitStatus ? { name, status: "pass" } : {
      name,
      status: "fail",
      detail: `exitStatus ${want.exitStatus} != ${actual.exitStatus} (qemu-img printed no report)`,
    };
  }
  const differences: string[] = [];
  for (const field of CHECK_FIELDS) {
    if (want[field] !== actual[field]) {
      differences.push(`${field} ${describe(want[field])} != ${describe(actual[field])}`);
    }
  }
  return differences.length === 0
    ? { name, status: "pass" }
    : { name, status: "fail", detail: `expected != actual: ${differences.join(", ")}` };
}

function compareContents(
  expected: ContentsExpect | undefined,
  actual: ContentsExpect | undefined,
  impl: VerifyImplementation,
): ExpectationResult {
  const name = "contents";
  if (expected === undefined && actual === undefined) return { name, status: "n/a" };
  if (expected !== undefined && actual !== undefined && "error" in expected && "error" in actual) {
    // qemu-img has no error codes: a failed read is what is expected of it.
    return impl === "qemu-img" || expected.error === actual.error
      ? { name, status: "pass" }
      : { name, status: "fail", detail: `expected ${expected.error}, got ${actual.error}` };
  }
  return isDeepStrictEqual(expected, actual) ? { name, status: "pass" } : {
    name,
    status: "fail",
    detail: `expected ${describe(expected ?? null)}, got ${describe(actual ?? null)}`,
  };
}

/** Compares an observation with the manifest, applying the vector's known qemu differences. */
function compare(
  vector: ManifestVector,
  actual: Expect,
  impl: VerifyImplementation,
): ExpectationResult[] {
  const expect = vector.expect;
  const qemu = impl === "qemu-img" ? vector.qemu : undefined;
  const known = (result: ExpectationResult, member: keyof Difference): ExpectationResult =>
    qemu !== undefined && qemu[member] !== undefined && result.status === "pass"
      ? { ...result, detail: `known difference: ${qemu.reason}` }
      : result;
  const out: ExpectationResult[] = [];

  const expectedOpen = qemu?.open ?? expect.open.status;
  const codeMatters = impl === "qcowlab" && expect.open.code !== undefined;
  const openOk = actual.open.status === expectedOpen &&
    (!codeMatters || actual.open.code === expect.open.code);
  out.push(known(
    openOk ? { name: "open", status: "pass" } : {
      name: "open",
      status: "fail",
      detail: `expected ${expectedOpen}${
        codeMatters ? ` (${expect.open.code})` : ""
      }, got ${actual.open.status}${actual.open.code ? ` (${actual.open.code})` : ""}`,
    },
    "open",
  ));
  // When qemu-img opens what qcowlab refuses, the manifest has no info fields to hold it to.
  if (qemu?.open !== undefined && qemu.open !== expect.open.status) {
    out.push({ name: "info", status: "n/a", detail: `known difference: ${qemu.reason}` });
  } else {
    out.push(
      isDeepStrictEqual(expect.info, actual.info)
        ? { name: "info", status: expect.info ? "pass" : "n/a" }
        : {
          name: "info",
          status: "fail",
          detail: `expected ${describe(expect.info ?? null)}, got ${describe(actual.info ?? null)}`,
        },
    );
  }
  out.push(
    known(compareContents(qemu?.contents ?? expect.contents, actual.contents, impl), "contents"),
  );
  const pick = (member: "check" | "repair" | "afterRepair"): CheckExpect | undefined | null =>
    qemu !== undefined && qemu[member] !== undefined ? qemu[member] : expect[member];
  for (const member of ["check", "repair", "afterRepair"] as const) {
    out.push(known(compareCheck(member, pick(member), actual[member], impl), member));
  }
  return out;
}

async function verifyFiles(root: string, vector: ManifestVector): Promise<ExpectationResult> {
  for (const file of vector.files) {
    let bytes: Uint8Array;
    try {
      bytes = await Deno.readFile(`${root}/${file.path}`);
    } catch {
      return { name: "files", status: "fail", detail: `${file.path} is missing` };
    }
    if (bytes.length !== file.size || await sha256Hex(bytes) !== file.sha256) {
      return { name: "files", status: "fail", detail: `${file.path} differs from the manifest` };
    }
  }
  return { name: "files", status: "pass" };
}

async function verifyOne(
  root: string,
  vector: ManifestVector,
  impl: VerifyImplementation,
): Promise<VectorResult> {
  const files = await verifyFiles(root, vector);
  const expectations = [files];
  if (files.status === "pass") {
    const slash = vector.image.lastIndexOf("/");
    const target: Target = {
      dir: `${root}/${vector.image.slice(0, slash)}`,
      image: vector.image.slice(slash + 1),
      format: vector.format.startsWith("qcow2") ? "qcow2" : vector.format,
    };
    try {
      const actual = impl === "qemu-img" ? await observeQemu(target) : await observeQcowlab(target);
      expectations.push(...compare(vector, actual, impl));
    } catch (error) {
      expectations.push({ name: "observe", status: "fail", detail: String(error) });
    }
  }
  return { id: vector.id, pass: expectations.every((e) => e.status !== "fail"), expectations };
}

/**
 * Verifies the corpus in `dir` (as written by `generateVectors`) against an implementation: for
 * each vector, the files' digests, then the open behaviour, info fields, virtual contents, check,
 * repair and the check after the repair, each compared with `manifest.json`. With qemu-img, error
 * codes are not compared (qemu-img has none), and a vector's recorded qemu differences apply.
 *
 * @example Generating and verifying one vector
 * ```ts
 * import { generateVectors, verifyVectors } from "@qcowlab/qcowlab/vectors";
 *
 * const dir = await Deno.makeTempDir();
 * await generateVectors(dir, { filter: "qcow2-v3-cluster-64k" });
 * const report = await verifyVectors(dir);
 * console.log(report.total, report.failed); // 1 0
 * ```
 *
 * @param dir The corpus directory, holding `manifest.json`.
 * @param options The implementation, a filter and the concurrency.
 * @returns Every vector's outcome.
 * @throws {QcowError} `NOT_FOUND` without a manifest, `INVALID_ARGUMENT` for a bad manifest or
 * option, `UNSUPPORTED_FEATURE` when qemu-img is asked for and not installed.
 */
export async function verifyVectors(
  dir: string,
  options: VerifyVectorsOptions = {},
): Promise<VerifyReport> {
  const parsed = optionsSchema.safeParse(options);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new QcowError(
      "INVALID_ARGUMENT",
      `Invalid verify option ${issue.path.join(".") || "(options)"}: ${issue.message}`,
    );
  }
  const impl = options.impl ?? "qcowlab";
  if (impl === "qemu-img" && !haveQemu()) {
    throw new QcowError("UNSUPPORTED_FEATURE", "qemu-img and qemu-io are not installed");
  }
  let text: string;
  try {
    text = await Deno.readTextFile(`${dir}/manifest.json`);
  } catch {
    throw new QcowError("NOT_FOUND", `No manifest.json in ${dir}`);
  }
  const manifest = parseManifest(text);
  const vectors = options.filter === undefined
    ? manifest.vectors
    : manifest.vectors.filter((v) => matchesGlob(v.id, options.filter!));
  const results: VectorResult[] = new Array(vectors.length);
  const concurrency = options.concurrency ?? (impl === "qemu-img" ? 2 : 1);
  let next = 0;
  let done = 0;
  const worker = async (): Promise<void> => {
    while (next < vectors.length) {
      const index = next++;
      results[index] = await verifyOne(dir, vectors[index]!, impl);
      options.onVector?.(results[index]!, done++, vectors.length);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, vectors.length) }, worker));
  return {
    impl,
    total: results.length,
    failed: results.filter((r) => !r.pass).length,
    vectors: results,
  };
}
