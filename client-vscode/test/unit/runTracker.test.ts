import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { RunTracker } from "../../src/core/runTracker";
import { describeError, isCancelled, isDirtyRefusal } from "../../src/core/errors";
import { status } from "./fixtures";

describe("RunTracker", () => {
  it("adopts the run id of its first queued slug and counts finals", () => {
    const t = new RunTracker(["a", "b", "c"]);
    assert.equal(t.message(), "0/3 done");
    assert.equal(t.accept(status("a", "completed", "old")), false, "a final before adoption is not ours");
    assert.equal(t.accept(status("a", "queued", "r1")), true);
    assert.equal(t.runId, "r1");
    t.accept(status("b", "queued", "r1"));
    t.accept(status("a", "running", "r1"));
    assert.equal(t.message(), "0/3 done, running: a");
    t.accept(status("a", "completed", "r1", { exitCode: 0 }));
    t.accept(status("b", "running", "r1"));
    t.accept(status("b", "failed", "r1", { exitCode: 3 }));
    assert.equal(t.accept(status("c", "completed", "r2")), false, "another run's notification");
    assert.equal(t.message(), "2/3 done");
    assert.equal(t.percent(), 67);
    assert.equal(t.count("failed"), 1);
    assert.equal(t.count("cancelled"), 0);
  });
  it("does not adopt a run another tracker owns", () => {
    const t = new RunTracker(["a"]);
    assert.equal(
      t.accept(status("a", "queued", "r1"), (id) => id === "r1"),
      false,
    );
    assert.equal(t.runId, null);
  });
  it("never adopts, nor counts, another aidp process's run (a terminal's, told with elsewhere)", () => {
    const t = new RunTracker(["a", "b"]);
    assert.equal(t.accept(status("a", "running", "term", { elsewhere: true })), false);
    assert.equal(t.runId, null);
    assert.equal(t.accept(status("b", "queued", "r1")), true);
    assert.equal(t.accept(status("a", "completed", "term", { elsewhere: true })), false);
    assert.equal(t.message(), "0/2 done");
  });
  it("grows with its run (run all, or dependencies pulled in), never with another run", () => {
    const t = new RunTracker(["b"]);
    t.accept(status("b", "queued", "r1"));
    assert.equal(t.accept(status("a", "queued", "r1")), true, "a dependency pulled into the run");
    assert.equal(t.accept(status("z", "queued", "r2")), false);
    t.accept(status("a", "failed", "r1", { exitCode: 3 }));
    t.accept(status("b", "blocked", "r1", { error: "blocked: its dependency a failed" }));
    assert.equal(t.total, 2);
    assert.equal(t.message(), "2/2 done");
    assert.equal(t.count("blocked"), 1);
  });
});

describe("errors", () => {
  it("describes server refusals", () => {
    assert.equal(
      describeError("run", { code: -32002, message: "busy", data: { running: ["a", "b"] } }),
      "AIDP: cannot run: already queued or running: a, b.",
    );
    assert.equal(
      describeError("run", { code: -32602, message: "unknown slug", data: { unknown: ["q"] } }),
      "AIDP: cannot run: unknown workstream: q.",
    );
    assert.equal(describeError("run", new Error("x")), "AIDP: cannot run: x");
    assert.ok(isCancelled({ code: -32800, message: "cancelled" }));
    assert.ok(!isCancelled({ code: -32602, message: "x" }));
  });
  it("recognises a refusal to lose uncommitted work", () => {
    assert.ok(isDirtyRefusal({ code: -32602, message: "worktree has uncommitted changes; use force" }));
    assert.ok(
      isDirtyRefusal({
        code: -32602,
        message: "refusing to remove 'a': the worktree /r/.worktrees/a has uncommitted changes:\n?? x\n(use --force to discard)",
      }),
    );
    assert.ok(!isDirtyRefusal({ code: -32602, message: "unknown", data: { unknown: ["a"] } }));
    assert.ok(!isDirtyRefusal({ code: -32803, message: "uncommitted" }));
  });
});
