/**
 * The qcow2 driver: opening an image and reading through its L1/L2 mapping.
 *
 * @module
 */

import type { BlockDevice } from "../../core/block_device.ts";
import { readU32 } from "../../core/bytes.ts";
import { QcowError } from "../../core/errors.ts";
import { LruCache } from "../../core/lru_cache.ts";
import { assertInside } from "../../core/_checks.ts";
import type { BlockStatus, Image, ImageInfo } from "../image.ts";
import { resolveBackingPath } from "../backing_path.ts";
import {
  AUTOCLEAR_DATA_FILE_RAW,
  COMPAT_LAZY_REFCOUNTS,
  describeFeatures,
  INCOMPAT_CORRUPT,
  INCOMPAT_DATA_FILE,
  INCOMPAT_DIRTY,
  INCOMPAT_EXTENDED_L2,
  INCOMPAT_KNOWN,
  l2Entries,
  MAX_SAFE_OFFSET,
  parseQcow2Header,
  peekClusterBits,
  type Qcow2Header,
  validateTables,
} from "./header.ts";
import { inflateCluster } from "./compressed.ts";
import { checkSnapshotTable } from "./snapshots.ts";
import {
  compressedLocation,
  entryOffset,
  KIND_COMPRESSED,
  KIND_DATA,
  KIND_INVALID,
  KIND_UNALLOCATED,
  KIND_ZERO,
  standardKind,
  subclusterKind,
} from "./entries.ts";

/** Options for {@linkcode Qcow2Image.open}. */
export interface Qcow2OpenOptions {
  /**
   * Bytes of L2 tables to keep in memory. Default: enough to map the whole image, at most 32 MiB.
   */
  l2CacheSize?: number;
  /** Close the device when the image is closed; default false. */
  ownsDevice?: boolean;
}

/** A mapped run inside one L2 table. */
interface Extent {
  kind: number;
  length: number;
  /** Host offset of the run's first byte, or -1. */
  host: number;
  /** For compressed clusters: where the compressed stream is. */
  cOffset: number;
  cLength: number;
  /** For compressed clusters: where the run starts inside the cluster. */
  within: number;
}

const KIND_NAMES = ["unallocated", "zero", "data", "compressed"] as const;
const DEFAULT_L2_CACHE_MAX = 32 * 1024 * 1024;

function corrupt(message: string): QcowError {
  return new QcowError("CORRUPT_METADATA", message);
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

/**
 * An open qcow2 image (version 2 or 3), read through a bounded L2 cache. Supports every cluster
 * kind (unallocated, zero, normal, compressed) and extended L2 entries with subclusters.
 *
 * Most code opens images with {@linkcode openImage}, which also opens the backing chain.
 *
 * @example Reading a qcow2 image held in memory
 * ```ts
 * import { MemoryDevice, Qcow2Image } from "@qcowlab/qcowlab";
 *
 * const path = new URL("./testdata/small.qcow2", import.meta.url);
 * const bytes = await Deno.readFile(path).catch(() => undefined);
 * if (bytes) {
 *   await using image = await Qcow2Image.open(MemoryDevice.from(bytes));
 *   const head = new Uint8Array(512);
 *   await image.read(head, 0);
 * }
 * ```
 */
export class Qcow2Image implements Image {
  #device: BlockDevice;
  #header: Qcow2Header;
  #l1: Uint8Array;
  #cache: LruCache<number, Uint8Array>;
  #loading = new Map<number, Promise<Uint8Array>>();
  #backing: Image | undefined;
  #ownsDevice: boolean;
  #closed = false;
  #clusterBits: number;
  #clusterSize: number;
  #extended: boolean;
  #entryBytes: number;
  #l2Span: number;
  #subclusterSize: number;
  #size: number;
  #compressedKey = -1;
  #compressedLength = 0;
  #compressedFailure: QcowError | undefined;
  #compressedData: Uint8Array;

  private constructor(
    device: BlockDevice,
    header: Qcow2Header,
    l1: Uint8Array,
    options: Qcow2OpenOptions,
  ) {
    this.#device = device;
    this.#header = header;
    this.#l1 = l1;
    this.#ownsDevice = options.ownsDevice ?? false;
    this.#clusterBits = header.clusterBits;
    this.#clusterSize = 2 ** header.clusterBits;
    this.#extended = (header.incompatibleFeatures & INCOMPAT_EXTENDED_L2) !== 0n;
    this.#entryBytes = this.#extended ? 16 : 8;
    this.#l2Span = this.#clusterSize * l2Entries(header.clusterBits, this.#extended);
    this.#subclusterSize = this.#extended ? this.#clusterSize / 32 : this.#clusterSize;
    this.#size = Math.floor(header.size / 512) * 512;
    const cacheBytes = options.l2CacheSize ??
      Math.min(DEFAULT_L2_CACHE_MAX, Math.max(header.l1Size, 1) * this.#clusterSize);
    this.#cache = new LruCache(Math.max(1, Math.floor(cacheBytes / this.#clusterSize)));
    this.#compressedData = new Uint8Array(0);
  }

  /**
   * Opens a qcow2 image stored on `device`, checking its header and tables. The backing file is not
   * opened here; see {@linkcode Qcow2Image.setBacking}.
   *
   * @param device Where the image is stored.
   * @param options Cache size and device ownership.
   * @returns The open image.
   * @throws {QcowError} With a code naming what is wrong with the image.
   */
  static async open(device: BlockDevice, options: Qcow2OpenOptions = {}): Promise<Qcow2Image> {
    if (options.l2CacheSize !== undefined && !(options.l2CacheSize >= 0)) {
      throw new QcowError("INVALID_ARGUMENT", "l2CacheSize must be a non-negative number");
    }
    const fileSize = device.size;
    const head = new Uint8Array(Math.min(104, fileSize));
    await device.read(head, 0);
    const clusterBits = peekClusterBits(head);
    const first = new Uint8Array(Math.min(2 ** clusterBits, fileSize));
    await device.read(first, 0);
    const header = parseQcow2Header(first);

    const unknown = header.incompatibleFeatures & ~INCOMPAT_KNOWN;
    if (unknown !== 0n) {
      throw new QcowError(
        "UNSUPPORTED_FEATURE",
        `Unsupported qcow2 feature(s): ${describeFeatures(header, unknown)}`,
      );
    }
    if (header.cryptMethod !== 0) {
      const method = header.cryptMethod === 1 ? "AES" : "LUKS";
      throw new QcowError(
        "UNSUPPORTED_FEATURE",
        `Unsupported qcow2 feature: encryption (${method}) is not supported yet`,
      );
    }
    // QEMU ignores a data file name unless the incompatible bit says the data lives there.
    if ((header.incompatibleFeatures & INCOMPAT_DATA_FILE) !== 0n) {
      const name = header.dataFile ? ` (${header.dataFile})` : "";
      throw new QcowError(
        "UNSUPPORTED_FEATURE",
        `Unsupported qcow2 feature: external data file${name} is not supported yet`,
      );
    }
    if ((header.autoclearFeatures & AUTOCLEAR_DATA_FILE_RAW) !== 0n) {
      throw new QcowError(
        "BAD_HEADER",
        "data-file-raw requires a data file: the raw external data bit is set without one",
      );
    }
    if (header.compressionType !== 0) {
      throw new QcowError(
        "UNSUPPORTED_FEATURE",
        "Unsupported qcow2 feature: zstd compression is not supported yet",
      );
    }
    validateTables(header, fileSize);
    await checkSnapshotTable(device, header);

    const l1 = new Uint8Array(header.l1Size * 8);
    if (l1.length > 0) await device.read(l1, header.l1TableOffset);
    return new Qcow2Image(device, header, l1, options);
  }

  /** Always "qcow2". */
  get format(): "qcow2" {
    return "qcow2";
  }

  /** Virtual size in bytes: the header's size rounded down to whole 512-byte sectors, as QEMU does. */
  get size(): number {
    return this.#size;
  }

  /** The device holding the image. */
  get device(): BlockDevice {
    return this.#device;
  }

  /** The device's name. */
  get filename(): string {
    return this.#device.name;
  }

  /** The parsed header (treat as read-only). */
  get header(): Readonly<Qcow2Header> {
    return this.#header;
  }

  /** Cluster size in bytes. */
  get clusterSize(): number {
    return this.#clusterSize;
  }

  /** The opened backing image, if any. */
  get backing(): Image | undefined {
    return this.#backing;
  }

  /** The backing file name stored in the header. */
  get backingName(): string | undefined {
    return this.#header.backingFile;
  }

  /** The backing format stored in the header extension. */
  get backingFormat(): string | undefined {
    return this.#header.backingFormat;
  }

  /** Attaches the opened backing image. */
  setBacking(backing: Image | undefined): void {
    this.#backing = backing;
  }

  /** Fills `buffer` with virtual contents from `offset`. */
  async read(buffer: Uint8Array, offset: number): Promise<void> {
    this.#assertOpen();
    assertInside(offset, buffer.length, this.#size, this.filename);
    let done = 0;
    while (done < buffer.length) {
      const at = offset + done;
      const extent = await this.#lookup(at, buffer.length - done);
      const part = buffer.subarray(done, done + extent.length);
      switch (extent.kind) {
        case KIND_DATA:
          await this.#readHost(part, extent.host);
          break;
        case KIND_ZERO:
          part.fill(0);
          break;
        case KIND_UNALLOCATED:
          await this.#readBacking(part, at);
          break;
        case KIND_COMPRESSED: {
          const cluster = await this.#decompress(extent.cOffset, extent.cLength);
          part.set(cluster.subarray(extent.within, extent.within + part.length));
          break;
        }
      }
      done += extent.length;
    }
  }

  /** How the range at `offset` is stored in this image (not its backing chain). */
  async blockStatus(offset: number, length: number): Promise<BlockStatus> {
    this.#assertOpen();
    assertInside(offset, Math.max(length, 1), this.#size, this.filename);
    const extent = await this.#lookup(offset, length);
    const status: BlockStatus = { length: extent.length, kind: KIND_NAMES[extent.kind]! };
    if (extent.host >= 0 && extent.kind !== KIND_COMPRESSED) status.hostOffset = extent.host;
    return status;
  }

  /** What `qemu-img info` reports. */
  info(): ImageInfo {
    const h = this.#header;
    const v3 = h.version >= 3;
    const info: ImageInfo = {
      "virtual-size": this.#size,
      filename: this.filename,
      "cluster-size": this.#clusterSize,
      format: "qcow2",
      "dirty-flag": (h.incompatibleFeatures & INCOMPAT_DIRTY) !== 0n,
      "format-specific": {
        type: "qcow2",
        data: v3
          ? {
            compat: "1.1",
            "compression-type": h.compressionType === 1 ? "zstd" : "zlib",
            "lazy-refcounts": (h.compatibleFeatures & COMPAT_LAZY_REFCOUNTS) !== 0n,
            "refcount-bits": 2 ** h.refcountOrder,
            corrupt: (h.incompatibleFeatures & INCOMPAT_CORRUPT) !== 0n,
            "extended-l2": this.#extended,
          }
          : { compat: "0.10", "compression-type": "zlib", "refcount-bits": 16 },
      },
    };
    const actual = (this.#device as { allocatedBytes?: number }).allocatedBytes;
    if (typeof actual === "number") info["actual-size"] = actual;
    if (h.backingFile) {
      info["backing-filename"] = h.backingFile;
      info["full-backing-filename"] = resolveBackingPath(this.filename, h.backingFile);
      if (h.backingFormat !== undefined) info["backing-filename-format"] = h.backingFormat;
    }
    return info;
  }

  /** Closes the backing chain and, if owned, the device. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#cache.clear();
    try {
      await this.#backing?.close();
    } finally {
      if (this.#ownsDevice) await this.#device.close();
    }
  }

  /** Same as {@linkcode Qcow2Image.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  #assertOpen(): void {
    if (this.#closed) throw new QcowError("CLOSED", `Image ${this.filename} is closed`);
  }

  /** Maps the run starting at virtual offset `at`, at most `max` bytes, within one L2 table. */
  async #lookup(at: number, max: number): Promise<Extent> {
    const l2Span = this.#l2Span;
    const l1Index = Math.floor(at / l2Span);
    const spanStart = l1Index * l2Span;
    const limit = Math.min(max, spanStart + l2Span - at);
    const extent: Extent = {
      kind: KIND_UNALLOCATED,
      length: limit,
      host: -1,
      cOffset: 0,
      cLength: 0,
      within: 0,
    };
    if (l1Index >= this.#header.l1Size) return extent;
    const l1 = this.#l1;
    const p = l1Index * 8;
    const l2Offset = entryOffset(readU32(l1, p), readU32(l1, p + 4));
    if (l2Offset === 0) return extent;
    let table = this.#cache.get(l2Offset);
    if (table === undefined) table = await this.#loadL2(l2Offset, l1Index);

    const clusterSize = this.#clusterSize;
    const inSpan = at - spanStart;
    const index = Math.floor(inSpan / clusterSize);
    const within = inSpan - index * clusterSize;
    if (this.#extended) return this.#lookupExtended(table, index, within, limit, l2Offset);

    const e = index * 8;
    const hi = readU32(table, e);
    const lo = readU32(table, e + 4);
    const kind = standardKind(hi, lo);
    if (kind === KIND_ZERO && this.#header.version < 3) {
      // Version 2 has no zero flag: QEMU treats the bit as corruption rather than guess.
      throw corrupt(
        `Zero cluster entry found in pre-v3 image (L2 offset: ${hex(l2Offset)}, L2 index: ${
          hex(index)
        })`,
      );
    }
    extent.kind = kind;
    if (kind === KIND_COMPRESSED) {
      const location = compressedLocation(hi, lo, this.#clusterBits);
      this.#checkHostOffset(location.offset, l2Offset, index);
      extent.cOffset = location.offset;
      extent.cLength = location.length;
      extent.within = within;
      extent.length = Math.min(limit, clusterSize - within);
      return extent;
    }
    const host = entryOffset(hi, lo);
    if (host !== 0) this.#checkCluster(host, l2Offset, index);
    extent.host = host === 0 ? -1 : host + within;
    let length = clusterSize - within;
    // Extend over following clusters of the same kind (and contiguous host offsets).
    let next = index + 1;
    let nextHost = host === 0 ? 0 : host + clusterSize;
    while (length < limit) {
      const ne = next * 8;
      const nhi = readU32(table, ne);
      const nlo = readU32(table, ne + 4);
      if (standardKind(nhi, nlo) !== kind) break;
      const nOffset = entryOffset(nhi, nlo);
      if (nOffset !== nextHost) break;
      if (nOffset !== 0) this.#checkCluster(nOffset, l2Offset, next);
      length += clusterSize;
      next++;
      nextHost = nOffset === 0 ? 0 : nOffset + clusterSize;
    }
    extent.length = Math.min(length, limit);
    return extent;
  }

  #lookupExtended(
    table: Uint8Array,
    index: number,
    within: number,
    limit: number,
    l2Offset: number,
  ): Extent {
    const clusterSize = this.#clusterSize;
    const subSize = this.#subclusterSize;
    const extent: Extent = {
      kind: KIND_UNALLOCATED,
      length: limit,
      host: -1,
      cOffset: 0,
      cLength: 0,
      within: 0,
    };
    let length = 0;
    let first = true;
    let expectHost = 0;
    let i = index;
    let sub = Math.floor(within / subSize);
    let lead = within - sub * subSize;
    while (length < limit && i * clusterSize < this.#l2Span) {
      const e = i * 16;
      const hi = readU32(table, e);
      const lo = readU32(table, e + 4);
      const bHi = readU32(table, e + 8);
      const bLo = readU32(table, e + 12);
      const base = entryOffset(hi, lo);
      if (base !== 0 && (hi & 0x40000000) === 0) this.#checkCluster(base, l2Offset, i);
      for (; sub < 32 && length < limit; sub++) {
        const kind = subclusterKind(hi, lo, bHi, bLo, sub);
        if (kind === KIND_INVALID) {
          throw corrupt(
            `Invalid cluster entry found (L2 offset: ${hex(l2Offset)}, L2 index: ${hex(i)})`,
          );
        }
        if (kind === KIND_COMPRESSED) {
          if (!first) return this.#finish(extent, length, limit);
          const location = compressedLocation(hi, lo, this.#clusterBits);
          this.#checkHostOffset(location.offset, l2Offset, i);
          extent.kind = kind;
          extent.cOffset = location.offset;
          extent.cLength = location.length;
          extent.within = within;
          return this.#finish(extent, clusterSize - within, limit);
        }
        // Every subcluster of a cluster with a host offset has a host position, even one that
        // is unallocated (QEMU reports it as a valid offset).
        const host = base !== 0 ? base + sub * subSize : 0;
        if (first) {
          first = false;
          extent.kind = kind;
          extent.host = host === 0 ? -1 : host + lead;
        } else if (kind !== extent.kind || host !== expectHost) {
          return this.#finish(extent, length, limit);
        }
        expectHost = host === 0 ? 0 : host + subSize;
        length += subSize - lead;
        lead = 0;
      }
      sub = 0;
      i++;
    }
    return this.#finish(extent, length, limit);
  }

  #finish(extent: Extent, length: number, limit: number): Extent {
    extent.length = Math.min(length, limit);
    return extent;
  }

  #checkCluster(host: number, l2Offset: number, index: number): void {
    if (host % this.#clusterSize !== 0) {
      throw corrupt(
        `Cluster allocation offset ${hex(host)} unaligned (L2 offset: ${hex(l2Offset)}, L2 index: ${
          hex(index)
        })`,
      );
    }
    this.#checkHostOffset(host, l2Offset, index);
  }

  #checkHostOffset(host: number, l2Offset: number, index: number): void {
    if (host >= MAX_SAFE_OFFSET - this.#clusterSize) {
      throw new QcowError(
        "TOO_LARGE",
        `Host offset ${hex(host)} is beyond 2^53 (L2 offset: ${hex(l2Offset)}, L2 index: ${
          hex(index)
        })`,
      );
    }
  }

  #loadL2(l2Offset: number, l1Index: number): Promise<Uint8Array> {
    const pending = this.#loading.get(l2Offset);
    if (pending) return pending;
    const load = (async (): Promise<Uint8Array> => {
      if (l2Offset % this.#clusterSize !== 0) {
        throw corrupt(`L2 table offset ${hex(l2Offset)} unaligned (L1 index: ${hex(l1Index)})`);
      }
      if (l2Offset < this.#clusterSize) {
        throw corrupt(
          `L2 table offset ${hex(l2Offset)} points into the header (L1 index: ${hex(l1Index)})`,
        );
      }
      if (l2Offset + this.#clusterSize > this.#device.size) {
        throw corrupt(
          `L2 table offset ${hex(l2Offset)} lies past the end of the file (L1 index: ${
            hex(l1Index)
          })`,
        );
      }
      const table = new Uint8Array(this.#clusterSize);
      await this.#device.read(table, l2Offset);
      this.#cache.set(l2Offset, table);
      return table;
    })();
    this.#loading.set(l2Offset, load);
    return load.finally(() => this.#loading.delete(l2Offset));
  }

  /** Reads host bytes; what lies past the end of the file reads as zeros, as in QEMU. */
  async #readHost(part: Uint8Array, host: number): Promise<void> {
    const available = this.#device.size - host;
    if (available >= part.length) return this.#device.read(part, host);
    if (available > 0) {
      await this.#device.read(part.subarray(0, available), host);
      part.fill(0, available);
    } else {
      part.fill(0);
    }
  }

  async #readBacking(part: Uint8Array, at: number): Promise<void> {
    const backing = this.#backing;
    if (!backing || at >= backing.size) {
      part.fill(0);
      return;
    }
    const n = Math.min(part.length, backing.size - at);
    await backing.read(part.subarray(0, n), at);
    if (n < part.length) part.fill(0, n);
  }

  /**
   * Inflates the compressed cluster at `offset`. The last cluster is remembered, and so is a
   * failure: re-inflating up to 4 MiB of bad input for every small read of the same cluster
   * would cost tens of milliseconds each time.
   */
  async #decompress(offset: number, length: number): Promise<Uint8Array> {
    if (offset === this.#compressedKey && length === this.#compressedLength) {
      const failure = this.#compressedFailure;
      if (failure) throw new QcowError(failure.code, failure.message, { cause: failure.cause });
      return this.#compressedData;
    }
    const available = this.#device.size - offset;
    if (available <= 0) {
      throw new QcowError(
        "BAD_COMPRESSED_DATA",
        `Compressed cluster at ${hex(offset)} lies past the end of the file`,
      );
    }
    // As in QEMU, what lies past the end of the file reads as zeros: the last compressed
    // stream in a file often ends before the end of its last sector.
    const input = new Uint8Array(length);
    await this.#device.read(input.subarray(0, Math.min(length, available)), offset);
    this.#compressedKey = offset;
    this.#compressedLength = length;
    this.#compressedData = new Uint8Array(0);
    this.#compressedFailure = undefined;
    try {
      this.#compressedData = inflateCluster(input, this.#clusterSize, hex(offset));
    } catch (error) {
      if (error instanceof QcowError) this.#compressedFailure = error;
      else this.#compressedKey = -1;
      throw error;
    }
    return this.#compressedData;
  }
}
