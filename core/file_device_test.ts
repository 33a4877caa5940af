import assert from "node:assert/strict";
import { openFilesUnder } from "../tests/_support.ts";
import { FileDevice } from "./file_device.ts";

interface TempDir extends AsyncDisposable {
  path: string;
  file(name: string, contents?: Uint8Array): Promise<string>;
}

/** A temporary directory removed with everything in it when disposed. */
async function tempDir(): Promise<TempDir> {
  const path = await Deno.makeTempDir({ prefix: "qcowlab_file_device_" });
  return {
    path,
    async file(name: string, contents?: Uint8Array): Promise<string> {
      const file = `${path}/${name}`;
      if (contents) await Deno.writeFile(file, contents);
      return file;
    },
    async [Symbol.asyncDispose](): Promise<void> {
      await Deno.remove(path, { recursive: true });
    },
  };
}

function pattern(length: number, seed = 1): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = (i * 7 + seed) % 253 + 1;
  return out;
}

async function readAt(device: FileDevice, offset: number, length: number): Promise<Uint8Array> {
  const out = new Uint8Array(length).fill(0xee);
  await device.read(out, offset);
  return out;
}

Deno.test("FileDevice reads and writes at the positions asked", async () => {
  await using dir = await tempDir();
  const path = await dir.file("data.bin", pattern(10_000));
  await using device = FileDevice.open(path, { readOnly: false });
  assert.equal(device.size, 10_000);
  assert.equal(device.name, path);
  assert.equal(device.readOnly, false);
  assert.deepEqual(await readAt(device, 1234, 100), pattern(10_000).subarray(1234, 1334));
  await device.write(new Uint8Array([0, 0, 0]), 5000);
  await device.write(pattern(10, 99).subarray(2, 6), 0);
  const expected = pattern(10_000);
  expected.fill(0, 5000, 5003);
  expected.set(pattern(10, 99).subarray(2, 6), 0);
  assert.deepEqual(await readAt(device, 0, 10_000), expected);
  assert.equal(device.size, 10_000);
  await device.flush();
  assert.deepEqual(await Deno.readFile(path), expected);
});

Deno.test("FileDevice reads into a subarray without touching the rest of the buffer", async () => {
  await using dir = await tempDir();
  const path = await dir.file("data.bin", pattern(100));
  await using device = FileDevice.open(path);
  const buffer = new Uint8Array(30);
  await device.read(buffer.subarray(10, 20), 50);
  assert.deepEqual(buffer.subarray(10, 20), pattern(100).subarray(50, 60));
  assert.deepEqual(buffer.subarray(0, 10), new Uint8Array(10));
  assert.deepEqual(buffer.subarray(20), new Uint8Array(10));
});

Deno.test("FileDevice grows the file when a write ends past its size", async () => {
  await using dir = await tempDir();
  const path = await dir.file("grow.bin", new Uint8Array([1, 2, 3]));
  await using device = FileDevice.open(path, { readOnly: false });
  await device.write(new Uint8Array([9, 9]), 100);
  assert.equal(device.size, 102);
  assert.equal((await Deno.stat(path)).size, 102);
  const expected = new Uint8Array(102);
  expected.set([1, 2, 3]);
  expected.set([9, 9], 100);
  assert.deepEqual(await readAt(device, 0, 102), expected);
});

Deno.test("FileDevice leaves its size alone on an empty write past the end", async () => {
  await using dir = await tempDir();
  const path = await dir.file("empty_write.bin", new Uint8Array(10));
  await using device = FileDevice.open(path, { readOnly: false });
  await device.write(new Uint8Array(0), 4096);
  assert.equal(device.size, 10);
  assert.equal((await Deno.stat(path)).size, 10);
  await assert.rejects(device.read(new Uint8Array(1), 10), { code: "OUT_OF_RANGE" });
});

Deno.test("FileDevice refuses writes that would end past 2^53 - 1 with TOO_LARGE", async () => {
  await using dir = await tempDir();
  const path = await dir.file("huge.bin", new Uint8Array(1));
  await using device = FileDevice.open(path, { readOnly: false });
  await assert.rejects(device.write(new Uint8Array(2), Number.MAX_SAFE_INTEGER - 1), {
    name: "QcowError",
    code: "TOO_LARGE",
  });
  assert.equal(device.size, 1);
});

Deno.test("FileDevice rejects reads past the end with OUT_OF_RANGE", async () => {
  await using dir = await tempDir();
  const path = await dir.file("short.bin", pattern(512));
  await using device = FileDevice.open(path);
  const outOfRange = { name: "QcowError", code: "OUT_OF_RANGE" };
  await assert.rejects(device.read(new Uint8Array(1), 512), outOfRange);
  await assert.rejects(device.read(new Uint8Array(100), 500), outOfRange);
  await assert.rejects(device.read(new Uint8Array(1), -1), { code: "INVALID_ARGUMENT" });
  await device.read(new Uint8Array(0), 512);
  assert.deepEqual(await readAt(device, 500, 12), pattern(512).subarray(500));
});

Deno.test("FileDevice reads bytes cut off by someone else's truncation as zeros", async () => {
  await using dir = await tempDir();
  const path = await dir.file("shrinks.bin", pattern(4096));
  await using device = FileDevice.open(path);
  await Deno.truncate(path, 1000);
  const expected = new Uint8Array(200);
  expected.set(pattern(4096).subarray(900, 1000));
  assert.deepEqual(await readAt(device, 900, 200), expected);
});

Deno.test("FileDevice.open() reports a missing file as NOT_FOUND", async () => {
  await using dir = await tempDir();
  const path = `${dir.path}/missing.qcow2`;
  assert.throws(() => FileDevice.open(path), (error: unknown) => {
    assert.equal((error as { name?: string }).name, "QcowError");
    assert.equal((error as { code?: string }).code, "NOT_FOUND");
    assert.match((error as Error).message, /missing\.qcow2/);
    return true;
  });
  assert.throws(() => FileDevice.open(path, { readOnly: false }), { code: "NOT_FOUND" });
});

Deno.test("FileDevice.open() refuses a directory with IO and closes it again", async () => {
  await using dir = await tempDir();
  const sub = `${dir.path}/sub`;
  await Deno.mkdir(sub);
  assert.throws(() => FileDevice.open(sub), { name: "QcowError", code: "IO" });
  assert.throws(() => FileDevice.open(sub, { readOnly: false }), { code: "IO" });
  assert.deepEqual(openFilesUnder(dir.path), []);
});

Deno.test("FileDevice opens read-only by default and refuses writes and truncation", async () => {
  await using dir = await tempDir();
  const path = await dir.file("ro.bin", pattern(64));
  await using device = FileDevice.open(path);
  assert.equal(device.readOnly, true);
  const readOnly = { name: "QcowError", code: "READ_ONLY" };
  await assert.rejects(device.write(new Uint8Array([0]), 0), readOnly);
  await assert.rejects(device.truncate(0), readOnly);
  await device.flush();
  assert.equal(device.size, 64);
  assert.deepEqual(await Deno.readFile(path), pattern(64));
});

Deno.test("FileDevice.open() refuses create or truncate without write access", async () => {
  await using dir = await tempDir();
  const path = await dir.file("keep.bin", pattern(8));
  assert.throws(() => FileDevice.open(path, { create: true }), { code: "INVALID_ARGUMENT" });
  assert.throws(() => FileDevice.open(path, { truncate: true }), { code: "INVALID_ARGUMENT" });
  assert.throws(
    () => FileDevice.open(path, { readOnly: true, truncate: true }),
    { code: "INVALID_ARGUMENT" },
  );
  assert.deepEqual(await Deno.readFile(path), pattern(8));
});

Deno.test("FileDevice.open() creates a missing file and empties an existing one when asked", async () => {
  await using dir = await tempDir();
  const fresh = `${dir.path}/fresh.bin`;
  {
    await using device = FileDevice.open(fresh, { readOnly: false, create: true });
    assert.equal(device.size, 0);
    await device.write(new Uint8Array([1, 2]), 0);
  }
  assert.deepEqual(await Deno.readFile(fresh), new Uint8Array([1, 2]));
  {
    await using device = FileDevice.open(fresh, { readOnly: false, create: true });
    assert.equal(device.size, 2);
  }
  {
    await using device = FileDevice.open(fresh, { readOnly: false, truncate: true });
    assert.equal(device.size, 0);
  }
  assert.equal((await Deno.stat(fresh)).size, 0);
});

Deno.test("FileDevice.truncate() shrinks the file and regrows it with zeros", async () => {
  await using dir = await tempDir();
  const path = await dir.file("trunc.bin", new Uint8Array(8192).fill(0xff));
  await using device = FileDevice.open(path, { readOnly: false });
  await device.truncate(1000);
  assert.equal(device.size, 1000);
  assert.equal((await Deno.stat(path)).size, 1000);
  await assert.rejects(device.read(new Uint8Array(1), 1000), { code: "OUT_OF_RANGE" });
  await device.truncate(3000);
  assert.equal(device.size, 3000);
  const expected = new Uint8Array(3000);
  expected.fill(0xff, 0, 1000);
  assert.deepEqual(await readAt(device, 0, 3000), expected);
  await assert.rejects(device.truncate(-1), { code: "INVALID_ARGUMENT" });
  assert.equal(device.size, 3000);
});

Deno.test("FileDevice.flush() resolves on writable and read-only devices", async () => {
  await using dir = await tempDir();
  const path = await dir.file("flush.bin", new Uint8Array(16));
  {
    await using device = FileDevice.open(path, { readOnly: false });
    await device.write(pattern(16), 0);
    await device.flush();
  }
  await using reader = FileDevice.open(path);
  await reader.flush();
  assert.deepEqual(await readAt(reader, 0, 16), pattern(16));
});

Deno.test("FileDevice closes twice harmlessly and then rejects operations with CLOSED", async () => {
  await using dir = await tempDir();
  const path = await dir.file("close.bin", pattern(32));
  const device = FileDevice.open(path, { readOnly: false });
  assert.deepEqual(openFilesUnder(dir.path), [path]);
  await device.close();
  assert.deepEqual(openFilesUnder(dir.path), []);
  await device.close();
  await device[Symbol.asyncDispose]();
  const closed = { name: "QcowError", code: "CLOSED" };
  await assert.rejects(device.read(new Uint8Array(1), 0), closed);
  await assert.rejects(device.write(new Uint8Array(1), 0), closed);
  await assert.rejects(device.truncate(0), closed);
  await assert.rejects(device.flush(), closed);
  assert.throws(() => device.allocatedBytes, closed);
  assert.deepEqual(await Deno.readFile(path), pattern(32));
});

Deno.test("FileDevice.allocatedBytes counts blocks on disk, not the apparent size", async () => {
  await using dir = await tempDir();
  const path = await dir.file("sparse.bin", new Uint8Array(0));
  await using device = FileDevice.open(path, { readOnly: false });
  await device.truncate(64 * 1024 * 1024);
  const sparse = device.allocatedBytes;
  assert.ok(sparse < 1024 * 1024, `a 64 MiB hole occupies ${sparse} bytes`);
  await device.write(pattern(1024 * 1024), 0);
  await device.flush();
  const written = device.allocatedBytes;
  assert.ok(written >= 1024 * 1024, `1 MiB of data occupies only ${written} bytes`);
  assert.ok(written < 8 * 1024 * 1024, `1 MiB of data occupies ${written} bytes`);
});

Deno.test("FileDevice write-behind starts background syncs that close and flush wait for", async () => {
  await using dir = await tempDir();
  const path = await dir.file("behind.bin", new Uint8Array(0));
  const device = FileDevice.open(path, { readOnly: false, writeBehind: 4096 });
  // Every write crosses the threshold: a sync is started while the next writes go on.
  for (let i = 0; i < 64; i++) await device.write(pattern(8192).fill(i, 0, 1), i * 8192);
  await device.flush();
  await device.write(pattern(8192), 64 * 8192);
  // Closing with a background sync in flight must neither fail nor lose the descriptor's data.
  await device.close();
  assert.deepEqual(openFilesUnder(dir.path), []);
  const bytes = await Deno.readFile(path);
  assert.equal(bytes.length, 65 * 8192);
  for (let i = 0; i < 64; i++) assert.equal(bytes[i * 8192], i);
});

Deno.test("FileDevice.open() refuses a writeBehind that is not a byte count", () => {
  for (const writeBehind of [-1, 1.5, NaN]) {
    assert.throws(() => FileDevice.open("/nonexistent", { readOnly: false, writeBehind }), {
      name: "QcowError",
      code: "INVALID_ARGUMENT",
    });
  }
});
