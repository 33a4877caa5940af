import assert from "node:assert/strict";

Deno.test("the README's library example runs", async () => {
  const readme = await Deno.readTextFile(new URL("../README.md", import.meta.url));
  const blocks = [...readme.matchAll(/```ts\n([\s\S]*?)```/g)].map((m) => m[1]!);
  assert.ok(blocks.length > 0, "the README has a TypeScript example");
  const dir = new URL("..", import.meta.url).pathname;
  const script = await Deno.makeTempFile({ dir, prefix: ".readme_example_", suffix: ".ts" });
  try {
    // Each block stands alone (its own imports); joined, repeated imports would clash.
    const body = blocks.map((block) => `{\n${block.replace(/^import .*$/gm, "")}\n}`).join("\n");
    const names = new Map<string, Set<string>>();
    for (const block of blocks) {
      for (const [, list, from] of block.matchAll(/^import \{([^}]*)\} from "([^"]+)";$/gm)) {
        const set = names.get(from!) ?? new Set();
        for (const name of list!.split(",")) if (name.trim()) set.add(name.trim());
        names.set(from!, set);
      }
    }
    const imports = [...names].map(([from, set]) =>
      `import { ${[...set].join(", ")} } from "${from}";`
    );
    await Deno.writeTextFile(script, [...imports, body].join("\n"));
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
