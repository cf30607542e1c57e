/**
 * Ready worktrees and word when a workstream fails: the setup state's tooltip lines, and the
 * notification `aidp.notifyOnFailure` shows for each failed workstream. No `vscode` import.
 */
import type { SetupState, Workstream, WsStatusNotification } from "../protocol";
import { firstLine } from "./format";

/** The tooltip's setup lines: what was copied, the setup's state, and how to redo a failed one. */
export function setupLines(ws: Workstream): string[] {
  const setup: SetupState | null | undefined = ws.setup;
  if (setup === null || setup === undefined) return [];
  const lines = setup.copied.length > 0 ? [`Copied: ${setup.copied.join(", ")}`] : [];
  const command = setup.command !== null && setup.command !== undefined ? ` (${setup.command.join(" ")})` : "";
  if (setup.status === "none") lines.push("Setup: none");
  else if (setup.status === "failed") {
    lines.push(`Setup: failed${command}: ${firstLine(setup.error ?? "", 200)}`, "Redo it with 'AIDP: Redo Setup'.");
  } else lines.push(`Setup: ${setup.status}${command}`);
  return lines;
}

/** The row's description parts: said only when the setup keeps the workstream from running. */
export function setupParts(ws: Workstream): string[] {
  if (ws.setup?.status === "failed") return ["setup failed"];
  if (ws.setup?.status === "running") return ["setting up"];
  return [];
}

/**
 * The row's context flags: `canSetup` (AIDP: Redo Setup) for a workstream made with a setup, while
 * neither it nor its setup runs (the command palette offers it for any workstream).
 */
export function setupFlags(ws: Workstream): string[] {
  const live = ws.status === "queued" || ws.status === "running";
  return ws.setup === null || ws.setup === undefined || ws.setup.status === "running" || live ? [] : ["canSetup"];
}

/**
 * The notification for a workstream that just failed or errored (once per run and workstream:
 * `seen` remembers which were said), or undefined when there is nothing to say.
 */
export function failureNotice(n: WsStatusNotification, seen: Set<string>): string | undefined {
  if ((n.status !== "failed" && n.status !== "error") || n.runId === null) return undefined;
  const key = `${n.runId}\u0000${n.slug}`;
  if (seen.has(key)) return undefined;
  seen.add(key);
  const code = n.exitCode !== null && n.exitCode !== undefined ? ` (exit code ${n.exitCode})` : "";
  const why = n.error !== null && n.error !== undefined && n.error.length > 0 ? `: ${firstLine(n.error, 200)}` : "";
  return `AIDP: ${n.slug} ${n.status}${code}${why}`;
}
