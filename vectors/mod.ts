/**
 * Test vectors for qcow implementations: a declarative catalog of images (every cluster size,
 * refcount width and cluster kind, extended L2, backing chains, big sparse images, dirty and
 * damaged images, malformed headers), a deterministic generator that writes them with
 * `manifest.json`, and a verifier that holds qcowlab or qemu-img against the manifest.
 *
 * @example Generating a few vectors and verifying them
 * ```ts
 * import { generateVectors, verifyVectors } from "@qcowlab/qcowlab/vectors";
 *
 * const dir = await Deno.makeTempDir();
 * const { manifest, digest } = await generateVectors(dir, { filter: "qcow2-v2-cluster-*" });
 * console.log(manifest.vectors.length, digest.length); // 13 64
 * const report = await verifyVectors(dir);
 * console.log(report.failed); // 0
 * ```
 *
 * @module
 */

export * from "./spec.ts";
export * from "./manifest.ts";
export * from "./catalog.ts";
export * from "./generate.ts";
export * from "./verify.ts";
