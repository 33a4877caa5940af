import { equal } from "node:assert/strict";
import { matchesGlob } from "./_glob.ts";

Deno.test("matchesGlob() matches * and ? and comma-separated alternatives", () => {
  equal(matchesGlob("qcow2-v3-cluster-64k", "qcow2-v3-*"), true);
  equal(matchesGlob("qcow2-v3-cluster-64k", "qcow2-v2-*"), false);
  equal(matchesGlob("chain-v2", "chain-v?"), true);
  equal(matchesGlob("chain-v2", "x,chain-*"), true);
  equal(matchesGlob("a.b", "a?b"), true);
  equal(matchesGlob("axb", "a.b"), false);
  equal(matchesGlob("qcow2-v3", "qcow2-v3-*"), false);
});
