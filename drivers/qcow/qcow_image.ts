/**
 * The qcow (version 1) image: reading, writing and mapping.
 *
 * @module
 */

import { deflateRaw } from "pako";
import type { BlockDevice } from "../../core/block_device.ts";
import type { DriverEvent } from "../../core/driver_event.ts";
import { readU32, readU64, writeU32, writeU64 } from "../../core/bytes.ts";
import { QcowError } from "../../core/errors.ts";
import { assertInside } from "../../core/_checks.ts";
import { RwLock } from "../../core/rw_lock.ts";
import { TableCache } from "../../core/table_cache.ts";
import { AES_SECTOR_SIZE, AesSectorCipher } from "../aes_sectors.ts";
import { resolveBackingPath } from "../backing_path.ts";
import type { BlockStatus, Image, ImageInfo } from "../image.ts";
import { inflateCluster } from "../qcow2/compressed.ts";
import {
  alignUp,
  decodeEntry,
  encodeCompressed,
  l1Index,
  l2Index,
  MAX_EXACT_OFFSET,
  type QcowEntry,
} from "./entries.ts";
import {
  decodeBackingName,
  parseQcowHeader,
  QCOW_CRYPT_AES,
  QCOW_HEADER_SIZE,
  type QcowHeader,
  qcowL1Entries,
  qcowVirtualSize,
  validateQcowLayout,
} from "./header.ts";

/** Options for {@linkcode QcowImage.open}. */
export interface QcowOpenOptions {
  /** Close the device when the image is closed; default false. */
  ownsDevice?: boolean;
  /** Refuse writes; default true. */
  readOnly?: boolean;
  /** Bytes of L2 tables to cache (default: every table, up to 16 MiB). */
  l2CacheSize?: number;
  /**
   * The passphrase of an AES-encrypted image (required for one, ignored otherwise). A wrong
   * passphrase cannot be detected: the image then reads as garbage.
   */
  passphrase?: string | Uint8Array;
}

const DEFAULT_L2_CACHE_MAX = 16 * 1024 * 1024;

function corrupt(message: string): QcowError {
  return new QcowError("CORRUPT_METADATA", message);
}

function hex(value: number): string {
  return `0x${value.toString(16)}`;
}

/** One cluster-bounded piece of a request. */
interface Piece {
  /** The entry of the cluster. */
  entry: QcowEntry;
  /** Virtual offset of the cluster's first byte. */
  clusterStart: number;
  /** Offset of the piece inside the cluster. */
  within: number;
  /** Bytes of the piece. */
  length: number;
}

/**
 * A qcow (version 1) image. New L2 tables and clusters are appended at the end of the file, as
 * QEMU does; there are no refcounts, so nothing is ever freed. Metadata is written back on
 * {@linkcode QcowImage.flush} in dependency order (data, then L2 tables, then L1 entries, with a
 * device flush between the steps), so a crash can leak appended space but never leaves flushed
 * data behind metadata that points elsewhere.
 *
 * Differences from QEMU, on purpose: a partial write into an unallocated cluster copies the rest
 * of the cluster from the backing file (QEMU leaves zeros there, which only its 512-byte default
 * clusters for images with a backing file hide); compressed writes to an encrypted image are
 * refused (QEMU stores them unencrypted); resizing is refused, as in QEMU.
 *
 * @example Writing and reading an image in memory
 * ```ts
 * import { createQcow, MemoryDevice, QcowImage } from "@qcowlab/qcowlab";
 *
 * const device = new MemoryDevice();
 * await createQcow(device, { size: 1 << 20 });
 * await using image = await QcowImage.open(device, { readOnly: false });
 * await image.write(new Uint8Array(512).fill(9), 4096);
 * const sector = new Uint8Array(512);
 * await image.read(sector, 4096);
 * console.log(sector[0]); // 9
 * ```
 */
export class QcowImage implements Image {
  #device: BlockDevice;
  #header: QcowHeader;
  #l1: Uint8Array;
  #l1Dirty = new Set<number>();
  #cache: TableCache;
  #lock = new RwLock();
  #readOnly: boolean;
  #ownsDevice: boolean;
  #closed = false;
  #backing: Image | undefined;
  #backingName: string | undefined;
  #clusterBits: number;
  #clusterSize: number;
  #l2Bits: number;
  #tableBytes: number;
  #size: number;
  #cipher: AesSectorCipher | undefined;
  /** Exact end of everything allocated, written or still cached. */
  #end: number;
  /** Newly allocated clusters were written since the last device flush. */
  #dataUnsynced = false;
  /** Guest data was written in place (no metadata change) since the last device flush. */
  #writesUnsynced = false;
  #compressedKey = -1;
  /** Set by `#cachedDataRun`. */
  #runHost = 0;
  #compressedData: Uint8Array = new Uint8Array(0);

  private constructor(
    device: BlockDevice,
    header: QcowHeader,
    l1: Uint8Array,
    backingName: string | undefined,
    options: QcowOpenOptions,
  ) {
    this.#device = device;
    this.#header = header;
    this.#l1 = l1;
    this.#backingName = backingName;
    this.#ownsDevice = options.ownsDevice ?? false;
    this.#readOnly = options.readOnly ?? true;
    this.#clusterBits = header.clusterBits;
    this.#clusterSize = 2 ** header.clusterBits;
    this.#l2Bits = header.l2Bits;
    this.#tableBytes = 8 * 2 ** header.l2Bits;
    this.#size = qcowVirtualSize(header);
    this.#end = device.size;
    if (header.cryptMethod === QCOW_CRYPT_AES) {
      this.#cipher = new AesSectorCipher(options.passphrase!);
    }
    const cacheBytes = options.l2CacheSize ??
      Math.min(DEFAULT_L2_CACHE_MAX, Math.max(l1.length / 8, 1) * this.#tableBytes);
    this.#cache = new TableCache({
      tableSize: this.#tableBytes,
      capacity: Math.max(2, Math.floor(cacheBytes / this.#tableBytes)),
      load: (offset, table) => {
        this.#announce("l2_load");
        return this.#device.read(table, offset);
      },
      store: (offset, table) => this.#storeL2(offset, table),
      sync: () => this.#sync(),
    });
  }

  /**
   * Opens a qcow image on `device`, checking its header and L1 table. The backing file is not
   * opened here; see {@linkcode QcowImage.setBacking}.
   *
   * @param device Where the image is stored.
   * @param options Ownership, write access, cache size and passphrase.
   * @returns The open image.
   * @throws {QcowError} `BAD_MAGIC`, `UNSUPPORTED_VERSION`, `BAD_HEADER`, `BAD_TABLE`,
   * `TOO_LARGE`, or `PASSPHRASE_REQUIRED` for an encrypted image opened without a passphrase.
   */
  static async open(device: BlockDevice, options: QcowOpenOptions = {}): Promise<QcowImage> {
    if (options.l2CacheSize !== undefined && !(options.l2CacheSize >= 0)) {
      throw new QcowError("INVALID_ARGUMENT", "l2CacheSize must be a non-negative number");
    }
    const head = new Uint8Array(Math.min(QCOW_HEADER_SIZE, device.size));
    await device.read(head, 0);
    const header = parseQcowHeader(head);
    validateQcowLayout(header, device.size);
    if (header.cryptMethod === QCOW_CRYPT_AES && options.passphrase === undefined) {
      throw new QcowError(
        "PASSPHRASE_REQUIRED",
        `Image ${device.name} is encrypted (AES); give its passphrase to open it`,
      );
    }
    const l1 = new Uint8Array(qcowL1Entries(header) * 8);
    await device.read(l1, header.l1TableOffset);
    let backingName: string | undefined;
    if (header.backingFileOffset !== 0) {
      const name = new Uint8Array(header.backingFileSize);
      await device.read(name, header.backingFileOffset);
      backingName = decodeBackingName(name);
    }
    return new QcowImage(device, header, l1, backingName, options);
  }

  /** Always "qcow". */
  get format(): "qcow" {
    return "qcow";
  }

  /** Virtual size in bytes (whole sectors of the stored size). */
  get size(): number {
    return this.#size;
  }

  /** The device. */
  get device(): BlockDevice {
    return this.#device;
  }

  /** The device's name. */
  get filename(): string {
    return this.#device.name;
  }

  /** The backing image, once attached. */
  get backing(): Image | undefined {
    return this.#backing;
  }

  /** The backing file name stored in the header. */
  get backingName(): string | undefined {
    return this.#backingName;
  }

  /** qcow stores no backing format: it is always probed. */
  get backingFormat(): undefined {
    return undefined;
  }

  /** Whether writes are refused. */
  get readOnly(): boolean {
    return this.#readOnly;
  }

  /** Whether the image is AES-encrypted. */
  get encrypted(): boolean {
    return this.#cipher !== undefined;
  }

  /** Cluster size in bytes. */
  get clusterSize(): number {
    return this.#clusterSize;
  }

  /** The parsed header (a copy). */
  get header(): QcowHeader {
    return { ...this.#header };
  }

  /** Attaches the opened backing image. */
  setBacking(backing: Image | undefined): void {
    this.#backing = backing;
  }

  /** Fills `buffer` with virtual contents from `offset`. */
  read(buffer: Uint8Array, offset: number): Promise<void> {
    if (
      !this.#closed && this.#cipher === undefined && Number.isSafeInteger(offset) && offset >= 0 &&
      offset + buffer.length <= this.#size && buffer.length > 0 &&
      this.#cachedDataRun(offset, buffer.length) === buffer.length
    ) {
      // Plain data found in cached tables: read it without the lock. qcow never frees or moves
      // a cluster, so a concurrent write can change what the bytes are, never where they are.
      this.#announce("read_aio");
      return this.#readHost(buffer, this.#runHost);
    }
    return this.#readSlow(buffer, offset);
  }

  async #readSlow(buffer: Uint8Array, offset: number): Promise<void> {
    this.#assertOpen();
    assertInside(offset, buffer.length, this.#size, this.filename);
    const wait = this.#lock.acquireShared();
    if (wait) await wait;
    try {
      let done = 0;
      while (done < buffer.length) {
        const run = this.#cachedDataRun(offset + done, buffer.length - done);
        if (run > 0) {
          // Contiguous data whose L2 entries are cached: one device read, no lookups.
          this.#announce("read_aio");
          const part = buffer.subarray(done, done + run);
          if (this.#cipher) await this.#readDecrypted(part, this.#runHost, offset + done);
          else await this.#readHost(part, this.#runHost);
          done += run;
          continue;
        }
        const piece = await this.#piece(offset + done, buffer.length - done);
        await this.#readPiece(buffer.subarray(done, done + piece.length), piece);
        done += piece.length;
      }
    } finally {
      this.#lock.releaseShared();
    }
  }

  /** Writes `data` at virtual offset `offset`, allocating clusters at the end of the file. */
  async write(data: Uint8Array, offset: number): Promise<void> {
    this.#assertWritable();
    assertInside(offset, data.length, this.#size, this.filename);
    await this.#exclusive(async () => {
      let done = 0;
      while (done < data.length) {
        const piece = await this.#piece(offset + done, data.length - done);
        await this.#writePiece(data.subarray(done, done + piece.length), piece);
        done += piece.length;
      }
    });
  }

  /**
   * Writes zeros: qcow cannot mark clusters as zero, so, as in QEMU, zeros are written, except
   * into clusters that are unallocated with nothing beneath them (they read as zeros already).
   */
  async writeZeroes(offset: number, length: number): Promise<void> {
    this.#assertWritable();
    assertInside(offset, length, this.#size, this.filename);
    const zeros = new Uint8Array(this.#clusterSize);
    await this.#exclusive(async () => {
      let done = 0;
      while (done < length) {
        const piece = await this.#piece(offset + done, length - done);
        const at = offset + done;
        const hidden = piece.entry.kind === "unallocated" &&
          (this.#backing === undefined || at >= this.#backing.size);
        if (!hidden) await this.#writePiece(zeros.subarray(0, piece.length), piece);
        done += piece.length;
      }
    });
  }

  /** qcow has no discard: like QEMU, this only checks the range and changes nothing. */
  discard(offset: number, length: number): Promise<void> {
    try {
      this.#assertWritable();
      assertInside(offset, length, this.#size, this.filename);
      return Promise.resolve();
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /**
   * Writes whole clusters compressed (raw deflate with a 4 KiB window, as QEMU writes them). A
   * cluster that does not shrink, or that is already allocated uncompressed, is written
   * uncompressed in place.
   *
   * @param data Whole clusters; the last may be short only where it ends the image.
   * @param offset A cluster-aligned virtual offset.
   */
  async writeCompressed(data: Uint8Array, offset: number): Promise<void> {
    this.#assertWritable();
    assertInside(offset, data.length, this.#size, this.filename);
    const cs = this.#clusterSize;
    if (offset % cs !== 0 || (data.length % cs !== 0 && offset + data.length !== this.#size)) {
      throw new QcowError(
        "INVALID_ARGUMENT",
        `Compressed writes must cover whole ${cs}-byte clusters (offset ${offset}, ${data.length} bytes)`,
      );
    }
    if (this.#cipher) {
      throw new QcowError(
        "UNSUPPORTED_FEATURE",
        "Compressed writes to an encrypted qcow image are refused (QEMU would store them unencrypted)",
      );
    }
    await this.#exclusive(async () => {
      for (let done = 0; done < data.length; done += cs) {
        const chunk = new Uint8Array(cs);
        chunk.set(data.subarray(done, done + cs));
        await this.#writeCompressedCluster(offset + done, chunk);
      }
    });
  }

  /** qcow images cannot be resized (QEMU cannot either). */
  resize(_size: number, _options?: { shrink?: boolean }): Promise<void> {
    return Promise.reject(
      new QcowError("UNSUPPORTED_FEATURE", "qcow images cannot be resized (QEMU cannot either)"),
    );
  }

  /**
   * Writes cached metadata in dependency order: newly written clusters are made durable, then L2
   * tables are written and made durable, then the L1 entries that point to new L2 tables. Ends
   * with a device flush whenever anything was written since the last one (data written in place
   * included).
   */
  async flush(): Promise<void> {
    this.#assertOpen();
    if (this.#readOnly) return;
    await this.#exclusive(() => this.#flushUnlocked());
  }

  /** How the range starting at `offset` is stored in this image (runs of clusters merged). */
  async blockStatus(offset: number, length: number): Promise<BlockStatus> {
    this.#assertOpen();
    assertInside(offset, Math.max(length, 1), this.#size, this.filename);
    const want = Math.max(1, Math.min(length, this.#size - offset));
    return await this.#lock.shared(async () => {
      const first = await this.#piece(offset, want);
      const status = this.#statusOf(first);
      let done = first.length;
      while (done < want && first.entry.kind !== "compressed") {
        const next = await this.#piece(offset + done, want - done);
        const other = this.#statusOf(next);
        if (other.kind !== status.kind) break;
        if (status.hostOffset !== undefined && other.hostOffset !== status.hostOffset + done) break;
        if ((status.hostOffset === undefined) !== (other.hostOffset === undefined)) break;
        done += next.length;
      }
      status.length = done;
      return status;
    });
  }

  /** What `qemu-img info` reports. */
  info(): ImageInfo {
    const info: ImageInfo = {
      "virtual-size": this.#size,
      filename: this.filename,
      "cluster-size": this.#clusterSize,
      format: "qcow",
      "dirty-flag": false,
    };
    if (this.#cipher) info.encrypted = true;
    const actual = (this.#device as { allocatedBytes?: number }).allocatedBytes;
    if (typeof actual === "number") info["actual-size"] = actual;
    if (this.#backingName !== undefined) {
      info["backing-filename"] = this.#backingName;
      info["full-backing-filename"] = resolveBackingPath(this.filename, this.#backingName);
    }
    return info;
  }

  /** Flushes (when writable), closes the backing chain, and the device if owned. */
  async close(): Promise<void> {
    if (this.#closed) return;
    try {
      if (!this.#readOnly) await this.#exclusive(() => this.#flushUnlocked());
    } finally {
      this.#closed = true;
      try {
        await this.#backing?.close();
      } finally {
        if (this.#ownsDevice) await this.#device.close();
      }
    }
  }

  /** Same as {@linkcode QcowImage.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  // ---- lookup ----

  /**
   * Bytes from `offset` (at most `length`) that lie in uncompressed data clusters contiguous on
   * the host, found from cached L2 tables alone; 0 when the first cluster needs the slow path.
   * The host offset of the run is left in `#runHost`.
   */
  #cachedDataRun(offset: number, length: number): number {
    const cs = this.#clusterSize;
    let done = 0;
    while (done < length) {
      const at = offset + done;
      const l2Offset = readU64(this.#l1, l1Index(at, this.#clusterBits, this.#l2Bits) * 8);
      if (l2Offset === 0) break;
      const table = this.#cache.peek(l2Offset);
      if (table === undefined) break;
      const e = l2Index(at, this.#clusterBits, this.#l2Bits) * 8;
      const hi = readU32(table, e);
      if (hi >= 0x00200000) break; // compressed, or an offset the slow path refuses
      const host = hi * 2 ** 32 + readU32(table, e + 4);
      if (host < QCOW_HEADER_SIZE || host % 512 !== 0) break; // unallocated or invalid
      const within = at % cs;
      if (done === 0) this.#runHost = host + within;
      else if (host + within !== this.#runHost + done) break;
      done += Math.min(cs - within, length - done);
    }
    return done;
  }

  async #piece(offset: number, length: number): Promise<Piece> {
    const cs = this.#clusterSize;
    const within = offset % cs;
    const clusterStart = offset - within;
    const n = Math.min(length, cs - within);
    const l2 = await this.#l2Table(offset, false);
    if (l2 === undefined) {
      return { entry: { kind: "unallocated" }, clusterStart, within, length: n };
    }
    const e = l2Index(offset, this.#clusterBits, this.#l2Bits) * 8;
    const entry = decodeEntry(readU32(l2.table, e), readU32(l2.table, e + 4), this.#clusterBits);
    this.#checkEntry(entry, offset);
    return { entry, clusterStart, within, length: n };
  }

  #checkEntry(entry: QcowEntry, offset: number): void {
    if (entry.kind === "unallocated") return;
    const where = `for virtual offset ${hex(offset)}`;
    if (entry.offset >= MAX_EXACT_OFFSET) {
      throw corrupt(`Cluster offset ${hex(entry.offset)} ${where} is beyond 2^53`);
    }
    if (entry.kind === "data") {
      if (entry.offset % 512 !== 0) {
        throw corrupt(`Cluster offset ${hex(entry.offset)} ${where} is not sector aligned`);
      }
      if (entry.offset < QCOW_HEADER_SIZE) {
        throw corrupt(`Cluster offset ${hex(entry.offset)} ${where} points into the header`);
      }
    } else if (entry.offset + entry.length > Math.max(this.#end, this.#device.size)) {
      throw corrupt(
        `Compressed cluster at ${
          hex(entry.offset)
        } (${entry.length} bytes) ${where} lies past the end of the file`,
      );
    }
  }

  /** The L2 table covering `offset`; with `allocate`, a new one is appended when missing. */
  async #l2Table(
    offset: number,
    allocate: boolean,
  ): Promise<{ offset: number; table: Uint8Array } | undefined> {
    const index = l1Index(offset, this.#clusterBits, this.#l2Bits);
    let l2Offset = readU64(this.#l1, index * 8);
    if (l2Offset === 0) {
      if (!allocate) return undefined;
      l2Offset = this.#allocate(this.#tableBytes, true);
      const table = await this.#cache.create(l2Offset);
      writeU64(this.#l1, index * 8, l2Offset);
      this.#l1Dirty.add(index);
      return { offset: l2Offset, table };
    }
    if (l2Offset >= MAX_EXACT_OFFSET || l2Offset < QCOW_HEADER_SIZE) {
      throw corrupt(`L2 table offset ${hex(l2Offset)} (L1 index ${index}) is invalid`);
    }
    if (l2Offset + this.#tableBytes > Math.max(this.#end, this.#device.size)) {
      throw corrupt(
        `L2 table at ${hex(l2Offset)} (L1 index ${index}) lies past the end of the file`,
      );
    }
    const table = this.#cache.peek(l2Offset) ?? await this.#cache.get(l2Offset);
    return { offset: l2Offset, table };
  }

  #statusOf(piece: Piece): BlockStatus {
    const { entry } = piece;
    if (entry.kind === "unallocated") return { length: piece.length, kind: "unallocated" };
    if (entry.kind === "compressed") return { length: piece.length, kind: "compressed" };
    const status: BlockStatus = { length: piece.length, kind: "data" };
    // Encrypted bytes on the host are not the guest's: no offset, as in QEMU.
    if (!this.#cipher) status.hostOffset = entry.offset + piece.within;
    return status;
  }

  // ---- reading ----

  async #readPiece(part: Uint8Array, piece: Piece): Promise<void> {
    const { entry } = piece;
    if (entry.kind === "unallocated") {
      await this.#readBacking(part, piece.clusterStart + piece.within);
    } else if (entry.kind === "compressed") {
      const cluster = await this.#decompress(entry.offset, entry.length);
      part.set(cluster.subarray(piece.within, piece.within + part.length));
    } else if (!this.#cipher) {
      this.#announce("read_aio");
      await this.#readHost(part, entry.offset + piece.within);
    } else {
      this.#announce("read_aio");
      await this.#readDecrypted(
        part,
        entry.offset + piece.within,
        piece.clusterStart + piece.within,
      );
    }
  }

  /** Reads encrypted data at `host` for virtual offset `guest`, in whole sectors. */
  async #readDecrypted(part: Uint8Array, host: number, guest: number): Promise<void> {
    // Host and guest offsets agree modulo the cluster size, so sectors line up on both sides.
    const lead = guest % AES_SECTOR_SIZE;
    const sectors = new Uint8Array(alignUp(lead + part.length, AES_SECTOR_SIZE));
    await this.#readHost(sectors, host - lead);
    this.#cipher!.decrypt(sectors, (guest - lead) / AES_SECTOR_SIZE);
    part.set(sectors.subarray(lead, lead + part.length));
  }

  /** Reads host bytes; what lies past the end of the file reads as zeros, as in QEMU. */
  #readHost(part: Uint8Array, host: number): Promise<void> {
    const available = this.#device.size - host;
    if (available >= part.length) return this.#device.read(part, host);
    return this.#readHostTail(part, host, available);
  }

  async #readHostTail(part: Uint8Array, host: number, available: number): Promise<void> {
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
    this.#announce("read_backing_aio");
    await backing.read(part.subarray(0, n), at);
    if (n < part.length) part.fill(0, n);
  }

  /** Inflates the compressed cluster at `offset`; the last one is remembered. */
  async #decompress(offset: number, length: number): Promise<Uint8Array> {
    if (offset === this.#compressedKey) return this.#compressedData;
    const input = new Uint8Array(length);
    this.#announce("read_compressed");
    await this.#device.read(input, offset);
    this.#compressedKey = -1;
    this.#compressedData = inflateCluster(input, this.#clusterSize, hex(offset));
    this.#compressedKey = offset;
    return this.#compressedData;
  }

  // ---- writing ----

  async #writePiece(data: Uint8Array, piece: Piece): Promise<void> {
    const { entry } = piece;
    const cs = this.#clusterSize;
    if (entry.kind === "data") {
      await this.#writeInPlace(data, entry.offset, piece);
      return;
    }
    // A new cluster: the bytes around the write come from the compressed cluster it replaces,
    // or from the backing file (zeros past its end).
    let cluster: Uint8Array;
    if (data.length === cs) {
      // Encryption works in place, on a copy; plain data is written from the caller's buffer.
      cluster = this.#cipher ? data.slice() : data;
    } else {
      cluster = new Uint8Array(cs);
      if (entry.kind === "compressed") {
        cluster.set(await this.#decompress(entry.offset, entry.length));
      } else {
        const visible = Math.min(cs, this.#size - piece.clusterStart);
        await this.#readBacking(cluster.subarray(0, visible), piece.clusterStart);
      }
      cluster.set(data, piece.within);
    }
    this.#compressedKey = -1;
    const l2 = (await this.#l2Table(piece.clusterStart, true))!;
    const host = this.#allocate(cs, true);
    this.#cipher?.encrypt(cluster, piece.clusterStart / AES_SECTOR_SIZE);
    this.#announce("cluster_alloc");
    await this.#device.write(cluster, host);
    this.#dataUnsynced = true;
    await this.#setEntry(piece.clusterStart, l2.offset, Math.floor(host / 2 ** 32), host >>> 0);
  }

  async #writeInPlace(data: Uint8Array, host: number, piece: Piece): Promise<void> {
    if (!this.#cipher) {
      this.#announce("write_aio");
      await this.#device.write(data, host + piece.within);
      this.#writesUnsynced = true;
      return;
    }
    const from = Math.floor(piece.within / AES_SECTOR_SIZE) * AES_SECTOR_SIZE;
    const to = alignUp(piece.within + data.length, AES_SECTOR_SIZE);
    const sectors = new Uint8Array(to - from);
    const first = (piece.clusterStart + from) / AES_SECTOR_SIZE;
    if (from !== piece.within || to !== piece.within + data.length) {
      await this.#readHost(sectors, host + from);
      this.#cipher.decrypt(sectors, first);
    }
    sectors.set(data, piece.within - from);
    this.#cipher.encrypt(sectors, first);
    this.#announce("write_aio");
    await this.#device.write(sectors, host + from);
    this.#writesUnsynced = true;
  }

  async #writeCompressedCluster(start: number, cluster: Uint8Array): Promise<void> {
    const piece = await this.#piece(start, this.#clusterSize);
    const packed = deflateRaw(cluster, { level: 6, windowBits: 12, memLevel: 9 });
    if (packed.length >= this.#clusterSize || piece.entry.kind === "data") {
      await this.#writePiece(cluster.subarray(0, piece.length), piece);
      return;
    }
    const l2 = (await this.#l2Table(start, true))!;
    const host = this.#allocate(packed.length, false);
    if (host + packed.length >= 2 ** (63 - this.#clusterBits)) {
      throw new QcowError("TOO_LARGE", `Compressed cluster offset ${hex(host)} does not fit`);
    }
    this.#compressedKey = -1;
    this.#announce("write_compressed");
    await this.#device.write(packed, host);
    this.#dataUnsynced = true;
    const [hi, lo] = encodeCompressed(host, packed.length, this.#clusterBits);
    await this.#setEntry(start, l2.offset, hi, lo);
  }

  async #setEntry(start: number, l2Offset: number, hi: number, lo: number): Promise<void> {
    const table = this.#cache.peek(l2Offset) ?? await this.#cache.get(l2Offset);
    const e = l2Index(start, this.#clusterBits, this.#l2Bits) * 8;
    writeU32(table, e, hi);
    writeU32(table, e + 4, lo);
    this.#cache.markDirty(l2Offset);
  }

  /** Reserves `bytes` at the end of the file, cluster aligned or not (compressed data). */
  #allocate(bytes: number, aligned: boolean): number {
    const at = aligned ? alignUp(this.#end, this.#clusterSize) : this.#end;
    if (at + bytes > Number.MAX_SAFE_INTEGER) {
      throw new QcowError("TOO_LARGE", `Image ${this.filename} would grow past 2^53 bytes`);
    }
    this.#end = at + bytes;
    return at;
  }

  async #storeL2(offset: number, table: Uint8Array): Promise<void> {
    // Clusters an L2 table points to must be durable before the table is.
    if (this.#dataUnsynced) {
      this.#announce("flush_to_disk");
      await this.#device.flush();
      this.#dataUnsynced = false;
    }
    this.#announce("l2_update");
    await this.#device.write(table, offset);
  }

  /** A device flush: everything written before it is durable. */
  async #sync(): Promise<void> {
    await this.#device.flush();
    this.#dataUnsynced = false;
    this.#writesUnsynced = false;
  }

  async #flushUnlocked(): Promise<void> {
    await this.#cache.flush();
    // Data written in place changes no metadata, but a flush must make it durable too.
    if (this.#dataUnsynced || this.#writesUnsynced) await this.#sync();
    if (this.#l1Dirty.size === 0) return;
    const indexes = [...this.#l1Dirty].sort((a, b) => a - b);
    let runStart = 0;
    for (let i = 1; i <= indexes.length; i++) {
      if (i < indexes.length && indexes[i] === indexes[i - 1]! + 1) continue;
      const first = indexes[runStart]!;
      const last = indexes[i - 1]!;
      this.#announce("l1_update");
      await this.#device.write(
        this.#l1.slice(first * 8, (last + 1) * 8),
        this.#header.l1TableOffset + first * 8,
      );
      runStart = i;
    }
    this.#l1Dirty.clear();
    await this.#sync();
  }

  #announce(name: DriverEvent): void {
    this.#device.event?.(name);
  }

  async #exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const wait = this.#lock.acquireExclusive();
    if (wait) await wait;
    try {
      return await fn();
    } finally {
      this.#lock.releaseExclusive();
    }
  }

  #assertOpen(): void {
    if (this.#closed) throw new QcowError("CLOSED", `Image ${this.filename} is closed`);
  }

  #assertWritable(): void {
    this.#assertOpen();
    if (this.#readOnly) throw new QcowError("READ_ONLY", `Image ${this.filename} is read-only`);
  }
}
