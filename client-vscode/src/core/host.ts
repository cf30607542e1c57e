/**
 * Where a workstream's harness runs, when that is not the server's machine (`[executor] kind = "ray"`
 * runs it on a Ray node): the tree says so, and says nothing for a local run. No `vscode` import.
 */
import type { Workstream } from "../protocol";

/** "on 10.0.0.7" for the description of a workstream running remotely; none otherwise. */
export function hostParts(ws: Workstream): string[] {
  const host = ws.status === "running" ? ws.currentRun?.host : undefined;
  return host ? [`on ${host}`] : [];
}

/** The tooltip's line: where it runs now, else where its last run ran; none for a local run. */
export function hostTooltip(ws: Workstream): string[] {
  const running = ws.status === "running" ? ws.currentRun?.host : undefined;
  if (running) return [`Runs on: ${running}`];
  const last = ws.currentRun ? undefined : ws.lastResult?.host;
  return last ? [`Last run on: ${last}`] : [];
}
