/** How a workstream looks in the tree: description, icon, tooltip, context value. No `vscode` import. */
import * as os from "node:os";
import type { Progress, RunSummary, Status, Workstream, WorkstreamResult } from "../protocol";
import type { WorkstreamView } from "./state";

/** A codicon id (for `new ThemeIcon(id, new ThemeColor(color))`). */
export interface IconSpec {
  id: string;
  color?: string;
}

export const STATUS_ICONS: Readonly<Record<Status, IconSpec>> = {
  active: { id: "circle-large-outline" },
  paused: { id: "debug-pause", color: "disabledForeground" },
  queued: { id: "clock", color: "charts.yellow" },
  running: { id: "sync~spin", color: "charts.blue" },
  completed: { id: "pass", color: "testing.iconPassed" },
  failed: { id: "error", color: "testing.iconFailed" },
  error: { id: "warning", color: "problemsWarningIcon.foreground" },
  cancelled: { id: "circle-slash", color: "disabledForeground" },
  landed: { id: "git-merge", color: "gitDecoration.addedResourceForeground" },
  blocked: { id: "debug-disconnect", color: "charts.orange" },
};

export function iconFor(status: Status): IconSpec {
  return STATUS_ICONS[status];
}

/** 0.4 -> "0.4s", 75 -> "1m 15s", 3700 -> "1h 01m". */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return "";
  if (seconds < 10) return `${seconds.toFixed(1)}s`;
  if (seconds < 60) return `${Math.floor(seconds)}s`;
  const total = Math.floor(seconds);
  if (total < 3600) {
    const m = Math.floor(total / 60);
    const s = total % 60;
    return `${m}m ${String(s).padStart(2, "0")}s`;
  }
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  return `${h}h ${String(m).padStart(2, "0")}m`;
}

/** Signal names by number on this machine (the server runs here too): 15 -> "SIGTERM". First name wins (SIGABRT, not SIGIOT). */
const SIGNAL_NAMES: ReadonlyMap<number, string> = (() => {
  const names = new Map<number, string>();
  for (const [name, n] of Object.entries(os.constants.signals)) if (!names.has(n)) names.set(n, name);
  return names;
})();

/** 15 -> "SIGTERM"; a number this machine has no name for -> "signal 77". */
export function signalName(signal: number): string {
  return SIGNAL_NAMES.get(signal) ?? `signal ${signal}`;
}

/**
 * "exit 3"; for a negative exit code, the signal as a person says it: "stopped by SIGTERM" when the
 * workstream was cancelled (aidp stopped it), else "killed by SIGSEGV".
 */
export function formatExitCode(exitCode: number, status?: Status): string {
  if (exitCode >= 0) return `exit ${exitCode}`;
  return `${status === "cancelled" ? "stopped" : "killed"} by ${signalName(-exitCode)}`;
}

/**
 * A finished status with its exit code: "failed · exit 3", "cancelled (stopped by SIGTERM)", "completed".
 * A signal reads as the reason for the status; an exit code as a detail of it.
 */
export function formatOutcome(status: Status, exitCode: number | null): string {
  if (exitCode === null || (exitCode === 0 && status === "completed")) return status;
  return exitCode < 0 ? `${status} (${formatExitCode(exitCode, status)})` : `${status} · ${formatExitCode(exitCode)}`;
}

/**
 * The item's description: the status plus the duration (or live elapsed time) or exit code.
 * e.g. "running 12s", "completed · 3.2s", "failed · exit 3 · 1.1s".
 */
export function describe(view: WorkstreamView, now: number): string {
  const { ws } = view;
  switch (ws.status) {
    case "running": {
      const running =
        view.runningSince === null ? "running" : `running ${formatDuration(Math.max(0, (now - view.runningSince) / 1000))}`;
      return [running, attemptLabel(ws), progressLabel(ws.currentRun?.progress)].filter((p) => p !== undefined).join(" · ");
    }
    case "queued": {
      const waiting = waitingLabel(ws);
      return waiting === undefined ? "queued" : `queued · ${waiting}`;
    }
    case "blocked":
      return `blocked · ${blockedReason(ws)}`;
    case "active":
    case "paused":
    case "landed":
      return ws.status;
    case "completed":
    case "failed":
    case "error":
    case "cancelled": {
      const result = ws.lastResult;
      const parts: string[] = [formatOutcome(ws.status, result?.exitCode ?? null)];
      if (result !== null && result.durationS !== null) parts.push(formatDuration(result.durationS));
      return parts.join(" · ");
    }
  }
}

/** "attempt 2/3" while a retry runs or waits; undefined for a first attempt. */
export function attemptLabel(ws: Workstream): string | undefined {
  const attempt = ws.currentRun?.attempt ?? 1;
  return attempt > 1 ? `attempt ${attempt}/${ws.currentRun?.maxAttempts ?? attempt}` : undefined;
}

/**
 * A running harness's progress for one-line places: "40% IMPLEMENTATION", "67%", "PLAN"; its message
 * when it says neither (an agent's current tool); undefined when it said nothing.
 */
export function progressLabel(progress: Progress | null | undefined): string | undefined {
  if (progress === null || progress === undefined) return undefined;
  const percent = progress.percent === null ? undefined : `${Math.round(progress.percent)}%`;
  const head = [percent, progress.step ?? undefined].filter((p) => p !== undefined && p.length > 0).join(" ");
  if (head.length > 0) return head;
  return progress.message !== null && progress.message.length > 0 ? firstLine(progress.message, 60) : undefined;
}

/** What a queued workstream waits for ("waiting for a, b"); undefined when the server did not say. */
export function waitingLabel(ws: Workstream): string | undefined {
  const waiting = ws.status === "queued" ? ws.currentRun?.waiting : undefined;
  return waiting !== null && waiting !== undefined && waiting.length > 0 ? waiting : undefined;
}

/** Why a blocked workstream did not run, without the "blocked:" the server's reason starts with. */
export function blockedReason(ws: Workstream): string {
  return firstLine(ws.lastResult?.error ?? "").replace(/^blocked:\s*/i, "") || "a dependency did not complete";
}

/** The first line of an error, shortened for one-line places. */
export function firstLine(text: string, max = 120): string {
  const line = text.split(/\r?\n/).find((l) => l.trim().length > 0) ?? "";
  return line.length > max ? `${line.slice(0, max - 1)}…` : line;
}

/** Plain-text tooltip: task, branch, status and the last error. */
export function tooltip(view: WorkstreamView, now: number): string {
  const { ws } = view;
  const lines = [`${ws.slug} — ${describe(view, now)}`, "", `Task: ${ws.task}`, `Branch: ${ws.branch}`];
  if (ws.baseBranch !== null) lines.push(`Base: ${ws.baseBranch}`);
  lines.push(`Worktree: ${ws.path}`);
  if (ws.command !== null) lines.push(`Command: ${ws.command.join(" ")}`);
  const progress = ws.status === "running" ? ws.currentRun?.progress : null;
  if (progress !== null && progress !== undefined) {
    const said = [progressLabel({ ...progress, message: null }), progress.message].filter((p) => p !== undefined && p !== null);
    if (said.length > 0) lines.push(`Progress: ${said.join(": ")}`);
  }
  const sandbox = ws.lastResult?.sandbox;
  if (sandbox !== null && sandbox !== undefined) lines.push(`Last run sandboxed: ${sandbox}`);
  const error = ws.lastResult?.error;
  if (error !== null && error !== undefined && error.length > 0) {
    lines.push("", ws.status === "blocked" ? "Blocked:" : "Last error:", error.trimEnd());
  }
  return lines.join("\n");
}

/** The accessible label: slug and description (the e2e test reads it from the row's aria-label). */
export function ariaLabel(view: WorkstreamView, now: number): string {
  return `${view.ws.slug}, ${describe(view, now)}`;
}

/**
 * The tree item's contextValue: space-separated flags matched by `viewItem =~ /\bflag\b/` in package.json.
 * "workstream" always; canRun, canCancel, canPause, canResume, canRemove, hasLog when they apply.
 */
export function contextValue(view: WorkstreamView): string {
  const status = view.ws.status;
  const live = status === "running" || status === "queued";
  const flags = ["workstream", `status-${status}`];
  if (!live && status !== "paused") flags.push("canRun");
  if (live) flags.push("canCancel");
  if (!live && status !== "paused") flags.push("canPause");
  if (status === "paused") flags.push("canResume");
  if (!live) flags.push("canRemove");
  if (status === "running" || view.ws.lastResult !== null) flags.push("hasLog");
  return flags.join(" ");
}

/** "2 completed, 1 failed" (zero counts left out). */
export function summaryCounts(
  summary: Pick<RunSummary, "completed" | "failed" | "errored" | "cancelled" | "blocked">,
): string {
  const parts: string[] = [];
  if (summary.completed > 0) parts.push(`${summary.completed} completed`);
  if (summary.failed > 0) parts.push(`${summary.failed} failed`);
  if (summary.errored > 0) parts.push(`${summary.errored} error${summary.errored === 1 ? "" : "s"}`);
  if (summary.cancelled > 0) parts.push(`${summary.cancelled} cancelled`);
  if ((summary.blocked ?? 0) > 0) parts.push(`${summary.blocked} blocked`);
  return parts.length > 0 ? parts.join(", ") : "nothing ran";
}

/** The notification text when a run ends. */
export function summaryMessage(summary: RunSummary): string {
  if (summary.total === 0) return "AIDP: nothing to run (every workstream is completed, paused or running).";
  const noun = summary.total === 1 ? "workstream" : "workstreams";
  return `AIDP: ran ${summary.total} ${noun} in ${formatDuration(summary.wallS)}: ${summaryCounts(summary)}.`;
}

/** Results that did not complete: failed, error (cancelled ones were asked for). */
export function failures(summary: RunSummary): WorkstreamResult[] {
  return summary.results.filter((r) => r.status === "failed" || r.status === "error");
}

/**
 * The status-bar text: how many running and queued. `spin`: false while a progress notification
 * already shows the run, so only one thing on screen spins for it.
 */
export function statusBarText(counts: { running: number; queued: number; total: number }, spin = true): string {
  if (counts.running === 0 && counts.queued === 0) {
    return `$(checklist) AIDP: ${counts.total === 0 ? "no workstreams" : "none running"}`;
  }
  const parts = [`$(${spin ? "sync~spin" : "sync"}) ${counts.running} running`];
  if (counts.queued > 0) parts.push(`${counts.queued} queued`);
  return parts.join(", ");
}

export function sortBySlug(list: readonly Workstream[]): Workstream[] {
  return [...list].sort((a, b) => a.slug.localeCompare(b.slug));
}
