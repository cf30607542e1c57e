import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  ariaLabel,
  contextValue,
  describe as describeItem,
  failures,
  formatDuration,
  formatExitCode,
  formatOutcome,
  iconFor,
  progressLabel,
  statusBarText,
  STATUS_ICONS,
  summaryMessage,
  tooltip,
} from "../../src/core/format";
import { EMPTY_STATE, reduceList, type WorkstreamView } from "../../src/core/state";
import { STATUSES, type Progress, type RunSummary, type Status } from "../../src/protocol";
import { result, ws } from "./fixtures";

const NOW = Date.parse("2026-11-25T20:00:00.000Z");

function view(status: Status, extra: Partial<WorkstreamView> = {}, lastResult = ws("x").lastResult): WorkstreamView {
  return { ws: ws("x", status, { lastResult }), runId: null, runningSince: null, ...extra };
}

describe("formatDuration", () => {
  it("formats seconds, minutes and hours", () => {
    assert.equal(formatDuration(0.04), "0.0s");
    assert.equal(formatDuration(3.25), "3.3s");
    assert.equal(formatDuration(42.9), "42s");
    assert.equal(formatDuration(75), "1m 15s");
    assert.equal(formatDuration(3700), "1h 01m");
    assert.equal(formatDuration(-1), "");
  });
  it("formats exit codes and signals", () => {
    assert.equal(formatExitCode(3), "exit 3");
    assert.equal(formatExitCode(-9), "killed by SIGKILL");
    assert.equal(formatExitCode(-15, "cancelled"), "stopped by SIGTERM");
    assert.equal(formatExitCode(-77), "killed by signal 77");
  });
  it("says a signal as the reason for the status, an exit code as a detail", () => {
    assert.equal(formatOutcome("cancelled", -15), "cancelled (stopped by SIGTERM)");
    assert.equal(formatOutcome("failed", -11), "failed (killed by SIGSEGV)");
    assert.equal(formatOutcome("failed", 3), "failed · exit 3");
    assert.equal(formatOutcome("completed", 0), "completed");
    assert.equal(formatOutcome("error", null), "error");
  });
});

describe("describe", () => {
  it("shows the live elapsed time while running", () => {
    assert.equal(describeItem(view("running", { runningSince: NOW - 12_000 }), NOW), "running 12s");
    assert.equal(describeItem(view("running"), NOW), "running");
  });
  it("shows status, exit code and duration when finished", () => {
    assert.equal(describeItem(view("completed", {}, result("x", "completed", { durationS: 3.2 })), NOW), "completed · 3.2s");
    assert.equal(
      describeItem(view("failed", {}, result("x", "failed", { exitCode: 3, durationS: 1.1 })), NOW),
      "failed · exit 3 · 1.1s",
    );
    assert.equal(
      describeItem(view("cancelled", {}, result("x", "cancelled", { exitCode: -15, durationS: 8 })), NOW),
      "cancelled (stopped by SIGTERM) · 8.0s",
    );
    assert.equal(describeItem(view("error", {}, null), NOW), "error");
  });
  it("shows resting statuses alone", () => {
    assert.equal(describeItem(view("queued"), NOW), "queued");
    assert.equal(describeItem(view("paused"), NOW), "paused");
    assert.equal(describeItem(view("active"), NOW), "active");
  });
  it("says what a queued one waits for, a retry's attempt, and why a blocked one did not run", () => {
    const queued = ws("x", "queued", { currentRun: { runId: "r", startedAt: null, waiting: "waiting for a, b" } });
    assert.equal(describeItem({ ws: queued, runId: "r", runningSince: null }, NOW), "queued · waiting for a, b");
    const retry = ws("x", "running", { currentRun: { runId: "r", startedAt: null, attempt: 2, maxAttempts: 3 } });
    assert.equal(describeItem({ ws: retry, runId: "r", runningSince: NOW - 5000 }, NOW), "running 5.0s · attempt 2/3");
    const first = ws("x", "running", { currentRun: { runId: "r", startedAt: null, attempt: 1, maxAttempts: 3 } });
    assert.equal(describeItem({ ws: first, runId: "r", runningSince: null }, NOW), "running");
    const blocked = view("blocked", {}, result("x", "blocked", { exitCode: null, error: "blocked: its dependency a failed" }));
    assert.equal(describeItem(blocked, NOW), "blocked · its dependency a failed");
    assert.equal(describeItem(view("blocked", {}, null), NOW), "blocked · a dependency did not complete");
  });
});

describe("progress", () => {
  const running = (progress: Progress | null, attempt = 1): WorkstreamView => ({
    ws: ws("x", "running", { currentRun: { runId: "r", startedAt: null, attempt, maxAttempts: 3, progress } }),
    runId: "r",
    runningSince: NOW - 12_000,
  });
  it("labels percent and step, the message alone only when it says neither", () => {
    assert.equal(progressLabel({ percent: 40, step: "IMPLEMENTATION", message: "tests pass" }), "40% IMPLEMENTATION");
    assert.equal(progressLabel({ percent: 66.7, step: null, message: null }), "67%");
    assert.equal(progressLabel({ percent: null, step: "PLAN", message: null }), "PLAN");
    assert.equal(progressLabel({ percent: null, step: null, message: "Edit src/app.py" }), "Edit src/app.py");
    assert.equal(progressLabel({ percent: null, step: null, message: "x".repeat(100) }), `${"x".repeat(59)}…`);
    assert.equal(progressLabel({ percent: null, step: null, message: null }), undefined);
    assert.equal(progressLabel(null), undefined);
  });
  it("shows it in a running item's description, after the attempt", () => {
    const progress = { percent: 40, step: "IMPLEMENTATION", message: "tests pass" };
    assert.equal(describeItem(running(progress), NOW), "running 12s · 40% IMPLEMENTATION");
    assert.equal(describeItem(running(progress, 2), NOW), "running 12s · attempt 2/3 · 40% IMPLEMENTATION");
    assert.equal(describeItem(running(null), NOW), "running 12s");
  });
  it("puts the message in the tooltip", () => {
    const t = tooltip(running({ percent: 40, step: "IMPLEMENTATION", message: "tests pass" }), NOW);
    assert.match(t, /^Progress: 40% IMPLEMENTATION: tests pass$/m);
    assert.match(tooltip(running({ percent: null, step: null, message: "Bash: pytest -q" }), NOW), /^Progress: Bash: pytest -q$/m);
    assert.doesNotMatch(tooltip(running(null), NOW), /Progress/);
    assert.doesNotMatch(tooltip(running({ percent: null, step: null, message: null }), NOW), /Progress/);
  });
});

describe("icons", () => {
  it("spins while running and gives every status its own icon", () => {
    assert.equal(iconFor("running").id, "sync~spin");
    const ids = STATUSES.map((s) => STATUS_ICONS[s].id);
    assert.equal(new Set(ids).size, STATUSES.length, `icons must be distinct: ${ids.join(", ")}`);
  });
});

describe("contextValue", () => {
  const flags = (v: WorkstreamView): string[] => contextValue(v).split(" ");
  it("offers cancel only while queued or running", () => {
    for (const s of STATUSES) {
      assert.equal(flags(view(s)).includes("canCancel"), s === "queued" || s === "running", s);
    }
  });
  it("offers run unless live or paused, resume only when paused", () => {
    assert.ok(flags(view("failed")).includes("canRun"));
    assert.ok(flags(view("completed")).includes("canRun"));
    assert.ok(!flags(view("running")).includes("canRun"));
    assert.ok(!flags(view("paused")).includes("canRun"));
    assert.ok(flags(view("paused")).includes("canResume"));
    assert.ok(!flags(view("active")).includes("canResume"));
    assert.ok(!flags(view("queued")).includes("canRemove"));
  });
  it("offers the log once there is one", () => {
    assert.ok(!flags(view("active")).includes("hasLog"));
    assert.ok(flags(view("running")).includes("hasLog"));
    assert.ok(flags(view("failed", {}, result("x", "failed"))).includes("hasLog"));
  });
  it("matches the when-clause regexes of package.json", () => {
    const v = contextValue(view("running"));
    assert.match(v, /\bcanCancel\b/);
    assert.doesNotMatch(v, /\bcanRun\b/);
    assert.match(v, /\bworkstream\b/);
  });
});

describe("tooltip and aria label", () => {
  it("tells task, branch and the last error", () => {
    const v = view("failed", {}, result("x", "failed", { error: "exit code 3\nlast line" }));
    const t = tooltip(v, NOW);
    assert.match(t, /Task: task of x/);
    assert.match(t, /Branch: aidp\/x/);
    assert.match(t, /Last error:\nexit code 3\nlast line/);
    assert.equal(ariaLabel(v, NOW), "x, failed · exit 1 · 1.0s");
    assert.doesNotMatch(t, /sandboxed/);
  });
  it("says that the last run was sandboxed, and how", () => {
    const v = view("completed", {}, result("x", "completed", { sandbox: "bwrap, no network" }));
    assert.match(tooltip(v, NOW), /Last run sandboxed: bwrap, no network/);
  });
  it("names a blocked one's reason as such, not as an error", () => {
    const v = view("blocked", {}, result("x", "blocked", { exitCode: null, error: "blocked: its dependency a failed" }));
    const t = tooltip(v, NOW);
    assert.match(t, /^x — blocked · its dependency a failed/);
    assert.match(t, /Blocked:\nblocked: its dependency a failed/);
    assert.doesNotMatch(t, /Last error/);
  });
});

describe("summaries", () => {
  const summary: RunSummary = {
    runId: "r",
    results: [result("a", "completed"), result("b", "failed"), result("c", "error"), result("d", "cancelled")],
    total: 4,
    completed: 1,
    failed: 1,
    errored: 1,
    cancelled: 1,
    wallS: 9.5,
  };
  it("counts the outcomes", () => {
    assert.equal(summaryMessage(summary), "AIDP: ran 4 workstreams in 9.5s: 1 completed, 1 failed, 1 error, 1 cancelled.");
    assert.deepEqual(
      failures(summary).map((r) => r.slug),
      ["b", "c"],
    );
    assert.match(summaryMessage({ ...summary, results: [], total: 0 }), /nothing to run/);
  });
  it("counts blocked workstreams", () => {
    const withBlocked: RunSummary = { ...summary, total: 2, completed: 0, failed: 1, errored: 0, cancelled: 0, blocked: 1 };
    assert.equal(summaryMessage(withBlocked), "AIDP: ran 2 workstreams in 9.5s: 1 failed, 1 blocked.");
  });
  it("status bar shows running and queued", () => {
    assert.equal(statusBarText({ running: 2, queued: 1, total: 5 }), "$(sync~spin) 2 running, 1 queued");
    assert.equal(statusBarText({ running: 0, queued: 0, total: 5 }), "$(checklist) AIDP: none running");
    assert.equal(statusBarText({ running: 0, queued: 2, total: 5 }), "$(sync~spin) 0 running, 2 queued");
    // Beside a progress notification of the same run: counts, but no second spinner.
    assert.equal(statusBarText({ running: 2, queued: 0, total: 5 }, false), "$(sync) 2 running");
  });
  it("state helpers are consistent", () => {
    assert.equal(reduceList(EMPTY_STATE, [], NOW).order.length, 0);
  });
});
