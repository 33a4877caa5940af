/**
 * Where `cli.ts convert` writes, and the target over a new qcow or qcow2 image (one cluster-sized
 * piece at a time, optionally compressed).
 *
 * @module
 */

/** Where convert writes: in runs of whole `granularity`-sized pieces (the last may be short). */
export interface ConvertTarget extends AsyncDisposable {
  /** Bytes per piece. */
  granularity: number;
  /** Writes a run of pieces. */
  write(data: Uint8Array, at: number): Promise<void>;
  /** Makes what was written durable. */
  finish(): Promise<void>;
}

/** What {@linkcode clusterTarget} needs of an image opened for writing (qcow or qcow2). */
export interface ClusterImage {
  /** Bytes per cluster. */
  readonly clusterSize: number;
  /** Virtual size in bytes. */
  readonly size: number;
  /** Writes guest data. */
  write(data: Uint8Array, offset: number): Promise<void>;
  /** Writes whole clusters compressed. */
  writeCompressed(data: Uint8Array, offset: number): Promise<void>;
  /** Flushes. */
  flush(): Promise<void>;
  /** Closes the image. */
  close(): Promise<void>;
}

/**
 * A convert target over `image`, written a cluster at a time; closing the target closes the image.
 *
 * @param image The new image, open for writing.
 * @param compress Whether to write clusters compressed.
 * @returns The target.
 */
export function clusterTarget(image: ClusterImage, compress: boolean): ConvertTarget {
  // A source that ends inside a cluster (a raw file of odd size) leaves a short last piece;
  // compressed writes need it padded to the cluster's end or the image's.
  const cs = image.clusterSize;
  const wholeClusters = (data: Uint8Array, at: number): Uint8Array => {
    const end = Math.min(image.size, at + Math.ceil(data.length / cs) * cs);
    if (at + data.length === end) return data;
    const padded = new Uint8Array(end - at);
    padded.set(data);
    return padded;
  };
  return {
    granularity: cs,
    write: compress
      ? (data, at) => image.writeCompressed(wholeClusters(data, at), at)
      : (data, at) => image.write(data, at),
    finish: () => image.flush(),
    [Symbol.asyncDispose]: () => image.close(),
  };
}
