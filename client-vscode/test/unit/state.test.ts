import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { countStates, EMPTY_STATE, reduceList, reduceRecords, reduceStatus, reduceSummary, workstreams } from "../../src/core/state";
import { WorkstreamStore } from "../../src/core/store";
import type { RunSummary, WsStatusNotification } from "../../src/protocol";
import { result, status, ws } from "./fixtures";

const T0 = Date.parse("2026-11-25T20:00:00.000Z");

describe("reduceList", () => {
  it("keeps the server's order and statuses", () => {
    const s = reduceList(EMPTY_STATE, [ws("b"), ws("a", "paused")], T0);
    assert.deepEqual(s.order, ["b", "a"]);
    assert.equal(s.items.get("a")?.ws.status, "paused");
    assert.deepEqual(
      workstreams(s).map((w) => w.slug),
      ["b", "a"],
    );
  });

  it("keeps the live run data of a workstream still running", () => {
    let s = reduceList(EMPTY_STATE, [ws("a")], T0);
    s = reduceStatus(s, status("a", "running", "r9"), T0 + 1000).state;
    const again = reduceList(s, [ws("a", "running")], T0 + 5000);
    assert.equal(again.items.get("a")?.runId, "r9");
    assert.equal(again.items.get("a")?.runningSince, T0 + 1000);
  });

  it("counts a run noticed late (another process's, or after a restart) from the server's startedAt", () => {
    const started = "2026-11-25T19:59:50.000Z";
    const s = reduceList(EMPTY_STATE, [ws("a", "running", { currentRun: { runId: "r7", startedAt: started } })], T0);
    assert.equal(s.items.get("a")?.runningSince, Date.parse(started));
    assert.equal(s.items.get("a")?.runId, "r7");
    // Queued: the run is known, it has not started.
    const q = reduceList(EMPTY_STATE, [ws("a", "queued", { currentRun: { runId: "r7", startedAt: null } })], T0);
    assert.equal(q.items.get("a")?.runningSince, null);
    assert.equal(q.items.get("a")?.runId, "r7");
  });

  it("follows the attempt and what a queued one waits for from the notifications, and forgets them at the end", () => {
    let s = reduceList(EMPTY_STATE, [ws("a")], T0);
    s = reduceStatus(s, status("a", "queued", "r1", { waiting: "waiting for b" }), T0).state;
    assert.deepEqual(s.items.get("a")?.ws.currentRun, {
      runId: "r1",
      startedAt: null,
      attempt: 1,
      maxAttempts: 1,
      waiting: "waiting for b",
      progress: null,
      host: null,
    });
    s = reduceStatus(s, status("a", "running", "r1", { attempt: 2, maxAttempts: 3, startedAt: "2026-11-25T20:00:01.000Z" }), T0 + 2000).state;
    assert.deepEqual(s.items.get("a")?.ws.currentRun, {
      runId: "r1",
      startedAt: "2026-11-25T20:00:01.000Z",
      attempt: 2,
      maxAttempts: 3,
      waiting: null,
      progress: null,
      host: null,
    });
    s = reduceStatus(s, status("a", "blocked", "r1", { error: "blocked: its dependency b failed" }), T0 + 3000).state;
    const a = s.items.get("a")?.ws;
    assert.equal(a?.currentRun, null);
    assert.equal(a?.status, "blocked");
    assert.equal(a?.lastResult?.error, "blocked: its dependency b failed");
  });

  it("drops removed workstreams", () => {
    const s = reduceList(reduceList(EMPTY_STATE, [ws("a"), ws("b")], T0), [ws("b")], T0);
    assert.deepEqual(s.order, ["b"]);
    assert.equal(s.items.has("a"), false);
  });
});

describe("reduceStatus", () => {
  const base = reduceList(EMPTY_STATE, [ws("a"), ws("b"), ws("c")], T0);

  it("changes only the item it names and returns a new state", () => {
    const r = reduceStatus(base, status("b", "queued"), T0);
    assert.deepEqual(r.changed, ["b"]);
    assert.equal(r.unknown, false);
    assert.notEqual(r.state, base);
    assert.equal(r.state.items.get("b")?.ws.status, "queued");
    assert.equal(r.state.items.get("b")?.runId, "r1");
    // Other items are the very same objects: nothing to refresh for them.
    assert.equal(r.state.items.get("a"), base.items.get("a"));
    assert.equal(r.state.items.get("c"), base.items.get("c"));
    // The old state is untouched.
    assert.equal(base.items.get("b")?.ws.status, "active");
  });

  it("takes a running workstream's start from the notification's startedAt", () => {
    const started = "2026-11-25T19:59:58.500Z";
    const r = reduceStatus(base, status("a", "running", "r2", { startedAt: started }), T0);
    assert.equal(r.state.items.get("a")?.runningSince, Date.parse(started));
    // A server that does not say: from when the client saw it.
    assert.equal(reduceStatus(base, status("a", "running", "r2"), T0).state.items.get("a")?.runningSince, T0);
  });

  it("takes a progress update of the same run as such: the progress changes, its start does not", () => {
    const progress = { percent: 40, step: "IMPLEMENTATION", message: "tests pass" };
    let s = reduceStatus(base, status("a", "running", "r2"), T0).state;
    s = reduceStatus(s, status("a", "running", "r2", { progress }), T0 + 3000).state;
    assert.equal(s.items.get("a")?.runningSince, T0);
    assert.deepEqual(s.items.get("a")?.ws.currentRun?.progress, progress);
    // A later attempt (another run id) starts afresh, without the old progress.
    s = reduceStatus(s, status("a", "running", "r3"), T0 + 5000).state;
    assert.equal(s.items.get("a")?.runningSince, T0 + 5000);
    assert.equal(s.items.get("a")?.ws.currentRun?.progress, null);
  });

  it("reports an unknown slug without changing anything", () => {
    const r = reduceStatus(base, status("zzz", "running"), T0);
    assert.equal(r.unknown, true);
    assert.equal(r.state, base);
    assert.deepEqual(r.changed, []);
  });

  it("follows queued -> running -> failed and records the result", () => {
    let s = reduceStatus(base, status("a", "queued"), T0).state;
    s = reduceStatus(s, status("a", "running"), T0 + 2000).state;
    assert.equal(s.items.get("a")?.runningSince, T0 + 2000);
    s = reduceStatus(
      s,
      status("a", "failed", "r1", { exitCode: 3, durationS: 1.5, error: "exit code 3\nboom" }),
      T0 + 3500,
    ).state;
    const view = s.items.get("a");
    assert.ok(view);
    assert.equal(view.ws.status, "failed");
    assert.equal(view.runningSince, null);
    assert.equal(view.runId, null);
    assert.deepEqual(view.ws.lastResult, {
      slug: "a",
      status: "failed",
      exitCode: 3,
      startedAt: new Date(T0 + 2000).toISOString(),
      finishedAt: new Date(T0 + 3500).toISOString(),
      durationS: 1.5,
      error: "exit code 3\nboom",
      logPath: null,
      sandbox: null,
      host: null,
    });
  });

  it("treats missing optional fields as null", () => {
    const partial = { runId: "r1", slug: "a", status: "failed" } as unknown as WsStatusNotification;
    const r = reduceStatus(base, partial, T0);
    const last = r.state.items.get("a")?.ws.lastResult;
    assert.equal(last?.exitCode, null);
    assert.equal(last?.durationS, null);
    assert.equal(last?.error, null);
  });

  it("pause and resume change the status and keep the last result", () => {
    let s = reduceList(EMPTY_STATE, [ws("a", "completed", { lastResult: result("a", "completed") })], T0);
    s = reduceStatus(s, status("a", "paused", null), T0).state;
    assert.equal(s.items.get("a")?.ws.status, "paused");
    assert.equal(s.items.get("a")?.ws.lastResult?.status, "completed");
    s = reduceStatus(s, status("a", "active", null), T0).state;
    assert.equal(s.items.get("a")?.ws.status, "active");
  });
});

describe("reduceRecords", () => {
  it("replaces the records it carries and changes only those, keeping the order", () => {
    let s = reduceList(EMPTY_STATE, [ws("a"), ws("b"), ws("c")], T0);
    s = reduceStatus(s, status("b", "running", "r1"), T0).state;
    s = reduceStatus(s, status("b", "completed", "r1", { exitCode: 0 }), T0 + 2000).state;
    const changes = { baseBranch: "main", mergeBase: "m", ahead: 1, behind: 0, files: 1, added: 1, removed: 0, dirty: false };
    const record = ws("b", "completed", { changes, lastResult: result("b", "completed", { logPath: "/l.log" }) });
    const r = reduceRecords(s, [record], T0 + 2100);
    assert.equal(r.unknown, false);
    assert.deepEqual(r.changed, ["b"]);
    assert.deepEqual(r.state.order, ["a", "b", "c"]);
    assert.equal(r.state.items.get("b")?.ws.changes?.ahead, 1);
    assert.equal(r.state.items.get("b")?.ws.lastResult?.logPath, "/l.log");
    assert.equal(r.state.items.get("a"), s.items.get("a"), "the others are the same objects");
  });

  it("keeps the live run data of a record still running", () => {
    let s = reduceList(EMPTY_STATE, [ws("a")], T0);
    s = reduceStatus(s, status("a", "running", "r9"), T0 + 1000).state;
    const r = reduceRecords(s, [ws("a", "running")], T0 + 5000);
    assert.equal(r.state.items.get("a")?.runningSince, T0 + 1000);
    assert.equal(r.state.items.get("a")?.runId, "r9");
  });

  it("reports a record of an unknown slug without changing anything", () => {
    const s = reduceList(EMPTY_STATE, [ws("a")], T0);
    const r = reduceRecords(s, [ws("a", "completed"), ws("new")], T0);
    assert.equal(r.unknown, true);
    assert.equal(r.state, s);
    assert.deepEqual(r.changed, []);
  });
});

describe("reduceSummary", () => {
  it("stores results with their log paths", () => {
    let s = reduceList(EMPTY_STATE, [ws("a"), ws("b")], T0);
    s = reduceStatus(s, status("a", "completed", "r1", { exitCode: 0, durationS: 1 }), T0).state;
    const summary: RunSummary = {
      runId: "r1",
      results: [result("a", "completed"), result("b", "failed", { exitCode: 3 })],
      total: 2,
      completed: 1,
      failed: 1,
      errored: 0,
      cancelled: 0,
      wallS: 1.2,
    };
    const r = reduceSummary(s, summary);
    assert.deepEqual(r.changed, ["a", "b"]);
    assert.equal(r.state.items.get("a")?.ws.lastResult?.logPath, "/repo/.aidp/logs/a/r1.log");
    assert.equal(r.state.items.get("b")?.ws.status, "failed");
  });

  it("does not clobber a workstream that a newer run already started", () => {
    let s = reduceList(EMPTY_STATE, [ws("a")], T0);
    s = reduceStatus(s, status("a", "running", "r2"), T0).state;
    const summary: RunSummary = {
      runId: "r1",
      results: [result("a", "cancelled")],
      total: 1,
      completed: 0,
      failed: 0,
      errored: 0,
      cancelled: 1,
      wallS: 1,
    };
    const r = reduceSummary(s, summary);
    assert.equal(r.state.items.get("a")?.ws.status, "running");
    assert.equal(r.state.items.get("a")?.runId, "r2");
  });
});

describe("countStates", () => {
  it("counts running, queued and what run-all would run", () => {
    const s = reduceList(
      EMPTY_STATE,
      [ws("a", "running"), ws("b", "queued"), ws("c", "queued"), ws("d", "completed"), ws("e", "paused"), ws("f", "failed"), ws("g")],
      T0,
    );
    assert.deepEqual(countStates(s), { total: 7, running: 1, queued: 2, runnable: 2 });
  });
});

describe("WorkstreamStore", () => {
  it("tells listeners which items changed", () => {
    const store = new WorkstreamStore();
    const seen: unknown[] = [];
    store.onChange((c) => seen.push(c));
    store.setList([ws("a"), ws("b")], T0);
    assert.equal(store.applyStatus(status("b", "running"), T0), true);
    assert.equal(store.applyStatus(status("nope", "running"), T0), false);
    assert.deepEqual(seen, ["all", ["b"]]);
    assert.deepEqual(store.live(), ["b"]);
    assert.equal(store.loaded, true);
  });
});
