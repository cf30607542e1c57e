/**
 * Review and land, the parts without `vscode`: how a change summary reads, which badge a workstream
 * wears, which revision each side of a diff shows (and reading it with `git show`), and the messages
 * for landing and conflicts.
 */
import { execFile } from "node:child_process";
import * as path from "node:path";
import {
  ErrorCodes,
  type CannotLandData,
  type ChangeSummary,
  type ConflictReport,
  type Diff,
  type FileChange,
  type LandResult,
  type LandStrategy,
  type Workstream,
} from "../protocol";
import { isRpcError } from "./errors";

/** "+120 −8 · 5 files"; "" when the branch changed no file. */
export function formatChanges(c: ChangeSummary | null | undefined): string {
  if (c === null || c === undefined || c.files === 0) return "";
  return `+${c.added} −${c.removed} · ${c.files} file${c.files === 1 ? "" : "s"}`;
}

/** A badge on the tree row (a `FileDecoration`): one or two characters, a tooltip, a theme color. */
export interface Badge {
  badge: string;
  tooltip: string;
  color: string;
}

/** Words for what the badge says: ["conflicts with main", "uncommitted changes"]; [] for none. */
export function changeFlags(c: ChangeSummary | null | undefined): string[] {
  if (c === null || c === undefined) return [];
  const flags: string[] = [];
  if (c.conflicts === true) flags.push(`conflicts with ${c.baseBranch}`);
  if (c.dirty) flags.push("uncommitted changes");
  return flags;
}

/** The conflict badge ("!"), else the dirty badge ("M"); a conflict is what blocks landing, so it wins. */
export function changeBadge(c: ChangeSummary | null | undefined): Badge | undefined {
  const flags = changeFlags(c);
  if (c === null || c === undefined || flags.length === 0) return undefined;
  const tooltip = flags.join("; ");
  return c.conflicts === true
    ? { badge: "!", tooltip, color: "gitDecoration.conflictingResourceForeground" }
    : { badge: "M", tooltip, color: "gitDecoration.modifiedResourceForeground" };
}

/** The change summary and badge words that follow the status in a row's description and accessible label. */
export function changesSuffix(ws: Workstream): string[] {
  const parts = [formatChanges(ws.changes), ...changeFlags(ws.changes)];
  return parts.filter((p) => p.length > 0);
}

/** A landed or live workstream cannot land; one with commits ahead of its base branch can try. */
export function canLand(ws: Workstream): boolean {
  const restful = ws.status !== "running" && ws.status !== "queued" && ws.status !== "landed";
  return restful && (ws.changes?.ahead ?? 0) > 0;
}

/** It changed files (committed) or has uncommitted work: its tree item has file children. */
export function hasChangedFiles(ws: Workstream): boolean {
  return (ws.changes?.files ?? 0) > 0 || ws.changes?.dirty === true;
}

/** contextValue flags for the review commands, matched by `viewItem =~ /\bflag\b/` in package.json. */
export function reviewFlags(ws: Workstream): string[] {
  const flags: string[] = [];
  if ((ws.changes?.files ?? 0) > 0) flags.push("canReview");
  if (canLand(ws)) flags.push("canLand");
  return flags;
}

// ---- changed files ---------------------------------------------------------------------------------

/** A changed file under a workstream in the tree; `uncommitted`: in its worktree, not on its branch. */
export interface FileNode {
  slug: string;
  file: FileChange;
  uncommitted: boolean;
}

/** A command argument that is a file node (a click in the tree passes one). */
export function isFileNode(arg: unknown): arg is FileNode {
  if (typeof arg !== "object" || arg === null) return false;
  const node = arg as Partial<FileNode>;
  return typeof node.slug === "string" && typeof node.file?.path === "string" && typeof node.uncommitted === "boolean";
}

/** The file nodes of a diff: committed changes, then uncommitted ones. */
export function fileNodes(diff: Diff): FileNode[] {
  return [
    ...diff.files.map((file) => ({ slug: diff.slug, file, uncommitted: false })),
    ...diff.uncommitted.map((file) => ({ slug: diff.slug, file, uncommitted: true })),
  ];
}

/** A file node's stable tree id. */
export function fileNodeId(node: FileNode): string {
  return `${node.slug}\0${node.uncommitted ? "worktree" : "branch"}\0${node.file.path}`;
}

/** "+3 −1", "binary", "renamed from a.txt"; with "uncommitted" for worktree changes. */
export function fileDescription(node: FileNode): string {
  const f = node.file;
  const parts: string[] = [];
  const dir = path.posix.dirname(f.path);
  if (dir !== ".") parts.push(dir);
  parts.push(f.added === null || f.removed === null ? "binary" : `+${f.added} −${f.removed}`);
  if (f.oldPath !== null && f.oldPath !== undefined && f.oldPath !== f.path) {
    parts.push(`${f.status.startsWith("C") ? "copied" : "renamed"} from ${f.oldPath}`);
  }
  if (node.uncommitted) parts.push("uncommitted");
  return parts.join(" · ");
}

// ---- diff sides ------------------------------------------------------------------------------------

/**
 * What one side of a file's diff shows: the file at a commit (read with `git show <rev>:<path>`),
 * the file in a worktree (the real file), or nothing (the file does not exist on that side).
 */
export type Side =
  | { kind: "rev"; rev: string; path: string }
  | { kind: "file"; path: string }
  | { kind: "none"; path: string };

/**
 * The two sides of a changed file. Committed: the merge-base against the branch head. Uncommitted:
 * the branch head against the file in the worktree.
 */
export function diffSides(diff: Diff, node: FileNode, worktree: string): { left: Side; right: Side } {
  const f = node.file;
  const oldPath = f.oldPath ?? f.path;
  const added = f.status.startsWith("A") || f.status === "?";
  const deleted = f.status.startsWith("D");
  const leftRev = node.uncommitted ? diff.head : diff.mergeBase;
  const left: Side = added || leftRev === null ? { kind: "none", path: oldPath } : { kind: "rev", rev: leftRev, path: oldPath };
  let right: Side;
  if (deleted) right = { kind: "none", path: f.path };
  else if (node.uncommitted) right = { kind: "file", path: path.join(worktree, f.path) };
  else right = { kind: "rev", rev: diff.head, path: f.path };
  return { left, right };
}

/** A commit id as git prints it; anything else is refused before it reaches git's argv. */
const REV_RE = /^[0-9a-f]{4,64}$/;

/** The query of a revision document's URI: "rev=<sha>" ("rev=" for an absent side). */
export function sideQuery(rev: string | null): string {
  return new URLSearchParams({ rev: rev ?? "" }).toString();
}

/** The revision a document's URI query names: a commit id, null for an absent side; throws on anything else. */
export function revFromQuery(query: string): string | null {
  const rev = new URLSearchParams(query).get("rev") ?? "";
  if (rev === "") return null;
  if (!REV_RE.test(rev)) throw new Error(`not a commit id: '${rev}'`);
  return rev;
}

/** The largest file a diff side reads (git's output beyond it is an error, not a cut file). */
const SHOW_MAX_BYTES = 64 * 1024 * 1024;

/**
 * The file `relPath` (relative to the repository root) at commit `rev`, read with `git show` run in
 * `repo` (argv, no shell). Rejects with git's own message when git cannot show it.
 */
export function gitShow(repo: string, rev: string, relPath: string): Promise<string> {
  if (!REV_RE.test(rev)) return Promise.reject(new Error(`not a commit id: '${rev}'`));
  return new Promise((resolve, reject) => {
    execFile(
      "git",
      ["--no-pager", "show", "--no-textconv", `${rev}:${relPath}`],
      { cwd: repo, maxBuffer: SHOW_MAX_BYTES, encoding: "utf8", windowsHide: true },
      (error, stdout, stderr) => {
        if (error === null) resolve(stdout);
        else reject(new Error(stderr.trim() || error.message));
      },
    );
  });
}

/** The multi-diff editor's title: "fix-login: main…aidp/fix-login" (the editor adds "(5 files)"). */
export function reviewTitle(diff: Diff, ws: Workstream): string {
  return `${diff.slug}: ${diff.baseBranch}…${ws.branch}`;
}

// ---- landing ---------------------------------------------------------------------------------------

export interface StrategyChoice {
  strategy: LandStrategy;
  label: string;
  detail: string;
}

export const LAND_STRATEGIES: readonly StrategyChoice[] = [
  { strategy: "merge", label: "Merge", detail: "A merge commit (--no-ff) naming the workstream and its task; keeps every commit." },
  { strategy: "squash", label: "Squash", detail: "One new commit with all of the workstream's changes." },
  { strategy: "rebase", label: "Rebase", detail: "The workstream's commits replayed onto the target branch; no merge commit." },
];

/** The confirmation a land asks for: the question and what it will do. */
export function landConfirmation(ws: Workstream, strategy: LandStrategy): { message: string; detail: string } {
  const into = ws.changes?.baseBranch ?? ws.baseBranch ?? "its base branch";
  const summary = formatChanges(ws.changes);
  return {
    message: `Land '${ws.slug}' into ${into} (${strategy})?`,
    detail:
      `${ws.branch}${summary ? ` (${summary})` : ""} goes onto ${into}. ` +
      "aidp refuses, changing nothing, if it conflicts, has uncommitted changes, or the target branch is checked out with uncommitted changes.",
  };
}

/** "AIDP: landed fix-login into main (merge) at 1a2b3c4." */
export function landedMessage(results: readonly LandResult[]): string {
  const parts = results.map(
    (r) => `${r.slug} into ${r.into} (${r.strategy}) at ${r.commit.slice(0, 7)}${r.removed ? ", worktree and branch removed" : ""}`,
  );
  return parts.length === 0 ? "AIDP: nothing was landed." : `AIDP: landed ${parts.join("; ")}.`;
}

/** The data of a "cannot land" (-32010) error; undefined for any other error. */
export function cannotLandData(e: unknown): CannotLandData | undefined {
  if (!isRpcError(e) || e.code !== ErrorCodes.CannotLand) return undefined;
  const data = (typeof e.data === "object" && e.data !== null ? e.data : {}) as Partial<CannotLandData>;
  return {
    slug: typeof data.slug === "string" ? data.slug : "?",
    reason: typeof data.reason === "string" && data.reason.length > 0 ? data.reason : e.message,
    files: Array.isArray(data.files) ? data.files.filter((f): f is string => typeof f === "string") : [],
    landed: Array.isArray(data.landed) ? data.landed : [],
  };
}

/** A refused land in one line: why, the files concerned, those landed before it, and that nothing else changed. */
export function cannotLandMessage(data: CannotLandData): string {
  const parts = [`AIDP could not land '${data.slug}': ${data.reason.replace(/\.$/, "")}.`];
  if (data.files.length > 0) parts.push(`Files: ${data.files.join(", ")}.`);
  parts.push(`Nothing of '${data.slug}' was changed.`);
  if (data.landed.length > 0) parts.push(landedMessage(data.landed).replace(/^AIDP: landed/, "Landed before it:"));
  return parts.join(" ");
}

/** Tooltip lines about the changes: "Changes: +120 −8 · 5 files · 2 commits ahead, 1 behind main", badges. */
export function changesTooltip(ws: Workstream): string[] {
  const c = ws.changes;
  if (c === null || c === undefined) return [];
  const summary = formatChanges(c) || "no file changed";
  const lines = [`Changes: ${summary} · ${c.ahead} commit${c.ahead === 1 ? "" : "s"} ahead, ${c.behind} behind ${c.baseBranch}`];
  if (c.conflicts === true) lines.push(`Conflicts with ${c.baseBranch}: it would not merge cleanly now.`);
  if (c.dirty) lines.push("Uncommitted changes in the worktree.");
  return lines;
}

// ---- conflicts -------------------------------------------------------------------------------------

export interface ConflictItem {
  label: string;
  description: string;
  detail: string;
}

/** Quick-pick rows: each workstream that conflicts with its base branch, then each colliding pair. */
export function conflictItems(report: ConflictReport): ConflictItem[] {
  const files = (list: readonly string[]): string => (list.length > 0 ? list.join(", ") : "(no file named)");
  return [
    ...report.withBase
      .filter((b) => !b.clean)
      .map((b) => ({ label: `${b.slug} ↔ ${b.baseBranch}`, description: "conflicts with its base branch", detail: files(b.files) })),
    ...report.pairs.map((p) => ({
      label: `${p.a} ↔ ${p.b}`,
      description: `${p.files.length} file${p.files.length === 1 ? "" : "s"} collide`,
      detail: files(p.files),
    })),
  ];
}

/** "AIDP: 3 workstreams merge cleanly and do not collide." when there is nothing to list. */
export function noConflictsMessage(report: ConflictReport): string {
  const n = report.withBase.length;
  if (n === 0) return "AIDP: no workstream to check (every one is landed).";
  return `AIDP: ${n === 1 ? "the workstream merges" : `${n} workstreams merge`} cleanly into ${n === 1 ? "its base branch" : "their base branches"}${n > 1 ? " and do not collide with each other" : ""}.`;
}
