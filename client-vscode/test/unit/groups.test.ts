import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { GROUP_AT, groupLabel, groupMembers, groupOf, isGroup, parentOf, refreshTargets, rootNodes } from "../../src/core/groups";
import { EMPTY_STATE, reduceList, reduceStatus, type State } from "../../src/core/state";
import type { Status } from "../../src/protocol";
import { status, ws } from "./fixtures";

const T0 = Date.parse("2026-11-25T20:00:00.000Z");

/** `n` workstreams, the first few failed and running, the rest active. */
function many(n: number): State {
  const statusOf = (i: number): Status => (i < 3 ? "failed" : i < 5 ? "running" : "active");
  return reduceList(
    EMPTY_STATE,
    Array.from({ length: n }, (_, i) => ws(`ws-${i}`, statusOf(i))),
    T0,
  );
}

describe("the tree's root", () => {
  it("lists the workstreams themselves up to GROUP_AT", () => {
    const s = many(GROUP_AT);
    assert.deepEqual(rootNodes(s), s.order);
    assert.equal(parentOf(s, "ws-0"), undefined);
  });

  it("beyond, holds one group per status that has any, what needs attention first", () => {
    const s = many(GROUP_AT + 1);
    const root = rootNodes(s);
    assert.ok(root.every(isGroup));
    assert.deepEqual(
      root.map((g) => (isGroup(g) ? g.status : g)),
      ["running", "failed", "active"],
    );
    assert.deepEqual(groupMembers(s, groupOf("failed")), ["ws-0", "ws-1", "ws-2"]);
    assert.equal(groupMembers(s, groupOf("active")).length, GROUP_AT + 1 - 5);
    assert.equal(parentOf(s, "ws-4"), groupOf("running"));
    assert.equal(groupLabel(groupOf("active"), 9995), "active · 9,995");
  });
});

describe("refreshTargets", () => {
  it("refreshes only the item a notification names when the list is flat", () => {
    const prev = many(10);
    const next = reduceStatus(prev, status("ws-7", "queued"), T0).state;
    assert.deepEqual(refreshTargets(prev, next, ["ws-7"]), ["ws-7"]);
  });

  it("at scale, an item whose status stays is refreshed alone", () => {
    const prev = many(10_000);
    const next = reduceStatus(prev, status("ws-4", "running", "r1", { progress: { percent: 50, step: null, message: "half way" } }), T0).state;
    assert.deepEqual(refreshTargets(prev, next, ["ws-4"]), ["ws-4"]);
  });

  it("at scale, an item that moves refreshes the group it left and the one it joined", () => {
    const prev = many(10_000);
    const next = reduceStatus(prev, status("ws-9000", "running"), T0).state;
    assert.deepEqual(refreshTargets(prev, next, ["ws-9000"]), [groupOf("active"), groupOf("running")]);
    assert.ok(groupMembers(next, groupOf("running")).includes("ws-9000"));
  });

  it("a group that appears or empties refreshes the whole tree", () => {
    const prev = many(10_000);
    const queued = reduceStatus(prev, status("ws-9000", "queued"), T0).state;
    assert.equal(refreshTargets(prev, queued, ["ws-9000"]), "all");
    let s = queued;
    for (const slug of ["ws-0", "ws-1"]) s = reduceStatus(s, status(slug, "completed"), T0).state;
    const last = reduceStatus(s, status("ws-2", "completed"), T0).state;
    assert.equal(refreshTargets(s, last, ["ws-2"]), "all");
  });

  it("a new list, a slug it does not know, or crossing GROUP_AT refreshes the whole tree", () => {
    const prev = many(GROUP_AT);
    assert.equal(refreshTargets(prev, prev, "all"), "all");
    assert.equal(refreshTargets(prev, many(GROUP_AT + 1), ["ws-0"]), "all");
    const big = many(GROUP_AT + 1);
    assert.equal(refreshTargets(big, big, ["nobody"]), "all");
  });
});
