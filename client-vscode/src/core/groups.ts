/**
 * The tree's shape at scale: up to GROUP_AT workstreams the tree lists them at its root, as always;
 * beyond, the root holds one folded group per status ("running · 3") and a group's workstreams are
 * fetched only when it is expanded. A status notification refreshes only what it changed: the item,
 * or, when it moved to another status, the two groups it left and joined (the whole tree only when
 * a group appears or empties). No `vscode` import.
 */
import { STATUSES, type Status } from "../protocol";
import type { Change } from "./store";
import type { State } from "./state";

/** More workstreams than this and the root is grouped by status. */
export const GROUP_AT = 200;

export interface StatusGroup {
  readonly kind: "group";
  readonly status: Status;
}

/** Where each status's group sits at the root: what needs attention first. */
const GROUP_ORDER: readonly Status[] = ["running", "queued", "failed", "error", "blocked", "cancelled", "paused", "active", "completed", "landed"];

// One object per status, so that the tree can be told which group changed (it compares elements).
const GROUPS: ReadonlyMap<Status, StatusGroup> = new Map(STATUSES.map((status) => [status, Object.freeze({ kind: "group" as const, status })]));

export function groupOf(status: Status): StatusGroup {
  const group = GROUPS.get(status);
  if (group === undefined) throw new Error(`unknown status ${status}`);
  return group;
}

export function isGroup(element: unknown): element is StatusGroup {
  return typeof element === "object" && element !== null && (element as { kind?: unknown }).kind === "group";
}

export function isGrouped(state: State): boolean {
  return state.order.length > GROUP_AT;
}

/** How many workstreams have each status. */
export function statusCounts(state: State): Map<Status, number> {
  const counts = new Map<Status, number>();
  for (const { ws } of state.items.values()) counts.set(ws.status, (counts.get(ws.status) ?? 0) + 1);
  return counts;
}

/** The root: the workstreams themselves, or the groups that have any. */
export function rootNodes(state: State): (string | StatusGroup)[] {
  if (!isGrouped(state)) return [...state.order];
  const counts = statusCounts(state);
  return GROUP_ORDER.filter((status) => (counts.get(status) ?? 0) > 0).map(groupOf);
}

/** A group's workstreams, in the list's order. */
export function groupMembers(state: State, group: StatusGroup): string[] {
  return state.order.filter((slug) => state.items.get(slug)?.ws.status === group.status);
}

/** Where a workstream sits: its group, or the root (undefined). */
export function parentOf(state: State, slug: string): StatusGroup | undefined {
  const status = state.items.get(slug)?.ws.status;
  return isGrouped(state) && status !== undefined ? groupOf(status) : undefined;
}

/** "failed · 12" */
export function groupLabel(group: StatusGroup, count: number): string {
  return `${group.status} · ${count.toLocaleString("en-US")}`;
}

/** What to refresh after `change` turned `prev` into `next`: "all", or the items and groups. */
export function refreshTargets(prev: State, next: State, change: Change): "all" | (string | StatusGroup)[] {
  if (change === "all" || isGrouped(prev) !== isGrouped(next)) return "all";
  if (!isGrouped(next)) return [...change];
  const targets = new Set<string | StatusGroup>();
  let counts: [Map<Status, number>, Map<Status, number>] | undefined;
  for (const slug of change) {
    const was = prev.items.get(slug)?.ws.status;
    const now = next.items.get(slug)?.ws.status;
    if (was === undefined || now === undefined) return "all";
    if (was === now) {
      targets.add(slug);
      continue;
    }
    counts ??= [statusCounts(prev), statusCounts(next)];
    // A group that appears or empties changes the root's children.
    if ((counts[0].get(now) ?? 0) === 0 || (counts[1].get(was) ?? 0) === 0) return "all";
    targets.add(groupOf(was)).add(groupOf(now));
  }
  return [...targets];
}
