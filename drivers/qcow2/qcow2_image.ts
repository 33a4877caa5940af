/**
 * The qcow2 driver: opening an image and reading through its L1/L2 mapping.
 *
 * @module
 */

import type { BlockDevice } from "../../core/block_device.ts";
import { isDriverEvent } from "../../core/driver_event.ts";
import { deflateRaw } from "pako";
import { readU32, writeU32, writeU64 } from "../../core/bytes.ts";
import { QcowError } from "../../core/errors.ts";
import { RwLock } from "../../core/rw_lock.ts";
import { TableCache } from "../../core/table_cache.ts";
import { assertInside } from "../../core/_checks.ts";
import type { BlockStatus, Image, ImageInfo } from "../image.ts";
import { resolveBackingPath } from "../backing_path.ts";
import { AES_SECTOR_SIZE, AesSectorCipher } from "../aes_sectors.ts";
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
  MAX_L1_BYTES,
  MAX_SAFE_OFFSET,
  parseQcow2Header,
  peekClusterBits,
  type Qcow2Header,
  sizeToL1,
  validateTables,
} from "./header.ts";
import { Refcounts } from "./refcounts.ts";
import { checkExitStatus, checkQcow2, type CheckResult } from "./check.ts";
import { inflateCluster } from "./compressed.ts";
import { checkSnapshotTable } from "./snapshots.ts";
import * as snapshots from "./snapshot_ops.ts";
import type {
  SnapshotCreateOptions,
  SnapshotHost,
  SnapshotInfo,
  SnapshotLookupOptions,
  SnapshotViewOptions,
} from "./snapshot_ops.ts";
import {
  type OverlapCheck,
  OverlapMap,
  REGION_ACTIVE_L1,
  REGION_ACTIVE_L2,
  REGION_BITMAP_DIRECTORY,
  REGION_HEADER,
  REGION_INACTIVE_L1,
  REGION_INACTIVE_L2,
  REGION_REFCOUNT_BLOCK,
  REGION_REFCOUNT_TABLE,
  REGION_SNAPSHOT_TABLE,
} from "./overlap.ts";
import {
  compressedEntry,
  compressedLocation,
  entryCompressed,
  entryCopied,
  entryOffset,
  hostHi,
  hostLo,
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
  /** Open for reading only; default true. */
  readOnly?: boolean;
  /**
   * Which metadata regions writes are checked against before they are made, as QEMU's
   * `overlap-check` option: "none", "constant" (header, active L1, refcount table, snapshot
   * table, bitmap directory), "cached" (adds active L2 tables, refcount blocks, snapshot L1
   * tables; the default) or "all" (adds snapshot L2 tables). A write that would overlap marks
   * the image corrupt and fails.
   */
  overlapCheck?: OverlapCheck;
  /**
   * The passphrase of a legacy AES-encrypted image (crypt_method 1; required for one). A wrong
   * passphrase cannot be detected: the image then reads as garbage.
   */
  passphrase?: string | Uint8Array;
}

/** The metadata kind each metadata write event updates (its own kind is not an overlap). */
const EVENT_REGION: Record<string, number> = {
  l2_update: REGION_ACTIVE_L2,
  l1_update: REGION_ACTIVE_L1,
  l1_grow_write_table: REGION_ACTIVE_L1,
  l1_grow_activate_table: REGION_HEADER,
  features_update: REGION_HEADER,
  size_update: REGION_HEADER,
  reftable_update: REGION_HEADER,
  refblock_update: REGION_REFCOUNT_BLOCK,
  refblock_alloc_write: REGION_REFCOUNT_BLOCK,
  refblock_alloc_write_blocks: REGION_REFCOUNT_BLOCK,
  refblock_alloc_hookup: REGION_REFCOUNT_TABLE,
  refblock_alloc_write_table: REGION_REFCOUNT_TABLE,
};

/** Options for {@linkcode Qcow2Image.writeZeroes}. */
export interface WriteZeroesOptions {
  /** Let the image release the host clusters (like qemu-io's `write -z -u`); default false. */
  mayUnmap?: boolean;
}

/** Options for {@linkcode Qcow2Image.resize}. */
export interface ResizeOptions {
  /** Allow shrinking; only an unallocated tail can be cut off. Default false. */
  shrink?: boolean;
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
 * @example Writing and reading a qcow2 image held in memory
 * ```ts
 * import { createQcow2, MemoryDevice, Qcow2Image } from "@qcowlab/qcowlab";
 *
 * const device = new MemoryDevice();
 * await createQcow2(device, { size: 16 * 1024 * 1024 });
 * await using image = await Qcow2Image.open(device, { readOnly: false });
 * await image.write(new Uint8Array(512).fill(0xab), 4096);
 * const sector = new Uint8Array(512);
 * await image.read(sector, 4096);
 * console.log(sector[0]); // 171
 * ```
 */
export class Qcow2Image implements Image {
  #device: BlockDevice;
  #header: Qcow2Header;
  #l1: Uint8Array;
  #cache: TableCache;
  #refcounts: Refcounts | undefined;
  #lock = new RwLock();
  #readOnly: boolean;
  #backing: Image | undefined;
  #ownsDevice: boolean;
  /** Whether closing this image closes its backing chain (a snapshot view borrows it). */
  #ownsBacking = true;
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
  /** Legacy AES (crypt_method 1): data clusters are encrypted by guest sector number. */
  #cipher: AesSectorCipher | undefined;
  /** Metadata clusters that writes must not touch (writable images only). */
  #overlap: OverlapMap | undefined;
  #overlapCheck: OverlapCheck;
  /** Set once the image has been marked corrupt: it serves no more I/O. */
  #corrupt = false;
  /** Data was written since the last device flush (an L2 table pointing at it must wait). */
  #dataUnsynced = false;

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
    this.#readOnly = options.readOnly ?? true;
    this.#overlapCheck = options.overlapCheck ?? "cached";
    const cacheBytes = options.l2CacheSize ??
      Math.min(DEFAULT_L2_CACHE_MAX, Math.max(header.l1Size, 1) * this.#clusterSize);
    this.#cache = new TableCache({
      tableSize: this.#clusterSize,
      capacity: Math.max(2, Math.floor(cacheBytes / this.#clusterSize)),
      load: (offset, table) => {
        this.#device.event?.("l2_load");
        return this.#device.read(table, offset);
      },
      store: async (offset, table) => {
        // The data an L2 entry points at must be on disk before the entry is.
        if (this.#dataUnsynced) await this.#sync();
        await this.#writeMetadata(offset, table, "l2_update");
      },
      sync: () => this.#sync(),
    });
    this.#compressedData = new Uint8Array(0);
    if (header.cryptMethod === 1) this.#cipher = new AesSectorCipher(options.passphrase!);
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
    const check = options.overlapCheck;
    if (check !== undefined && !["none", "constant", "cached", "all"].includes(check)) {
      throw new QcowError(
        "INVALID_ARGUMENT",
        `overlapCheck must be "none", "constant", "cached" or "all", got ${String(check)}`,
      );
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
    if (header.cryptMethod === 2) {
      throw new QcowError(
        "UNSUPPORTED_FEATURE",
        "Unsupported qcow2 feature: encryption (LUKS) is not supported yet",
      );
    }
    if (header.cryptMethod === 1 && options.passphrase === undefined) {
      throw new QcowError(
        "PASSPHRASE_REQUIRED",
        `Image ${device.name} is encrypted (AES); give its passphrase to open it`,
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
    if (options.readOnly === false && (header.incompatibleFeatures & INCOMPAT_CORRUPT) !== 0n) {
      // Before any repair, as QEMU: a corrupt image is never opened for writing.
      throw new QcowError(
        "CORRUPT_METADATA",
        `Image ${device.name} is corrupt; cannot be opened read/write`,
      );
    }
    if (options.readOnly === false && (header.incompatibleFeatures & INCOMPAT_DIRTY) !== 0n) {
      return await Qcow2Image.#repairAndOpen(device, options);
    }
    const image = new Qcow2Image(device, header, l1, options);
    if (options.readOnly === false) await image.#openWritable();
    return image;
  }

  /**
   * A dirty image's refcounts cannot be trusted: like QEMU, rebuild them (`check -r all`) before
   * opening it for writing, and keep the report.
   */
  static async #repairAndOpen(device: BlockDevice, options: Qcow2OpenOptions): Promise<Qcow2Image> {
    if (device.readOnly) {
      throw new QcowError(
        "READ_ONLY",
        `Cannot repair dirty image ${device.name}: the device is read-only`,
      );
    }
    const result = await checkQcow2(device, { repair: "all" });
    if (checkExitStatus(result) !== 0) {
      const left = (result.corruptions ?? 0) + (result["check-errors"] ?? 0);
      throw new QcowError(
        "CORRUPT_METADATA",
        `Could not repair dirty image ${device.name}: ${left} problem(s) remain after the repair`,
      );
    }
    const image = await Qcow2Image.open(device, options);
    image.#repair = result;
    return image;
  }

  #repair: CheckResult | undefined;

  /** What the repair of a dirty image did when this image was opened for writing, if it ran. */
  get repairResult(): CheckResult | undefined {
    return this.#repair;
  }

  /** Sets the dirty bit (lazy refcounts) before the first change that relies on it. */
  async #markDirty(): Promise<void> {
    const h = this.#header;
    if (!this.#lazy || (h.incompatibleFeatures & INCOMPAT_DIRTY) !== 0n) return;
    await this.#writeFeatures(h.incompatibleFeatures | INCOMPAT_DIRTY);
    // While dirty, refcounts may lag behind: L2 tables no longer wait for them.
    this.#cache.clearDependencies();
  }

  /** Writes the incompatible feature bits and makes them durable. */
  async #writeFeatures(bits: bigint): Promise<void> {
    const field = new Uint8Array(8);
    writeU64(field, 0, Number(bits));
    await this.#writeMetadata(72, field, "features_update");
    await this.#sync();
    this.#header.incompatibleFeatures = bits;
  }

  get #dirty(): boolean {
    return (this.#header.incompatibleFeatures & INCOMPAT_DIRTY) !== 0n;
  }

  get #lazy(): boolean {
    return this.#header.version >= 3 &&
      (this.#header.compatibleFeatures & COMPAT_LAZY_REFCOUNTS) !== 0n;
  }

  async #openWritable(): Promise<void> {
    const h = this.#header;
    if (this.#device.readOnly) {
      throw new QcowError(
        "READ_ONLY",
        `Cannot open ${this.filename} for writing: the device is read-only`,
      );
    }
    if ((h.incompatibleFeatures & INCOMPAT_CORRUPT) !== 0n) {
      throw new QcowError(
        "CORRUPT_METADATA",
        `Image ${this.filename} is corrupt; cannot be opened read/write`,
      );
    }
    this.#refcounts = await Refcounts.load({
      device: this.#device,
      clusterBits: this.#clusterBits,
      refcountOrder: h.refcountOrder,
      tableOffset: h.refcountTableOffset,
      tableClusters: h.refcountTableClusters,
      cacheCapacity: 16,
      writeMetadata: (offset, data, event) => this.#writeMetadata(offset, data, event),
      sync: () => this.#sync(),
      switchTable: async (offset, clusters) => {
        const fields = new Uint8Array(12);
        writeU64(fields, 0, offset);
        writeU32(fields, 8, clusters);
        // Flushed by the caller once it switched too: a failed flush must not undo the switch.
        await this.#writeMetadata(48, fields, "reftable_update");
        h.refcountTableOffset = offset;
        h.refcountTableClusters = clusters;
        this.#overlap?.clear(REGION_REFCOUNT_TABLE);
        this.#overlap?.add(REGION_REFCOUNT_TABLE, offset, clusters * this.#clusterSize);
      },
    });
    await this.#buildOverlapMap();
    // L2 tables that point at newly counted clusters reach the disk after their refcounts.
    this.#cache.dependOn(this.#refcounts.cache);
  }

  /** Records where the metadata of a writable image lies, for the overlap checks. */
  async #buildOverlapMap(): Promise<void> {
    const map = new OverlapMap(this.#clusterBits, this.#overlapCheck);
    if (!map.enabled) return;
    const h = this.#header;
    const cs = this.#clusterSize;
    map.add(REGION_HEADER, 0, cs);
    map.add(REGION_ACTIVE_L1, h.l1TableOffset, h.l1Size * 8);
    if (map.tracks(REGION_ACTIVE_L2)) {
      for (let p = 0; p < this.#l1.length; p += 8) {
        const l2 = entryOffset(readU32(this.#l1, p), readU32(this.#l1, p + 4));
        if (l2 !== 0) map.add(REGION_ACTIVE_L2, l2, cs);
      }
    }
    const refcounts = this.#refcounts!;
    map.add(REGION_REFCOUNT_TABLE, refcounts.tableOffset, refcounts.tableClusters * cs);
    if (map.tracks(REGION_REFCOUNT_BLOCK)) {
      for (const block of refcounts.blockOffsets) {
        if (block !== 0) map.add(REGION_REFCOUNT_BLOCK, block, cs);
      }
    }
    if (h.bitmaps) {
      map.add(REGION_BITMAP_DIRECTORY, h.bitmaps.directoryOffset, h.bitmaps.directorySize);
    }
    // The snapshot table, and the L1 (and L2) tables of the snapshots.
    const fileSize = this.#device.size;
    const table = await snapshots.readSnapshots({
      device: this.#device,
      header: h,
      size: () => this.#size,
    });
    map.add(REGION_SNAPSHOT_TABLE, h.snapshotsOffset, table.size);
    for (const { l1TableOffset: offset, l1Size: entries } of table.entries) {
      map.add(REGION_INACTIVE_L1, offset, entries * 8);
      if (!map.tracks(REGION_INACTIVE_L2) || entries === 0) continue;
      if (offset % cs !== 0 || offset + entries * 8 > fileSize || entries * 8 > MAX_L1_BYTES) {
        continue;
      }
      const table = new Uint8Array(entries * 8);
      await this.#device.read(table, offset);
      for (let p = 0; p < table.length; p += 8) {
        const l2 = entryOffset(readU32(table, p), readU32(table, p + 4));
        if (l2 !== 0) map.add(REGION_INACTIVE_L2, l2, cs);
      }
    }
    this.#overlap = map;
  }

  /**
   * Refuses a write of `bytes` at host `offset` that would land on metadata (other than the kind
   * in `own`, a bit mask): the image is marked corrupt and stops serving I/O.
   */
  async #checkOverlap(offset: number, bytes: number, own: number): Promise<void> {
    const map = this.#overlap;
    if (this.#corrupt) throw corrupt(`Image ${this.filename} is corrupt`);
    if (map === undefined) return;
    const hit = map.check(offset, bytes, own);
    if (hit !== undefined) {
      await this.#signalCorruption(`Preventing invalid write on metadata (overlaps with ${hit})`);
    }
  }

  /**
   * Marks the image corrupt (the incompatible bit, made durable), refuses further I/O on it, and
   * fails with `message`.
   */
  async #signalCorruption(message: string): Promise<never> {
    if (!this.#corrupt) {
      this.#corrupt = true;
      const bits = this.#header.incompatibleFeatures | INCOMPAT_CORRUPT;
      const field = new Uint8Array(8);
      writeU64(field, 0, Number(bits));
      try {
        await this.#device.write(field, 72);
        await this.#sync();
        this.#header.incompatibleFeatures = bits;
      } catch {
        // The request fails anyway; the image refuses I/O from now on.
      }
    }
    throw corrupt(`Marking image as corrupt: ${message}`);
  }

  /** Whether the image has been marked corrupt while open (it then refuses all I/O). */
  get corrupt(): boolean {
    return this.#corrupt;
  }

  /** Lists the internal snapshots, in table order. */
  async listSnapshots(): Promise<SnapshotInfo[]> {
    this.#assertOpen();
    return await this.#lock.shared(() => snapshots.listSnapshots(this.#snapshotHost()));
  }

  /**
   * Creates an internal snapshot of the active state (as `qemu-img snapshot -c`), optionally
   * with saved VM state kept as opaque bytes.
   *
   * @example Taking, changing and reverting
   * ```ts
   * import { createQcow2, MemoryDevice, Qcow2Image } from "@qcowlab/qcowlab";
   *
   * const device = new MemoryDevice();
   * await createQcow2(device, { size: 1 << 20 });
   * await using image = await Qcow2Image.open(device, { readOnly: false });
   * await image.write(new Uint8Array(512).fill(1), 0);
   * await image.createSnapshot("before");
   * await image.write(new Uint8Array(512).fill(2), 0);
   * await image.applySnapshot("before");
   * const sector = new Uint8Array(512);
   * await image.read(sector, 0);
   * console.log(sector[0]); // 1
   * ```
   */
  createSnapshot(name: string, options: SnapshotCreateOptions = {}): Promise<SnapshotInfo> {
    return this.#snapshotOp((host) => snapshots.createSnapshot(host, name, options));
  }

  /** Reverts the active state to a snapshot (as `qemu-img snapshot -a`); the snapshot stays. */
  applySnapshot(idOrName: string, options: SnapshotLookupOptions = {}): Promise<SnapshotInfo> {
    return this.#snapshotOp((host) => snapshots.applySnapshot(host, idOrName, options));
  }

  /** Deletes a snapshot (as `qemu-img snapshot -d`, which matches names only). */
  deleteSnapshot(idOrName: string, options: SnapshotLookupOptions = {}): Promise<SnapshotInfo> {
    return this.#snapshotOp((host) => snapshots.deleteSnapshot(host, idOrName, options));
  }

  /**
   * A read-only image of a snapshot's contents without applying it (as `qemu-img convert -l`,
   * which reads it with the image's current size: pass `size: image.size` for that). It shares
   * this image's device and backing chain; close it before this image.
   */
  async snapshotView(idOrName: string, options: SnapshotViewOptions = {}): Promise<Image> {
    this.#assertOpen();
    return await this.#lock.shared(() =>
      snapshots.snapshotView(this.#snapshotHost(), idOrName, options)
    );
  }

  /** The VM state saved with a snapshot (empty when it has none). */
  async readSnapshotVmState(
    idOrName: string,
    options: SnapshotLookupOptions = {},
  ): Promise<Uint8Array> {
    this.#assertOpen();
    return await this.#lock.shared(() =>
      snapshots.readSnapshotVmState(this.#snapshotHost(), idOrName, options)
    );
  }

  async #snapshotOp(op: (host: SnapshotHost) => Promise<SnapshotInfo>): Promise<SnapshotInfo> {
    this.#assertWritable();
    let result: SnapshotInfo | undefined;
    await this.#exclusive(async () => {
      result = await op(this.#snapshotHost());
    });
    return result!;
  }

  /** The image's internals, for the snapshot operations (see snapshot_ops.ts). */
  #snapshotHost(): SnapshotHost {
    return {
      device: this.#device,
      sync: () => this.#sync(),
      header: this.#header,
      extended: this.#extended,
      refcounts: this.#refcounts,
      size: () => this.#size,
      setSize: (size) => this.#size = size,
      l1: () => this.#l1,
      growL1: (entries) => this.#growL1(entries),
      dropL2Cache: async () => {
        await this.#cache.flush();
        this.#cache.clear();
      },
      writeMetadata: (offset, data, event, own) => this.#writeMetadata(offset, data, event, own),
      rebuildOverlap: () => this.#buildOverlapMap(),
      openView: (header, l1) => {
        const view = new Qcow2Image(this.#device, header, l1, { readOnly: true });
        // The view borrows the backing chain: closing the view leaves it open.
        view.#backing = this.#backing;
        view.#ownsBacking = false;
        return view;
      },
    };
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

  /** Whether writes are refused. */
  get readOnly(): boolean {
    return this.#readOnly;
  }

  /** Fills `buffer` with virtual contents from `offset`. */
  async read(buffer: Uint8Array, offset: number): Promise<void> {
    this.#assertOpen();
    assertInside(offset, buffer.length, this.#size, this.filename);
    const wait = this.#lock.acquireShared();
    if (wait) await wait;
    try {
      await this.#readUnlocked(buffer, offset);
    } finally {
      this.#lock.releaseShared();
    }
  }

  async #readUnlocked(buffer: Uint8Array, offset: number): Promise<void> {
    let done = 0;
    while (done < buffer.length) {
      const at = offset + done;
      const extent = await this.#lookup(at, buffer.length - done);
      const part = buffer.subarray(done, done + extent.length);
      switch (extent.kind) {
        case KIND_DATA:
          if (this.#cipher) await this.#readEncrypted(part, extent.host, at);
          else await this.#readHost(part, extent.host);
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
    const extent = await this.#lock.shared(() => this.#lookup(offset, length));
    const status: BlockStatus = { length: extent.length, kind: KIND_NAMES[extent.kind]! };
    // Encrypted host bytes are not the guest's: no offset, as in QEMU.
    if (extent.host >= 0 && extent.kind !== KIND_COMPRESSED && !this.#cipher) {
      status.hostOffset = extent.host;
    }
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
      ...(this.#cipher ? { encrypted: true } : {}),
      "format-specific": {
        type: "qcow2",
        data: v3
          ? {
            compat: "1.1",
            "compression-type": h.compressionType === 1 ? "zstd" : "zlib",
            "lazy-refcounts": (h.compatibleFeatures & COMPAT_LAZY_REFCOUNTS) !== 0n,
            "refcount-bits": 2 ** h.refcountOrder,
            ...(this.#cipher ? { encrypt: { format: "aes" as const } } : {}),
            corrupt: (h.incompatibleFeatures & INCOMPAT_CORRUPT) !== 0n,
            "extended-l2": this.#extended,
          }
          : {
            compat: "0.10",
            "compression-type": "zlib",
            "refcount-bits": 16,
            ...(this.#cipher ? { encrypt: { format: "aes" as const } } : {}),
          },
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
    try {
      // A corrupt image writes nothing more, not even its cached metadata.
      if (!this.#readOnly && !this.#corrupt) {
        await this.flush();
        if (this.#dirty && this.#lazy) {
          // A clean close: refcounts written, then the dirty bit cleared.
          await this.#refcounts!.flush();
          await this.#sync();
          await this.#writeFeatures(this.#header.incompatibleFeatures & ~INCOMPAT_DIRTY);
        }
      }
    } finally {
      this.#closed = true;
      this.#cache.clear();
      try {
        if (this.#ownsBacking) await this.#backing?.close();
      } finally {
        if (this.#ownsDevice) await this.#device.close();
      }
    }
  }

  /** Same as {@linkcode Qcow2Image.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  /**
   * Writes `data` at virtual offset `offset`. Clusters that are not yet this image's own are
   * allocated, with the untouched parts copied from the backing chain (or zeros) once.
   */
  async write(data: Uint8Array, offset: number): Promise<void> {
    this.#assertWritable();
    assertInside(offset, data.length, this.#size, this.filename);
    if (data.length === 0) return;
    const host = this.#inPlaceHost(offset, data.length);
    if (host >= 0) {
      // Overwriting a cluster of our own: no metadata changes, so no cache work after it.
      const wait = this.#lock.acquireExclusive();
      if (wait) await wait;
      try {
        // Re-check: the mapping may have changed while waiting for the lock.
        this.#assertOpen();
        const now = wait ? this.#inPlaceHost(offset, data.length) : host;
        if (now >= 0) {
          if (this.#overlap?.check(now, data.length) !== undefined) {
            await this.#checkOverlap(now, data.length, 0);
          }
          this.#device.event?.("write_aio");
          return await this.#device.write(data, now);
        }
      } finally {
        this.#lock.releaseExclusive();
      }
    }
    await this.#exclusive(async () => {
      const cs = this.#clusterSize;
      let done = 0;
      while (done < data.length) {
        const at = offset + done;
        const within = at % cs;
        const n = Math.min(cs - within, data.length - done);
        await this.#writeInCluster(at - within, within, data.subarray(done, done + n));
        done += n;
      }
    });
  }

  /**
   * Makes `[offset, offset + length)` read as zeros: whole clusters get the zero flag (version 3)
   * or are deallocated where no backing file shows through (version 2); the rest is written.
   */
  async writeZeroes(
    offset: number,
    length: number,
    options: WriteZeroesOptions = {},
  ): Promise<void> {
    this.#assertWritable();
    assertInside(offset, length, this.#size, this.filename);
    if (length === 0) return;
    await this.#exclusive(() =>
      this.#clearRange(offset, length, options.mayUnmap ? "zero-unmap" : "zero")
    );
  }

  /**
   * Discards `[offset, offset + length)`, as QEMU does: whole clusters (never single subclusters)
   * are freed and read back as zeros; partial clusters are left alone. A version 2 image with a
   * backing file ignores discards, since it could only let stale backing data show through.
   */
  async discard(offset: number, length: number): Promise<void> {
    this.#assertWritable();
    assertInside(offset, length, this.#size, this.filename);
    if (length === 0) return;
    if (this.#header.version < 3 && this.#backing !== undefined) return;
    await this.#exclusive(() => this.#clearRange(offset, length, "discard"));
  }

  /**
   * Writes whole clusters compressed (raw deflate with a 4 KiB window, as QEMU reads it). A
   * cluster that does not shrink is written uncompressed, as qemu-img does.
   *
   * @param data Whole clusters; the last may be short only where it ends the image.
   * @param offset A cluster-aligned virtual offset.
   */
  async writeCompressed(data: Uint8Array, offset: number): Promise<void> {
    this.#assertWritable();
    if (this.#cipher) {
      throw new QcowError(
        "UNSUPPORTED_FEATURE",
        "Compression is not supported for encrypted images (as in QEMU)",
      );
    }
    assertInside(offset, data.length, this.#size, this.filename);
    const cs = this.#clusterSize;
    if (offset % cs !== 0 || (data.length % cs !== 0 && offset + data.length !== this.#size)) {
      throw new QcowError(
        "INVALID_ARGUMENT",
        `Compressed writes must cover whole ${cs}-byte clusters (offset ${offset}, ${data.length} bytes)`,
      );
    }
    await this.#exclusive(async () => {
      for (let done = 0; done < data.length; done += cs) {
        let chunk = data.subarray(done, done + cs);
        if (chunk.length < cs) {
          const padded = new Uint8Array(cs);
          padded.set(chunk);
          chunk = padded;
        }
        await this.#writeCompressedCluster(offset + done, chunk);
      }
    });
  }

  /**
   * Changes the virtual size (a multiple of 512). Growing extends the L1 table when needed, and,
   * as in QEMU, keeps a backing file longer than the old size from showing through: the new area
   * is zeroed, which a version 2 image can do only up to the end of its last cluster (growing
   * further is refused). Shrinking needs `shrink: true` and an unallocated tail.
   */
  async resize(size: number, options: ResizeOptions = {}): Promise<void> {
    this.#assertWritable();
    if (!Number.isSafeInteger(size) || size < 0 || size % 512 !== 0) {
      throw new QcowError(
        "INVALID_ARGUMENT",
        `The new size must be a multiple of 512, got ${size}`,
      );
    }
    if (size !== this.#size && this.#header.nbSnapshots > 0 && this.#header.version < 3) {
      // Version 2 snapshots do not record their disk size, so QEMU refuses.
      throw new QcowError("UNSUPPORTED_FEATURE", "Can't resize a v2 image which has snapshots");
    }
    await this.#exclusive(async () => {
      if (size < this.#size) {
        if (!options.shrink) {
          throw new QcowError(
            "INVALID_ARGUMENT",
            `Refusing to shrink ${this.filename} from ${this.#size} to ${size} bytes without shrink: true`,
          );
        }
        for (let at = size; at < this.#size;) {
          const extent = await this.#lookup(at, this.#size - at);
          if (extent.kind !== KIND_UNALLOCATED) {
            throw new QcowError(
              "INVALID_ARGUMENT",
              `Cannot shrink ${this.filename} to ${size} bytes: offset ${at} is allocated`,
            );
          }
          at += extent.length;
        }
      } else if (size > this.#size) {
        // As in QEMU, a backing file longer than the disk must not show through the new area.
        // Version 2 can only write zeros over the rest of the last cluster, not mark clusters.
        const backing = this.#backing;
        const exposed = backing !== undefined && backing.size > this.#size;
        const lastClusterEnd = Math.ceil(this.#size / this.#clusterSize) * this.#clusterSize;
        if (exposed && this.#header.version < 3 && size > lastClusterEnd) {
          throw new QcowError(
            "UNSUPPORTED_FEATURE",
            `Cannot grow ${this.filename} past ${lastClusterEnd} bytes: its backing file would ` +
              "show through the new area, and a version 2 image cannot mark it as zeros",
          );
        }
        await this.#growL1(sizeToL1(size, this.#clusterBits, this.#extended));
        if (exposed) {
          const old = this.#size;
          const cs = this.#clusterSize;
          this.#size = size;
          try {
            const end = Math.min(size, Math.ceil(backing.size / cs) * cs);
            await this.#clearRange(old, end - old, "zero");
          } catch (error) {
            this.#size = old;
            throw error;
          }
        }
      }
      const field = new Uint8Array(8);
      writeU64(field, 0, size);
      await this.#cache.flush();
      await this.#writeMetadata(24, field, "size_update");
      await this.#sync();
      this.#header.size = size;
      this.#size = size;
    });
  }

  /**
   * Allocates every L2 table and data cluster of the image without writing data (qemu-img's
   * `preallocation=metadata`); the file is extended to cover them, and reused clusters inside it
   * are zeroed, so they read as zeros.
   */
  async preallocateMetadata(): Promise<void> {
    this.#assertWritable();
    await this.#exclusive(async () => {
      const cs = this.#clusterSize;
      let end = 0;
      for (let start = 0; start < this.#size; start += cs) {
        const l2Offset = await this.#l2ForWrite(start);
        const e = this.#l2Index(start) * this.#entryBytes;
        const current = await this.#table(l2Offset);
        if (entryOffset(readU32(current, e), readU32(current, e + 4)) !== 0) continue;
        const host = await this.#refcounts!.allocate(1);
        // A cluster freed earlier (an old L1 or refcount table) still holds its old bytes.
        if (host < this.#device.size || this.#cipher) {
          await this.#writeData(new Uint8Array(cs), host, start);
        }
        const table = await this.#table(l2Offset);
        writeU32(table, e, hostHi(host));
        writeU32(table, e + 4, hostLo(host));
        // With subclusters, QEMU leaves them unallocated: the backing file still shows through.
        this.#cache.markDirty(l2Offset);
        end = Math.max(end, host + cs);
      }
      await this.#cache.flush();
      if (end > this.#device.size) await this.#device.truncate(end);
    });
  }

  /** Writes cached metadata in dependency order and makes everything durable. */
  async flush(): Promise<void> {
    this.#assertWritable();
    await this.#exclusive(async () => {
      this.#device.event?.("flush_to_os");
      await this.#cache.flush();
      // With lazy refcounts a dirty image keeps its refcount updates in memory until close.
      if (!this.#dirty) await this.#refcounts!.flush();
      this.#device.event?.("flush_to_disk");
      await this.#sync();
    });
  }

  #assertWritable(): void {
    this.#assertOpen();
    if (this.#readOnly) throw new QcowError("READ_ONLY", `Image ${this.filename} is read-only`);
  }

  async #exclusive(fn: () => Promise<void>): Promise<void> {
    const wait = this.#lock.acquireExclusive();
    if (wait) await wait;
    try {
      await fn();
      await this.#releasePending();
    } finally {
      this.#lock.releaseExclusive();
    }
  }

  /** Host ranges whose refcounts drop once the L2 updates that stopped using them are on disk. */
  #pendingFrees: [number, number][] = [];

  async #releasePending(): Promise<void> {
    if (this.#pendingFrees.length === 0) return;
    await this.#cache.flush();
    const frees = this.#pendingFrees;
    this.#pendingFrees = [];
    for (const [offset, bytes] of frees) await this.#refcounts!.free(offset, bytes);
  }

  /** Schedules the host storage an L2 entry referred to for freeing. */
  #releaseEntry(hi: number, lo: number): void {
    if (entryCompressed(hi)) {
      const location = compressedLocation(hi, lo, this.#clusterBits);
      this.#pendingFrees.push([location.offset, location.length]);
      return;
    }
    const host = entryOffset(hi, lo);
    if (host !== 0) this.#pendingFrees.push([host, this.#clusterSize]);
  }

  /** Writes metadata; the one place every metadata write goes through. */
  async #writeMetadata(
    offset: number,
    data: Uint8Array,
    event: string,
    ownMask?: number,
  ): Promise<void> {
    const own = EVENT_REGION[event];
    if (this.#corrupt) throw corrupt("Image is corrupt");
    if (this.#overlap !== undefined) {
      const ignore = ownMask ?? (own === undefined ? 0 : 1 << own);
      await this.#checkOverlap(offset, data.length, ignore);
      if (own === REGION_REFCOUNT_BLOCK && event !== "refblock_update") {
        // A new refcount block, about to be hooked into the table.
        this.#overlap.add(REGION_REFCOUNT_BLOCK, offset, data.length);
      }
    }
    this.#forgetDecompressed();
    if (isDriverEvent(event)) this.#device.event?.(event);
    try {
      await this.#device.write(data, offset);
    } catch (error) {
      // New refcount blocks (or a new refcount table) that did not reach the disk or were not
      // hooked up are no metadata: guarding them would make their clusters' next user look like
      // an overlap.
      if (this.#overlap && (event.startsWith("refblock_alloc") || event === "reftable_update")) {
        await this.#buildOverlapMap().catch(() => {});
      }
      throw error;
    }
  }

  /**
   * Drops the remembered compressed cluster: freed host bytes can be reused, and a new compressed
   * cluster at the same offset and length must not read as the old one.
   */
  #forgetDecompressed(): void {
    this.#compressedKey = -1;
    this.#compressedFailure = undefined;
    this.#compressedData = new Uint8Array(0);
  }

  /**
   * The L2 table mapping virtual offset `at`, ready to be changed: allocated (or copied, when
   * shared) and hooked into the L1 table first if needed.
   *
   * @returns The table's offset; fetch the table with `#table` after any await.
   */
  async #l2ForWrite(at: number): Promise<number> {
    await this.#markDirty();
    const l1Index = Math.floor(at / this.#l2Span);
    if (l1Index >= this.#header.l1Size) {
      throw corrupt(`Offset ${at} lies beyond the L1 table (${this.#header.l1Size} entries)`);
    }
    const p = l1Index * 8;
    const hi = readU32(this.#l1, p);
    const lo = readU32(this.#l1, p + 4);
    const old = entryOffset(hi, lo);
    if (old !== 0 && entryCopied(hi)) {
      await this.#loadL2ForWrite(old, l1Index);
      return old;
    }
    let copy: Uint8Array | undefined;
    if (old !== 0) this.#device.event?.("l2_alloc_cow_read");
    if (old !== 0) copy = (await this.#loadL2ForWrite(old, l1Index)).slice();
    const fresh = await this.#refcounts!.allocate(1);
    const table = await this.#cache.create(fresh);
    if (copy) table.set(copy);
    this.#device.event?.("l2_alloc_write");
    // The new table must be on disk (after the refcounts that cover it) before L1 points to it.
    await this.#cache.flush();
    const entry = new Uint8Array(8);
    writeU32(entry, 0, hostHi(fresh));
    writeU32(entry, 4, hostLo(fresh));
    await this.#writeMetadata(this.#header.l1TableOffset + p, entry, "l1_update");
    // The device holds the new entry now: follow it even if the flush below fails.
    this.#l1.set(entry, p);
    if (old !== 0) {
      this.#overlap?.remove(REGION_ACTIVE_L2, old, this.#clusterSize);
      this.#pendingFrees.push([old, this.#clusterSize]);
    }
    this.#overlap?.add(REGION_ACTIVE_L2, fresh, this.#clusterSize);
    await this.#sync();
    return fresh;
  }

  /** Loads an L2 table a write goes through; inconsistent metadata marks the image corrupt. */
  async #loadL2ForWrite(l2Offset: number, l1Index: number): Promise<Uint8Array> {
    try {
      return await this.#loadL2(l2Offset, l1Index);
    } catch (error) {
      if (error instanceof QcowError && error.code === "CORRUPT_METADATA" && !this.#corrupt) {
        return await this.#signalCorruption(error.message);
      }
      throw error;
    }
  }

  /** {@linkcode #checkCluster} for a write: an inconsistent entry marks the image corrupt. */
  async #checkClusterForWrite(host: number, l2Offset: number, index: number): Promise<void> {
    try {
      this.#checkCluster(host, l2Offset, index);
    } catch (error) {
      if (error instanceof QcowError && error.code === "CORRUPT_METADATA") {
        await this.#signalCorruption(error.message);
      }
      throw error;
    }
  }

  /** The cached L2 table at `l2Offset` (loading it again if it was evicted). */
  async #table(l2Offset: number): Promise<Uint8Array> {
    return this.#cache.peek(l2Offset) ?? await this.#cache.get(l2Offset);
  }

  /** Index of the L2 entry for the cluster at `clusterStart`. */
  #l2Index(clusterStart: number): number {
    return Math.floor((clusterStart % this.#l2Span) / this.#clusterSize);
  }

  /** Writes data clusters; `guest` (the virtual offset of `data[0]`) is needed to encrypt. */
  async #writeData(data: Uint8Array, host: number, guest?: number): Promise<void> {
    await this.#checkOverlap(host, data.length, 0);
    this.#forgetDecompressed();
    if (this.#cipher && guest !== undefined) {
      const copy = data.slice();
      this.#cipher.encrypt(copy, guest / AES_SECTOR_SIZE);
      data = copy;
    }
    // Compressed clusters are the only data written without a guest offset.
    this.#device.event?.(guest === undefined ? "write_compressed" : "write_aio");
    this.#dataUnsynced = true;
    await this.#device.write(data, host);
  }

  /**
   * Flushes the device. Every flush goes through here so that it is known whether data written
   * since may still be only in a disk cache.
   */
  async #sync(): Promise<void> {
    const before = this.#dataUnsynced;
    this.#dataUnsynced = false;
    try {
      await this.#device.flush();
    } catch (error) {
      this.#dataUnsynced ||= before;
      throw error;
    }
  }

  /** Reads and decrypts data at `host` holding virtual offset `guest`, in whole sectors. */
  async #readEncrypted(part: Uint8Array, host: number, guest: number): Promise<void> {
    const lead = guest % AES_SECTOR_SIZE;
    const span = Math.ceil((lead + part.length) / AES_SECTOR_SIZE) * AES_SECTOR_SIZE;
    const sectors = new Uint8Array(span);
    await this.#readHost(sectors, host - lead);
    this.#cipher!.decrypt(sectors, (guest - lead) / AES_SECTOR_SIZE);
    part.set(sectors.subarray(lead, lead + part.length));
  }

  /** Writes `chunk` at `within` bytes into the cluster starting at virtual `start`. */
  async #writeInCluster(start: number, within: number, chunk: Uint8Array): Promise<void> {
    if (this.#cipher && (within % AES_SECTOR_SIZE !== 0 || chunk.length % AES_SECTOR_SIZE !== 0)) {
      // Encryption works on whole sectors: widen the write with the sectors' current contents.
      const from = within - (within % AES_SECTOR_SIZE);
      const to = Math.ceil((within + chunk.length) / AES_SECTOR_SIZE) * AES_SECTOR_SIZE;
      const sectors = new Uint8Array(to - from);
      await this.#readUnlocked(sectors, start + from);
      sectors.set(chunk, within - from);
      return await this.#writeInCluster(start, from, sectors);
    }
    const l2Offset = await this.#l2ForWrite(start);
    const index = this.#l2Index(start);
    let table = await this.#table(l2Offset);
    const e = index * this.#entryBytes;
    const hi = readU32(table, e);
    const lo = readU32(table, e + 4);
    if (
      this.#extended && !entryCompressed(hi) && (entryOffset(hi, lo) === 0 || entryCopied(hi))
    ) {
      return this.#writeSubclusters(start, within, chunk, l2Offset, index);
    }
    const cs = this.#clusterSize;
    const kind = this.#extended
      ? (entryOffset(hi, lo) === 0 ? KIND_UNALLOCATED : KIND_COMPRESSED)
      : standardKind(hi, lo);
    const host = entryOffset(hi, lo);
    if (host !== 0 && kind !== KIND_COMPRESSED) {
      await this.#checkClusterForWrite(host, l2Offset, index);
    }
    if (kind === KIND_DATA && entryCopied(hi)) {
      await this.#writeData(chunk, host + within, start + within);
      return;
    }
    const whole = within === 0 && chunk.length === cs;
    // A preallocated zero cluster of our own is reused in place; anything else gets a new cluster.
    const reuse = kind === KIND_ZERO && host !== 0 && entryCopied(hi);
    const target = reuse ? host : await this.#refcounts!.allocate(1);
    if (whole) {
      await this.#writeData(chunk, target, start);
    } else {
      const zeroBefore = kind === KIND_ZERO ||
        (kind === KIND_UNALLOCATED && !this.#backingCovers(start));
      if (zeroBefore && !reuse && target >= this.#device.size && !this.#cipher) {
        // Past the end of the file the rest of the cluster reads as zeros already.
        await this.#writeData(chunk, target + within, start + within);
      } else {
        const buffer = new Uint8Array(cs);
        if (!zeroBefore) this.#device.event?.("cow_read");
        if (!zeroBefore) await this.#readUnlocked(buffer, start);
        buffer.set(chunk, within);
        await this.#writeData(buffer, target, start);
      }
    }
    table = await this.#table(l2Offset);
    writeU32(table, e, hostHi(target));
    writeU32(table, e + 4, hostLo(target));
    if (this.#extended) {
      writeU32(table, e + 8, 0);
      writeU32(table, e + 12, 0xffffffff);
    }
    this.#cache.markDirty(l2Offset);
    if (!reuse) this.#releaseEntry(hi, lo);
  }

  /**
   * Where `[offset, offset + length)` lies in the file when it falls inside one normal data cluster
   * of this image (refcount 1, L2 table cached): a write there changes no metadata. Else -1.
   */
  #inPlaceHost(offset: number, length: number): number {
    const cs = this.#clusterSize;
    const within = offset % cs;
    if (within + length > cs || this.#extended || this.#cipher) return -1;
    const l1Index = Math.floor(offset / this.#l2Span);
    if (l1Index >= this.#header.l1Size) return -1;
    const p = l1Index * 8;
    const l1Hi = readU32(this.#l1, p);
    const l2Offset = entryOffset(l1Hi, readU32(this.#l1, p + 4));
    if (l2Offset === 0 || !entryCopied(l1Hi)) return -1;
    const table = this.#cache.peek(l2Offset);
    if (table === undefined) return -1;
    const e = this.#l2Index(offset - within) * 8;
    const hi = readU32(table, e);
    const lo = readU32(table, e + 4);
    if (standardKind(hi, lo) !== KIND_DATA || !entryCopied(hi)) return -1;
    const host = entryOffset(hi, lo);
    if (host % cs !== 0 || host >= MAX_SAFE_OFFSET - cs) return -1; // the slow path reports it
    return host + within;
  }

  /** Whether the backing chain has data under the cluster at `start`. */
  #backingCovers(start: number): boolean {
    return this.#backing !== undefined && start < this.#backing.size;
  }

  /** A write into an extended L2 cluster that has no host cluster yet or is our own. */
  async #writeSubclusters(
    start: number,
    within: number,
    chunk: Uint8Array,
    l2Offset: number,
    index: number,
  ): Promise<void> {
    const sub = this.#subclusterSize;
    const first = Math.floor(within / sub);
    const last = Math.floor((within + chunk.length - 1) / sub);
    const regionStart = first * sub;
    const regionLength = (last - first + 1) * sub;
    let table = await this.#table(l2Offset);
    const e = index * 16;
    let host = entryOffset(readU32(table, e), readU32(table, e + 4));
    if (host !== 0) await this.#checkClusterForWrite(host, l2Offset, index);
    const fresh = host === 0;
    if (fresh) host = await this.#refcounts!.allocate(1);
    if (within === regionStart && chunk.length === regionLength) {
      await this.#writeData(chunk, host + regionStart, start + regionStart);
    } else {
      const buffer = new Uint8Array(regionLength);
      // The current contents of the edge subclusters: our data, zeros or the backing file.
      this.#device.event?.("cow_read");
      await this.#readUnlocked(buffer, start + regionStart);
      buffer.set(chunk, within - regionStart);
      await this.#writeData(buffer, host + regionStart, start + regionStart);
    }
    table = await this.#table(l2Offset);
    const mask = last - first === 31
      ? 0xffffffff
      : (((1 << (last - first + 1)) - 1) << first) >>> 0;
    if (fresh) {
      writeU32(table, e, hostHi(host));
      writeU32(table, e + 4, hostLo(host));
    }
    writeU32(table, e + 8, (readU32(table, e + 8) & ~mask) >>> 0);
    writeU32(table, e + 12, (readU32(table, e + 12) | mask) >>> 0);
    this.#cache.markDirty(l2Offset);
  }

  async #writeCompressedCluster(start: number, cluster: Uint8Array): Promise<void> {
    const packed = deflateRaw(cluster, { level: 6, windowBits: 12 });
    if (packed.length >= this.#clusterSize) {
      await this.#writeInCluster(start, 0, cluster);
      return;
    }
    const l2Offset = await this.#l2ForWrite(start);
    const index = this.#l2Index(start);
    const where = await this.#refcounts!.allocateBytes(packed.length);
    await this.#writeData(packed, where);
    const table = await this.#table(l2Offset);
    const e = index * this.#entryBytes;
    const hi = readU32(table, e);
    const lo = readU32(table, e + 4);
    const [newHi, newLo] = compressedEntry(where, packed.length, this.#clusterBits);
    writeU32(table, e, newHi);
    writeU32(table, e + 4, newLo);
    if (this.#extended) {
      writeU32(table, e + 8, 0);
      writeU32(table, e + 12, 0);
    }
    this.#device.event?.("l2_update_compressed");
    this.#cache.markDirty(l2Offset);
    this.#releaseEntry(hi, lo);
  }

  /** Zeroes or discards a range, cluster by cluster (subcluster by subcluster with extended L2). */
  async #clearRange(
    offset: number,
    length: number,
    mode: "zero" | "zero-unmap" | "discard",
  ): Promise<void> {
    // QEMU discards whole clusters only, even with subclusters.
    const unit = mode === "discard" ? this.#clusterSize : this.#subclusterSize;
    const end = offset + length;
    let at = offset;
    while (at < end) {
      const unitStart = at - (at % unit);
      const unitEnd = Math.min(unitStart + unit, this.#size);
      const stop = Math.min(end, unitEnd);
      const partial = at !== unitStart || stop !== unitEnd;
      if (partial) {
        // Like QEMU: a discard leaves partial (sub)clusters alone; zeroing writes zeros into them
        // unless the whole unit already reads as zeros, in which case it is marked zero whole.
        if (mode !== "discard") {
          if (await this.#readsAsZero(unitStart, unitEnd - unitStart)) {
            await this.#clearUnit(unitStart, mode);
          } else {
            await this.#writeZeroBytes(at, stop - at);
          }
        }
        at = stop;
        continue;
      }
      // Whole units: take as many as fit in this cluster at once.
      await this.#clearUnit(unitStart, mode);
      at = unitEnd;
    }
  }

  async #writeZeroBytes(at: number, length: number): Promise<void> {
    const cs = this.#clusterSize;
    const within = at % cs;
    await this.#writeInCluster(at - within, within, new Uint8Array(length));
  }

  /** Whether the chain says `[at, at + length)` reads as zeros (by metadata, not by content). */
  async #readsAsZero(at: number, length: number): Promise<boolean> {
    for (let done = 0; done < length;) {
      const extent = await this.#lookup(at + done, length - done);
      const zero = extent.kind === KIND_ZERO ||
        (extent.kind === KIND_UNALLOCATED && !this.#backingCovers(at + done));
      if (!zero) return false;
      done += extent.length;
    }
    return true;
  }

  /** Zeroes or discards one whole cluster (or subcluster with extended L2) at `start`. */
  async #clearUnit(start: number, mode: "zero" | "zero-unmap" | "discard"): Promise<void> {
    const cs = this.#clusterSize;
    const clusterStart = start - (start % cs);
    const v3 = this.#header.version >= 3;
    const l1Index = Math.floor(clusterStart / this.#l2Span);
    const p = l1Index * 8;
    const l2Existing = entryOffset(readU32(this.#l1, p), readU32(this.#l1, p + 4));
    // Nothing to do for an unallocated unit that reads as zeros anyway.
    if (l2Existing === 0 && !this.#backingCovers(clusterStart) && (mode === "discard" || !v3)) {
      return;
    }
    if (!v3 && mode !== "discard" && this.#backingCovers(clusterStart)) {
      // Version 2 cannot mark zeros; with a backing file showing through, write them.
      await this.#writeZeroBytes(start, Math.min(this.#subclusterSize, this.#size - start));
      return;
    }
    const l2Offset = await this.#l2ForWrite(clusterStart);
    const index = this.#l2Index(clusterStart);
    const table = await this.#table(l2Offset);
    const e = index * this.#entryBytes;
    const hi = readU32(table, e);
    const lo = readU32(table, e + 4);
    const host = entryOffset(hi, lo);
    const compressed = entryCompressed(hi);
    const allocated = host !== 0 || compressed;
    if (this.#extended && mode === "discard") {
      // The whole cluster: every subcluster reads as zeros, and the host cluster goes.
      if (!allocated && !this.#backingCovers(clusterStart)) return;
      writeU32(table, e, 0);
      writeU32(table, e + 4, 0);
      writeU32(table, e + 8, 0xffffffff);
      writeU32(table, e + 12, 0);
      this.#cache.markDirty(l2Offset);
      this.#releaseEntry(hi, lo);
      return;
    }
    if (this.#extended) {
      const sub = Math.floor((start - clusterStart) / this.#subclusterSize);
      const bit = (1 << sub) >>> 0;
      if (compressed) {
        // A compressed cluster cannot keep part of itself: rewrite it decompressed first.
        const buffer = new Uint8Array(cs);
        await this.#readUnlocked(buffer, clusterStart);
        await this.#writeInCluster(clusterStart, 0, buffer);
        return this.#clearUnit(start, mode);
      }
      const wantZero = mode !== "discard" || allocated || this.#backingCovers(clusterStart);
      const fresh = await this.#table(l2Offset);
      writeU32(fresh, e + 12, (readU32(fresh, e + 12) & ~bit) >>> 0);
      const zeros = wantZero
        ? (readU32(fresh, e + 8) | bit) >>> 0
        : (readU32(fresh, e + 8) & ~bit) >>> 0;
      writeU32(fresh, e + 8, zeros);
      // A cluster whose subclusters are all zero now, given up when unmapping is allowed.
      if (host !== 0 && mode !== "zero" && readU32(fresh, e + 12) === 0) {
        writeU32(fresh, e, 0);
        writeU32(fresh, e + 4, 0);
        this.#pendingFrees.push([host, cs]);
      }
      this.#cache.markDirty(l2Offset);
      return;
    }
    let newHi = 0;
    let newLo = 0;
    let release = allocated;
    if (mode === "zero" && v3) {
      if (host !== 0 && !compressed && entryCopied(hi)) {
        // Keep the preallocated cluster, flagged as reading zeros.
        newHi = hi;
        newLo = (lo | 1) >>> 0;
        release = false;
      } else {
        newLo = 1;
      }
    } else if (v3 && (mode === "zero-unmap" || allocated || this.#backingCovers(clusterStart))) {
      newLo = 1;
    }
    writeU32(table, e, newHi);
    writeU32(table, e + 4, newLo);
    this.#cache.markDirty(l2Offset);
    if (release) this.#releaseEntry(hi, lo);
  }

  /** Grows the active L1 table to `entries`, moving it to new clusters when it needs more room. */
  async #growL1(entries: number): Promise<void> {
    const h = this.#header;
    if (entries <= h.l1Size) return;
    await this.#markDirty();
    if (entries * 8 > MAX_L1_BYTES) {
      throw new QcowError(
        "TOO_LARGE",
        `The L1 table would need ${entries} entries (at most ${MAX_L1_BYTES / 8})`,
      );
    }
    const cs = this.#clusterSize;
    const oldBytes = h.l1Size * 8;
    const oldClusters = Math.ceil(oldBytes / cs);
    const newClusters = Math.ceil((entries * 8) / cs);
    this.#device.event?.("l1_grow_alloc_table");
    const l1 = new Uint8Array(entries * 8);
    l1.set(this.#l1);
    let offset = h.l1TableOffset;
    const moving = h.l1Size === 0 || newClusters > oldClusters;
    if (moving) {
      offset = await this.#refcounts!.allocate(newClusters);
      await this.#refcounts!.flush();
      await this.#writeMetadata(offset, l1, "l1_grow_write_table");
      await this.#sync();
    } else {
      await this.#writeMetadata(offset + oldBytes, l1.subarray(oldBytes), "l1_grow_write_table");
      await this.#sync();
    }
    const fields = new Uint8Array(12);
    writeU32(fields, 0, entries);
    writeU64(fields, 4, offset);
    await this.#writeMetadata(36, fields, "l1_grow_activate_table");
    // The device's header names the new table now: follow it even if the flush below fails.
    if (moving && oldClusters > 0) this.#pendingFrees.push([h.l1TableOffset, oldClusters * cs]);
    this.#overlap?.remove(REGION_ACTIVE_L1, h.l1TableOffset, oldBytes);
    this.#overlap?.add(REGION_ACTIVE_L1, offset, entries * 8);
    h.l1Size = entries;
    h.l1TableOffset = offset;
    this.#l1 = l1;
    await this.#sync();
  }

  #assertOpen(): void {
    if (this.#closed) throw new QcowError("CLOSED", `Image ${this.filename} is closed`);
    if (this.#corrupt) throw corrupt("Image is corrupt");
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
    const table = this.#cache.peek(l2Offset) ?? await this.#loadL2(l2Offset, l1Index);

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
      if (base !== 0 && !entryCompressed(hi)) this.#checkCluster(base, l2Offset, i);
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
    return this.#cache.get(l2Offset);
  }

  /** Reads host bytes; what lies past the end of the file reads as zeros, as in QEMU. */
  async #readHost(part: Uint8Array, host: number): Promise<void> {
    this.#device.event?.("read_aio");
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
    this.#device.event?.("read_backing_aio");
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
    this.#device.event?.("read_compressed");
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
