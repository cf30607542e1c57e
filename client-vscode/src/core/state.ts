/**
 * Client-side state of the workstreams and the reducer from server messages to it.
 *
 * Immutable: every reducer returns a new state (or the same object when nothing changed), so the UI
 * layer can tell exactly which item to refresh. No `vscode` import.
 */
import {
  isFinalStatus,
  type CurrentRun,
  type RunSummary,
  type Status,
  type Workstream,
  type WorkstreamResult,
  type WsStatusNotification,
} from "../protocol";

export interface WorkstreamView {
  readonly ws: Workstream;
  /** The run this workstream is queued or running in, if known. */
  readonly runId: string | null;
  /**
   * Epoch ms when the run started (for a live elapsed time): the server's `startedAt`, or when the client
   * first saw it running if the server did not say; null when not running.
   */
  readonly runningSince: number | null;
}

export interface State {
  /** In the server's list order; new workstreams are appended. */
  readonly order: readonly string[];
  readonly items: ReadonlyMap<string, WorkstreamView>;
}

export const EMPTY_STATE: State = { order: [], items: new Map() };

/** The result of applying one message: the new state and the slugs whose items changed. */
export interface Reduction {
  readonly state: State;
  readonly changed: readonly string[];
  /** True when the message named a workstream the state does not know (the list should be re-fetched). */
  readonly unknown: boolean;
}

/** Replaces the whole state with a fresh `aidp/wsList` answer, keeping live run data where it still applies. */
export function reduceList(prev: State, workstreams: readonly Workstream[], now: number): State {
  const items = new Map<string, WorkstreamView>();
  for (const ws of workstreams) items.set(ws.slug, viewOf(ws, prev.items.get(ws.slug), now));
  return { order: workstreams.map((ws) => ws.slug), items };
}

/**
 * Applies an `aidp/wsUpdated` notification: the records it carries replace theirs, as a list would.
 * One of a workstream the state does not know changes nothing (the list should be re-fetched).
 */
export function reduceRecords(prev: State, workstreams: readonly Workstream[], now: number): Reduction {
  if (workstreams.some((ws) => !prev.items.has(ws.slug))) return { state: prev, changed: [], unknown: true };
  const items = new Map(prev.items);
  for (const ws of workstreams) items.set(ws.slug, viewOf(ws, prev.items.get(ws.slug), now));
  return { state: { order: prev.order, items }, changed: workstreams.map((ws) => ws.slug), unknown: false };
}

/** A record from the server, with the live run data the client already had where it still applies. */
function viewOf(ws: Workstream, old: WorkstreamView | undefined, now: number): WorkstreamView {
  const live = ws.status === "running" || ws.status === "queued";
  const current = live ? (ws.currentRun ?? null) : null;
  return {
    ws,
    runId: live ? (current?.runId ?? old?.runId ?? null) : null,
    runningSince: ws.status === "running" ? (epochMs(current?.startedAt) ?? old?.runningSince ?? now) : null,
  };
}

/** Applies one `aidp/wsStatus` notification: only the item it names changes. */
export function reduceStatus(prev: State, raw: WsStatusNotification, now: number): Reduction {
  // Tolerate a server that leaves out null fields.
  const n: WsStatusNotification = {
    ...raw,
    runId: raw.runId ?? null,
    exitCode: raw.exitCode ?? null,
    durationS: raw.durationS ?? null,
    error: raw.error ?? null,
  };
  const old = prev.items.get(n.slug);
  if (old === undefined) {
    return { state: prev, changed: [], unknown: true };
  }
  const nowIso = new Date(now).toISOString();
  let ws: Workstream = { ...old.ws, status: n.status, updatedAt: nowIso };
  let runId = old.runId;
  let runningSince = old.runningSince;
  switch (n.status) {
    case "queued":
      runId = n.runId;
      runningSince = null;
      ws = { ...ws, currentRun: currentRun(n, null) };
      break;
    case "running": {
      // A progress update of the same run says nothing new of its start or its host: keep them.
      const sameRun = old.ws.status === "running" && old.runId === n.runId;
      runningSince = epochMs(raw.startedAt) ?? (sameRun ? old.runningSince : null) ?? now;
      runId = n.runId;
      ws = { ...ws, currentRun: currentRun(n, new Date(runningSince).toISOString(), sameRun ? (old.ws.currentRun?.host ?? null) : null) };
      break;
    }
    case "completed":
    case "failed":
    case "error":
    case "cancelled":
    case "blocked": {
      const startedAt =
        old.runningSince !== null
          ? new Date(old.runningSince).toISOString()
          : n.durationS !== null
            ? new Date(now - n.durationS * 1000).toISOString()
            : null;
      const result: WorkstreamResult = {
        slug: n.slug,
        status: n.status,
        exitCode: n.exitCode,
        startedAt,
        finishedAt: nowIso,
        durationS: n.durationS,
        error: n.error,
        // The new run's log path arrives with the run summary (or wsList / wsLog).
        logPath: null,
        sandbox: n.sandbox ?? null,
        // Where it ran: said with the final status, else as it was said when it started running.
        host: n.host ?? old.ws.currentRun?.host ?? null,
      };
      ws = { ...ws, lastResult: result, currentRun: null };
      runId = null;
      runningSince = null;
      break;
    }
    case "active":
    case "paused":
    case "landed":
      runId = null;
      runningSince = null;
      ws = { ...ws, currentRun: null };
      break;
  }
  const items = new Map(prev.items);
  items.set(n.slug, { ws, runId, runningSince });
  return { state: { order: prev.order, items }, changed: [n.slug], unknown: false };
}

/**
 * The run a `queued`/`running` notification tells of: which attempt, what a queued one waits for, and
 * the machine a running one runs on (`knownHost`: as an earlier notification of the same run said).
 */
function currentRun(n: WsStatusNotification, startedAt: string | null, knownHost: string | null = null): CurrentRun | null {
  if (n.runId === null) return null;
  return {
    runId: n.runId,
    startedAt,
    attempt: n.attempt ?? 1,
    maxAttempts: n.maxAttempts ?? 1,
    waiting: n.waiting ?? null,
    progress: n.progress ?? null,
    host: n.host ?? knownHost,
  };
}

/** Epoch ms of an ISO time from the server; undefined when absent or unreadable. */
function epochMs(iso: string | null | undefined): number | undefined {
  if (iso === null || iso === undefined) return undefined;
  const ms = Date.parse(iso);
  return Number.isNaN(ms) ? undefined : ms;
}

/** Applies the results of a finished run (they carry the log paths and server timestamps). */
export function reduceSummary(prev: State, summary: RunSummary): Reduction {
  const items = new Map(prev.items);
  const changed: string[] = [];
  let unknown = false;
  for (const result of summary.results) {
    const old = items.get(result.slug);
    if (old === undefined) {
      unknown = true;
      continue;
    }
    // A later run may already have started this workstream again; then keep the live status.
    const live = old.ws.status === "queued" || old.ws.status === "running";
    const status: Status = live && old.runId !== summary.runId ? old.ws.status : result.status;
    const ended = status === result.status;
    items.set(result.slug, {
      ws: { ...old.ws, status, lastResult: result, currentRun: ended ? null : old.ws.currentRun },
      runId: ended ? null : old.runId,
      runningSince: ended ? null : old.runningSince,
    });
    changed.push(result.slug);
  }
  return { state: { order: prev.order, items }, changed, unknown };
}

export interface Counts {
  total: number;
  running: number;
  queued: number;
  /** Workstreams that aidp/wsRunAll would run: not paused, not completed, not queued or running. */
  runnable: number;
}

export function countStates(state: State): Counts {
  const counts: Counts = { total: 0, running: 0, queued: 0, runnable: 0 };
  for (const { ws } of state.items.values()) {
    counts.total += 1;
    if (ws.status === "running") counts.running += 1;
    else if (ws.status === "queued") counts.queued += 1;
    if (isRunAllCandidate(ws.status)) counts.runnable += 1;
  }
  return counts;
}

/** The workstreams `aidp/wsRunAll` runs: every one not paused, completed, landed, running (nor queued). */
export function isRunAllCandidate(status: Status): boolean {
  return (
    status !== "paused" && status !== "completed" && status !== "landed" && status !== "running" && status !== "queued"
  );
}

export function workstreams(state: State): Workstream[] {
  const out: Workstream[] = [];
  for (const slug of state.order) {
    const view = state.items.get(slug);
    if (view !== undefined) out.push(view.ws);
  }
  return out;
}

export { isFinalStatus };
