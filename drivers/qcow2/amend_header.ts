/**
 * The first cluster of an amended qcow2 image, laid out as QEMU rewrites it whenever a header
 * field changes, without I/O.
 *
 * @module
 */

import { writeU32, writeU64 } from "../../core/bytes.ts";
import { QcowError } from "../../core/errors.ts";
import {
  EXT_BACKING_FORMAT,
  EXT_BITMAPS,
  EXT_CRYPTO,
  EXT_DATA_FILE,
  EXT_END,
  EXT_FEATURE_TABLE,
  type Qcow2Header,
} from "./header.ts";
import { featureNameTable, putExtension } from "./_header_extensions.ts";

/** The header fields an amend changes; the rest comes from the image's header. */
export interface AmendedFields {
  /** 2 or 3. */
  version: 2 | 3;
  /** Incompatible feature bits (version 3). */
  incompatible: bigint;
  /** Compatible feature bits (version 3). */
  compatible: bigint;
  /** Autoclear feature bits (version 3). */
  autoclear: bigint;
  /** log2 of the refcount width (version 3; 4 in version 2). */
  refcountOrder: number;
  /** Offset of the refcount table. */
  reftableOffset: number;
  /** Clusters of the refcount table. */
  reftableClusters: number;
  /** Whether the bitmaps extension is kept (it was valid when the image was opened). */
  keepBitmaps: boolean;
}

/** Bytes of the fixed version 3 header QEMU writes (104 bytes of fields, padded). */
const V3_HEADER_BYTES = 112;
/** Bytes of a version 2 header. */
const V2_HEADER_BYTES = 72;

/** Extension types QEMU understands; any other is preserved as it was. */
const KNOWN_EXTENSIONS = new Set([
  EXT_END,
  EXT_BACKING_FORMAT,
  EXT_FEATURE_TABLE,
  EXT_BITMAPS,
  EXT_CRYPTO,
  EXT_DATA_FILE,
]);

/**
 * The header's fields as they stand, the starting point of an amend.
 *
 * @param header The image's header as parsed.
 * @param keepBitmaps Whether the bitmaps extension is kept.
 * @returns Fields that {@linkcode encodeAmendedHeader} turns back into the same header.
 */
export function headerFields(header: Qcow2Header, keepBitmaps: boolean): AmendedFields {
  return {
    version: header.version as 2 | 3,
    incompatible: header.incompatibleFeatures,
    compatible: header.compatibleFeatures,
    autoclear: header.autoclearFeatures,
    refcountOrder: header.refcountOrder,
    reftableOffset: header.refcountTableOffset,
    reftableClusters: header.refcountTableClusters,
    keepBitmaps,
  };
}

/**
 * Lays out the whole first cluster as QEMU does when it rewrites a header: the fixed fields
 * (72 bytes for version 2, 112 for version 3, then unknown version 3 fields kept), the backing
 * format, feature name table (version 3 with clusters over 4 KiB), bitmaps and unknown
 * extensions, the end marker and the backing file name; the rest of the cluster is zeros.
 *
 * @param header The image's header as parsed.
 * @param fields What changes.
 * @returns The new first cluster.
 * @throws {QcowError} `INVALID_ARGUMENT` when the result does not fit in one cluster.
 */
export function encodeAmendedHeader(header: Qcow2Header, fields: AmendedFields): Uint8Array {
  const clusterSize = 2 ** header.clusterBits;
  const first = new Uint8Array(clusterSize);
  const v3 = fields.version === 3;
  const unknownFields = v3 ? header.unknownHeaderBytes : new Uint8Array(0);
  writeU32(first, 0, 0x514649fb);
  writeU32(first, 4, fields.version);
  writeU32(first, 20, header.clusterBits);
  writeU64(first, 24, header.size);
  writeU32(first, 32, header.cryptMethod);
  writeU32(first, 36, header.l1Size);
  writeU64(first, 40, header.l1TableOffset);
  writeU64(first, 48, fields.reftableOffset);
  writeU32(first, 56, fields.reftableClusters);
  writeU32(first, 60, header.nbSnapshots);
  writeU64(first, 64, header.snapshotsOffset);
  let at = V2_HEADER_BYTES;
  if (v3) {
    const u64 = (offset: number, value: bigint): void => {
      writeU32(first, offset, Number(value >> 32n));
      writeU32(first, offset + 4, Number(value & 0xffffffffn));
    };
    u64(72, fields.incompatible);
    u64(80, fields.compatible);
    u64(88, fields.autoclear);
    writeU32(first, 96, fields.refcountOrder);
    writeU32(first, 100, V3_HEADER_BYTES + unknownFields.length);
    first[104] = header.compressionType;
    at = V3_HEADER_BYTES;
    first.set(unknownFields, at);
    at += unknownFields.length;
  }
  const tooBig = (): QcowError =>
    new QcowError("INVALID_ARGUMENT", "The amended header does not fit in one cluster");
  const extension = (type: number, data: Uint8Array): void => {
    const next = putExtension(first, at, type, data);
    if (next === undefined) throw tooBig();
    at = next;
  };
  const encoder = new TextEncoder();
  if (header.backingFormat !== undefined) {
    extension(EXT_BACKING_FORMAT, encoder.encode(header.backingFormat));
  }
  if (v3 && clusterSize > 4096) {
    extension(EXT_FEATURE_TABLE, featureNameTable());
  }
  if (fields.keepBitmaps) {
    const bitmaps = header.extensions.find((e) => e.type === EXT_BITMAPS);
    if (bitmaps) extension(EXT_BITMAPS, bitmaps.data);
  }
  for (const ext of header.extensions) {
    if (!KNOWN_EXTENSIONS.has(ext.type)) extension(ext.type, ext.data);
  }
  at += 8; // the end marker: eight zero bytes
  if (header.backingFile !== undefined) {
    const name = encoder.encode(header.backingFile);
    if (at + name.length > clusterSize) throw tooBig();
    writeU64(first, 8, at);
    writeU32(first, 16, name.length);
    first.set(name, at);
  }
  return first;
}
