import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { failureNotice, setupFlags, setupLines, setupParts } from "../../src/core/ready";
import type { SetupState } from "../../src/protocol";
import { status, ws } from "./fixtures";

function setup(extra: Partial<SetupState>): SetupState {
  return { status: "ok", error: null, logPath: "/repo/.aidp/logs/x/setup.log", command: ["npm", "ci"], copied: [], finishedAt: null, pid: null, pidStart: null, ...extra };
}

describe("setupLines", () => {
  it("says nothing for a workstream made before setups", () => {
    assert.deepEqual(setupLines(ws("x")), []);
    assert.deepEqual(setupLines(ws("x", "active", { setup: null })), []);
  });
  it("lists the copied files and the setup's state", () => {
    assert.deepEqual(setupLines(ws("x", "active", { setup: setup({ copied: [".env", "config/local.toml"] }) })), [
      "Copied: .env, config/local.toml",
      "Setup: ok (npm ci)",
    ]);
    assert.deepEqual(setupLines(ws("x", "active", { setup: setup({ status: "none", command: null }) })), ["Setup: none"]);
  });
  it("says why a setup failed and how to redo it", () => {
    const failed = setup({ status: "failed", error: "exit code 7\nnpm ERR! network unreachable" });
    assert.deepEqual(setupLines(ws("x", "active", { setup: failed })), [
      "Setup: failed (npm ci): exit code 7",
      "Redo it with 'AIDP: Redo Setup'.",
    ]);
  });
});

describe("setupParts and setupFlags", () => {
  it("shows a setup that keeps the workstream from running in its description", () => {
    assert.deepEqual(setupParts(ws("x", "active", { setup: setup({ status: "failed", error: "exit code 1" }) })), ["setup failed"]);
    assert.deepEqual(setupParts(ws("x", "active", { setup: setup({ status: "running" }) })), ["setting up"]);
    assert.deepEqual(setupParts(ws("x", "active", { setup: setup({}) })), []);
  });
  it("offers Redo Setup for a workstream made with a setup, while it and its setup are at rest", () => {
    assert.deepEqual(setupFlags(ws("x", "failed", { setup: setup({ status: "failed", error: "exit code 1" }) })), ["canSetup"]);
    assert.deepEqual(setupFlags(ws("x", "completed", { setup: setup({}) })), ["canSetup"]);
    assert.deepEqual(setupFlags(ws("x", "running", { setup: setup({}) })), []);
    assert.deepEqual(setupFlags(ws("x", "queued", { setup: setup({}) })), []);
    assert.deepEqual(setupFlags(ws("x", "active", { setup: setup({ status: "running" }) })), []);
    assert.deepEqual(setupFlags(ws("x", "failed")), []);
  });
});

describe("failureNotice", () => {
  it("says each failed or errored workstream once per run, with its exit code and first error line", () => {
    const seen = new Set<string>();
    const failed = status("api", "failed", "r1", { exitCode: 3, error: "exit code 3\nTraceback..." });
    assert.equal(failureNotice(failed, seen), "AIDP: api failed (exit code 3): exit code 3");
    assert.equal(failureNotice(failed, seen), undefined);
    assert.equal(failureNotice({ ...failed, runId: "r2" }, seen), "AIDP: api failed (exit code 3): exit code 3");
    assert.equal(failureNotice(status("db", "error", "r1", { error: "cannot start 'x'" }), seen), "AIDP: db error: cannot start 'x'");
  });
  it("says nothing for other statuses or outside a run", () => {
    const seen = new Set<string>();
    for (const s of ["completed", "cancelled", "blocked", "running", "queued"] as const) {
      assert.equal(failureNotice(status("x", s), seen), undefined);
    }
    assert.equal(failureNotice(status("x", "failed", null), seen), undefined);
  });
});
