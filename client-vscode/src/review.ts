/**
 * Review and land in VS Code: the changed files under each workstream, the multi-file diff editor,
 * the per-file diff, landing and the conflict list. The logic lives in core/review.
 */
import * as path from "node:path";
import * as vscode from "vscode";
import {
  cannotLandData,
  cannotLandMessage,
  changeBadge,
  conflictItems,
  diffSides,
  fileNodes,
  gitShow,
  isFileNode,
  LAND_STRATEGIES,
  landConfirmation,
  landedMessage,
  noConflictsMessage,
  reviewTitle,
  revFromQuery,
  sideQuery,
  type FileNode,
  type Side,
} from "./core/review";
import type { WorkstreamStore } from "./core/store";
import { WS_CONFLICTS, WS_DIFF, WS_LAND, type ConflictReport, type Diff, type Workstream, type WsLandResult } from "./protocol";
import type { AidpServer } from "./server";

/** Read-only documents of a file at a commit: `aidp-rev:/<path>?rev=<sha>` ("rev=" for an absent side). */
export const REV_SCHEME = "aidp-rev";
/** Tree rows of workstreams carry `aidp-ws:/<slug>`, so the badge provider can decorate them. */
export const WS_SCHEME = "aidp-ws";

export interface ReviewDeps {
  server: AidpServer;
  store: WorkstreamStore;
  /** The repository's root (the workspace folder): where `git show` runs. */
  repo: string;
  /** Asks for a workstream among those `filter` accepts (undefined: none chosen). */
  pickOne: (placeHolder: string, filter: (ws: Workstream) => boolean) => Promise<string | undefined>;
  fetchList: () => Promise<void>;
  log: vscode.LogOutputChannel;
}

export class Review implements vscode.TextDocumentContentProvider, vscode.FileDecorationProvider, vscode.Disposable {
  private readonly decorationsChanged = new vscode.EventEmitter<vscode.Uri[] | undefined>();
  readonly onDidChangeFileDecorations = this.decorationsChanged.event;
  /** Per slug, the diff for the state it was fetched under (a new summary or status fetches anew). */
  private readonly diffs = new Map<string, { key: string; diff: Promise<Diff> }>();
  private readonly disposables: { dispose(): unknown }[] = [];

  constructor(private readonly deps: ReviewDeps) {
    this.disposables.push(
      vscode.workspace.registerTextDocumentContentProvider(REV_SCHEME, this),
      vscode.window.registerFileDecorationProvider(this),
      this.decorationsChanged,
      {
        dispose: deps.store.onChange((change) => {
          // A fetched list (a refresh, another process's change) may come with new uncommitted files
          // that no summary counts: the changed files are asked for again.
          if (change === "all") this.diffs.clear();
          this.decorationsChanged.fire(change === "all" ? undefined : change.map((slug) => workstreamUri(slug)));
        }),
      },
    );
  }

  // ---- the tree --------------------------------------------------------------------------------------

  /** The changed files of a workstream: committed, then uncommitted. */
  async files(slug: string): Promise<FileNode[]> {
    try {
      return fileNodes(await this.diff(slug));
    } catch (e) {
      this.deps.log.warn(`cannot list the changed files of '${slug}': ${e instanceof Error ? e.message : String(e)}`);
      return [];
    }
  }

  fileItem(node: FileNode, description: string): vscode.TreeItem {
    const ws = this.deps.store.get(node.slug);
    const item = new vscode.TreeItem(path.posix.basename(node.file.path), vscode.TreeItemCollapsibleState.None);
    if (ws !== undefined) item.resourceUri = vscode.Uri.file(path.join(ws.path, node.file.path));
    item.description = description;
    item.tooltip = `${node.file.path}\n${description}`;
    item.contextValue = "changedFile";
    item.accessibilityInformation = { label: `${node.file.path}, ${description}` };
    item.command = { command: "aidp.openFileDiff", title: "Open Changes", arguments: [node] };
    return item;
  }

  provideFileDecoration(uri: vscode.Uri): vscode.FileDecoration | undefined {
    if (uri.scheme !== WS_SCHEME) return undefined;
    const badge = changeBadge(this.deps.store.get(uri.path.slice(1))?.changes);
    return badge && new vscode.FileDecoration(badge.badge, badge.tooltip, new vscode.ThemeColor(badge.color));
  }

  /** A file at a commit, read with `git show` in the repository; "" for an absent side. */
  async provideTextDocumentContent(uri: vscode.Uri): Promise<string> {
    const rev = revFromQuery(uri.query);
    return rev === null ? "" : gitShow(this.deps.repo, rev, uri.path.slice(1));
  }

  // ---- commands ----------------------------------------------------------------------------------------

  private diff(slug: string): Promise<Diff> {
    const ws = this.deps.store.get(slug);
    const key = JSON.stringify([ws?.changes ?? null, ws?.status, ws?.updatedAt]);
    const cached = this.diffs.get(slug);
    if (cached !== undefined && cached.key === key) return cached.diff;
    // Only the file lists are used here (they are always whole): the patch text stays on the server.
    const diff = this.deps.server.request<Diff>(WS_DIFF, { slug, maxBytes: 1 });
    this.diffs.set(slug, { key, diff });
    diff.catch(() => this.diffs.delete(slug));
    return diff;
  }

  /** "AIDP: Review Changes": the multi-file diff editor, merge-base against the branch head. */
  async reviewChanges(arg: string | undefined): Promise<void> {
    const slug = arg ?? (await this.deps.pickOne("Review the changes of which workstream?", (ws) => (ws.changes?.files ?? 0) > 0));
    if (slug === undefined) return;
    const ws = this.requireWs(slug);
    const diff = await this.diff(slug);
    if (diff.files.length === 0) {
      const n = diff.uncommitted.length;
      void vscode.window.showInformationMessage(
        `AIDP: '${slug}' has no committed changes against ${diff.baseBranch}${n > 0 ? ` (${n} uncommitted file${n === 1 ? "" : "s"}: expand it in the tree)` : ""}.`,
      );
      return;
    }
    const resources = fileNodes(diff)
      .filter((node) => !node.uncommitted)
      .map((node) => {
        const { left, right } = diffSides(diff, node, ws.path);
        return [vscode.Uri.file(path.join(ws.path, node.file.path)), sideUri(left, false), sideUri(right, false)];
      });
    await vscode.commands.executeCommand("vscode.changes", reviewTitle(diff, ws), resources);
  }

  /** A click on a changed file: its diff. */
  async openFileDiff(arg: unknown): Promise<void> {
    if (!isFileNode(arg)) return;
    const node = arg;
    const ws = this.requireWs(node.slug);
    const { left, right } = diffSides(await this.diff(node.slug), node, ws.path);
    const title = `${path.posix.basename(node.file.path)} (${node.slug}: ${node.uncommitted ? "branch ↔ worktree" : "merge-base ↔ branch"})`;
    await vscode.commands.executeCommand("vscode.diff", sideUri(left, true), sideUri(right, true), title, { preview: true });
  }

  /** "AIDP: Land Workstream": strategy, confirmation, aidp/wsLand, and the result or why it refused. */
  async land(arg: string | undefined): Promise<void> {
    const slug = arg ?? (await this.deps.pickOne("Land which workstream?", (ws) => ws.status !== "landed" && ws.status !== "running" && ws.status !== "queued"));
    if (slug === undefined) return;
    const ws = this.requireWs(slug);
    const choice = await vscode.window.showQuickPick(
      LAND_STRATEGIES.map((s) => ({ ...s, description: s.strategy })),
      { title: `Land '${slug}'`, placeHolder: "How should it land?", matchOnDetail: true },
    );
    if (choice === undefined) return;
    const { message, detail } = landConfirmation(ws, choice.strategy);
    const confirm = await vscode.window.showWarningMessage(message, { modal: true, detail }, "Land", "Land and Remove Worktree");
    if (confirm === undefined) return;
    try {
      const result = await this.deps.server.request<WsLandResult>(WS_LAND, {
        slugs: [slug],
        strategy: choice.strategy,
        rm: confirm === "Land and Remove Worktree",
      });
      void vscode.window.showInformationMessage(landedMessage(result.landed));
    } catch (e) {
      const refused = cannotLandData(e);
      if (refused === undefined) throw e;
      void vscode.window.showErrorMessage(cannotLandMessage(refused));
    } finally {
      await this.deps.fetchList();
    }
  }

  /** "AIDP: Show Conflicts": the workstreams that would not merge cleanly, and the colliding pairs. */
  async showConflicts(): Promise<void> {
    const report = await vscode.window.withProgress(
      { location: vscode.ProgressLocation.Window, title: "AIDP: checking for conflicts" },
      () => this.deps.server.request<ConflictReport>(WS_CONFLICTS, {}),
    );
    const items = conflictItems(report);
    if (items.length === 0) {
      void vscode.window.showInformationMessage(noConflictsMessage(report));
      return;
    }
    await vscode.window.showQuickPick(items, {
      title: "AIDP: Conflicts",
      placeHolder: `${items.length} conflict${items.length === 1 ? "" : "s"}: workstreams that would not merge cleanly`,
      matchOnDescription: true,
      matchOnDetail: true,
    });
  }

  private requireWs(slug: string): Workstream {
    const ws = this.deps.store.get(slug);
    if (ws === undefined) throw new Error(`no workstream '${slug}'`);
    return ws;
  }

  dispose(): void {
    for (const d of this.disposables.splice(0).reverse()) d.dispose();
  }
}

/** A workstream row's resource URI (for its badge). */
export function workstreamUri(slug: string): vscode.Uri {
  return vscode.Uri.from({ scheme: WS_SCHEME, path: `/${slug}` });
}

/**
 * A diff side as a URI. An absent side is undefined for the multi-diff editor (it shows the file
 * as added or deleted) and an empty document for `vscode.diff`, which needs two.
 */
function sideUri(side: Side, emptyWhenAbsent: true): vscode.Uri;
function sideUri(side: Side, emptyWhenAbsent: false): vscode.Uri | undefined;
function sideUri(side: Side, emptyWhenAbsent: boolean): vscode.Uri | undefined {
  switch (side.kind) {
    case "file":
      return vscode.Uri.file(side.path);
    case "rev":
      return vscode.Uri.from({ scheme: REV_SCHEME, path: `/${side.path}`, query: sideQuery(side.rev) });
    case "none":
      return emptyWhenAbsent ? vscode.Uri.from({ scheme: REV_SCHEME, path: `/${side.path}`, query: sideQuery(null) }) : undefined;
  }
}
