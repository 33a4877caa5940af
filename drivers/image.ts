/**
 * What every image driver offers: the shared contract of raw, qcow2 and (later) qcow images.
 *
 * @module
 */

import type { BlockDevice } from "../core/block_device.ts";

/** The image formats qcowlab knows. */
export type ImageFormat = "raw" | "qcow" | "qcow2";

/** How a range of an image is stored, in that image alone (not its backing chain). */
export interface BlockStatus {
  /** Bytes from the queried offset that share this status (at least 1). */
  length: number;
  /**
   * `data`: stored in this image; `zero`: reads as zeros from this image; `unallocated`: this image
   * has nothing, the backing file (or zeros) shows through; `compressed`: stored compressed.
   */
  kind: "data" | "zero" | "unallocated" | "compressed";
  /** Where the bytes lie in the image file, when they lie at one place uncompressed. */
  hostOffset?: number;
}

/** Format-specific facts for qcow2, with qemu-img's field names. */
export interface Qcow2FormatInfo {
  /** Always "qcow2". */
  type: "qcow2";
  /** The details. */
  data: {
    /** "0.10" (version 2) or "1.1" (version 3). */
    compat: "0.10" | "1.1";
    /** "zlib" or "zstd". */
    "compression-type": "zlib" | "zstd";
    /** Version 3 only. */
    "lazy-refcounts"?: boolean;
    /** Refcount width in bits. */
    "refcount-bits": number;
    /** The encryption format, for encrypted images. */
    encrypt?: { format: "aes" | "luks" };
    /** Version 3 only. */
    corrupt?: boolean;
    /** Version 3 only. */
    "extended-l2"?: boolean;
  };
}

/** What `qemu-img info --output json` reports, for the fields qcowlab has. */
export interface ImageInfo {
  /** Virtual size in bytes. */
  "virtual-size": number;
  /** The image's file name (or device name). */
  filename: string;
  /** Cluster size, for formats that have clusters. */
  "cluster-size"?: number;
  /** The format. */
  format: ImageFormat;
  /** Bytes the file occupies on the host, when known. */
  "actual-size"?: number;
  /** Whether the image was not cleanly closed. */
  "dirty-flag": boolean;
  /** Whether the image is encrypted (only present when it is). */
  encrypted?: boolean;
  /** Format-specific details. */
  "format-specific"?: Qcow2FormatInfo;
  /** The backing file name as stored in the image. */
  "backing-filename"?: string;
  /** The backing file name resolved against the image's directory. */
  "full-backing-filename"?: string;
  /** The backing file's format, when the image records it. */
  "backing-filename-format"?: string;
}

/**
 * An open disk image of any format. Reads fill caller-owned buffers; a range that this image does
 * not hold comes from its backing image, and reads as zeros past the backing image's end.
 */
export interface Image extends AsyncDisposable {
  /** The format of this image. */
  readonly format: ImageFormat;
  /** Virtual size in bytes. */
  readonly size: number;
  /** The device the image is stored on. */
  readonly device: BlockDevice;
  /** The name of the image (its path for files). */
  readonly filename: string;
  /** The backing image, once the chain is open. */
  readonly backing: Image | undefined;
  /** The backing file name stored in this image, if any (even when not opened). */
  readonly backingName: string | undefined;
  /** The backing format stored in this image, if any. */
  readonly backingFormat: string | undefined;
  /** Whether writes are refused. */
  readonly readOnly: boolean;
  /** Fills `buffer` with the virtual contents at `offset`. */
  read(buffer: Uint8Array, offset: number): Promise<void>;
  /** Writes `data` at virtual offset `offset`. */
  write(data: Uint8Array, offset: number): Promise<void>;
  /** Makes a range read as zeros; `mayUnmap` lets the image release storage. */
  writeZeroes(offset: number, length: number, options?: { mayUnmap?: boolean }): Promise<void>;
  /** Discards a range (what it then reads as depends on the format, as in QEMU). */
  discard(offset: number, length: number): Promise<void>;
  /** Writes whole clusters compressed, where the format can. */
  writeCompressed(data: Uint8Array, offset: number): Promise<void>;
  /** Changes the virtual size; shrinking needs `shrink: true`. */
  resize(size: number, options?: { shrink?: boolean }): Promise<void>;
  /** Writes cached metadata and makes every completed write durable. */
  flush(): Promise<void>;
  /** How the range starting at `offset` (at most `length` bytes) is stored in this image. */
  blockStatus(offset: number, length: number): Promise<BlockStatus>;
  /** What `qemu-img info` would say about this image. */
  info(): ImageInfo;
  /** Attaches the opened backing image (used while opening a chain). */
  setBacking(backing: Image | undefined): void;
  /** Closes this image, its backing chain, and the device if the image opened it. */
  close(): Promise<void>;
}
