/**
 * The demo behind `deno task demo`: builds a small qcow2 image in memory, byte by byte, then shows
 * what qcowlab makes of it (info, map, reads, a streamed digest). Needs no files and no qemu-img.
 *
 * @module
 */

import { deflateSync } from "fflate";
import { writeU32, writeU64 } from "./core/bytes.ts";
import { MemoryDevice } from "./core/memory_device.ts";
import { formatSize } from "./core/format_size.ts";
import { imageStream } from "./drivers/image_stream.ts";
import { mapImage } from "./drivers/map_image.ts";
import { openImage } from "./drivers/open_image.ts";

const CLUSTER = 64 * 1024;
const SIZE = 4 * 1024 * 1024;

/** Lays out a version 3 image: header, refcount table and block, L1, L2, two data clusters. */
function buildImage(): Uint8Array {
  const image = new Uint8Array(7 * CLUSTER);
  const h = image;
  writeU32(h, 0, 0x514649fb); // magic
  writeU32(h, 4, 3); // version
  writeU32(h, 20, 16); // cluster_bits: 64 KiB
  writeU64(h, 24, SIZE);
  writeU32(h, 36, 1); // l1_size
  writeU64(h, 40, 3 * CLUSTER); // l1_table_offset
  writeU64(h, 48, 1 * CLUSTER); // refcount_table_offset
  writeU32(h, 56, 1); // refcount_table_clusters
  writeU32(h, 96, 4); // refcount_order: 16-bit refcounts
  writeU32(h, 100, 112); // header_length
  // Refcount table -> block at cluster 2; block: clusters 0..6 are in use once.
  writeU64(image, CLUSTER, 2 * CLUSTER);
  for (let c = 0; c < 7; c++) image[2 * CLUSTER + c * 2 + 1] = 1;
  // L1 -> L2 at cluster 4 (COPIED).
  writeU32(image, 3 * CLUSTER, 0x80000000);
  writeU32(image, 3 * CLUSTER + 4, 4 * CLUSTER);
  const l2 = 4 * CLUSTER;
  // Guest cluster 0: data at host cluster 5, filled with a pattern.
  writeU32(image, l2, 0x80000000);
  writeU32(image, l2 + 4, 5 * CLUSTER);
  for (let i = 0; i < CLUSTER; i++) image[5 * CLUSTER + i] = (i * 31) & 0xff;
  // Guest cluster 2: reads as zeros (v3 zero flag, no host cluster).
  writeU32(image, l2 + 2 * 8 + 4, 1);
  // Guest cluster 5: compressed, stored at host cluster 6.
  const text = new TextEncoder().encode("qcowlab compressed cluster. ".repeat(2341)).subarray(
    0,
    CLUSTER,
  );
  const packed = deflateSync(text, { level: 9 });
  image.set(packed, 6 * CLUSTER);
  const sectors = Math.ceil(packed.length / 512) - 1;
  const shift = 70 - 16 - 32; // where the sector count starts in the high word
  writeU32(image, l2 + 5 * 8, 0x40000000 | (sectors << shift));
  writeU32(image, l2 + 5 * 8 + 4, 6 * CLUSTER);
  return image;
}

async function demo(): Promise<void> {
  const device = MemoryDevice.from(buildImage(), { name: "demo.qcow2" });
  await using image = await openImage(device);
  const info = image.info();
  console.log(
    `Built ${info.filename} in memory: ${info.format} v3, ${
      formatSize(info["virtual-size"])
    } virtual, ${formatSize(device.size)} on its device, ${info["cluster-size"]}-byte clusters\n`,
  );

  console.log("map (like qemu-img map --output json):");
  for (const { filename: _, ...entry } of await mapImage(image)) {
    console.log(" ", JSON.stringify(entry));
  }

  const sample = new Uint8Array(8);
  await image.read(sample, 100);
  console.log(`\nread 8 bytes at 100:           ${[...sample].join(" ")}`);
  await image.read(sample, 5 * CLUSTER);
  console.log(
    `read 8 bytes at 0x50000:       ${
      JSON.stringify(new TextDecoder().decode(sample))
    } (compressed cluster)`,
  );
  await image.read(sample, 2 * CLUSTER);
  console.log(`read 8 bytes at 0x20000:       ${[...sample].join(" ")} (zero cluster)`);

  const digest = await crypto.subtle.digest(
    "SHA-256",
    await new Response(imageStream(image)).arrayBuffer(),
  );
  const hex = [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
  console.log(`sha256 of the virtual disk:    ${hex}`);
}

if (import.meta.main) await demo();
