import assert from "node:assert/strict";
import { describe, it } from "node:test";
import {
  afterLabel,
  etaLabel,
  expectedLabel,
  parsePriority,
  priorityChoices,
  priorityError,
  priorityLabel,
  priorityName,
  pulledInNote,
  RunProgressBoard,
  scheduleParts,
  scheduleTooltip,
} from "../../src/core/schedule";
import type { RunProgressNotification } from "../../src/protocol";
import { ws } from "./fixtures";

function progress(runId: string, extra: Partial<RunProgressNotification> = {}): RunProgressNotification {
  return { runId, total: 10, done: 3, running: 2, etaS: 80, concurrency: 3, note: null, ...extra };
}

describe("priority", () => {
  it("names the levels and shows only a priority that is not normal", () => {
    assert.equal(priorityName(10), "high");
    assert.equal(priorityName(-10), "low");
    assert.equal(priorityName(0), "normal");
    assert.equal(priorityName(5), "5");
    assert.equal(priorityLabel(10), "↑ high");
    assert.equal(priorityLabel(-10), "↓ low");
    assert.equal(priorityLabel(5), "↑ 5");
    assert.equal(priorityLabel(-3), "↓ -3");
    assert.equal(priorityLabel(0), undefined);
    assert.equal(priorityLabel(undefined), undefined);
  });
  it("reads a name or a whole number from -100 to 100, and says what else it takes", () => {
    assert.equal(parsePriority("High "), 10);
    assert.equal(parsePriority("low"), -10);
    assert.equal(parsePriority("-100"), -100);
    assert.equal(parsePriority("+7"), 7);
    for (const bad of ["101", "1.5", "urgent", "", "1e2"]) assert.equal(parsePriority(bad), undefined, bad);
    assert.equal(priorityError("42"), undefined);
    assert.match(priorityError("urgent") ?? "", /high, normal or low, or a whole number from -100 to 100/);
  });
  it("offers the levels with the current one marked, then any number", () => {
    const choices = priorityChoices(10);
    assert.deepEqual(
      choices.map((c) => [c.label, c.description, c.priority]),
      [
        ["high", "10 · current", 10],
        ["normal", "0", 0],
        ["low", "-10", -10],
        ["Other number...", "a whole number from -100 to 100", undefined],
      ],
    );
    assert.equal(priorityChoices(42).at(-1)?.description, "a whole number from -100 to 100 · current: 42");
  });
});

describe("schedule in the tree", () => {
  it("describes priority, dependencies and the expected time of one about to run", () => {
    const w = ws("x", "active", { priority: 10, after: ["a", "b"], expectedS: 80 });
    assert.deepEqual(scheduleParts(w), ["↑ high", "after: a, b", "~1m 20s expected"]);
    assert.deepEqual(scheduleParts(ws("x")), []);
    assert.equal(afterLabel([]), undefined);
    // A finished one shows its own duration instead.
    assert.equal(expectedLabel(ws("x", "completed", { expectedS: 80 })), undefined);
  });
  it("says all of it in full in the tooltip", () => {
    const w = ws("x", "queued", {
      priority: 5,
      after: ["a"],
      expectedS: 12,
      currentRun: { runId: "r", startedAt: null, attempt: 2, maxAttempts: 3, waiting: "attempt 2/3 after a 1.3 s back-off (retry)" },
    });
    assert.deepEqual(scheduleTooltip(w), [
      "Priority: 5",
      "Runs after: a",
      "Expected run time: ~12s (from its past runs)",
      "Attempt: 2 of 3",
      "Waiting: attempt 2/3 after a 1.3 s back-off (retry)",
    ]);
    assert.deepEqual(scheduleTooltip(ws("x", "active", { priority: -10 })), ["Priority: low (-10)"]);
  });
});

describe("run summary", () => {
  it("names the dependencies the server pulled into the run", () => {
    assert.equal(pulledInNote({ pulledIn: ["a", "b"] }), " Pulled in as dependencies: a, b.");
    assert.equal(pulledInNote({ pulledIn: [] }), "");
    assert.equal(pulledInNote({}), "");
  });
});

describe("RunProgressBoard", () => {
  it("shows a run's counts and time left, and its pace note in the tooltip until another comes", () => {
    const board = new RunProgressBoard();
    assert.equal(board.text(), undefined);
    board.apply(progress("r1", { note: "rate limited (x): concurrency 4 -> 2", concurrency: 2 }));
    assert.equal(board.text(), "$(watch) AIDP: 3/10 · ~1m 20s left");
    board.apply(progress("r1", { done: 4, etaS: 61.4, concurrency: 2 }));
    assert.equal(board.text(), "$(watch) AIDP: 4/10 · ~1m 01s left");
    assert.equal(
      board.tooltip(),
      "Run r1: 4 of 10 done, 2 running, at most 2 at once, ~1m 01s left\n  rate limited (x): concurrency 4 -> 2",
    );
  });
  it("says done without a forecast, adds up several runs, and forgets a run that ended", () => {
    const board = new RunProgressBoard();
    board.apply(progress("r1", { etaS: null }));
    assert.equal(board.text(), "$(watch) AIDP: 3/10 done");
    assert.match(board.tooltip(), /no forecast yet/);
    board.apply(progress("r1", { etaS: 30 }));
    board.apply(progress("r2", { total: 2, done: 0, etaS: 90 }));
    assert.equal(board.text(), "$(watch) AIDP: 3/12 · ~1m 30s left");
    board.apply(progress("r2", { total: 2, done: 2, etaS: 0 }));
    assert.equal(board.text(), "$(watch) AIDP: 3/10 · ~30s left");
    board.end("r1");
    assert.equal(board.text(), undefined);
    board.apply(progress("r3"));
    board.clear();
    assert.equal(board.text(), undefined);
  });
  it("says under a second rather than zero", () => {
    assert.equal(etaLabel(0.2), "< 1s left");
    assert.equal(etaLabel(2.14), "~2.1s left");
    assert.equal(expectedLabel(ws("x", "active", { expectedS: 0.04 })), "< 1s expected");
    assert.equal(etaLabel(null), undefined);
  });
});
