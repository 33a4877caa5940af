/**
 * A stable string hash and the pattern filler, so recipes make the same bytes on every machine (the
 * seeded generator itself is mulberry32 from core/_random.ts).
 *
 * @module
 */

/** FNV-1a of a string's UTF-16 code units, mixed with `seed`. */
export function hashSeed(seed: number, text: string): number {
  let h = (0x811c9dc5 ^ seed) >>> 0;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}

/** Fills `out` with a pattern: a byte, seeded random bytes, or seeded runs of bytes below 16. */
export function fillPattern(
  out: Uint8Array,
  pattern: number | "random" | "compressible",
  next: () => number,
): void {
  if (typeof pattern === "number") {
    out.fill(pattern);
    return;
  }
  if (pattern === "compressible") {
    // Runs of 1 to 64 equal bytes drawn from 16 values: deflate shrinks them several times.
    for (let i = 0; i < out.length;) {
      const v = next();
      const end = Math.min(out.length, i + 1 + (v & 63));
      out.fill((v >>> 8) & 0x0f, i, end);
      i = end;
    }
    return;
  }
  for (let i = 0; i < out.length; i += 4) {
    const v = next();
    out[i] = v & 0xff;
    if (i + 1 < out.length) out[i + 1] = (v >>> 8) & 0xff;
    if (i + 2 < out.length) out[i + 2] = (v >>> 16) & 0xff;
    if (i + 3 < out.length) out[i + 3] = (v >>> 24) & 0xff;
  }
}
