/**
 * Resolving backing file names the way QEMU does.
 *
 * @module
 */

/**
 * Combines a backing file name with the name of the image that refers to it, the way QEMU does: an
 * absolute name stays as it is, a relative one is taken from the overlay's directory (without
 * tidying `..`).
 *
 * @example
 * ```ts
 * import { resolveBackingPath } from "@qcowlab/qcowlab";
 *
 * console.log(resolveBackingPath("/images/top.qcow2", "base.raw")); // "/images/base.raw"
 * console.log(resolveBackingPath("top.qcow2", "base.raw")); // "base.raw"
 * ```
 *
 * @param overlay The path of the image holding the name.
 * @param name The stored backing file name.
 * @returns The path to open.
 */
export function resolveBackingPath(overlay: string, name: string): string {
  // Absolute paths and protocol names ("nbd://host/x", "file:base.raw") are taken as they are.
  if (name.startsWith("/") || /^[^/]*:/.test(name)) return name;
  const slash = overlay.lastIndexOf("/");
  return slash < 0 ? name : overlay.slice(0, slash + 1) + name;
}
