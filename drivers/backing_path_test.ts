import assert from "node:assert/strict";
import { resolveBackingPath } from "./backing_path.ts";

Deno.test("resolveBackingPath() keeps an absolute backing name as it is", () => {
  assert.equal(resolveBackingPath("/images/top.qcow2", "/base/disk.raw"), "/base/disk.raw");
  assert.equal(resolveBackingPath("top.qcow2", "/disk.raw"), "/disk.raw");
});

Deno.test("resolveBackingPath() takes a relative name from the overlay's directory", () => {
  assert.equal(resolveBackingPath("/images/top.qcow2", "base.raw"), "/images/base.raw");
  assert.equal(resolveBackingPath("/top.qcow2", "base.raw"), "/base.raw");
  assert.equal(resolveBackingPath("vm/disks/top.qcow2", "base.qcow2"), "vm/disks/base.qcow2");
  assert.equal(resolveBackingPath("/a/b/top.qcow2", "c/base.qcow2"), "/a/b/c/base.qcow2");
});

Deno.test("resolveBackingPath() leaves a relative name alone when the overlay has no directory", () => {
  assert.equal(resolveBackingPath("top.qcow2", "base.raw"), "base.raw");
  assert.equal(resolveBackingPath("top.qcow2", "../base.raw"), "../base.raw");
});

Deno.test("resolveBackingPath() does not normalise '..' and '.', like QEMU", () => {
  // qemu-img info reports "sub/../base.raw" for an overlay sub/top.qcow2 naming ../base.raw.
  assert.equal(resolveBackingPath("sub/top.qcow2", "../base.raw"), "sub/../base.raw");
  assert.equal(resolveBackingPath("/x/./top.qcow2", "./base.raw"), "/x/././base.raw");
});

Deno.test({
  name: "resolveBackingPath() keeps a name with a protocol prefix as it is, like QEMU",
  fn: () => {
    assert.equal(resolveBackingPath("/images/top.qcow2", "nbd://host/export"), "nbd://host/export");
    assert.equal(resolveBackingPath("/images/top.qcow2", "file:base.raw"), "file:base.raw");
  },
});
