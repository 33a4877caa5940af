import assert from "node:assert/strict";
import { AesSectorCipher } from "./aes_sectors.ts";
import { HAVE_QEMU, makeTempDir, runTool } from "../tests/_qemu.ts";

Deno.test("AesSectorCipher round-trips sectors and depends on the sector number", () => {
  const cipher = new AesSectorCipher("pass");
  const plain = new Uint8Array(1024).map((_, i) => i * 7);
  const a = plain.slice();
  cipher.encrypt(a, 10);
  assert.notDeepEqual(a, plain);
  // Each sector is its own CBC message: the second sector of a run at 10 is sector 11 alone.
  const b = plain.slice(512);
  cipher.encrypt(b, 11);
  assert.deepEqual(a.subarray(512), b);
  const c = plain.slice(0, 512);
  cipher.encrypt(c, 11);
  assert.notDeepEqual(c, a.subarray(0, 512));
  cipher.decrypt(a, 10);
  assert.deepEqual(a, plain);
});

Deno.test("AesSectorCipher pads short passphrases with zeros and truncates long ones", () => {
  const data = new Uint8Array(512).fill(1);
  const short = data.slice();
  new AesSectorCipher("ab").encrypt(short, 0);
  const padded = data.slice();
  new AesSectorCipher(new Uint8Array([97, 98, 0, 0])).encrypt(padded, 0);
  assert.deepEqual(short, padded);
  const long = data.slice();
  new AesSectorCipher("0123456789abcdefXYZ").encrypt(long, 0);
  const cut = data.slice();
  new AesSectorCipher("0123456789abcdef").encrypt(cut, 0);
  assert.deepEqual(long, cut);
});

Deno.test("AesSectorCipher refuses partial sectors", () => {
  assert.throws(() => new AesSectorCipher("x").encrypt(new Uint8Array(100), 0), {
    code: "INVALID_ARGUMENT",
  });
});

Deno.test({
  name: "AesSectorCipher matches openssl's AES-128-CBC with a plain64 IV",
  ignore: !HAVE_QEMU,
  async fn() {
    const probe = await runTool("openssl", ["version"]).catch(() => undefined);
    if (probe === undefined || probe.code !== 0) return;
    await using dir = await makeTempDir();
    const plain = new Uint8Array(512).map((_, i) => (i * 13) & 0xff);
    await Deno.writeFile(`${dir.path}/p`, plain);
    // Sector 0x0102: IV bytes 02 01 00 ...; key "key" zero-padded.
    const run = await runTool("openssl", [
      "enc",
      "-aes-128-cbc",
      "-nopad",
      "-K",
      "6b657900000000000000000000000000",
      "-iv",
      "02010000000000000000000000000000",
      "-in",
      `${dir.path}/p`,
      "-out",
      `${dir.path}/c`,
    ]);
    assert.equal(run.code, 0, run.stderr);
    const ours = plain.slice();
    new AesSectorCipher("key").encrypt(ours, 0x102);
    assert.deepEqual(ours, await Deno.readFile(`${dir.path}/c`));
  },
});

Deno.test("AesSectorCipher gives the same bytes sector by sector and for long runs", () => {
  const plain = new Uint8Array(512 * 37).map((_, i) => (i * 131) >> 3);
  const whole = plain.slice();
  new AesSectorCipher("runs").encrypt(whole, 1000);
  const cipher = new AesSectorCipher("runs");
  for (let s = 0; s < 37; s++) {
    const one = plain.slice(s * 512, s * 512 + 512);
    cipher.encrypt(one, 1000 + s);
    assert.deepEqual(one, whole.subarray(s * 512, s * 512 + 512), `sector ${s}`);
  }
  const back = whole.slice();
  cipher.decrypt(back, 1000);
  assert.deepEqual(back, plain);
  const tail = whole.slice(512 * 30);
  cipher.decrypt(tail, 1030);
  assert.deepEqual(tail, plain.subarray(512 * 30));
  // A view that is not 4-byte aligned takes the byte-wise path.
  const odd = new Uint8Array(512 * 2 + 1);
  odd.set(whole.subarray(0, 1024), 1);
  cipher.decrypt(odd.subarray(1), 1000);
  assert.deepEqual(odd.subarray(1), plain.subarray(0, 1024));
});
