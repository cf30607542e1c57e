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
export const WS_DIFF = "aidp/wsDiff";
export const WS_CONFLICTS = "aidp/wsConflicts";
export const WS_LAND = "aidp/wsLand";
export const WS_SYNC = "aidp/wsSync";

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
  /** aidp/wsLand refused a workstream (data: CannotLandData); those before it in `slugs` landed. */
  CannotLand: -32010,
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
  "landed",
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
  /** The commit the worktree started from (recorded at creation; null for older workstreams). */
  baseCommit?: string | null;
  /** What it changed against its base branch; null in wsNew's result, and where its branch or base branch is gone. */
  changes?: ChangeSummary | null;
  /** The run it is queued or running in, in this server or another aidp process; null when at rest. */
  currentRun?: CurrentRun | null;
}

export interface CurrentRun {
  runId: string;
  /** When the harness started; null while queued. */
  startedAt: string | null;
}

/** A workstream's branch against the merge-base with its base branch, and its worktree. */
export interface ChangeSummary {
  baseBranch: string;
  mergeBase: string | null;
  /** Commits on the branch and not on the base branch, and the reverse. */
  ahead: number;
  behind: number;
  files: number;
  added: number;
  removed: number;
  /** The worktree has uncommitted changes. */
  dirty: boolean;
  /** It would not merge cleanly into its base branch as that is now; null where not computed. */
  conflicts?: boolean | null;
}

export interface FileChange {
  path: string;
  /** git's letter: A, M, D, R, C or T. */
  status: string;
  /** null for a binary file. */
  added: number | null;
  removed: number | null;
  /** The source of a rename or copy. */
  oldPath?: string | null;
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

export interface WsDiffParams {
  slug: string;
  /** Defaults to the workstream's base branch. */
  base?: string;
  /** Bound on each patch in bytes (≥ 1); defaults to 1 MiB. */
  maxBytes?: number;
}

/** The committed work against the merge-base, and the uncommitted work apart. */
export interface Diff {
  slug: string;
  baseBranch: string;
  mergeBase: string | null;
  head: string;
  files: FileChange[];
  patch: string;
  uncommitted: FileChange[];
  uncommittedPatch: string;
  /** A patch was cut at maxBytes. */
  truncated: boolean;
}

export interface WsConflictsParams {
  /** Defaults to every workstream not landed. */
  slugs?: string[];
}

export interface BaseConflict {
  slug: string;
  baseBranch: string;
  clean: boolean;
  files: string[];
}

export interface PairConflict {
  a: string;
  b: string;
  files: string[];
}

export interface ConflictReport {
  withBase: BaseConflict[];
  /** Only the pairs that would conflict. */
  pairs: PairConflict[];
}

export type LandStrategy = "merge" | "squash" | "rebase";

export interface WsLandParams {
  /** At least one; landed in this order, stopping at the first that cannot land. */
  slugs: string[];
  /** Defaults to "merge". */
  strategy?: LandStrategy;
  /** Defaults to each workstream's base branch. */
  into?: string;
  /** Remove each landed workstream's worktree and branch. */
  rm?: boolean;
}

export interface LandResult {
  slug: string;
  into: string;
  strategy: LandStrategy;
  /** The target branch's new head. */
  commit: string;
  removed: boolean;
}

export interface WsLandResult {
  landed: LandResult[];
}

export type SyncStrategy = "rebase" | "merge";

export interface WsSyncParams {
  slug: string;
  /** Defaults to "rebase". */
  strategy?: SyncStrategy;
}

export interface SyncResult {
  slug: string;
  strategy: SyncStrategy;
  /** The workstream branch's new head. */
  head: string;
}

export interface WsStatusNotification {
  runId: string | null;
  slug: string;
  status: Status;
  exitCode: number | null;
  durationS: number | null;
  error: string | null;
  /** With `running`: when the harness started (elapsed time counts from it). */
  startedAt?: string | null;
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

/** Error data for -32010: the workstream that could not land, why, and the files concerned. */
export interface CannotLandData {
  slug: string;
  reason: string;
  files: string[];
  /** Those landed before it in the same request. */
  landed: LandResult[];
}
