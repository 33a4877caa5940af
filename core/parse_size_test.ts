import assert from "node:assert/strict";
import { isQcowError } from "./errors.ts";
import { parseSize } from "./parse_size.ts";

Deno.test("parseSize() reads plain byte counts in decimal and hexadecimal", () => {
  assert.equal(parseSize("0"), 0);
  assert.equal(parseSize("512"), 512);
  assert.equal(parseSize("00012"), 12);
  assert.equal(parseSize("0x200"), 512);
  assert.equal(parseSize("7b"), 7);
});

Deno.test("parseSize() applies binary suffixes in either case", () => {
  assert.equal(parseSize("64k"), 65536);
  assert.equal(parseSize("64K"), 65536);
  assert.equal(parseSize("1M"), 2 ** 20);
  assert.equal(parseSize("1m"), 2 ** 20);
  assert.equal(parseSize("2G"), 2 * 2 ** 30);
  assert.equal(parseSize("1T"), 2 ** 40);
  assert.equal(parseSize("1P"), 2 ** 50);
});

Deno.test("parseSize() truncates fractions of a suffix to whole bytes, as qemu-img", () => {
  assert.equal(parseSize("1.5M"), 1572864);
  assert.equal(parseSize("1.1k"), 1126);
  assert.equal(parseSize("5.k"), 5120);
  assert.equal(parseSize("1.0009765625k"), 1025);
});

Deno.test("parseSize() rejects what qemu-img rejects", () => {
  for (
    const text of ["", "1.5", "1.999b", "1x", "1MB", "1 M", "-1", ".5k", "1e3", "0x1k"]
  ) {
    assert.throws(() => parseSize(text), (e) => isQcowError(e, "INVALID_ARGUMENT"), text);
  }
  assert.throws(() => parseSize("1x"), /^QcowError: Invalid size '1x': use a number/);
});

Deno.test("parseSize() refuses sizes beyond 2^53 - 1 bytes", () => {
  assert.equal(parseSize("9007199254740991"), Number.MAX_SAFE_INTEGER);
  assert.throws(() => parseSize("9007199254740992"), (e) => isQcowError(e, "TOO_LARGE"));
  assert.throws(() => parseSize("1E"), (e) => isQcowError(e, "TOO_LARGE"));
  assert.throws(() => parseSize("0x20000000000000"), (e) => isQcowError(e, "TOO_LARGE"));
});
