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
export const DOCTOR = "aidp/doctor";
export const WS_SET = "aidp/wsSet";
export const WS_SETUP = "aidp/wsSetup";

// Notifications (server -> client).
export const WS_STATUS = "aidp/wsStatus";
export const WS_OUTPUT = "aidp/wsOutput";
export const WS_LIST_CHANGED = "aidp/wsListChanged";
export const WS_UPDATED = "aidp/wsUpdated";
export const RUN_PROGRESS = "aidp/runProgress";

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
  "blocked",
] as const;

export type Status = (typeof STATUSES)[number];

/** `blocked`: not run, because a dependency failed, errored, was cancelled or was blocked (the reason is in `error`). */
export type FinalStatus = "completed" | "failed" | "error" | "cancelled" | "blocked";

export const FINAL_STATUSES: readonly FinalStatus[] = ["completed", "failed", "error", "cancelled", "blocked"];

export function isFinalStatus(status: Status): status is FinalStatus {
  return (FINAL_STATUSES as readonly string[]).includes(status);
}

/** The named priority levels; a priority is stored as an integer from -100 to 100. */
export const PRIORITIES = { high: 10, normal: 0, low: -10 } as const;

export type PriorityName = keyof typeof PRIORITIES;

/** What requests accept: a name, or an integer from -100 to 100 (higher starts first). */
export type Priority = PriorityName | number;

/** On the first failure: `soon` starts nothing new and lets running ones finish, `now` cancels them too. */
export type Halt = "never" | "soon" | "now";

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
  /** How it ran sandboxed ("bwrap", maybe with ", no network", ", others hidden"); null: unsandboxed. */
  sandbox?: string | null;
  /** The machine its harness ran on (`[executor] kind = "ray"`: a Ray node's host name); null: the server's own. */
  host?: string | null;
  /** Which attempt this result is (with `[harness] retries`, each attempt is its own record); 1 without retries. */
  attempt?: number;
  /** CPU seconds of the harness's process tree; null where it never started. */
  cpuS?: number | null;
  /** Peak resident memory of the harness's process tree, in KiB; null where it never started. */
  peakRssKb?: number | null;
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
  /** Higher starts first among those ready; 10 high, 0 normal, -10 low (see PRIORITIES). */
  priority?: number;
  /** Its dependencies: the slugs that must be completed or landed before it starts. */
  after?: string[];
  /** Expected run time in seconds, from recorded history; null when unknown. */
  expectedS?: number | null;
  /** How its worktree was made ready ([worktree] copy and setup); null for one made before aidp did. */
  setup?: SetupState | null;
}

/** A worktree's setup: "none" (no setup command; files may have been copied), "running", "ok" or "failed". */
export interface SetupState {
  status: "none" | "running" | "ok" | "failed";
  /** Why it failed: the first line says how it ended ("exit code 7"), the next ones its last output. */
  error: string | null;
  logPath: string | null;
  command: string[] | null;
  /** The files copied from the main checkout, relative to the worktree. */
  copied: string[];
  finishedAt: string | null;
  /** While running: the setup's process (it leads its process group), recorded before it runs. */
  pid: number | null;
  /** Its start time in clock ticks since boot: with `pid`, how a later aidp ends it if this one dies. */
  pidStart: number | null;
}

export interface CurrentRun {
  runId: string;
  /** When the harness started; null while queued. */
  startedAt: string | null;
  /** Which attempt, of at most maxAttempts (1 of 1 without retries). */
  attempt?: number;
  maxAttempts?: number;
  /** While queued: what it waits for (dependencies, a slot, a retry's back-off); null otherwise. */
  waiting?: string | null;
  /** While running: the harness's latest progress report (at most a second old); null when it said none. */
  progress?: Progress | null;
  /** While running: the machine its harness runs on (a Ray node's host name); null: the server's own. */
  host?: string | null;
}

/** How far a running harness says it is (its `AIDP_PROGRESS` reports, or its agent's events). */
export interface Progress {
  /** 0-100, one decimal: reported, or step-wise from the run's steps. */
  percent: number | null;
  step: string | null;
  /** One line, at most 200 characters: what it does now (a tool, a file). */
  message: string | null;
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
  /** Not run because a dependency did not complete. */
  blocked?: number;
  /** The bound on concurrent workstreams this run used. */
  concurrency?: number | null;
  /** Why that bound (e.g. "auto: 2 (2 cores, ...)", or a --max-concurrent lowered to the repository's bound). */
  concurrencyNote?: string | null;
  /** The makespan forecast at the start, in seconds, from history; null without history. */
  forecastS?: number | null;
  /** Dependencies the server added to the run (not named in the request). */
  pulledIn?: string[];
}

export interface RunOptions {
  /** 1..64; can only lower the repository's bound ([scheduler] max_concurrent). */
  maxConcurrent?: number;
  /** Defaults to "execute". */
  mode?: string;
  steps?: string[];
  /** > 0; defaults to [harness] timeout_s (else none). */
  timeoutS?: number;
  /** Defaults to [harness] halt (else "never"). */
  halt?: Halt;
  /** A dependent's worktree starts from its dependencies' branches; defaults to [scheduler] base_from_deps. */
  baseFromDeps?: boolean;
}

export interface WsRunParams extends RunOptions {
  /** At least one. Dependencies not done yet are pulled into the run (RunSummary.pulledIn). */
  slugs: string[];
  /** Refuse (-32602, naming them) instead of pulling in dependencies not done yet. */
  noDeps?: boolean;
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
  /** Defaults to "normal". */
  priority?: Priority;
  /** Slugs it runs after; an unknown slug or a cycle is refused (-32602) and nothing is created. */
  after?: string[];
}

/** At least one of priority and after; `after: []` drops every dependency. Result: the Workstream. */
export interface WsSetParams {
  slug: string;
  priority?: Priority;
  after?: string[];
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

/** One finding of `aidp/doctor` (as `aidp doctor --json`). */
export interface DoctorFinding {
  level: "ok" | "warning" | "problem";
  /** git, config, harness, state, worktrees, cgroups or sandbox. */
  check: string;
  /** What was found. */
  message: string;
  /** What to do (for an `ok`, a recommendation where there is one). */
  fix: string | null;
}

export interface DoctorReport {
  /** No `problem` among the findings. */
  ok: boolean;
  findings: DoctorFinding[];
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
  /** With the final status: how the run was sandboxed, as `WorkstreamResult.sandbox`. */
  sandbox?: string | null;
  /** With retries: which attempt this is, of at most maxAttempts. */
  attempt?: number | null;
  maxAttempts?: number | null;
  /** With `queued`: what it waits for (dependencies, a slot another aidp process holds, a retry's back-off). */
  waiting?: string | null;
  /** With `running`: the harness's latest progress; a `running` notification is sent again when it changes. */
  progress?: Progress | null;
  /** With `running` and the final status: the machine the harness runs on (a Ray node's host name); null: the server's own. */
  host?: string | null;
  /** Another aidp process's run (a terminal's `aidp ws run`), told as the server follows it: never one this client started. */
  elsewhere?: boolean;
}

/**
 * The records of workstreams whose runs ended, as `aidp/wsList` would give them now: sent in place of
 * `aidp/wsListChanged` to a client that declared `capabilities.experimental.aidp.wsUpdated`; never older
 * than a status the client was told.
 */
export interface WsUpdatedNotification {
  workstreams: Workstream[];
}

/** How far a run is: sent when the counts or the pace change, and at most every 0.5 s while jobs run. */
export interface RunProgressNotification {
  runId: string;
  total: number;
  /** Ended, whatever the status (blocked included). */
  done: number;
  running: number;
  /** Seconds left, from history and the bound; null while unknown. */
  etaS: number | null;
  /** The bound in force now (lowered while rate limits come). */
  concurrency: number | null;
  /** Why the pace changed or the run halted, e.g. "rate limited (x): concurrency 4 -> 2". */
  note: string | null;
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
