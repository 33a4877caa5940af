import assert from "node:assert/strict";
import { compareAmend, qcowlab as cli } from "./_iotests.ts";
import { HAVE_QEMU, makeTempDir, qemuImg, qemuInfo, qemuIo, runTool } from "./_qemu.ts";

Deno.test({
  name: "amend upgrades, turns lazy refcounts on and off, and changes refcount widths as qemu-img",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    const v2 = `${dir.path}/v2.qcow2`;
    await qemuImg("create", "-q", "-f", "qcow2", "-o", "compat=0.10", v2, "64M");
    await qemuIo(v2, ["write -P 1 0 1M", "write -P 2 5M 100k"]);
    // Upgrade: the same bytes as qemu-img writes, and the result is what create -o compat=1.1 writes.
    const up = await compareAmend(dir.path, v2, "compat=1.1", { identical: true });
    const v3 = `${dir.path}/v3.qcow2`;
    await Deno.copyFile(up.ours, v3);
    await compareAmend(dir.path, v2, "compat=v3,lazy_refcounts=on", { identical: true });
    await compareAmend(dir.path, v3, "lazy_refcounts=on", { identical: true });
    await compareAmend(dir.path, v3, "compat=1.1", { identical: true });
    for (const bits of [1, 2, 4, 8, 32, 64]) {
      await compareAmend(dir.path, v3, `refcount_bits=${bits}`, { identical: true });
    }
    const lazy = `${dir.path}/lazy.qcow2`;
    await qemuImg("create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", lazy, "64M");
    await qemuIo(lazy, ["write -P 3 0 256k"]);
    await compareAmend(dir.path, lazy, "lazy_refcounts=off", { identical: true });
    // Downgrade of an image with lazy refcounts: the bit goes with the version.
    await compareAmend(dir.path, lazy, "compat=0.10", { identical: true });
    const info = await qemuInfo(v3);
    assert.equal((info["format-specific"] as { data: { compat: string } }).data.compat, "1.1");
  },
});

Deno.test({
  name:
    "amend places new refcount structures where qemu-img does: a chain of width changes, byte for byte",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    for (const clusterSize of ["64k", "512"]) {
      const image = `${dir.path}/chain-${clusterSize}.qcow2`;
      await qemuImg(
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        `cluster_size=${clusterSize}`,
        image,
        // 512-byte clusters: a smaller disk keeps qemu-img's refcount rewrites quick.
        clusterSize === "512" ? "16M" : "64M",
      );
      await qemuIo(image, ["write -P 1 0 1M", `write -P 2 ${clusterSize === "512" ? 12 : 20}M 1M`]);
      // Each step starts from the last one's result, holes left by the old structures included.
      for (
        const options of [
          "refcount_bits=8",
          "refcount_bits=64",
          "refcount_bits=1",
          "refcount_bits=16",
          "compat=0.10",
        ]
      ) {
        const { ours } = await compareAmend(dir.path, image, options, { identical: true });
        await Deno.copyFile(ours, image);
      }
    }
  },
});

Deno.test({
  name:
    "amend downgrades v3 to v2 as qemu-img does, expanding zero clusters with and without a backing file",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    const plain = `${dir.path}/plain.qcow2`;
    await qemuImg("create", "-q", "-f", "qcow2", plain, "64M");
    // Zero clusters without a host cluster (write -z), and with one (write -z over data).
    await qemuIo(plain, ["write -P 1 0 512k", "write -z 64k 128k", "write -z 2M 192k"]);
    await compareAmend(dir.path, plain, "compat=0.10", { identical: true });

    const base = `${dir.path}/base.qcow2`;
    await qemuImg("create", "-q", "-f", "qcow2", base, "64M");
    await qemuIo(base, ["write -P 7 0 4M"]);
    const overlay = `${dir.path}/overlay.qcow2`;
    await qemuImg("create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", overlay);
    await qemuIo(overlay, [
      "write -z 0 128k",
      "write -P 3 1M 64k",
      "write -z 1M 64k",
      "write -z 3M 64k",
    ]);
    // Zero clusters over backing data become allocated clusters of zeros: the contents stay.
    await compareAmend(dir.path, overlay, "compat=0.10", { identical: true });

    // 4 KiB clusters and 8-bit refcounts brought back to 16 bits on the way down.
    const small = `${dir.path}/small.qcow2`;
    await qemuImg(
      "create",
      "-q",
      "-f",
      "qcow2",
      "-o",
      "cluster_size=4k,refcount_bits=8",
      small,
      "16M",
    );
    await qemuIo(small, ["write -P 9 0 100k", "write -z 8k 16k", "write -z 1M 8k"]);
    await compareAmend(dir.path, small, "compat=0.10,refcount_bits=16", { header: true });
  },
});

Deno.test({
  name: "amend refuses what qemu-img amend refuses, with its messages, changing nothing",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    const v3 = `${dir.path}/v3.qcow2`;
    await qemuImg("create", "-q", "-f", "qcow2", v3, "64M");
    await qemuIo(v3, ["write -P 1 0 128k"]);
    const lazyV2 =
      "Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 or greater)";
    const cases: [string, string][] = [
      ["compat=0.10,lazy_refcounts=on", lazyV2],
      ["compat=0.9", "Unknown compatibility level 0.9"],
      ["refcount_bits=3", "Refcount width must be a power of two and may not exceed 64 bits"],
      ["refcount_bits=128", "Refcount width must be a power of two and may not exceed 64 bits"],
      ["refcount_bits=abc", "Parameter 'refcount_bits' expects a number"],
      ["lazy_refcounts=maybe", "Parameter 'lazy_refcounts' expects 'on' or 'off'"],
      [
        "compat=0.10,refcount_bits=8",
        "Refcount widths other than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)",
      ],
      ["foo=1", "Invalid parameter 'foo'"],
      [
        "cluster_size=4k",
        "Invalid parameter 'cluster_size'\nThis option is only supported for image creation",
      ],
      [
        "extended_l2=on",
        "Invalid parameter 'extended_l2'\nThis option is only supported for image creation",
      ],
    ];
    for (const [options, message] of cases) {
      await compareAmend(dir.path, v3, options, { fails: message });
    }

    const v2 = `${dir.path}/v2.qcow2`;
    await qemuImg("create", "-q", "-f", "qcow2", "-o", "compat=0.10", v2, "64M");
    await compareAmend(dir.path, v2, "lazy_refcounts=on", { fails: lazyV2 });

    const extended = `${dir.path}/extended.qcow2`;
    await qemuImg("create", "-q", "-f", "qcow2", "-o", "extended_l2=on", extended, "64M");
    await compareAmend(dir.path, extended, "compat=0.10", {
      fails: "Cannot downgrade an image with incompatible features 0x10 set",
    });

    const narrow = `${dir.path}/narrow.qcow2`;
    await qemuImg("create", "-q", "-f", "qcow2", "-o", "refcount_bits=8", narrow, "64M");
    await compareAmend(dir.path, narrow, "compat=0.10", {
      fails: "compat=0.10 requires refcount_bits=16",
    });

    // A snapshot shares clusters (refcount 2): one bit cannot hold that.
    const shared = `${dir.path}/shared.qcow2`;
    await Deno.copyFile(v3, shared);
    await qemuImg("snapshot", "-c", "s1", shared);
    await compareAmend(dir.path, shared, "refcount_bits=1", {
      fails:
        "Cannot decrease refcount entry width to 1 bits: Cluster at offset 0x40000 has a refcount of 2",
    });
    // ...but two bits can, and the snapshot survives.
    const { ours } = await compareAmend(dir.path, shared, "refcount_bits=2", { header: false });
    assert.match(await qemuImg("snapshot", "-l", ours), /s1/);

    const none = await cli("amend", v3);
    assert.equal(none.status, 1);
    assert.equal(none.err, "qcowlab: Must specify options (-o)\n");
  },
});

Deno.test({
  name: "amend of a dirty image (a lazy-refcount crash) repairs it first, as qemu-img amend does",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    const dirty = `${dir.path}/dirty.qcow2`;
    await qemuImg("create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", dirty, "64M");
    const crash = await runTool("qemu-io", [
      "-f",
      "qcow2",
      "-c",
      "write -P 5 0 128k",
      "-c",
      "sigraise 9",
      dirty,
    ]);
    assert.notEqual(crash.code, 0);
    assert.equal((await qemuInfo(dirty))["dirty-flag"], true);
    for (const options of ["lazy_refcounts=off", "compat=0.10", "refcount_bits=8"]) {
      const { ours } = await compareAmend(dir.path, dirty, options, {});
      assert.equal((await qemuInfo(ours))["dirty-flag"], false);
    }
    const copy = `${dir.path}/copy.qcow2`;
    await Deno.copyFile(dirty, copy);
    const result = await cli("amend", "-o", "lazy_refcounts=off", copy);
    assert.equal(result.status, 0);
    assert.match(
      result.err,
      /^Repaired dirty image .*: 0 leaked clusters and 2 corruptions fixed\n$/,
    );
  },
});

Deno.test({
  name:
    "amend -o size grows and shrinks as qemu-img amend does, also next to an upgrade or a downgrade",
  ignore: !HAVE_QEMU,
  async fn() {
    await using dir = await makeTempDir();
    const image = `${dir.path}/sized.qcow2`;
    await qemuImg("create", "-q", "-f", "qcow2", "-o", "compat=0.10", image, "64M");
    await qemuIo(image, ["write -P 1 0 1M"]);
    const steps = [
      "size=128M",
      "compat=1.1,lazy_refcounts=on,size=256M",
      "size=200M,compat=0.10",
      "size=100M",
    ];
    for (const options of steps) {
      const { ours } = await compareAmend(dir.path, image, options, { identical: true });
      await Deno.copyFile(ours, image);
    }
    assert.equal((await qemuInfo(image))["virtual-size"], 100 * 1024 * 1024);
  },
});
