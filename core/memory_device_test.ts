import assert from "node:assert/strict";
import fc from "fast-check";
import { MemoryDevice } from "./memory_device.ts";

const MiB = 1024 * 1024;

function pattern(length: number, seed = 1): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = (i * 31 + seed) % 251 + 1;
  return out;
}

async function readAt(device: MemoryDevice, offset: number, length: number): Promise<Uint8Array> {
  const out = new Uint8Array(length).fill(0xee);
  await device.read(out, offset);
  return out;
}

Deno.test("MemoryDevice reads unwritten ranges as zeros", async () => {
  await using device = new MemoryDevice({ size: 200_000, chunkSize: 4096 });
  await device.write(new Uint8Array([1, 2, 3]), 5000);
  assert.deepEqual(await readAt(device, 0, 5000), new Uint8Array(5000));
  assert.deepEqual(await readAt(device, 5003, 100_000), new Uint8Array(100_000));
  assert.deepEqual(await readAt(device, 4999, 5), new Uint8Array([0, 1, 2, 3, 0]));
});

Deno.test("MemoryDevice keeps a 16 TiB device with a few MiB written sparse", async () => {
  const size = 2 ** 44;
  await using device = new MemoryDevice({ size });
  assert.equal(device.allocatedBytes, 0);
  const data = pattern(MiB);
  await device.write(data, 0);
  await device.write(data, 2 ** 43);
  await device.write(data, size - MiB);
  assert.equal(device.size, size);
  assert.equal(device.allocatedBytes, 3 * MiB);
  assert.deepEqual(await readAt(device, 2 ** 43, MiB), data);
  assert.deepEqual(await readAt(device, size - MiB, MiB), data);
  assert.deepEqual(await readAt(device, 2 ** 42, 4096), new Uint8Array(4096));
});

Deno.test("MemoryDevice allocates one chunk per chunk touched, even unaligned", async () => {
  await using device = new MemoryDevice({ chunkSize: 1024 });
  await device.write(new Uint8Array(2), 1023);
  assert.equal(device.allocatedBytes, 2048);
  await device.write(new Uint8Array(1), 1500);
  assert.equal(device.allocatedBytes, 2048);
});

Deno.test("MemoryDevice reports allocatedBytes past 2 GiB without wrapping", async () => {
  // 128 chunks of 16 MiB: the pages stay untouched but for one byte each, so little memory is used.
  const chunk = 2 ** 24;
  await using device = new MemoryDevice({ chunkSize: chunk });
  for (let i = 0; i < 128; i++) await device.write(new Uint8Array([1]), i * chunk);
  assert.equal(device.allocatedBytes, 2 ** 31);
});

Deno.test("MemoryDevice reads and writes across chunk borders", async () => {
  await using device = new MemoryDevice({ chunkSize: 512 });
  const data = pattern(2000, 7);
  await device.write(data, 300);
  assert.equal(device.size, 2300);
  assert.equal(device.allocatedBytes, 5 * 512);
  for (const [offset, length] of [[300, 2000], [511, 2], [512, 512], [400, 1500], [1023, 1025]]) {
    assert.deepEqual(
      await readAt(device, offset!, length!),
      data.subarray(offset! - 300, offset! - 300 + length!),
      `read at ${offset} for ${length}`,
    );
  }
  const whole = new Uint8Array(2300);
  whole.set(data, 300);
  assert.deepEqual(device.toBytes(), whole);
});

Deno.test("MemoryDevice grows when a write ends past its size", async () => {
  await using device = new MemoryDevice({ size: 10 });
  await device.write(new Uint8Array([9, 9]), 20);
  assert.equal(device.size, 22);
  assert.deepEqual(await readAt(device, 8, 14), new Uint8Array([...new Uint8Array(12), 9, 9]));
  await device.write(new Uint8Array([1]), 0);
  assert.equal(device.size, 22);
});

Deno.test("MemoryDevice leaves its size alone on an empty write past the end", async () => {
  await using device = new MemoryDevice({ size: 10 });
  await device.write(new Uint8Array(0), 100);
  assert.equal(device.size, 10);
  assert.equal(device.allocatedBytes, 0);
});

Deno.test("MemoryDevice refuses writes that would end past 2^53 - 1 with TOO_LARGE", async () => {
  await using device = new MemoryDevice();
  await assert.rejects(device.write(new Uint8Array(2), Number.MAX_SAFE_INTEGER - 1), {
    name: "QcowError",
    code: "TOO_LARGE",
  });
  assert.equal(device.size, 0);
  await device.write(new Uint8Array([5]), Number.MAX_SAFE_INTEGER - 1);
  assert.equal(device.size, Number.MAX_SAFE_INTEGER);
});

Deno.test("MemoryDevice rejects reads past the end with OUT_OF_RANGE", async () => {
  await using device = MemoryDevice.from(pattern(100));
  await assert.rejects(device.read(new Uint8Array(1), 100), {
    name: "QcowError",
    code: "OUT_OF_RANGE",
  });
  await assert.rejects(device.read(new Uint8Array(10), 95), {
    name: "QcowError",
    code: "OUT_OF_RANGE",
  });
  await assert.rejects(device.read(new Uint8Array(0), 101), {
    name: "QcowError",
    code: "OUT_OF_RANGE",
  });
  await device.read(new Uint8Array(0), 100);
  assert.deepEqual(await readAt(device, 90, 10), pattern(100).subarray(90));
});

Deno.test("MemoryDevice rejects negative, fractional and unsafe offsets with INVALID_ARGUMENT", async () => {
  await using device = new MemoryDevice({ size: 100 });
  for (const offset of [-1, 0.5, NaN, Infinity, 2 ** 53]) {
    await assert.rejects(device.read(new Uint8Array(1), offset), { code: "INVALID_ARGUMENT" });
    await assert.rejects(device.write(new Uint8Array(1), offset), { code: "INVALID_ARGUMENT" });
    await assert.rejects(device.truncate(offset), { code: "INVALID_ARGUMENT" });
  }
  assert.equal(device.size, 100);
});

Deno.test("MemoryDevice rejects options it cannot honour with INVALID_ARGUMENT", () => {
  for (const chunkSize of [0, 256, 1000, 4097, 2 ** 25, 1.5]) {
    assert.throws(
      () => new MemoryDevice({ chunkSize }),
      { code: "INVALID_ARGUMENT" },
      `${chunkSize}`,
    );
  }
  assert.throws(() => new MemoryDevice({ size: -1 }), { code: "INVALID_ARGUMENT" });
  assert.equal(new MemoryDevice({ chunkSize: 512 }).size, 0);
});

Deno.test("MemoryDevice refuses writes and truncation when read-only", async () => {
  await using device = new MemoryDevice({ size: 4096, readOnly: true, name: "ro" });
  assert.equal(device.readOnly, true);
  assert.equal(device.name, "ro");
  await assert.rejects(device.write(new Uint8Array([1]), 0), {
    name: "QcowError",
    code: "READ_ONLY",
  });
  await assert.rejects(device.truncate(0), { name: "QcowError", code: "READ_ONLY" });
  await assert.rejects(device.truncate(8192), { name: "QcowError", code: "READ_ONLY" });
  assert.equal(device.size, 4096);
  assert.equal(device.allocatedBytes, 0);
  assert.deepEqual(await readAt(device, 0, 4096), new Uint8Array(4096));
  await device.flush();
});

Deno.test("MemoryDevice.truncate() zeroes the tail a shrink drops when the device regrows", async () => {
  await using device = new MemoryDevice({ chunkSize: 512 });
  await device.write(new Uint8Array(2048).fill(0xff), 0);
  await device.truncate(700);
  assert.equal(device.size, 700);
  assert.equal(device.allocatedBytes, 1024);
  assert.deepEqual(device.toBytes(), new Uint8Array(700).fill(0xff));
  await device.truncate(2048);
  assert.equal(device.size, 2048);
  const expected = new Uint8Array(2048);
  expected.fill(0xff, 0, 700);
  assert.deepEqual(device.toBytes(), expected);
  await device.truncate(0);
  assert.equal(device.allocatedBytes, 0);
  await device.truncate(10);
  assert.deepEqual(device.toBytes(), new Uint8Array(10));
});

Deno.test("MemoryDevice.truncate() grows with zeros and keeps existing bytes", async () => {
  await using device = MemoryDevice.from(new Uint8Array([1, 2, 3]));
  await device.truncate(1_000_000);
  assert.equal(device.size, 1_000_000);
  assert.deepEqual(await readAt(device, 0, 5), new Uint8Array([1, 2, 3, 0, 0]));
  assert.deepEqual(await readAt(device, 999_000, 1000), new Uint8Array(1000));
});

Deno.test("MemoryDevice rejects every operation after close with CLOSED", async () => {
  const device = MemoryDevice.from(pattern(10));
  await device.close();
  await device.close();
  await device[Symbol.asyncDispose]();
  const closed = { name: "QcowError", code: "CLOSED" };
  await assert.rejects(device.read(new Uint8Array(1), 0), closed);
  await assert.rejects(device.write(new Uint8Array(1), 0), closed);
  await assert.rejects(device.truncate(0), closed);
  await assert.rejects(device.flush(), closed);
  assert.throws(() => device.toBytes(), closed);
  assert.equal(device.allocatedBytes, 0);
});

Deno.test("MemoryDevice.toBytes() returns a copy of the whole contents", async () => {
  await using device = new MemoryDevice({ size: 6, chunkSize: 512 });
  await device.write(new Uint8Array([4, 5]), 2);
  const bytes = device.toBytes();
  assert.deepEqual(bytes, new Uint8Array([0, 0, 4, 5, 0, 0]));
  bytes.fill(7);
  assert.deepEqual(device.toBytes(), new Uint8Array([0, 0, 4, 5, 0, 0]));
  assert.deepEqual(new MemoryDevice().toBytes(), new Uint8Array(0));
});

Deno.test("MemoryDevice.from() copies the bytes and applies the options", async () => {
  const source = pattern(3000);
  await using device = MemoryDevice.from(source, { name: "copy", chunkSize: 1024 });
  source.fill(0);
  assert.equal(device.size, 3000);
  assert.equal(device.name, "copy");
  assert.equal(device.readOnly, false);
  assert.equal(device.allocatedBytes, 3072);
  assert.deepEqual(device.toBytes(), pattern(3000));

  await using frozen = MemoryDevice.from(pattern(8), { readOnly: true });
  assert.equal(frozen.readOnly, true);
  assert.deepEqual(frozen.toBytes(), pattern(8));
  await assert.rejects(frozen.write(new Uint8Array(1), 0), { code: "READ_ONLY" });
});

Deno.test("MemoryDevice keeps no reference to the caller's buffers", async () => {
  await using device = new MemoryDevice({ chunkSize: 512 });
  const data = pattern(600);
  await device.write(data, 0);
  data.fill(0);
  const out = await readAt(device, 0, 600);
  assert.deepEqual(out, pattern(600));
  out.fill(0);
  assert.deepEqual(await readAt(device, 0, 600), pattern(600));
});

Deno.test("MemoryDevice writes from and reads into subarray views", async () => {
  await using device = new MemoryDevice({ chunkSize: 512 });
  const big = pattern(1000);
  await device.write(big.subarray(100, 700), 50);
  const target = new Uint8Array(1000);
  await device.read(target.subarray(200, 800), 50);
  assert.deepEqual(target.subarray(200, 800), big.subarray(100, 700));
  assert.deepEqual(target.subarray(0, 200), new Uint8Array(200));
  assert.deepEqual(target.subarray(800), new Uint8Array(200));
});

type Op =
  | { op: "write"; offset: number; data: Uint8Array }
  | { op: "read"; offset: number; length: number }
  | { op: "truncate"; size: number };

const opArbitrary: fc.Arbitrary<Op> = fc.oneof(
  fc.record({
    op: fc.constant("write" as const),
    offset: fc.nat(4000),
    data: fc.uint8Array({ maxLength: 1300 }),
  }),
  fc.record({ op: fc.constant("read" as const), offset: fc.nat(4500), length: fc.nat(1300) }),
  fc.record({ op: fc.constant("truncate" as const), size: fc.nat(5000) }),
);

Deno.test("MemoryDevice behaves like a plain array under random writes, reads and truncates", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.constantFrom(512, 1024, 4096),
      fc.nat(3000),
      fc.array(opArbitrary, { maxLength: 40 }),
      async (chunkSize, initialSize, ops) => {
        await using device = new MemoryDevice({ size: initialSize, chunkSize });
        let model = new Uint8Array(initialSize);
        for (const step of ops) {
          if (step.op === "write") {
            const end = step.offset + step.data.length;
            if (step.data.length > 0) {
              if (end > model.length) {
                const grown = new Uint8Array(end);
                grown.set(model);
                model = grown;
              }
              model.set(step.data, step.offset);
            }
            await device.write(step.data, step.offset);
          } else if (step.op === "read") {
            const out = new Uint8Array(step.length);
            if (step.offset + step.length > model.length) {
              await assert.rejects(device.read(out, step.offset), { code: "OUT_OF_RANGE" });
            } else {
              await device.read(out, step.offset);
              assert.deepEqual(out, model.subarray(step.offset, step.offset + step.length));
            }
          } else {
            const resized = new Uint8Array(step.size);
            resized.set(model.subarray(0, step.size));
            model = resized;
            await device.truncate(step.size);
          }
          assert.equal(device.size, model.length);
          assert.ok(device.allocatedBytes <= Math.ceil(model.length / chunkSize) * chunkSize);
        }
        assert.deepEqual(device.toBytes(), model);
      },
    ),
    { numRuns: 200 },
  );
});
