/**
 * The demo behind `deno task demo`: crash exploration of a qcow2 image in memory. A seeded random
 * workload (writes, zero writes, discards, compressed writes, resizes, flushes) runs on a 64 MiB
 * image while every write and flush is recorded; then the crash states a disk could be left in
 * (every prefix of the log, subsets of the writes since the last flush, torn writes) are rebuilt,
 * checked, opened (a dirty image is repaired), read back and checked again, against the crash
 * invariants. It runs once with lazy refcounts off and once with them on, then with snapshot
 * create/apply/delete requests in the workload, then on a qcow (version 1) image, and prints a
 * summary table for each, with a shrunk reproducer for the first violation found. Needs no files
 * and no qemu-img, and takes a few seconds (under 30 on a busy 2-core machine).
 *
 * @module
 */

import { Progress } from "./core/progress.ts";
import { runCampaign } from "./emulator/explore_campaign.ts";
import type { WorkloadImage } from "./emulator/workload.ts";
import { formatCampaign } from "./cli/crash.ts";

const MiB = 1024 * 1024;

async function explore(
  title: string,
  image: WorkloadImage,
  states: number,
  snapshots = false,
): Promise<void> {
  console.log(`\n== ${title}`);
  const progress = new Progress(1, { label: "crash states" });
  const result = await runCampaign({
    image,
    ops: 60,
    seed: 1,
    states,
    torn: true,
    subsets: true,
    snapshots,
    onProgress: (done, total) => progress.update(total === 0 ? 1 : done / total),
  });
  progress.done();
  console.log(formatCampaign(result, image).trimEnd());
  const reproducer = result.reproducer;
  if (reproducer) {
    console.log(
      `shrunk to ${reproducer.workload.ops.length} request(s), crash state ${reproducer.state}: ` +
        JSON.stringify(reproducer.workload.ops),
    );
  }
}

async function demo(): Promise<void> {
  console.log(
    "qcowlab crash exploration: a seeded workload on an in-memory qcow2 image, crashed at every" +
      "\nwrite, with the disk cache persisting any subset of the unflushed writes, some torn.",
  );
  await explore("lazy refcounts off", { format: "qcow2", size: 64 * MiB }, 2500);
  await explore(
    "lazy refcounts on",
    { format: "qcow2", size: 64 * MiB, lazyRefcounts: true },
    600,
  );
  await explore(
    "snapshot create/apply/delete in the workload, lazy refcounts off",
    { format: "qcow2", size: 64 * MiB },
    800,
    true,
  );
  await explore("qcow (version 1): no refcounts, a crash may only leak space", {
    format: "qcow",
    size: 64 * MiB,
  }, 800);
}

if (import.meta.main) await demo();
