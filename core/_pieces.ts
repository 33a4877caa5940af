/**
 * The walk shared by the paged stores (sparse memory chunks, copy-on-write pages): a byte range
 * cut at fixed-size boundaries.
 *
 * @module
 */

/**
 * Cuts `[offset, offset + length)` at multiples of `pieceSize` and calls `visit` for each piece in
 * order, with the piece's index, where the range starts inside it, how many bytes of the range came
 * before it, and how many bytes of it the range covers.
 *
 * @example Two pieces of a 4 KiB grid
 * ```ts
 * import { forEachPiece } from "./_pieces.ts";
 *
 * const seen: number[][] = [];
 * forEachPiece(4000, 200, 4096, (index, within, done, n) => seen.push([index, within, done, n]));
 * console.log(seen); // [ [ 0, 4000, 0, 96 ], [ 1, 0, 96, 104 ] ]
 * ```
 *
 * @param offset First byte of the range.
 * @param length Bytes in the range; nothing is visited when 0.
 * @param pieceSize Bytes per piece.
 * @param visit Called once per piece touched.
 */
export function forEachPiece(
  offset: number,
  length: number,
  pieceSize: number,
  visit: (index: number, within: number, done: number, n: number) => void,
): void {
  let done = 0;
  while (done < length) {
    const at = offset + done;
    const index = Math.floor(at / pieceSize);
    const within = at - index * pieceSize;
    const n = Math.min(pieceSize - within, length - done);
    visit(index, within, done, n);
    done += n;
  }
}
