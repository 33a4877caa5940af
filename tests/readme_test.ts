import assert from "node:assert/strict";

Deno.test("the README's library example runs", async () => {
  const readme = await Deno.readTextFile(new URL("../README.md", import.meta.url));
  const blocks = [...readme.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]!);
  assert.ok(blocks.length > 0, "the README has a TypeScript example");
  const dir = new URL("..", import.meta.url).pathname;
  const script = await Deno.makeTempFile({ dir, prefix: ".readme_example_", suffix: ".ts" });
  try {
    await Deno.writeTextFile(script, blocks.join("\n"));
    const output = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", script],
      cwd: dir,
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(output.code, 0, new TextDecoder().decode(output.stderr));
    assert.match(new TextDecoder().decode(output.stdout), /^raw 1048576 1048576$/m);
  } finally {
    await Deno.remove(script);
  }
});
