import assert from "node:assert/strict";
import { isQcowError } from "../core/errors.ts";
import { MemoryDevice } from "../core/memory_device.ts";
import { mapImage } from "../drivers/map_image.ts";
import { openImage } from "../drivers/open_image.ts";
import { HAVE_QEMU, makeTempDir, qemuContents, qemuImg, qemuIo, qemuMap } from "./_qemu.ts";

const DEPTH = 20;

Deno.test({
  name: `a ${DEPTH}-deep backing chain reads as qemu-img reads it, layer by layer`,
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    // Layer i writes its own pattern into cluster i and half of cluster i + 1, so every layer
    // shows through somewhere and most clusters are decided by a layer deep down the chain.
    let previous = "";
    for (let i = 0; i < DEPTH; i++) {
      const name = `layer${i}.qcow2`;
      const args = ["create", "-q", "-f", "qcow2", "-o", "cluster_size=4096"];
      if (previous) args.push("-b", previous, "-F", "qcow2");
      args.push(`${dir.path}/${name}`, `${(DEPTH + 2) * 4}k`);
      await qemuImg(...args);
      await qemuIo(`${dir.path}/${name}`, [
        `write -P ${i + 1} ${i * 4096} 4096`,
        `write -P ${i + 101} ${(i + 1) * 4096 + 1024} 2048`,
      ]);
      previous = name;
    }
    const top = `${dir.path}/${previous}`;
    await using image = await openImage(top);
    let depth = 0;
    for (let layer = image.backing; layer; layer = layer.backing) depth++;
    assert.equal(depth, DEPTH - 1);

    const ours = new Uint8Array(image.size);
    await image.read(ours, 0);
    assert.deepEqual(ours, await qemuContents(top, `${dir.path}/out.raw`));
    const map = (await mapImage(image)).map(({ filename: _, ...entry }) => entry);
    assert.deepEqual(map, await qemuMap(top));
    assert.ok(map.some((e) => e.depth === DEPTH - 1), "the bottom layer shows through");
  },
});

Deno.test("a backing chain that loops back on itself is refused with BACKING_LOOP", async () => {
  // Two in-memory images naming each other: a -> b -> a.
  const a = await qcow2Naming("b");
  const b = await qcow2Naming("a");
  const devices: Record<string, MemoryDevice> = {
    a: MemoryDevice.from(a, { name: "a" }),
    b: MemoryDevice.from(b, { name: "b" }),
  };
  await assert.rejects(
    openImage(devices.a!, { resolveBacking: (name) => devices[name]! }),
    (error) => isQcowError(error, "BACKING_LOOP") && /loops/.test(error.message),
  );
});

Deno.test("a chain deeper than maxChainDepth is refused with BACKING_LOOP", async () => {
  const devices = new Map<string, MemoryDevice>();
  for (let i = 0; i < 6; i++) {
    devices.set(`l${i}`, MemoryDevice.from(await qcow2Naming(`l${i + 1}`), { name: `l${i}` }));
  }
  devices.set("l6", new MemoryDevice({ size: 1 << 20, name: "l6" }));
  const resolveBacking = (name: string): MemoryDevice => devices.get(name)!;
  await using ok = await openImage(devices.get("l0")!, { resolveBacking, maxChainDepth: 6 });
  assert.equal(ok.size, 1 << 20);
  await assert.rejects(
    openImage(devices.get("l0")!, { resolveBacking, maxChainDepth: 5 }),
    (error) => isQcowError(error, "BACKING_LOOP") && /deeper than 5/.test(error.message),
  );
});

/** A minimal valid 1 MiB qcow2 v2 image (64 KiB clusters) whose backing file is `name`. */
function qcow2Naming(name: string): Promise<Uint8Array> {
  const cluster = 65536;
  const bytes = new Uint8Array(4 * cluster);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, 0x514649fb);
  view.setUint32(4, 2);
  const nameBytes = new TextEncoder().encode(name);
  view.setBigUint64(8, 72n);
  view.setUint32(16, nameBytes.length);
  bytes.set(nameBytes, 72);
  view.setUint32(20, 16);
  view.setBigUint64(24, BigInt(1 << 20));
  view.setUint32(36, 1);
  view.setBigUint64(40, BigInt(3 * cluster));
  view.setBigUint64(48, BigInt(cluster));
  view.setUint32(56, 1);
  view.setBigUint64(cluster, BigInt(2 * cluster));
  for (let c = 0; c < 4; c++) view.setUint16(2 * cluster + 2 * c, 1);
  return Promise.resolve(bytes);
}
