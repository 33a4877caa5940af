import assert from "node:assert/strict";
import { encodeAmendedHeader, headerFields } from "./amend_header.ts";
import { encodeNewHeader } from "./header_codec.ts";
import { COMPAT_LAZY_REFCOUNTS, parseQcow2Header } from "./header.ts";

function fieldsOf(first: Uint8Array) {
  const header = parseQcow2Header(first);
  return { header, fields: headerFields(header, false) };
}

Deno.test("encodeAmendedHeader() rewrites a fresh header byte for byte", () => {
  for (const clusterBits of [9, 12, 16]) {
    for (const version of [2, 3] as const) {
      const first = encodeNewHeader({
        version,
        clusterBits,
        refcountOrder: 4,
        refcountTableOffset: 2 ** clusterBits,
        refcountTableClusters: 1,
        lazyRefcounts: false,
        extendedL2: false,
        backingFile: "base.qcow2",
        backingFormat: "qcow2",
      });
      const { header, fields } = fieldsOf(first);
      assert.deepEqual(encodeAmendedHeader(header, fields), first, `v${version} ${clusterBits}`);
    }
  }
});

Deno.test("encodeAmendedHeader() turns a version 2 header into the version 3 one create writes", () => {
  const make = (version: 2 | 3, lazy: boolean) =>
    encodeNewHeader({
      version,
      clusterBits: 16,
      refcountOrder: 4,
      refcountTableOffset: 65536,
      refcountTableClusters: 1,
      lazyRefcounts: lazy,
      extendedL2: false,
      backingFile: "b.raw",
      backingFormat: "raw",
    });
  const { header, fields } = fieldsOf(make(2, false));
  const upgraded = encodeAmendedHeader(header, {
    ...fields,
    version: 3,
    compatible: COMPAT_LAZY_REFCOUNTS,
  });
  assert.deepEqual(upgraded, make(3, true));
  // ...and back: no feature bits, no feature name table, the backing file name moved up.
  const down = fieldsOf(upgraded);
  const downgraded = encodeAmendedHeader(down.header, {
    ...down.fields,
    version: 2,
    compatible: 0n,
  });
  assert.deepEqual(downgraded, make(2, false));
});

Deno.test("encodeAmendedHeader() keeps unknown header extensions and fields, drops known stale ones", () => {
  const first = encodeNewHeader({
    version: 3,
    clusterBits: 16,
    refcountOrder: 4,
    refcountTableOffset: 65536,
    refcountTableClusters: 1,
    lazyRefcounts: false,
    extendedL2: false,
  });
  // An unknown extension in place of the end marker (after the feature name table).
  const view = new DataView(first.buffer);
  let at = 112;
  while (view.getUint32(at) !== 0) at += 8 + Math.ceil(view.getUint32(at + 4) / 8) * 8;
  view.setUint32(at, 0x12345678);
  view.setUint32(at + 4, 3);
  first.set([1, 2, 3], at + 8);
  const { header, fields } = fieldsOf(first);
  const out = encodeAmendedHeader(header, { ...fields, refcountOrder: 6 });
  const outView = new DataView(out.buffer);
  assert.equal(outView.getUint32(96), 6);
  assert.equal(outView.getUint32(at), 0x12345678);
  assert.deepEqual([...out.subarray(at + 8, at + 11)], [1, 2, 3]);
  assert.equal(outView.getUint32(at + 16), 0); // end marker
});
