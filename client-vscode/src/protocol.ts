/**
 * The aidp JSON-RPC contract: method names and payload types.
 *
 * Mirrors docs/protocol.md and server/aidp/protocol.py; keep all three in step.
 * This module must not import `vscode` (it is shared by the unit tests).
 */

// Requests (client -> server).
export const WS_RUN = "aidp/wsRun";
export const WS_RUN_ALL = "aidp/wsRunAll";
export const WS_LIST = "aidp/wsList";
export const WS_NEW = "aidp/wsNew";
export const WS_REMOVE = "aidp/wsRemove";
export const WS_PAUSE = "aidp/wsPause";
export const WS_RESUME = "aidp/wsResume";
export const WS_CANCEL = "aidp/wsCancel";
export const WS_LOG = "aidp/wsLog";

// Notifications (server -> client).
export const WS_STATUS = "aidp/wsStatus";
export const WS_OUTPUT = "aidp/wsOutput";
export const WS_LIST_CHANGED = "aidp/wsListChanged";

// JSON-RPC error codes used by the server.
export const ErrorCodes = {
  /** Bad params: missing field, wrong type, bad slug, unknown slug (data.unknown), refusal to lose work. */
  InvalidParams: -32602,
  /** A slug is already queued or running (data.running); nothing of the new run starts. */
  ServerBusy: -32002,
  /** A run was cancelled by $/cancelRequest. */
  RequestCancelled: -32800,
  MethodNotFound: -32601,
  /** The request was valid but failed (git error, bad config). */
  RequestFailed: -32803,
} as const;

export const STATUSES = [
  "active",
  "paused",
  "queued",
  "running",
  "completed",
  "failed",
  "error",
  "cancelled",
] as const;

export type Status = (typeof STATUSES)[number];

export type FinalStatus = "completed" | "failed" | "error" | "cancelled";

export const FINAL_STATUSES: readonly FinalStatus[] = ["completed", "failed", "error", "cancelled"];

export function isFinalStatus(status: Status): status is FinalStatus {
  return (FINAL_STATUSES as readonly string[]).includes(status);
}

export interface WorkstreamResult {
  slug: string;
  status: FinalStatus;
  /** Negative: killed by that signal. */
  exitCode: number | null;
  startedAt: string | null;
  finishedAt: string | null;
  durationS: number | null;
  /** For a failure: exit code or signal, and the last lines of output. */
  error: string | null;
  logPath: string | null;
}

export interface Workstream {
  /** ^[a-z0-9]+(-[a-z0-9]+)*$, at most 64 characters. */
  slug: string;
  task: string;
  /** Resting: active (never run), paused, or the last run's status. */
  status: Status;
  /** "aidp/<slug>". */
  branch: string;
  /** Absolute path of the worktree (.worktrees/<slug>). */
  path: string;
  baseBranch: string | null;
  /** Per-workstream override of [harness] command. */
  command: string[] | null;
  createdAt: string;
  updatedAt: string;
  lastResult: WorkstreamResult | null;
  /** Its folder is gone (an interrupted removal): wsRemove cleans up. */
  worktreeMissing?: boolean;
}

export interface RunSummary {
  runId: string;
  /** In request order. */
  results: WorkstreamResult[];
  total: number;
  completed: number;
  failed: number;
  errored: number;
  cancelled: number;
  /** Wall-clock seconds of the whole run. */
  wallS: number;
}

export interface RunOptions {
  /** 1..64; defaults to [harness] max_concurrent (else 3). */
  maxConcurrent?: number;
  /** Defaults to "execute". */
  mode?: string;
  steps?: string[];
  /** > 0; defaults to [harness] timeout_s (else none). */
  timeoutS?: number;
}

export interface WsRunParams extends RunOptions {
  /** At least one. */
  slugs: string[];
}

export type WsRunAllParams = RunOptions;

export type WsListParams = Record<string, never>;

export interface WsListResult {
  workstreams: Workstream[];
}

export interface WsNewParams {
  slug: string;
  task: string;
  baseBranch?: string;
  command?: string[];
}

export interface WsRemoveParams {
  slug: string;
  deleteBranch?: boolean;
  force?: boolean;
}

export type WsRemoveResult = Record<string, never>;

export interface SlugParams {
  slug: string;
}

export interface WsCancelParams {
  slugs?: string[];
  runId?: string;
}

export interface WsCancelResult {
  cancelled: string[];
}

export interface WsLogParams {
  slug: string;
  tailBytes?: number;
}

export interface WsLogResult {
  slug: string;
  logPath: string | null;
  text: string;
}

export interface WsStatusNotification {
  runId: string | null;
  slug: string;
  status: Status;
  exitCode: number | null;
  durationS: number | null;
  error: string | null;
}

export interface WsOutputNotification {
  runId: string;
  slug: string;
  text: string;
}

export type WsListChangedNotification = Record<string, never>;

/** Error data for -32602 with unknown slugs. */
export interface UnknownSlugsData {
  unknown: string[];
}

/** Error data for -32002. */
export interface RunningData {
  running: string[];
}
