import assert from "node:assert/strict";
import {
  checkExitStatus,
  type CheckResult,
  formatCheckReport,
  formatPercent,
} from "./check_report.ts";

function result(fields: Partial<CheckResult> = {}): CheckResult {
  return { filename: "img.qcow2", format: "qcow2", "check-errors": 0, messages: [], ...fields };
}

Deno.test("checkExitStatus() ranks check errors, corruptions and leaks as qemu-img does", () => {
  assert.equal(checkExitStatus(result()), 0);
  assert.equal(checkExitStatus(result({ leaks: 2 })), 3);
  assert.equal(checkExitStatus(result({ leaks: 2, corruptions: 1 })), 2);
  assert.equal(checkExitStatus(result({ corruptions: 1, "check-errors": 1 })), 1);
  assert.equal(checkExitStatus(result({ failure: "Input/output error" })), 1);
  assert.equal(checkExitStatus(result({ "leaks-fixed": 4 })), 0);
});

Deno.test("formatPercent() rounds exact halves to even like printf", () => {
  assert.equal(formatPercent(12.5), "12.50");
  assert.equal(formatPercent(0.125), "0.12");
  assert.equal(formatPercent(0.375), "0.38");
  assert.equal(formatPercent(100 / 3), "33.33");
  assert.equal(formatPercent(200 / 3), "66.67");
  assert.equal(formatPercent(0), "0.00");
});

Deno.test("formatCheckReport() prints a clean image like qemu-img", () => {
  const text = formatCheckReport(result({
    "image-end-offset": 589824,
    "total-clusters": 16,
    "allocated-clusters": 3,
    "fragmented-clusters": 1,
  }));
  assert.equal(
    text,
    "No errors were found on the image.\n" +
      "3/16 = 18.75% allocated, 33.33% fragmented, 0.00% compressed clusters\n" +
      "Image end offset: 589824\n",
  );
});

Deno.test("formatCheckReport() lists corruptions, leaks and check errors", () => {
  const text = formatCheckReport(result({
    corruptions: 1,
    leaks: 9,
    "check-errors": 9,
    "image-end-offset": 65536,
    "total-clusters": 16,
  }));
  assert.equal(
    text,
    "\n1 errors were found on the image.\n" +
      "Data may be corrupted, or further writes to the image may corrupt it.\n" +
      "\n9 leaked clusters were found on the image.\n" +
      "This means waste of disk space, but no harm to data.\n" +
      "\n9 internal errors have occurred during the check.\n" +
      "Image end offset: 65536\n",
  );
});

Deno.test("formatCheckReport() announces repairs before the double check", () => {
  const text = formatCheckReport(result({ "leaks-fixed": 1, "image-end-offset": 524288 }));
  assert.equal(
    text,
    "The following inconsistencies were found and repaired:\n\n" +
      "    1 leaked clusters\n" +
      "    0 corruptions\n\n" +
      "Double checking the fixed image now...\n" +
      "No errors were found on the image.\n" +
      "Image end offset: 524288\n",
  );
});

Deno.test("formatCheckReport() prints JSON in qemu-img's member order, without zero counters", () => {
  const text = formatCheckReport(
    result({
      "image-end-offset": 458752,
      "compressed-clusters": 3,
      "total-clusters": 16,
      corruptions: 1,
      "allocated-clusters": 4,
      "fragmented-clusters": 3,
      "leaks-fixed": 2,
      messages: ["not printed"],
    }),
    "json",
  );
  assert.equal(
    text,
    `{
    "image-end-offset": 458752,
    "compressed-clusters": 3,
    "total-clusters": 16,
    "corruptions": 1,
    "check-errors": 0,
    "leaks-fixed": 2,
    "allocated-clusters": 4,
    "filename": "img.qcow2",
    "format": "qcow2",
    "fragmented-clusters": 3
}
`,
  );
});

Deno.test("formatCheckReport() escapes the file name as QEMU's JSON writer does", () => {
  const text = formatCheckReport(result({ filename: 'a"b\\c\té.qcow2' }), "json");
  assert.match(text, /"filename": "a\\"b\\\\c\\t\\u00E9\.qcow2"/);
});

Deno.test("formatCheckReport() prints nothing for a check that failed", () => {
  assert.equal(formatCheckReport(result({ failure: "Input/output error" })), "");
  assert.equal(formatCheckReport(result({ failure: "Input/output error" }), "json"), "");
});
