import assert from "node:assert/strict";
import {
  compressedLocation,
  entryCompressed,
  entryCopied,
  entryOffset,
  KIND_COMPRESSED,
  KIND_DATA,
  KIND_INVALID,
  KIND_UNALLOCATED,
  KIND_ZERO,
  l1ReservedBits,
  standardKind,
  subclusterKind,
} from "./entries.ts";

const COPIED = 1n << 63n;
const COMPRESSED = 1n << 62n;
const ZERO = 1n;

/** Splits a 64-bit entry into the (hi, lo) words the decoders take. */
function words(entry: bigint): [number, number] {
  return [Number(entry >> 32n), Number(entry & 0xffffffffn)];
}

function kind(entry: bigint): number {
  return standardKind(...words(entry));
}

function subKind(entry: bigint, bitmap: bigint, sub: number): number {
  const [hi, lo] = words(entry);
  const [bitmapHi, bitmapLo] = words(bitmap);
  return subclusterKind(hi, lo, bitmapHi, bitmapLo, sub);
}

Deno.test("entryOffset() keeps bits 9 to 55 and drops flags and reserved bits", () => {
  assert.equal(entryOffset(...words(0x50000n)), 0x50000);
  assert.equal(entryOffset(...words(COPIED | 0x50000n)), 0x50000);
  assert.equal(entryOffset(...words(COPIED | COMPRESSED | 0x7f00_0000_0000_0000n)), 0);
  assert.equal(entryOffset(...words(0x1ffn)), 0);
  assert.equal(entryOffset(...words(0x00ff_ffff_ffff_fe00n)), 2 ** 56 - 512);
  assert.equal(entryOffset(...words(0x0000_0001_8000_0200n)), 2 ** 32 + 2 ** 31 + 512);
});

Deno.test("entryCopied() and entryCompressed() read bits 63 and 62", () => {
  assert.equal(entryCopied(words(COPIED)[0]), true);
  assert.equal(entryCopied(words(COMPRESSED)[0]), false);
  assert.equal(entryCompressed(words(COMPRESSED)[0]), true);
  assert.equal(entryCompressed(words(COPIED)[0]), false);
});

Deno.test("l1ReservedBits() flags bits 0 to 8 and 56 to 62 only", () => {
  assert.equal(l1ReservedBits(...words(COPIED | 0x00ff_ffff_ffff_fe00n)), false);
  for (const bit of [0n, 8n, 56n, 62n]) {
    assert.equal(l1ReservedBits(...words(0x40000n | (1n << bit))), true, `bit ${bit}`);
  }
});

Deno.test("standardKind() tells the five cluster kinds apart", () => {
  assert.equal(kind(0n), KIND_UNALLOCATED);
  assert.equal(kind(ZERO), KIND_ZERO, "zero, no host cluster");
  assert.equal(kind(COPIED | 0x50000n | ZERO), KIND_ZERO, "zero with a preallocated cluster");
  assert.equal(kind(COPIED | 0x50000n), KIND_DATA);
  assert.equal(kind(0x50000n), KIND_DATA, "COPIED is not needed for data");
  assert.equal(kind(COMPRESSED | 0x50123n), KIND_COMPRESSED);
});

Deno.test("standardKind() treats COPIED with offset 0 as unallocated", () => {
  assert.equal(kind(COPIED), KIND_UNALLOCATED);
});

Deno.test("standardKind() lets the compressed bit win over the zero bit", () => {
  assert.equal(kind(COMPRESSED | ZERO), KIND_COMPRESSED);
});

Deno.test("subclusterKind() reads allocated and zero bits of a cluster with a host offset", () => {
  const entry = COPIED | 0x50000n;
  const bitmap = (1n << 32n) << 3n | 0b101n; // 0 and 2 allocated, 3 reads as zero
  assert.equal(subKind(entry, bitmap, 0), KIND_DATA);
  assert.equal(subKind(entry, bitmap, 1), KIND_UNALLOCATED);
  assert.equal(subKind(entry, bitmap, 2), KIND_DATA);
  assert.equal(subKind(entry, bitmap, 3), KIND_ZERO);
  assert.equal(subKind(entry, bitmap, 31), KIND_UNALLOCATED);
});

Deno.test("subclusterKind() reads the top subcluster's bits 31 and 63", () => {
  const entry = 0x50000n;
  assert.equal(subKind(entry, 1n << 31n, 31), KIND_DATA);
  assert.equal(subKind(entry, 1n << 63n, 31), KIND_ZERO);
  assert.equal(subKind(entry, 1n << 63n, 30), KIND_UNALLOCATED);
});

Deno.test("subclusterKind() reads zero bits of a cluster without a host offset", () => {
  const bitmap = 0xffff_0000n << 32n;
  assert.equal(subKind(0n, bitmap, 15), KIND_UNALLOCATED);
  assert.equal(subKind(0n, bitmap, 16), KIND_ZERO);
  assert.equal(subKind(0n, 0n, 0), KIND_UNALLOCATED);
});

Deno.test("subclusterKind() calls a subcluster both allocated and zero invalid", () => {
  const entry = 0x50000n;
  const bitmap = (1n << 32n) << 7n | 1n << 7n;
  assert.equal(subKind(entry, bitmap, 7), KIND_INVALID);
  // The whole entry is invalid, not only the subcluster with both bits.
  assert.equal(subKind(entry, bitmap, 0), KIND_INVALID);
});

Deno.test("subclusterKind() calls allocated bits without a host offset invalid", () => {
  assert.equal(subKind(0n, 1n << 4n, 0), KIND_INVALID);
  assert.equal(subKind(COPIED, 1n, 0), KIND_INVALID);
});

Deno.test("subclusterKind() reports compressed whatever the bitmap says", () => {
  assert.equal(subKind(COMPRESSED | 0x50200n, 0n, 0), KIND_COMPRESSED);
  assert.equal(subKind(COMPRESSED | 0x50200n, 0xffff_ffff_ffff_ffffn, 9), KIND_COMPRESSED);
});

/** Builds a compressed descriptor the way the format lays it out. */
function descriptor(offset: number, extraSectors: number, clusterBits: number): bigint {
  const x = BigInt(70 - clusterBits);
  return COMPRESSED | (BigInt(extraSectors) << x) | BigInt(offset);
}

function locate(entry: bigint, clusterBits: number): { offset: number; length: number } {
  const [hi, lo] = words(entry);
  return compressedLocation(hi, lo, clusterBits);
}

Deno.test("compressedLocation() decodes offset and sector count for cluster_bits 9 to 21", () => {
  for (let bits = 9; bits <= 21; bits++) {
    const sectorBits = bits - 8;
    const maxSectors = 2 ** sectorBits - 1;
    const offsetBits = 70 - bits;
    // The largest offset that is exact in a number, or the largest the field holds.
    const maxOffset = offsetBits >= 53 ? 2 ** 53 - 1 : 2 ** offsetBits - 1;
    const cases: [number, number][] = [
      [0x50000, 0],
      [0x50123, 1],
      [0x12345 * 512 + 511, maxSectors],
      [maxOffset, maxSectors],
      [maxOffset - 511, 0],
      [2 ** 32 + 7, Math.floor(maxSectors / 2)],
    ];
    for (const [offset, sectors] of cases) {
      const location = locate(descriptor(offset, sectors, bits), bits);
      const what = `cluster_bits ${bits}, offset ${offset}, ${sectors} more sectors`;
      assert.equal(location.offset, offset, what);
      assert.equal(location.length, (sectors + 1) * 512 - (offset % 512), what);
    }
  }
});

Deno.test("compressedLocation() ignores the COPIED bit and keeps the sector count to bit 61", () => {
  for (let bits = 9; bits <= 21; bits++) {
    const entry = descriptor(0x10200, 2 ** (bits - 8) - 1, bits) | COPIED;
    assert.deepEqual(locate(entry, bits), { offset: 0x10200, length: 2 ** (bits - 8) * 512 });
  }
});

Deno.test("compressedLocation() measures the stream from its unaligned start", () => {
  // 64 KiB clusters: x = 54, so the sector count starts at bit 54.
  assert.deepEqual(locate(descriptor(0x50000 + 100, 3, 16), 16), {
    offset: 0x50000 + 100,
    length: 4 * 512 - 100,
  });
  assert.deepEqual(locate(descriptor(0x50000 + 511, 0, 16), 16), {
    offset: 0x50000 + 511,
    length: 1,
  });
});

Deno.test("compressedLocation() decodes entries written by qemu-img", () => {
  // `qemu-io -c "write -c ..."` on fresh images with 64 KiB, 512-byte and 2 MiB clusters.
  assert.deepEqual(locate(0x4000_0000_0005_0000n, 16), { offset: 0x50000, length: 512 });
  assert.deepEqual(locate(0x4000_0000_0005_004fn, 16), { offset: 0x5004f, length: 433 });
  assert.deepEqual(locate(0x4000_0000_0000_0a00n, 9), { offset: 0xa00, length: 512 });
  assert.deepEqual(locate(0x4008_0000_00a0_0000n, 21), { offset: 0xa00000, length: 2560 });
});
