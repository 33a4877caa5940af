import assert from "node:assert/strict";
import { settle } from "./_settle.ts";

Deno.test("settle() resolves after the action ran", async () => {
  let ran = false;
  const result = settle(() => {
    ran = true;
  });
  assert.equal(ran, true);
  assert.equal(await result, undefined);
});

Deno.test("settle() turns a throw into a rejection, never a synchronous throw", async () => {
  const error = new Error("closed");
  const result = settle(() => {
    throw error;
  });
  await assert.rejects(result, (e) => e === error);
});
