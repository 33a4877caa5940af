import assert from "node:assert/strict";
import fc from "fast-check";
import {
  isZero,
  readString,
  readU16,
  readU32,
  readU64,
  readU64Big,
  writeU16,
  writeU32,
  writeU64,
} from "./bytes.ts";

Deno.test("readU16() and writeU16() round-trip big-endian values", () => {
  const bytes = new Uint8Array(4);
  writeU16(bytes, 1, 0x1234);
  assert.deepEqual(bytes, new Uint8Array([0, 0x12, 0x34, 0]));
  assert.equal(readU16(bytes, 1), 0x1234);
  for (const value of [0, 1, 0xff, 0x100, 0x7fff, 0x8000, 0xffff]) {
    writeU16(bytes, 2, value);
    assert.equal(readU16(bytes, 2), value);
  }
});

Deno.test("readU32() and writeU32() round-trip big-endian values", () => {
  const bytes = new Uint8Array(6);
  writeU32(bytes, 1, 0x12345678);
  assert.deepEqual(bytes, new Uint8Array([0, 0x12, 0x34, 0x56, 0x78, 0]));
  assert.equal(readU32(bytes, 1), 0x12345678);
  fc.assert(fc.property(fc.nat({ max: 0xffffffff }), fc.nat(2), (value, offset) => {
    writeU32(bytes, offset, value);
    return readU32(bytes, offset) === value;
  }));
});

Deno.test("readU32() reads values with the top bit set as unsigned", () => {
  assert.equal(readU32(new Uint8Array([0xff, 0xff, 0xff, 0xff]), 0), 0xffffffff);
  assert.equal(readU32(new Uint8Array([0x80, 0, 0, 0]), 0), 2 ** 31);
  assert.equal(readU32(new Uint8Array([0x51, 0x46, 0x49, 0xfb]), 0), 0x514649fb);
});

Deno.test("readU64() and writeU64() round-trip values up to 2^53 - 1", () => {
  const bytes = new Uint8Array(10);
  const values = [
    0,
    1,
    2 ** 32 - 1,
    2 ** 32,
    2 ** 32 + 1,
    0x1234_5678_9abc,
    2 ** 52 + 1,
    2 ** 53 - 2,
    Number.MAX_SAFE_INTEGER,
  ];
  for (const value of values) {
    writeU64(bytes, 1, value);
    assert.equal(readU64(bytes, 1), value, `${value}`);
    assert.equal(readU64Big(bytes, 1), BigInt(value), `${value}`);
  }
  fc.assert(fc.property(fc.maxSafeNat(), (value) => {
    writeU64(bytes, 2, value);
    return readU64(bytes, 2) === value && readU64Big(bytes, 2) === BigInt(value);
  }));
});

Deno.test("writeU64() lays out the high word first", () => {
  const bytes = new Uint8Array(8);
  writeU64(bytes, 0, Number.MAX_SAFE_INTEGER);
  assert.deepEqual(bytes, new Uint8Array([0x00, 0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]));
  writeU64(bytes, 0, 0x0102_0304_0506);
  assert.deepEqual(bytes, new Uint8Array([0, 0, 1, 2, 3, 4, 5, 6]));
});

Deno.test("readU64() never reports a value of 2^53 or more as a safe integer", () => {
  const cases: [number[], bigint][] = [
    [[0x00, 0x20, 0, 0, 0, 0, 0, 0], 2n ** 53n],
    [[0x00, 0x20, 0, 0, 0, 0, 0, 1], 2n ** 53n + 1n],
    [[0x00, 0x3f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], 2n ** 54n - 1n],
    [[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], 2n ** 64n - 1n],
  ];
  for (const [raw, exact] of cases) {
    const bytes = new Uint8Array(raw);
    const value = readU64(bytes, 0);
    assert.equal(Number.isSafeInteger(value), false, `${exact}`);
    assert.ok(value >= 2 ** 53, `${exact}`);
    assert.equal(readU64Big(bytes, 0), exact);
  }
});

Deno.test("readU64Big() reads all 64 bits exactly", () => {
  fc.assert(fc.property(fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }), (value) => {
    const bytes = new Uint8Array(9);
    new DataView(bytes.buffer).setBigUint64(1, value);
    return readU64Big(bytes, 1) === value;
  }));
});

Deno.test("integer helpers honour the offset inside a subarray view", () => {
  const backing = new Uint8Array(20);
  const view = backing.subarray(3, 17);
  writeU16(view, 0, 0xabcd);
  writeU32(view, 2, 0xdeadbeef);
  writeU64(view, 6, 2 ** 40 + 5);
  assert.equal(readU16(view, 0), 0xabcd);
  assert.equal(readU32(view, 2), 0xdeadbeef);
  assert.equal(readU64(view, 6), 2 ** 40 + 5);
  assert.equal(readU16(backing, 3), 0xabcd);
  assert.equal(readU32(backing, 5), 0xdeadbeef);
  assert.equal(readU64(backing, 9), 2 ** 40 + 5);
  assert.deepEqual(backing.subarray(0, 3), new Uint8Array(3));
  assert.deepEqual(backing.subarray(17), new Uint8Array(3));
});

Deno.test("isZero() handles empty arrays and every alignment of a subarray", () => {
  assert.equal(isZero(new Uint8Array(0)), true);
  const buffer = new ArrayBuffer(48);
  const all = new Uint8Array(buffer);
  for (let start = 0; start < 9; start++) {
    for (let length = 0; length <= 30; length++) {
      const view = new Uint8Array(buffer, start + 4, length);
      all.fill(0);
      // Non-zero bytes right outside the view must not count.
      all[start + 3] = 1;
      all[start + 4 + length] = 1;
      assert.equal(isZero(view), true, `start ${start}, length ${length}`);
      for (let i = 0; i < length; i++) {
        view[i] = 0x80;
        assert.equal(isZero(view), false, `start ${start}, length ${length}, byte ${i}`);
        view[i] = 0;
      }
    }
  }
});

Deno.test("isZero() works on a buffer whose length is not a multiple of four", () => {
  const bytes = new Uint8Array(new ArrayBuffer(4099));
  assert.equal(isZero(bytes), true);
  bytes[4098] = 1;
  assert.equal(isZero(bytes), false);
  assert.equal(isZero(bytes.subarray(0, 4098)), true);
});

Deno.test("readString() stops at the first NUL and decodes UTF-8", () => {
  const encoder = new TextEncoder();
  assert.equal(readString(encoder.encode("base.qcow2")), "base.qcow2");
  assert.equal(readString(new Uint8Array([0x61, 0x62, 0, 0x63])), "ab");
  assert.equal(readString(new Uint8Array([0, 0x61])), "");
  assert.equal(readString(new Uint8Array(0)), "");
  assert.equal(readString(encoder.encode("disque-été.raw")), "disque-été.raw");
});
