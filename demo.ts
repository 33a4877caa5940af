/**
 * The demo behind `deno task demo`: creates a qcow2 image in memory, writes to it the ways a guest
 * can (data, compressed clusters, zeroes, discards), checks it the way `qemu-img check` does, and
 * shows what qcowlab makes of it. Needs no files and no qemu-img.
 *
 * @module
 */

import { MemoryDevice } from "./core/memory_device.ts";
import { formatSize } from "./core/format_size.ts";
import { imageStream } from "./drivers/image_stream.ts";
import { mapImage } from "./drivers/map_image.ts";
import { openImage } from "./drivers/open_image.ts";
import { createQcow2 } from "./drivers/qcow2/create.ts";
import { checkQcow2, formatCheckReport } from "./drivers/qcow2/check.ts";

const KiB = 1024;
const MiB = 1024 * KiB;

async function demo(): Promise<void> {
  const device = new MemoryDevice({ name: "demo.qcow2" });
  await createQcow2(device, { size: 64 * MiB, clusterSize: 64 * KiB, lazyRefcounts: true });

  const image = await openImage(device, { readOnly: false });
  const text = new TextEncoder().encode("qcowlab compressed cluster. ".repeat(5000));
  await image.write(new Uint8Array(100 * KiB).map((_, i) => (i * 31) & 0xff), 4 * KiB);
  await image.writeCompressed(text.subarray(0, 128 * KiB), 1 * MiB);
  await image.writeZeroes(2 * MiB, 256 * KiB);
  await image.write(new Uint8Array(64 * KiB).fill(0xee), 3 * MiB);
  await image.discard(3 * MiB, 64 * KiB);
  await image.flush();
  const dirty = image.info()["dirty-flag"];
  await image.close();

  await using reader = await openImage(device);
  const info = reader.info();
  console.log(
    `Created ${info.filename} in memory: qcow2 v3 with lazy refcounts, ` +
      `${formatSize(info["virtual-size"])} virtual, ${formatSize(device.size)} on its device`,
  );
  console.log(`dirty while open: ${dirty}; after a clean close: ${info["dirty-flag"]}\n`);

  console.log("map (like qemu-img map --output json):");
  for (const { filename: _, ...entry } of await mapImage(reader)) {
    console.log(" ", JSON.stringify(entry));
  }

  const sample = new Uint8Array(8);
  await reader.read(sample, 4 * KiB + 100);
  console.log(`\nread 8 bytes at 0x1064:    ${[...sample].join(" ")}`);
  await reader.read(sample, 1 * MiB);
  console.log(
    `read 8 bytes at 0x100000:  ${JSON.stringify(new TextDecoder().decode(sample))} (compressed)`,
  );
  await reader.read(sample, 3 * MiB);
  console.log(`read 8 bytes at 0x300000:  ${[...sample].join(" ")} (discarded)`);

  const bytes = await new Response(imageStream(reader)).arrayBuffer();
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  const hex = [...digest].map((b) => b.toString(16).padStart(2, "0")).join("");
  console.log(`sha256 of the virtual disk: ${hex}\n`);

  console.log("check (like qemu-img check):");
  console.log(formatCheckReport(await checkQcow2(device)).trimEnd());
}

if (import.meta.main) await demo();
