import assert from "node:assert/strict";
import { generateWorkload } from "./workload.ts";
import { parseWorkload } from "./workload_file.ts";
import { fillPattern, GARBAGE, identifySector, patternSector } from "./workload_pattern.ts";
import { QcowError } from "../core/errors.ts";

Deno.test("generateWorkload() is reproducible and keeps requests inside the disk", () => {
  const a = generateWorkload({ seed: 42, ops: 300, image: { size: 8 << 20, clusterSize: 4096 } });
  assert.deepEqual(
    a,
    generateWorkload({ seed: 42, ops: 300, image: { size: 8 << 20, clusterSize: 4096 } }),
  );
  assert.notDeepEqual(
    a.ops,
    generateWorkload({ seed: 43, ops: 300, image: { size: 8 << 20 } }).ops,
  );
  assert.equal(a.ops.length, 300);
  let size = a.image.size;
  const kinds = new Set<string>();
  for (const op of a.ops) {
    kinds.add(op.op);
    if (op.op === "resize") {
      assert.ok(op.size > size);
      size = op.size;
    } else if ("offset" in op) {
      assert.ok(op.offset >= 0 && op.offset + op.length <= size, JSON.stringify(op));
      assert.equal(op.offset % 512, 0);
    }
    if (op.op === "discard" || op.op === "write_compressed") assert.equal(op.offset % 4096, 0);
  }
  assert.deepEqual(
    [...kinds].sort(),
    ["discard", "flush", "resize", "write", "write_compressed", "write_zeroes"],
  );
  // A generated workload is a valid workload file.
  assert.deepEqual(parseWorkload(JSON.stringify(a)), a);
});

Deno.test("parseWorkload() names what is wrong with a bad file", () => {
  const image = { format: "qcow2", size: 1048576 };
  const cases: [unknown, RegExp][] = [
    ["{", /not JSON/],
    [{ version: 2, image, ops: [] }, /version/],
    [
      { version: 1, image: { ...image, size: 1000 }, ops: [] },
      /image\.size: must be a multiple of 512/,
    ],
    [{ version: 1, image, ops: [{ op: "scribble" }] }, /ops\.0/],
    [
      { version: 1, image, ops: [{ op: "write", offset: 1048064, length: 1024 }] },
      /ops\.0: write .* ends past the disk/,
    ],
    [{ version: 1, image, ops: [{ op: "resize", size: 512 }] }, /only growing/],
    [{ version: 1, image, ops: [{ op: "flush", extra: 1 }] }, /ops\.0/],
    [
      { version: 1, image: { ...image, backingSize: 2097152 }, ops: [] },
      /backing file may not be larger/,
    ],
  ];
  for (const [input, message] of cases) {
    assert.throws(
      () => parseWorkload(typeof input === "string" ? input : JSON.stringify(input)),
      (error: unknown) =>
        error instanceof QcowError && error.code === "INVALID_ARGUMENT" &&
        message.test(error.message),
      String(message),
    );
  }
});

Deno.test("identifySector() tells zeros, patterns and anything else apart", () => {
  const data = new Uint8Array(2048);
  fillPattern(data.subarray(512), 77, 1000);
  assert.equal(identifySector(data, 0), 0);
  assert.equal(identifySector(data, 512), 77);
  assert.equal(patternSector(data, 1024), 1001);
  data[1024 + 300]! ^= 1;
  assert.equal(identifySector(data, 1024), GARBAGE);
  data[5] = 1;
  assert.equal(identifySector(data, 0), GARBAGE);
});

Deno.test("generateWorkload() with snapshots: valid names, sizes that QEMU accepts", () => {
  for (const compat of ["1.1", "0.10"] as const) {
    const w = generateWorkload({
      seed: 6,
      ops: 400,
      image: { size: 4 << 20, clusterSize: 4096, compat },
      snapshots: true,
    });
    const kinds = new Set(w.ops.map((op) => op.op));
    for (const kind of ["snapshot_create", "snapshot_apply", "snapshot_delete"]) {
      assert.ok(kinds.has(kind as never), `${compat}: no ${kind}`);
    }
    // parseWorkload checks that every apply and delete names a live snapshot, and sizes.
    assert.deepEqual(parseWorkload(JSON.stringify(w)), w);
  }
  // Without the option, and for qcow, there are none.
  const plain = generateWorkload({ seed: 6, ops: 400, image: { size: 4 << 20 } });
  assert.ok(plain.ops.every((op) => !op.op.startsWith("snapshot_")));
  const qcow = generateWorkload({
    seed: 6,
    ops: 400,
    image: { format: "qcow", size: 4 << 20 },
    snapshots: true,
  });
  assert.ok(qcow.ops.every((op) => !op.op.startsWith("snapshot_") && op.op !== "resize"));
  for (const op of qcow.ops) {
    if (op.op === "write_compressed") assert.equal(op.offset % 4096, 0);
  }
});

Deno.test("parseWorkload() refuses snapshot requests that cannot run", () => {
  const image = { format: "qcow2", size: 1048576 };
  const bad = (ops: unknown[], format = "qcow2"): void => {
    assert.throws(
      () => parseWorkload({ version: 1, image: { ...image, format }, ops }),
      (e) => e instanceof QcowError && e.code === "INVALID_ARGUMENT",
    );
  };
  bad([{ op: "snapshot_apply", name: "x" }]);
  bad([{ op: "snapshot_create", name: "x" }, { op: "snapshot_create", name: "x" }]);
  bad([{ op: "snapshot_create", name: "x" }, { op: "snapshot_delete", name: "x" }, {
    op: "snapshot_delete",
    name: "x",
  }]);
  bad([{ op: "snapshot_create", name: "" }]);
  bad([{ op: "snapshot_create", name: "x" }], "qcow");
  bad([{ op: "resize", size: 2097152 }], "qcow");
  // A snapshot taken before a resize brings its size back when applied.
  const ok = parseWorkload({
    version: 1,
    image,
    ops: [
      { op: "snapshot_create", name: "x" },
      { op: "resize", size: 2097152 },
      { op: "snapshot_apply", name: "x" },
    ],
  });
  assert.equal(ok.ops.length, 3);
  bad([
    { op: "snapshot_create", name: "x" },
    { op: "resize", size: 2097152 },
    { op: "snapshot_apply", name: "x" },
    { op: "write", offset: 1048576, length: 512 },
  ]);
});
