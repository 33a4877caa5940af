/**
 * Generating the corpus: every vector of the catalog built, written to a directory, observed with
 * qcowlab, and described in `manifest.json`.
 *
 * @module
 */

import { z } from "zod";
import { QcowError } from "../core/errors.ts";
import { buildVector } from "./_build.ts";
import { matchesGlob } from "./_glob.ts";
import { sha256Hex } from "./_hash.ts";
import { observeQcowlab } from "./_observe.ts";
import { CATALOG, CATALOG_SEED } from "./catalog.ts";
import { type Manifest, MANIFEST_VERSION, type ManifestVector } from "./manifest.ts";
import { parseVectorSpec, type VectorSpec } from "./spec.ts";

/** Options for {@linkcode generateVectors}. */
export interface GenerateVectorsOptions {
  /** Only vectors whose id matches this glob (`*`, `?`, comma-separated alternatives). */
  filter?: string;
  /** The catalog; default the built-in one. */
  catalog?: readonly VectorSpec[];
  /** The seed of every content recipe; default the catalog's. */
  seed?: number;
  /** Called after each vector, for progress output. */
  onVector?: (id: string, index: number, total: number) => void;
}

/** What {@linkcode generateVectors} wrote. */
export interface GenerateVectorsResult {
  /** The manifest, as written to `manifest.json`. */
  manifest: Manifest;
  /** sha256 of `manifest.json`, which names the sha256 of every file: the digest of the set. */
  digest: string;
}

const optionsSchema = z.object({
  filter: z.string().min(1).optional(),
  catalog: z.array(z.unknown()).optional(),
  seed: z.number().int().min(0).max(0xffffffff).optional(),
  onVector: z.custom<(id: string, index: number, total: number) => void>((v) =>
    typeof v === "function"
  ).optional(),
}).strict();

/** The text of `manifest.json` for a manifest (stable: two-space JSON and a final newline). */
export function manifestText(manifest: Manifest): string {
  return JSON.stringify(manifest, null, 2) + "\n";
}

/**
 * Builds the catalog's vectors into `outDir` (one directory per vector, named by its id) and
 * writes `manifest.json` beside them. The same catalog and seed give byte-identical files.
 *
 * @example Generating two vectors
 * ```ts
 * import { generateVectors } from "@qcowlab/qcowlab/vectors";
 *
 * const dir = await Deno.makeTempDir();
 * const { manifest } = await generateVectors(dir, { filter: "qcow2-v3-cluster-64k,qcow2-v2-cluster-4k" });
 * console.log(manifest.vectors.length); // 2
 * ```
 *
 * @param outDir The directory to write to (created if needed).
 * @param options Filter, catalog and seed.
 * @returns The manifest and the digest of the set.
 * @throws {QcowError} `INVALID_ARGUMENT` for a bad option, a bad declaration or a filter that
 * matches nothing.
 */
export async function generateVectors(
  outDir: string,
  options: GenerateVectorsOptions = {},
): Promise<GenerateVectorsResult> {
  const parsed = optionsSchema.safeParse(options);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new QcowError(
      "INVALID_ARGUMENT",
      `Invalid generate option ${issue.path.join(".") || "(options)"}: ${issue.message}`,
    );
  }
  const seed = options.seed ?? CATALOG_SEED;
  const catalog = (options.catalog ?? CATALOG).map((spec) => parseVectorSpec(spec));
  const ids = new Set<string>();
  for (const spec of catalog) {
    if (ids.has(spec.id)) {
      throw new QcowError("INVALID_ARGUMENT", `Vector id ${spec.id} is used twice`);
    }
    ids.add(spec.id);
  }
  const chosen = options.filter === undefined
    ? catalog
    : catalog.filter((spec) => matchesGlob(spec.id, options.filter!));
  if (chosen.length === 0) {
    throw new QcowError("INVALID_ARGUMENT", `No vector matches the filter '${options.filter}'`);
  }
  await Deno.mkdir(outDir, { recursive: true });
  const vectors: ManifestVector[] = [];
  for (const [index, spec] of chosen.entries()) {
    vectors.push(await generateOne(outDir, spec, seed));
    options.onVector?.(spec.id, index, chosen.length);
  }
  const manifest: Manifest = {
    manifestVersion: MANIFEST_VERSION,
    generator: "qcowlab vectors",
    seed,
    vectors,
  };
  const text = manifestText(manifest);
  await Deno.writeTextFile(`${outDir}/manifest.json`, text);
  return { manifest, digest: await sha256Hex(new TextEncoder().encode(text)) };
}

async function generateOne(
  outDir: string,
  spec: VectorSpec,
  seed: number,
): Promise<ManifestVector> {
  const files = await buildVector(spec, seed);
  const dir = `${outDir}/${spec.id}`;
  await Deno.remove(dir, { recursive: true }).catch(() => {});
  await Deno.mkdir(dir, { recursive: true });
  const entries = [];
  for (const file of files) {
    await Deno.writeFile(`${dir}/${file.name}`, file.bytes);
    entries.push({
      path: `${spec.id}/${file.name}`,
      format: file.format,
      size: file.bytes.length,
      sha256: await sha256Hex(file.bytes),
    });
  }
  const top = spec.layers[spec.layers.length - 1]!;
  const expect = await observeQcowlab({ dir, image: top.name, format: top.format });
  const vector: ManifestVector = {
    id: spec.id,
    description: spec.description,
    tags: spec.tags,
    image: `${spec.id}/${top.name}`,
    format: top.format === "qcow2" ? `qcow2-v${top.create.compat === "0.10" ? 2 : 3}` : top.format,
    files: entries,
    expect,
  };
  if (spec.qemu !== undefined) vector.qemu = spec.qemu;
  return vector;
}
