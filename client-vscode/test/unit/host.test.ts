import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { hostParts, hostTooltip } from "../../src/core/host";
import { EMPTY_STATE, reduceList, reduceStatus, type State } from "../../src/core/state";
import { result, status, ws } from "./fixtures";

const T0 = Date.parse("2026-11-25T20:00:00.000Z");
const NODE = "10.0.0.7";

function hostOfA(s: State): string[] {
  const view = s.items.get("a");
  assert.ok(view !== undefined);
  return hostParts(view.ws);
}

describe("host", () => {
  it("says where a remote harness runs, and where a finished one ran", () => {
    const running = ws("a", "running", { currentRun: { runId: "r1", startedAt: null, host: NODE } });
    assert.deepEqual(hostParts(running), [`on ${NODE}`]);
    assert.deepEqual(hostTooltip(running), [`Runs on: ${NODE}`]);
    const done = ws("a", "completed", { lastResult: result("a", "completed", { host: NODE }) });
    assert.deepEqual(hostParts(done), []);
    assert.deepEqual(hostTooltip(done), [`Last run on: ${NODE}`]);
  });

  it("says nothing of a local run, nor of an older run's host while a new one is queued", () => {
    assert.deepEqual(hostParts(ws("a", "running", { currentRun: { runId: "r1", startedAt: null } })), []);
    assert.deepEqual(hostTooltip(ws("a", "completed", { lastResult: result("a", "completed") })), []);
    const queued = ws("a", "queued", {
      currentRun: { runId: "r2", startedAt: null },
      lastResult: result("a", "completed", { host: NODE }),
    });
    assert.deepEqual([...hostParts(queued), ...hostTooltip(queued)], []);
  });

  it("is kept from the running notification through progress updates into the result", () => {
    let s = reduceList(EMPTY_STATE, [ws("a")], T0);
    s = reduceStatus(s, status("a", "running", "r1", { host: NODE }), T0).state;
    s = reduceStatus(s, status("a", "running", "r1", { progress: { percent: 40, step: null, message: null } }), T0 + 1000).state;
    assert.deepEqual(hostOfA(s), [`on ${NODE}`]);
    s = reduceStatus(s, status("a", "completed", "r1", { exitCode: 0, durationS: 2 }), T0 + 2000).state;
    assert.equal(s.items.get("a")?.ws.lastResult?.host, NODE);
    // A new run of the same workstream on this machine does not inherit it.
    s = reduceStatus(s, status("a", "running", "r2"), T0 + 3000).state;
    assert.deepEqual(hostOfA(s), []);
  });
});
