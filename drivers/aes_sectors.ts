/**
 * QEMU's legacy AES encryption of qcow and qcow2 images (crypt_method 1), without I/O.
 *
 * @module
 */

import { cbc, ecb } from "@noble/ciphers/aes.js";
import { QcowError } from "../core/errors.ts";

/** Bytes per encrypted unit: each 512-byte sector is a separate CBC message. */
export const AES_SECTOR_SIZE = 512;

/** From this many sectors on, encryption runs the sectors side by side. */
const LANE_THRESHOLD = 8;

/**
 * AES-128-CBC over 512-byte sectors as QEMU's legacy "aes" encryption does it: the key is the
 * passphrase's UTF-8 bytes truncated or zero-padded to 16 bytes, every sector is encrypted on its
 * own with no padding, and its IV is the sector number as a 64-bit little-endian value
 * zero-padded to 16 bytes ("plain64"). The sector number is the guest (virtual) one for both qcow
 * and qcow2. The format stores nothing to check a key against: a wrong passphrase decrypts to
 * garbage and cannot be detected.
 *
 * The cipher is @noble/ciphers' audited AES.
 *
 * @example Encrypting and decrypting one sector
 * ```ts
 * import { AesSectorCipher } from "@qcowlab/qcowlab";
 *
 * const cipher = new AesSectorCipher("secret");
 * const sector = new Uint8Array(512).fill(7);
 * cipher.encrypt(sector, 3);
 * console.log(sector[0] === 7); // false
 * cipher.decrypt(sector, 3);
 * console.log(sector[0]); // 7
 * ```
 */
export class AesSectorCipher {
  #key: Uint8Array;
  #iv: Uint8Array = new Uint8Array(16);
  #scratch: Uint8Array = new Uint8Array(AES_SECTOR_SIZE);

  /**
   * Derives the key from a passphrase.
   *
   * @param passphrase The passphrase (a string is taken as UTF-8).
   */
  constructor(passphrase: string | Uint8Array) {
    const bytes = typeof passphrase === "string"
      ? new TextEncoder().encode(passphrase)
      : passphrase;
    this.#key = new Uint8Array(16);
    this.#key.set(bytes.subarray(0, 16));
  }

  /**
   * Encrypts whole sectors in place.
   *
   * @param data A multiple of 512 bytes.
   * @param firstSector The sector number of `data[0]`.
   */
  encrypt(data: Uint8Array, firstSector: number): void {
    this.#run(data, firstSector, true);
  }

  /**
   * Decrypts whole sectors in place.
   *
   * @param data A multiple of 512 bytes.
   * @param firstSector The sector number of `data[0]`.
   */
  decrypt(data: Uint8Array, firstSector: number): void {
    this.#run(data, firstSector, false);
  }

  #run(data: Uint8Array, firstSector: number, encrypt: boolean): void {
    if (data.length % AES_SECTOR_SIZE !== 0 || !Number.isSafeInteger(firstSector)) {
      throw new QcowError(
        "INVALID_ARGUMENT",
        `AES sectors need whole 512-byte sectors, got ${data.length} bytes at sector ${firstSector}`,
      );
    }
    const sectors = data.length / AES_SECTOR_SIZE;
    if (sectors === 0) return;
    if (!encrypt) this.#decryptMany(data, firstSector);
    else if (sectors >= LANE_THRESHOLD) this.#encryptLanes(data, firstSector, sectors);
    else this.#encryptEach(data, firstSector);
  }

  /** One CBC call per sector: cheapest for a few sectors. */
  #encryptEach(data: Uint8Array, firstSector: number): void {
    const scratch = this.#scratch;
    for (let at = 0; at < data.length; at += AES_SECTOR_SIZE) {
      this.#setIv(firstSector + at / AES_SECTOR_SIZE);
      const sector = data.subarray(at, at + AES_SECTOR_SIZE);
      cbc(this.#key, this.#iv, { disablePadding: true }).encrypt(sector, scratch);
      sector.set(scratch);
    }
  }

  /**
   * CBC encryption is sequential within a sector but independent across sectors: block j of
   * every sector is encrypted in one ECB call (one key expansion), 32 calls in all.
   */
  #encryptLanes(data: Uint8Array, firstSector: number, sectors: number): void {
    const lanes = new Uint8Array(sectors * 16);
    const out = new Uint8Array(sectors * 16);
    for (let block = 0; block < AES_SECTOR_SIZE / 16; block++) {
      for (let s = 0; s < sectors; s++) {
        const at = s * AES_SECTOR_SIZE + block * 16;
        const lane = s * 16;
        if (block === 0) {
          this.#setIv(firstSector + s);
          for (let i = 0; i < 16; i++) lanes[lane + i] = data[at + i]! ^ this.#iv[i]!;
        } else {
          for (let i = 0; i < 16; i++) lanes[lane + i] = data[at + i]! ^ data[at - 16 + i]!;
        }
      }
      // A noble cipher object encrypts once: a new one per call (the key expansion is cheap).
      ecb(this.#key, { disablePadding: true }).encrypt(lanes, out);
      for (let s = 0; s < sectors; s++) {
        data.set(out.subarray(s * 16, s * 16 + 16), s * AES_SECTOR_SIZE + block * 16);
      }
    }
  }

  /**
   * CBC decryption needs no chaining: every block is decrypted in one ECB call, then XORed with
   * the ciphertext block before it (the IV for a sector's first block).
   */
  #decryptMany(data: Uint8Array, firstSector: number): void {
    const ciphertext = data.slice();
    // noble writes only to 4-byte aligned outputs: decrypt a misaligned view through a copy.
    const out = data.byteOffset % 4 === 0 ? data : new Uint8Array(data.length);
    ecb(this.#key, { disablePadding: true }).decrypt(ciphertext, out);
    const words = new Uint32Array(out.buffer, out.byteOffset, out.length / 4);
    const previous = new Uint32Array(ciphertext.buffer);
    const ivWords = new Uint32Array(this.#iv.buffer);
    for (let w = 0; w < words.length; w += AES_SECTOR_SIZE / 4) {
      this.#setIv(firstSector + w / (AES_SECTOR_SIZE / 4));
      for (let i = 0; i < 4; i++) words[w + i]! ^= ivWords[i]!;
      for (let i = w + 4; i < w + AES_SECTOR_SIZE / 4; i++) words[i]! ^= previous[i - 4]!;
    }
    if (out !== data) data.set(out);
  }

  #setIv(sector: number): void {
    const iv = this.#iv;
    iv.fill(0);
    let rest = sector;
    for (let i = 0; i < 8 && rest > 0; i++) {
      iv[i] = rest % 256;
      rest = Math.floor(rest / 256);
    }
  }
}
