/**
 * How a workstream's scheduling reads: its priority, its dependencies, its expected run time, its
 * attempts, and a run's progress for the status bar. No `vscode` import.
 */
import { PRIORITIES, type RunProgressNotification, type RunSummary, type Workstream } from "../protocol";
import { formatDuration, waitingLabel } from "./format";

/** The bounds of a priority given as a number (the server refuses others). */
export const PRIORITY_MIN = -100;
export const PRIORITY_MAX = 100;

/** "high" for 10, "normal" for 0, "low" for -10; any other level as its number ("5"). */
export function priorityName(priority: number): string {
  return Object.entries(PRIORITIES).find(([, value]) => value === priority)?.[0] ?? String(priority);
}

/** A name (high, normal, low) or a whole number in -100..100 as the integer; undefined for anything else. */
export function parsePriority(text: string): number | undefined {
  const value = text.trim().toLowerCase();
  const named = Object.entries(PRIORITIES).find(([name]) => name === value);
  if (named !== undefined) return named[1];
  if (!/^[+-]?\d+$/.test(value)) return undefined;
  const n = Number(value);
  return n >= PRIORITY_MIN && n <= PRIORITY_MAX ? n : undefined;
}

/** Why `text` is not a priority (for an input box's validation), or undefined when it is one. */
export function priorityError(text: string): string | undefined {
  return parsePriority(text) === undefined
    ? `Type high, normal or low, or a whole number from ${PRIORITY_MIN} to ${PRIORITY_MAX}.`
    : undefined;
}

/** An entry of the Set Priority quick pick; `priority` undefined: the person types a number. */
export interface PriorityChoice {
  label: string;
  description: string;
  priority: number | undefined;
}

/** The named levels, the current one marked, then "Other number..." (which says the current one if it is not named). */
export function priorityChoices(current: number): PriorityChoice[] {
  const named = Object.entries(PRIORITIES).map(([name, value]) => ({
    label: name,
    description: value === current ? `${value} · current` : String(value),
    priority: value,
  }));
  const range = `a whole number from ${PRIORITY_MIN} to ${PRIORITY_MAX}`;
  const unnamed = named.every((c) => c.priority !== current);
  return [...named, { label: "Other number...", description: unnamed ? `${range} · current: ${current}` : range, priority: undefined }];
}

/** The priority for a one-line place: "↑ high", "↓ low", "↑ 5", "↓ -3"; undefined for normal (0). */
export function priorityLabel(priority: number | undefined): string | undefined {
  if (priority === undefined || priority === 0) return undefined;
  return `${priority > 0 ? "↑" : "↓"} ${priorityName(priority)}`;
}

/** "after: a, b"; undefined without dependencies. */
export function afterLabel(after: readonly string[] | undefined): string | undefined {
  return after !== undefined && after.length > 0 ? `after: ${after.join(", ")}` : undefined;
}

/** "~1m 20s expected" for a workstream about to run (or running) whose history says how long it takes. */
export function expectedLabel(ws: Workstream): string | undefined {
  const upcoming = ws.status === "active" || ws.status === "paused" || ws.status === "queued" || ws.status === "running";
  return upcoming && ws.expectedS !== null && ws.expectedS !== undefined ? `${roughly(ws.expectedS)} expected` : undefined;
}

/** The description's scheduling parts after the status: priority, dependencies, expected time. */
export function scheduleParts(ws: Workstream): string[] {
  return [priorityLabel(ws.priority), afterLabel(ws.after), expectedLabel(ws)].filter((p): p is string => p !== undefined);
}

/** The tooltip's scheduling lines, each said in full. */
export function scheduleTooltip(ws: Workstream): string[] {
  const lines: string[] = [];
  const priority = ws.priority ?? 0;
  lines.push(`Priority: ${priorityName(priority)}${priorityName(priority) === String(priority) ? "" : ` (${priority})`}`);
  if (ws.after !== undefined && ws.after.length > 0) lines.push(`Runs after: ${ws.after.join(", ")}`);
  if (ws.expectedS !== null && ws.expectedS !== undefined) {
    lines.push(`Expected run time: ${roughly(ws.expectedS)} (from its past runs)`);
  }
  const run = ws.currentRun;
  if (run !== null && run !== undefined && (ws.status === "queued" || ws.status === "running") && (run.maxAttempts ?? 1) > 1) {
    lines.push(`Attempt: ${run.attempt ?? 1} of ${run.maxAttempts ?? 1}`);
  }
  const waiting = waitingLabel(ws);
  if (waiting !== undefined) lines.push(`Waiting: ${waiting}`);
  return lines;
}

/** What a run's summary adds when the server pulled dependencies into it: " Pulled in as dependencies: a, b." */
export function pulledInNote(summary: Pick<RunSummary, "pulledIn">): string {
  const pulled = summary.pulledIn ?? [];
  return pulled.length > 0 ? ` Pulled in as dependencies: ${pulled.join(", ")}.` : "";
}

/** "~1m 20s left", "< 1s left"; undefined when the server has no forecast (no history yet). */
export function etaLabel(etaS: number | null | undefined): string | undefined {
  if (etaS === null || etaS === undefined || !Number.isFinite(etaS)) return undefined;
  return `${roughly(etaS)} left`;
}

/** A forecast, no finer than the history it comes from: "~1m 20s", "~2.1s", and "< 1s" below a second. */
function roughly(seconds: number): string {
  return seconds < 1 ? "< 1s" : `~${formatDuration(seconds)}`;
}

/**
 * The runs going now, from `aidp/runProgress`: the latest counts of each and the last pace note it
 * gave (a note comes when the pace changes, and stays meaningful until the next one).
 */
export class RunProgressBoard {
  private readonly runs = new Map<string, RunProgressNotification>();

  /** Takes one notification; a run whose every workstream has ended leaves the board. */
  apply(n: RunProgressNotification): void {
    if (n.done >= n.total) {
      this.runs.delete(n.runId);
      return;
    }
    const note = n.note ?? this.runs.get(n.runId)?.note ?? null;
    this.runs.set(n.runId, { ...n, note });
  }

  /** A run ended (its request answered, or the server stopped). */
  end(runId: string): void {
    this.runs.delete(runId);
  }

  clear(): void {
    this.runs.clear();
  }

  /**
   * The status-bar text: "AIDP: 3/10 · ~1m 20s left" (several runs add up; the time left is the
   * latest one's end); undefined when no run goes.
   */
  text(): string | undefined {
    if (this.runs.size === 0) return undefined;
    const runs = [...this.runs.values()];
    const done = runs.reduce((sum, r) => sum + r.done, 0);
    const total = runs.reduce((sum, r) => sum + r.total, 0);
    const etas = runs.map((r) => r.etaS).filter((e): e is number => e !== null);
    const left = etaLabel(etas.length === runs.length ? Math.max(...etas) : undefined);
    return `$(watch) AIDP: ${done}/${total}${left === undefined ? " done" : ` · ${left}`}`;
  }

  /** The tooltip: each run's counts, bound and time left, and its pace note in full. */
  tooltip(): string {
    const lines: string[] = [];
    for (const r of this.runs.values()) {
      const parts = [`${r.done} of ${r.total} done`, `${r.running} running`];
      if (r.concurrency !== null) parts.push(`at most ${r.concurrency} at once`);
      parts.push(etaLabel(r.etaS) ?? "no forecast yet (no past runs to go by)");
      lines.push(`Run ${r.runId}: ${parts.join(", ")}`);
      if (r.note !== null && r.note.length > 0) lines.push(`  ${r.note}`);
    }
    return lines.join("\n");
  }
}
