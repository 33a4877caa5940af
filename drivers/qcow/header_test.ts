import assert from "node:assert/strict";
import {
  encodeQcowHeader,
  parseQcowHeader,
  type QcowHeader,
  qcowL1Entries,
  qcowVirtualSize,
  validateQcowLayout,
} from "./header.ts";

const HEADER: QcowHeader = {
  backingFileOffset: 48,
  backingFileSize: 6,
  mtime: 0,
  size: 1024 * 1024 + 100,
  clusterBits: 9,
  l2Bits: 12,
  cryptMethod: 0,
  l1TableOffset: 56,
};

Deno.test("encodeQcowHeader() and parseQcowHeader() round-trip, in qemu-img's byte layout", () => {
  const bytes = encodeQcowHeader(HEADER);
  assert.equal(bytes.length, 48);
  assert.deepEqual([...bytes.subarray(0, 8)], [0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 1]);
  assert.equal(bytes[32], 9);
  assert.equal(bytes[33], 12);
  assert.deepEqual(parseQcowHeader(bytes), HEADER);
  assert.equal(qcowVirtualSize(HEADER), 1024 * 1024);
  assert.equal(qcowL1Entries(HEADER), 1);
});

Deno.test("parseQcowHeader() refuses bad magic, versions and fields with typed errors", () => {
  const bytes = encodeQcowHeader(HEADER);
  const edit = (at: number, value: number): Uint8Array => {
    const copy = bytes.slice();
    copy[at] = value;
    return copy;
  };
  assert.throws(() => parseQcowHeader(edit(0, 0)), { code: "BAD_MAGIC" });
  assert.throws(() => parseQcowHeader(edit(7, 2)), { code: "UNSUPPORTED_VERSION" });
  assert.throws(() => parseQcowHeader(bytes.subarray(0, 40)), { code: "BAD_HEADER" });
  assert.throws(() => parseQcowHeader(edit(32, 17)), { code: "BAD_HEADER" });
  assert.throws(() => parseQcowHeader(edit(33, 5)), { code: "BAD_HEADER" });
  assert.throws(() => parseQcowHeader(edit(39, 2)), { code: "BAD_HEADER" });
  assert.throws(() => parseQcowHeader(edit(24, 0x40)), { code: "TOO_LARGE" });
});

Deno.test("validateQcowLayout() checks the L1 table and backing name against the file", () => {
  validateQcowLayout(HEADER, 56 + 512);
  assert.throws(() => validateQcowLayout(HEADER, 60), { code: "BAD_TABLE" });
  assert.throws(() => validateQcowLayout({ ...HEADER, l1TableOffset: 40 }, 4096), {
    code: "BAD_TABLE",
  });
  assert.throws(() => validateQcowLayout({ ...HEADER, backingFileSize: 1024 }, 4096), {
    code: "BAD_HEADER",
  });
});
