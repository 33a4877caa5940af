import assert from "node:assert/strict";
import { isQcowError } from "../core/errors.ts";
import { loadScenario, parseScenario } from "./scenario.ts";

function rejects(input: unknown, pattern: RegExp): void {
  assert.throws(
    () => parseScenario(input as string),
    (e) => isQcowError(e, "INVALID_SCENARIO") && pattern.test(e.message),
    String(pattern),
  );
}

Deno.test("parseScenario() accepts every rule kind", () => {
  const scenario = parseScenario({
    description: "all kinds",
    rules: [
      { kind: "io-error", io: ["read", "write"], nth: 2, offset: 0, length: 512, once: true },
      { kind: "disk-full", afterBytes: 1 << 20 },
      { kind: "inject-error", event: "cow_write", state: 2, errno: "ENOSPC", torn: 1 },
      { kind: "set-state", event: "l1_update", newState: 2 },
      { kind: "latency", ms: 5, io: ["flush"] },
    ],
    workload: ["write 0 64k", "flush"],
  });
  assert.deepEqual(scenario.rules.map((r) => r.kind), [
    "io-error",
    "disk-full",
    "inject-error",
    "set-state",
    "latency",
  ]);
  assert.equal(scenario.workload?.length, 2);
});

Deno.test("parseScenario() names the bad field", () => {
  rejects("{", /not JSON/);
  rejects("[]", /\(top level\)/);
  rejects({ rules: [{ kind: "explode" }] }, /rules\.0\.kind/);
  rejects({ rules: [{ kind: "inject-error", event: "nope" }] }, /rules\.0\.event/);
  rejects(
    { rules: [{ kind: "io-error" }, { kind: "io-error", errno: "EPERM" }] },
    /rules\.1\.errno/,
  );
  rejects({ rules: [{ kind: "disk-full" }] }, /rules\.0\.afterBytes/);
  rejects({ rules: [{ kind: "io-error", colour: "red" }] }, /rules\.0/);
  rejects({ rules: [], workload: [""] }, /workload\.0/);
  rejects({ rules: [], extra: 1 }, /extra|top level/);
});

Deno.test("loadScenario() reports a missing file and prefixes errors with the path", async () => {
  await assert.rejects(
    loadScenario("/nonexistent/scenario.json"),
    (e) => isQcowError(e, "NOT_FOUND"),
  );
  const path = await Deno.makeTempFile({ suffix: ".json" });
  try {
    await Deno.writeTextFile(path, '{ "rules": [{ "kind": "latency", "ms": -1 }] }');
    await assert.rejects(
      loadScenario(path),
      (e) =>
        isQcowError(e, "INVALID_SCENARIO") && e.message.startsWith(path) && /ms/.test(e.message),
    );
  } finally {
    await Deno.remove(path);
  }
});
