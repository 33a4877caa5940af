import { equal, notEqual } from "node:assert/strict";
import { CHUNK, ChunkedDigest, chunksOf, sha256Hex } from "./_hash.ts";

Deno.test("sha256Hex() gives the standard digest", async () => {
  equal(
    await sha256Hex(new TextEncoder().encode("abc")),
    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
  );
});

Deno.test("ChunkedDigest skips zero chunks, so sparse and full reads agree", async () => {
  const size = 5 * CHUNK + 100;
  const bytes = new Uint8Array(size);
  bytes[2 * CHUNK + 7] = 1;
  bytes[size - 1] = 2;
  const full = new ChunkedDigest(size);
  for (let c = 0; c * CHUNK < size; c++) {
    await full.add(c, bytes.subarray(c * CHUNK, Math.min(size, (c + 1) * CHUNK)));
  }
  const sparse = new ChunkedDigest(size);
  await sparse.add(2, bytes.subarray(2 * CHUNK, 3 * CHUNK));
  await sparse.add(5, bytes.subarray(5 * CHUNK));
  equal(await full.hex(), await sparse.hex());
  equal(full.nonZeroChunks, 2);
  // The size is part of the digest.
  notEqual(await new ChunkedDigest(size).hex(), await new ChunkedDigest(size + 512).hex());
});

Deno.test("ChunkedDigest refuses chunks out of order", async () => {
  const digest = new ChunkedDigest(4 * CHUNK);
  await digest.add(2, new Uint8Array(CHUNK));
  await digest.add(1, new Uint8Array(CHUNK)).then(
    () => {
      throw new Error("accepted");
    },
    (error) => equal(String(error).includes("out of order"), true),
  );
});

Deno.test("chunksOf() lists each touched chunk once, clamped to the size", () => {
  equal(
    chunksOf([[0, 1], [CHUNK - 1, 2], [3 * CHUNK, 10 * CHUNK]], 4 * CHUNK).join(","),
    "0,1,3",
  );
  equal(chunksOf([[0, 0]], CHUNK).length, 0);
});
