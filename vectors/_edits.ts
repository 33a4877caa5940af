/**
 * Byte edits that damage a finished qcow2 image: locations are found in the undamaged image's
 * metadata, then the edits are made in order.
 *
 * @module
 */

import { readU32, readU64, writeU32 } from "../core/bytes.ts";
import { QcowError } from "../core/errors.ts";
import { entryOffset } from "../drivers/qcow2/entries.ts";
import { INCOMPAT_EXTENDED_L2, parseQcow2Header } from "../drivers/qcow2/header.ts";
import { readRefcount, refcountsPerBlock, writeRefcount } from "../drivers/qcow2/refcount_math.ts";
import type { ClusterRef, Edit, Location } from "./spec.ts";

/** Where the metadata of the undamaged image lies. */
interface Layout {
  clusterSize: number;
  clusterBits: number;
  refcountOrder: number;
  l1Offset: number;
  l1Size: number;
  reftableOffset: number;
  snapshotsOffset: number;
  entryBytes: number;
  /** File offsets of each header extension's type field. */
  extensions: number[];
}

function fail(message: string): never {
  throw new QcowError("INVALID_ARGUMENT", `Cannot apply the vector's edits: ${message}`);
}

function layoutOf(bytes: Uint8Array): Layout {
  const header = parseQcow2Header(bytes.subarray(0, 2 ** readU32(bytes, 20)));
  const extensions: number[] = [];
  let at = header.headerLength;
  for (const _ of header.extensions) {
    extensions.push(at);
    at += 8 + Math.ceil(readU32(bytes, at + 4) / 8) * 8;
  }
  extensions.push(at); // the end marker
  return {
    clusterSize: 2 ** header.clusterBits,
    clusterBits: header.clusterBits,
    refcountOrder: header.refcountOrder,
    l1Offset: header.l1TableOffset,
    l1Size: header.l1Size,
    reftableOffset: header.refcountTableOffset,
    snapshotsOffset: header.nbSnapshots > 0 ? header.snapshotsOffset : 0,
    entryBytes: (header.incompatibleFeatures & INCOMPAT_EXTENDED_L2) !== 0n ? 16 : 8,
    extensions,
  };
}

function position(bytes: Uint8Array, m: Layout, where: Location): number {
  if (where.in === "file") return where.at;
  switch (where.in) {
    case "l1":
      if (where.index >= m.l1Size) fail(`L1 index ${where.index} is past the table`);
      return m.l1Offset + where.index * 8;
    case "l2": {
      const perTable = m.clusterSize / m.entryBytes;
      const cluster = Math.floor(where.guest / m.clusterSize);
      const l1 = m.l1Offset + Math.floor(cluster / perTable) * 8;
      const l2 = entryOffset(readU32(bytes, l1), readU32(bytes, l1 + 4));
      if (l2 === 0) fail(`no L2 table maps guest offset ${where.guest}`);
      return l2 + (cluster % perTable) * m.entryBytes;
    }
    case "reftable":
      return m.reftableOffset + where.index * 8;
    case "snapshot":
      if (m.snapshotsOffset === 0) fail("the image has no snapshot table");
      return m.snapshotsOffset;
    case "extension": {
      const at = m.extensions[where.index];
      if (at === undefined) fail(`there is no header extension ${where.index}`);
      return at;
    }
  }
}

function refcountSpot(bytes: Uint8Array, m: Layout, cluster: number): [Uint8Array, number] {
  const perBlock = refcountsPerBlock(m.clusterBits, m.refcountOrder);
  const block = readU64(bytes, m.reftableOffset + Math.floor(cluster / perBlock) * 8);
  if (block === 0) fail(`no refcount block covers cluster ${cluster}`);
  return [bytes.subarray(block, block + m.clusterSize), cluster % perBlock];
}

/** The host cluster index a ref names, in the undamaged image. */
function clusterIndex(bytes: Uint8Array, m: Layout, ref: ClusterRef): number {
  switch (ref.of) {
    case "guest": {
      const at = position(bytes, m, { in: "l2", guest: ref.guest });
      const hi = readU32(bytes, at);
      const lo = readU32(bytes, at + 4);
      if ((hi & 0x40000000) !== 0) {
        const bits = 70 - m.clusterBits - 32;
        return Math.floor(((hi & ((1 << bits) - 1)) * 2 ** 32 + lo) / m.clusterSize);
      }
      const host = entryOffset(hi, lo);
      if (host === 0) fail(`guest offset ${ref.guest} has no host cluster`);
      return host / m.clusterSize;
    }
    case "free":
      for (let c = 1; c * m.clusterSize < bytes.length; c++) {
        const [block, index] = refcountSpot(bytes, m, c);
        if (readRefcount(block, index, m.refcountOrder) === 0) return c;
      }
      return fail("the image has no free cluster inside the file");
    case "end":
      return Math.ceil(bytes.length / m.clusterSize);
    case "past-end":
      return Math.ceil(bytes.length / m.clusterSize) + ref.by;
    case "header":
      return 0;
    case "l1":
      return m.l1Offset / m.clusterSize;
    case "reftable":
      return m.reftableOffset / m.clusterSize;
    case "refblock":
      return readU64(bytes, m.reftableOffset) / m.clusterSize;
  }
}

/** Stands in when no edit looks at the metadata. */
const NO_LAYOUT: Layout = {
  clusterSize: 0,
  clusterBits: 0,
  refcountOrder: 0,
  l1Offset: 0,
  l1Size: 0,
  reftableOffset: 0,
  snapshotsOffset: 0,
  entryBytes: 0,
  extensions: [],
};

function needsLayout(edit: Edit): boolean {
  if (edit.edit === "truncate") return false;
  if (edit.edit === "refcount" || edit.edit === "copy-entry" || edit.edit === "point") return true;
  return edit.where.in !== "file";
}

/**
 * Applies `edits` in order to a copy of `bytes` (a valid qcow2 image) and returns it; the file
 * may grow (a cluster past the end) or shrink (truncate).
 */
export function applyEdits(bytes: Uint8Array, edits: readonly Edit[]): Uint8Array {
  // Parsed only when an edit needs it, so qcow (version 1) images take edits at file offsets.
  const m = edits.some(needsLayout) ? layoutOf(bytes) : NO_LAYOUT;
  let out = bytes.slice();
  const grow = (length: number): void => {
    if (length <= out.length) return;
    const bigger = new Uint8Array(length);
    bigger.set(out);
    out = bigger;
  };
  const word = (at: number, change: (w: number) => number): void => {
    grow(at + 4);
    writeU32(out, at, change(readU32(out, at)) >>> 0);
  };
  for (const edit of edits) {
    switch (edit.edit) {
      case "u8": {
        const at = position(bytes, m, edit.where) + (edit.plus ?? 0);
        grow(at + 1);
        out[at] = edit.value;
        break;
      }
      case "u32":
        word(position(bytes, m, edit.where) + (edit.plus ?? 0), () => edit.value);
        break;
      case "u64": {
        const at = position(bytes, m, edit.where);
        word(at, () => edit.hi);
        word(at + 4, () => edit.lo);
        break;
      }
      case "bits":
        word(
          position(bytes, m, edit.where) + (edit.plus ?? 0),
          (w) => (w | (edit.or ?? 0)) & ~(edit.andNot ?? 0),
        );
        break;
      case "shift":
        word(position(bytes, m, edit.where) + 4, (w) => w + edit.by);
        break;
      case "point": {
        const at = position(bytes, m, edit.where);
        const target = clusterIndex(bytes, m, edit.to) * m.clusterSize;
        word(at, (hi) => ((hi & 0xff000000) | Math.floor(target / 2 ** 32)) >>> 0);
        word(at + 4, (lo) => ((lo & 0x1ff) | (target % 2 ** 32)) >>> 0);
        break;
      }
      case "copy-entry": {
        const from = position(bytes, m, { in: "l2", guest: edit.from });
        const to = position(bytes, m, { in: "l2", guest: edit.to });
        out.copyWithin(to, from, from + m.entryBytes);
        break;
      }
      case "refcount": {
        const cluster = clusterIndex(bytes, m, edit.cluster);
        if (edit.cluster.of === "end") grow((cluster + 1) * m.clusterSize);
        const [block, index] = refcountSpot(out, m, cluster);
        const now = readRefcount(block, index, m.refcountOrder);
        writeRefcount(block, index, m.refcountOrder, edit.value ?? now + (edit.delta ?? 0));
        break;
      }
      case "truncate":
        out = out.slice(0, edit.length);
        break;
    }
  }
  return out;
}
