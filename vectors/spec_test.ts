import { equal, throws } from "node:assert/strict";
import { QcowError } from "../core/errors.ts";
import { parseVectorSpec } from "./spec.ts";

const layer = { name: "disk.qcow2", format: "qcow2", create: { size: 65536 }, steps: [] };

Deno.test("parseVectorSpec() accepts a declaration and keeps it", () => {
  const spec = parseVectorSpec({
    id: "x",
    description: "y",
    tags: [],
    layers: [{ ...layer, steps: [{ op: "write", offset: 0, length: 512, pattern: 7 }] }],
    state: { kind: "damaged", edits: [{ edit: "truncate", length: 100 }] },
  });
  equal(spec.layers[0]!.steps.length, 1);
});

Deno.test("parseVectorSpec() refuses bad declarations with INVALID_ARGUMENT", () => {
  const bad = [
    { id: "Bad Id", description: "d", tags: [], layers: [layer] },
    { id: "x", description: "d", tags: [], layers: [] },
    { id: "x", description: "d", tags: [], layers: [{ ...layer, format: "raw" }] },
    { id: "x", description: "d", tags: [], layers: [layer, layer] },
    { id: "x", description: "d", tags: [], layers: [{ ...layer, steps: [{ op: "fly" }] }] },
    { id: "x", description: "d", tags: [], layers: [layer], extra: 1 },
  ];
  for (const value of bad) {
    throws(
      () => parseVectorSpec(value),
      (e) => e instanceof QcowError && e.code === "INVALID_ARGUMENT",
    );
  }
});
