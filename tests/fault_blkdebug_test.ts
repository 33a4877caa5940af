import assert from "node:assert/strict";
import { MemoryDevice } from "../core/memory_device.ts";
import { isQcowError } from "../core/errors.ts";
import type { DriverEvent } from "../core/driver_event.ts";
import { openImage } from "../drivers/open_image.ts";
import { checkQcow2 } from "../drivers/qcow2/check.ts";
import { FaultyDevice } from "../emulator/faulty_device.ts";
import { HAVE_QEMU, makeTempDir, qemuImg, runTool } from "./_qemu.ts";

/** Events at which QEMU's blkdebug and qcowlab's FaultyDevice both fail a first allocating write. */
const EVENTS: DriverEvent[] = [
  "l1_update",
  "l2_alloc_write",
  "l2_update",
  "write_aio",
  "cluster_alloc",
];

Deno.test({
  name: "an error injected at an allocation event fails the write as with QEMU's blkdebug",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    const base = `${dir.path}/base.qcow2`;
    await qemuImg("create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", base, "64M");
    const created = await Deno.readFile(base);
    for (const event of EVENTS) {
      // QEMU: qemu-io over blkdebug with one inject-error rule.
      const path = `${dir.path}/${event}.qcow2`;
      await Deno.writeFile(path, created);
      const rules = `${dir.path}/${event}.conf`;
      await Deno.writeTextFile(rules, `[inject-error]\nevent = "${event}"\nonce = "on"\n`);
      const qemu = await runTool("qemu-io", [
        "-c",
        "write -P 0xab 0 64k",
        `blkdebug:${rules}:${path}`,
      ]);
      const qemuFailed = /write failed: Input\/output error/.test(qemu.stdout + qemu.stderr);
      const qemuCheck = JSON.parse(
        (await runTool("qemu-img", ["check", "--output", "json", path])).stdout,
      );

      // qcowlab: the same image, the same rule.
      const memory = MemoryDevice.from(created, { name: "base.qcow2" });
      const faulty = new FaultyDevice(memory, {
        rules: [{ kind: "inject-error", event, once: true }],
      });
      let oursFailed = false;
      {
        await using image = await openImage(faulty, { readOnly: false });
        try {
          await image.write(new Uint8Array(65536).fill(0xab), 0);
        } catch (error) {
          if (!isQcowError(error, "IO")) throw error;
          oursFailed = true;
        }
      }
      const ours = await checkQcow2(MemoryDevice.from(memory.toBytes()));

      assert.equal(qemuFailed, true, `${event}: qemu-io ${qemu.stdout}${qemu.stderr}`);
      assert.equal(oursFailed, qemuFailed, `${event}: the write should fail as in QEMU`);
      assert.equal(qemuCheck.corruptions ?? 0, 0, event);
      assert.equal(ours.corruptions ?? 0, 0, event);
      assert.equal(ours["check-errors"], 0, event);
      // QEMU frees the clusters of a failed allocation in memory; qcowlab may leak one or two.
      assert.ok((ours.leaks ?? 0) <= 2, `${event}: ${ours.leaks} leaks`);
    }
  },
});
