/**
 * Serialising a fresh qcow2 header with its extensions, without I/O.
 *
 * @module
 */

import { writeU32, writeU64 } from "../../core/bytes.ts";
import { QcowError } from "../../core/errors.ts";
import {
  COMPAT_LAZY_REFCOUNTS,
  EXT_BACKING_FORMAT,
  EXT_FEATURE_TABLE,
  INCOMPAT_EXTENDED_L2,
} from "./header.ts";
import { featureNameTable, putExtension } from "./_header_extensions.ts";

/** The fields of a new image's first cluster. */
export interface NewHeader {
  /** 2 or 3. */
  version: 2 | 3;
  /** log2 of the cluster size. */
  clusterBits: number;
  /** log2 of the refcount width (4 for version 2). */
  refcountOrder: number;
  /** Offset of the refcount table. */
  refcountTableOffset: number;
  /** Clusters of the refcount table. */
  refcountTableClusters: number;
  /** Lazy refcounts (version 3). */
  lazyRefcounts: boolean;
  /** Extended L2 entries (version 3). */
  extendedL2: boolean;
  /** Backing file name. */
  backingFile?: string;
  /** Backing file format. */
  backingFormat?: string;
}

/**
 * Lays out the first cluster of a new image: header, backing format and feature name table
 * extensions, end marker, backing file name; size and L1 table are left empty (0) for the caller
 * to set by growing the image.
 *
 * @param fields What the header says.
 * @returns The first cluster's bytes.
 */
export function encodeNewHeader(fields: NewHeader): Uint8Array {
  const clusterSize = 2 ** fields.clusterBits;
  const first = new Uint8Array(clusterSize);
  const v3 = fields.version === 3;
  writeU32(first, 0, 0x514649fb);
  writeU32(first, 4, fields.version);
  writeU32(first, 20, fields.clusterBits);
  writeU64(first, 48, fields.refcountTableOffset);
  writeU32(first, 56, fields.refcountTableClusters);
  let at = 72;
  if (v3) {
    let incompatible = 0n;
    if (fields.extendedL2) incompatible |= INCOMPAT_EXTENDED_L2;
    writeU64(first, 72, Number(incompatible));
    writeU64(first, 80, fields.lazyRefcounts ? Number(COMPAT_LAZY_REFCOUNTS) : 0);
    writeU32(first, 96, fields.refcountOrder);
    writeU32(first, 100, 112);
    at = 112;
  }
  const encoder = new TextEncoder();
  const extension = (type: number, data: Uint8Array): void => {
    const next = putExtension(first, at, type, data);
    if (next === undefined) {
      throw new QcowError("INVALID_ARGUMENT", "The header extensions do not fit in one cluster");
    }
    at = next;
  };
  if (fields.backingFormat !== undefined) {
    extension(EXT_BACKING_FORMAT, encoder.encode(fields.backingFormat));
  }
  if (v3 && clusterSize > 4096) {
    extension(EXT_FEATURE_TABLE, featureNameTable());
  }
  at += 8; // end marker (zeros)
  if (fields.backingFile !== undefined) {
    const name = encoder.encode(fields.backingFile);
    if (name.length > 1023) {
      throw new QcowError("INVALID_ARGUMENT", "Backing file name is too long (at most 1023 bytes)");
    }
    if (at + name.length > clusterSize) {
      throw new QcowError("INVALID_ARGUMENT", "The backing file name does not fit in the header");
    }
    writeU64(first, 8, at);
    writeU32(first, 16, name.length);
    first.set(name, at);
  }
  return first;
}
