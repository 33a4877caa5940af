/**
 * Vector id filters: `*` matches any run of characters, `?` one character; several patterns may
 * be given separated by commas.
 *
 * @module
 */

/** Whether `id` matches the glob `pattern` (or any of its comma-separated parts). */
export function matchesGlob(id: string, pattern: string): boolean {
  return pattern.split(",").some((part) => {
    const source = part.trim().split("").map((ch) => {
      if (ch === "*") return ".*";
      if (ch === "?") return ".";
      return ch.replace(/[.+^${}()|[\]\\]/g, "\\$&");
    }).join("");
    return new RegExp(`^${source}$`).test(id);
  });
}
