import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { doctorLines, doctorSummary } from "../../src/core/doctor";
import type { DoctorReport } from "../../src/protocol";

const REPORT: DoctorReport = {
  ok: false,
  findings: [
    { level: "ok", check: "git", message: "git version 2.43.0", fix: null },
    {
      level: "problem",
      check: "harness",
      message: "the harness ([harness] preset claude-code): 'claude' is not found on PATH",
      fix: "install 'claude' or put it on PATH, or change [harness] in .aidp/config.toml",
    },
    { level: "warning", check: "sandbox", message: "bubblewrap (bwrap) is not on PATH", fix: "install bubblewrap" },
  ],
};

describe("doctorLines", () => {
  it("prints each finding with its fix below it, then the counts, as the CLI does", () => {
    assert.deepEqual(doctorLines(REPORT), [
      "     ok  git: git version 2.43.0",
      "PROBLEM  harness: the harness ([harness] preset claude-code): 'claude' is not found on PATH",
      "         -> install 'claude' or put it on PATH, or change [harness] in .aidp/config.toml",
      "warning  sandbox: bubblewrap (bwrap) is not on PATH",
      "         -> install bubblewrap",
      "1 problem, 1 warning",
    ]);
  });
  it("counts in the plural", () => {
    assert.equal(doctorSummary({ ok: true, findings: [] }), "0 problems, 0 warnings");
  });
});
