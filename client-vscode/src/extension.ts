/** Entry point: wires the server connection, the store, the tree, the status bar and the commands. */
import * as fs from "node:fs";
import * as vscode from "vscode";
import { wsRunAllParams, wsRunParams, type RunSettings } from "./core/args";
import { describeError, isCancelled, isDirtyRefusal } from "./core/errors";
import { describe, failures, firstLine, formatDuration, formatExitCode, statusBarText, summaryMessage } from "./core/format";
import { RunTracker } from "./core/runTracker";
import { validateSlug } from "./core/slug";
import { isRunAllCandidate } from "./core/state";
import { WorkstreamStore } from "./core/store";
import {
  isFinalStatus,
  WS_CANCEL,
  WS_LIST,
  WS_LOG,
  WS_NEW,
  WS_PAUSE,
  WS_REMOVE,
  WS_RESUME,
  WS_RUN,
  WS_RUN_ALL,
  type RunSummary,
  type Workstream,
  type WorkstreamResult,
  type WsCancelResult,
  type WsListResult,
  type WsLogResult,
  type WsOutputNotification,
  type WsStatusNotification,
} from "./protocol";
import { AidpServer } from "./server";
import { WorkstreamTreeProvider } from "./tree";

const VIEW_ID = "aidp.workstreams";

/** What each command does, for "AIDP: cannot <action>: <reason>" messages. */
const ACTIONS: Readonly<Record<string, string>> = {
  "aidp.newWorkstream": "create the workstream",
  "aidp.runWorkstreams": "run",
  "aidp.runWorkstream": "run",
  "aidp.runAll": "run all",
  "aidp.cancelWorkstream": "cancel",
  "aidp.showLog": "show the log",
  "aidp.openWorktree": "open the worktree",
  "aidp.pauseWorkstream": "pause",
  "aidp.resumeWorkstream": "resume",
  "aidp.removeWorkstream": "remove",
  "aidp.refresh": "refresh",
  "aidp.showWorkstreams": "show the workstreams",
  "aidp.restartServer": "restart the server",
};

class Extension implements vscode.Disposable {
  readonly store = new WorkstreamStore();
  readonly log = vscode.window.createOutputChannel("AIDP Server", { log: true });
  readonly server: AidpServer;
  private readonly channels = new Map<string, vscode.OutputChannel>();
  private readonly trackers = new Set<{ tracker: RunTracker; update: () => void }>();
  private readonly statusBar = vscode.window.createStatusBarItem("aidp.status", vscode.StatusBarAlignment.Left, 10);
  private readonly disposables: { dispose(): unknown }[] = [];
  private fetching: Promise<void> | undefined;
  private refetch = false;

  constructor() {
    const folder = vscode.workspace.workspaceFolders?.[0];
    this.server = new AidpServer(folder, this.log, {
      onStatus: (n) => this.onStatus(n),
      onOutput: (n) => this.onOutput(n),
      onListChanged: () => void this.fetchList(),
    });
    const tree = new WorkstreamTreeProvider(this.store);
    const view = vscode.window.createTreeView(VIEW_ID, { treeDataProvider: tree, showCollapseAll: false });
    this.statusBar.name = "AIDP Workstreams";
    this.statusBar.command = "aidp.showWorkstreams";
    this.disposables.push(tree, view, this.log, this.statusBar, this.server);
    this.disposables.push({ dispose: this.store.onChange(() => this.onStoreChange()) });
    this.disposables.push(
      this.server.onDidChangeState((state) => {
        this.updateStatusBar();
        if (state === "running") void this.fetchList();
      }),
      vscode.workspace.onDidChangeConfiguration((e) => {
        if (e.affectsConfiguration("aidp.server.command")) void this.offerRestart();
      }),
    );
    this.registerCommands();
    void vscode.commands.executeCommand("setContext", "aidp.serverState", "stopped");
    this.onStoreChange();
  }

  async activate(): Promise<void> {
    if (vscode.workspace.workspaceFolders?.[0] === undefined) {
      this.log.info("no workspace folder is open; the aidp server is not started");
      return;
    }
    await this.server.start();
  }

  // ---- notifications -------------------------------------------------------------------------------

  private onStatus(n: WsStatusNotification): void {
    if (!this.store.applyStatus(n)) void this.fetchList();
    const owned = (runId: string): boolean =>
      [...this.trackers].some((t) => t.tracker.runId === runId);
    for (const entry of this.trackers) {
      if (entry.tracker.accept(n, owned)) entry.update();
    }
    const channel = this.channels.get(n.slug);
    if (n.status === "running") {
      this.channel(n.slug).appendLine(`=== run ${n.runId ?? "?"} started ${new Date().toISOString()} ===`);
    } else if (channel !== undefined && isFinalStatus(n.status)) {
      const parts: string[] = [n.status];
      if (n.exitCode !== null) parts.push(formatExitCode(n.exitCode));
      if (n.durationS !== null) parts.push(formatDuration(n.durationS));
      channel.appendLine(`=== ${parts.join(" · ")} ===`);
      if (n.error) channel.appendLine(n.error.trimEnd());
    }
  }

  private onOutput(n: WsOutputNotification): void {
    this.channel(n.slug).append(n.text);
  }

  private channel(slug: string): vscode.OutputChannel {
    let channel = this.channels.get(slug);
    if (channel === undefined) {
      channel = vscode.window.createOutputChannel(`AIDP: ${slug}`);
      this.channels.set(slug, channel);
      this.disposables.push(channel);
    }
    return channel;
  }

  private onStoreChange(): void {
    const counts = this.store.counts();
    void vscode.commands.executeCommand("setContext", "aidp.hasWorkstreams", counts.total > 0);
    void vscode.commands.executeCommand("setContext", "aidp.hasRunnable", counts.runnable > 0);
    this.updateStatusBar();
  }

  private updateStatusBar(): void {
    const counts = this.store.counts();
    if (this.server.state === "failed") {
      this.statusBar.text = "$(error) AIDP";
      this.statusBar.tooltip = "The aidp server is not running. Click to show the workstreams.";
    } else {
      this.statusBar.text = statusBarText(counts);
      this.statusBar.tooltip = `AIDP: ${counts.running} running, ${counts.queued} queued, ${counts.total} workstreams. Click to show them.`;
    }
    this.statusBar.show();
  }

  /** Re-fetches the list (coalesced: one fetch in flight, at most one more after it). */
  fetchList(): Promise<void> {
    if (this.fetching !== undefined) {
      this.refetch = true;
      return this.fetching;
    }
    this.fetching = (async () => {
      do {
        this.refetch = false;
        try {
          const result = await this.server.request<WsListResult>(WS_LIST, {});
          this.store.setList(result.workstreams);
        } catch (e) {
          this.log.error(describeError("list workstreams", e));
          break;
        }
      } while (this.refetch);
    })().finally(() => {
      this.fetching = undefined;
    });
    return this.fetching;
  }

  // ---- commands ------------------------------------------------------------------------------------

  private registerCommands(): void {
    const reg = (id: string, fn: (...args: unknown[]) => unknown): void => {
      this.disposables.push(
        vscode.commands.registerCommand(id, async (...args: unknown[]) => {
          try {
            await fn(...args);
          } catch (e) {
            void vscode.window.showErrorMessage(describeError(ACTIONS[id] ?? id, e));
          }
        }),
      );
    };
    reg("aidp.newWorkstream", () => this.newWorkstream());
    reg("aidp.runWorkstreams", () => this.runPicked());
    reg("aidp.runWorkstream", async (arg) => {
      const slug = slugArg(arg) ?? (await this.pickOne("Run which workstream?", (ws) => !isLive(ws) && ws.status !== "paused"));
      if (slug) await this.run([slug]);
    });
    reg("aidp.runAll", () => this.run(undefined));
    reg("aidp.cancelWorkstream", (arg) => this.cancel(slugArg(arg)));
    reg("aidp.showLog", async (arg) => {
      const slug = slugArg(arg) ?? (await this.pickOne("Show the log of which workstream?", () => true));
      if (slug) await this.showLog(slug);
    });
    reg("aidp.openWorktree", async (arg) => {
      const slug = slugArg(arg) ?? (await this.pickOne("Open the worktree of which workstream?", () => true));
      const ws = slug ? this.store.get(slug) : undefined;
      if (ws) {
        await vscode.commands.executeCommand("vscode.openFolder", vscode.Uri.file(ws.path), { forceNewWindow: true });
      }
    });
    reg("aidp.pauseWorkstream", async (arg) => {
      const slug = slugArg(arg) ?? (await this.pickOne("Pause which workstream?", (ws) => !isLive(ws) && ws.status !== "paused"));
      if (slug) {
        await this.server.request<Workstream>(WS_PAUSE, { slug });
        await this.fetchList();
      }
    });
    reg("aidp.resumeWorkstream", async (arg) => {
      const slug = slugArg(arg) ?? (await this.pickOne("Resume which workstream?", (ws) => ws.status === "paused"));
      if (slug) {
        await this.server.request<Workstream>(WS_RESUME, { slug });
        await this.fetchList();
      }
    });
    reg("aidp.removeWorkstream", (arg) => this.remove(slugArg(arg)));
    reg("aidp.refresh", () => this.fetchList());
    reg("aidp.showWorkstreams", () => vscode.commands.executeCommand(`${VIEW_ID}.focus`));
    reg("aidp.restartServer", async () => {
      this.store.clear();
      if (await this.server.restart()) {
        void vscode.window.setStatusBarMessage("AIDP: server restarted", 3000);
      }
    });
  }

  private async offerRestart(): Promise<void> {
    const choice = await vscode.window.showInformationMessage(
      "AIDP: the server command changed. Restart the server to use it?",
      "Restart Server",
    );
    if (choice === "Restart Server") await vscode.commands.executeCommand("aidp.restartServer");
  }

  private runSettings(): RunSettings {
    const config = vscode.workspace.getConfiguration("aidp", vscode.workspace.workspaceFolders?.[0]);
    return {
      maxConcurrent: config.get<unknown>("maxConcurrent"),
      mode: config.get<unknown>("mode"),
      timeoutS: config.get<unknown>("timeoutS"),
    };
  }

  private async pickOne(placeHolder: string, filter: (ws: Workstream) => boolean): Promise<string | undefined> {
    if (!this.store.loaded) await this.fetchList();
    const items = this.items(filter);
    if (items.length === 0) {
      void vscode.window.showInformationMessage("AIDP: no workstream fits.");
      return undefined;
    }
    const pick = await vscode.window.showQuickPick(items, { placeHolder, matchOnDescription: true, matchOnDetail: true });
    return pick?.label;
  }

  private items(filter: (ws: Workstream) => boolean): vscode.QuickPickItem[] {
    const now = Date.now();
    const out: vscode.QuickPickItem[] = [];
    for (const slug of this.store.state.order) {
      const view = this.store.state.items.get(slug);
      if (view === undefined || !filter(view.ws)) continue;
      out.push({ label: slug, description: describe(view, now), detail: view.ws.task });
    }
    return out;
  }

  private async runPicked(): Promise<void> {
    if (!this.store.loaded) await this.fetchList();
    const items = this.items((ws) => !isLive(ws) && ws.status !== "paused");
    if (items.length === 0) {
      void vscode.window.showInformationMessage("AIDP: no workstream can run now (all are paused, queued or running).");
      return;
    }
    for (const item of items) {
      const ws = this.store.get(item.label);
      item.picked = ws !== undefined && isRunAllCandidate(ws.status);
    }
    const picks = await vscode.window.showQuickPick(items, {
      canPickMany: true,
      placeHolder: "Run which workstreams?",
      matchOnDescription: true,
      matchOnDetail: true,
    });
    if (picks && picks.length > 0) await this.run(picks.map((p) => p.label));
  }

  /** Runs the given workstreams (or all with `undefined`) under a cancellable progress notification. */
  async run(slugs: string[] | undefined): Promise<void> {
    const settings = this.runSettings();
    const all = slugs === undefined;
    const params = all ? wsRunAllParams(settings) : wsRunParams(slugs, settings);
    const expected = all
      ? this.store.state.order.filter((s) => {
          const ws = this.store.get(s);
          return ws !== undefined && isRunAllCandidate(ws.status);
        })
      : [...new Set(slugs)];
    const tracker = new RunTracker(expected, all);
    const title = all
      ? "AIDP: running all workstreams"
      : `AIDP: running ${expected.length <= 3 ? expected.join(", ") : `${expected.length} workstreams`}`;
    await vscode.window.withProgress(
      { location: vscode.ProgressLocation.Notification, title, cancellable: true },
      async (progress, token) => {
        let reported = 0;
        const entry = {
          tracker,
          update: () => {
            const percent = tracker.percent();
            progress.report({ message: tracker.message(), increment: Math.max(0, percent - reported) });
            reported = Math.max(reported, percent);
          },
        };
        this.trackers.add(entry);
        progress.report({ message: tracker.message() });
        try {
          const summary = await this.server.request<RunSummary>(all ? WS_RUN_ALL : WS_RUN, params, token);
          if (!this.store.applySummary(summary)) void this.fetchList();
          void this.showSummary(summary);
        } catch (e) {
          if (token.isCancellationRequested || isCancelled(e)) {
            const finished = tracker.doneCount - tracker.count("cancelled");
            void vscode.window.showInformationMessage(
              `AIDP: run cancelled${finished > 0 ? ` (${finished} of ${tracker.total} had already finished)` : ""}.`,
            );
            void this.fetchList();
          } else {
            void vscode.window.showErrorMessage(describeError("run", e));
          }
        } finally {
          this.trackers.delete(entry);
        }
      },
    );
  }

  private async showSummary(summary: RunSummary): Promise<void> {
    const failed = failures(summary);
    const message = summaryMessage(summary);
    if (failed.length === 0) {
      await vscode.window.showInformationMessage(message);
      return;
    }
    const choice = await vscode.window.showWarningMessage(message, "Show Failures");
    if (choice === "Show Failures") await this.showFailures(failed);
  }

  private async showFailures(failed: WorkstreamResult[]): Promise<void> {
    const items = failed.map((r) => ({
      label: r.slug,
      description: [r.status, r.exitCode !== null ? formatExitCode(r.exitCode) : undefined]
        .filter((x) => x !== undefined)
        .join(" · "),
      detail: r.error ? firstLine(r.error, 200) : undefined,
      result: r,
    }));
    const pick = await vscode.window.showQuickPick(items, { placeHolder: "Show the log of which failure?" });
    if (pick === undefined) return;
    await this.showLog(pick.result.slug, pick.result);
  }

  async showLog(slug: string, result?: WorkstreamResult): Promise<void> {
    let logPath: string | null = result?.logPath ?? null;
    if (logPath === null) {
      try {
        const log = await this.server.request<WsLogResult>(WS_LOG, { slug, tailBytes: 0 });
        logPath = log.logPath;
      } catch (e) {
        this.log.warn(describeError(`read the log of '${slug}'`, e));
      }
    }
    logPath ??= this.store.get(slug)?.lastResult?.logPath ?? null;
    if (logPath !== null && fs.existsSync(logPath)) {
      const doc = await vscode.workspace.openTextDocument(vscode.Uri.file(logPath));
      await vscode.window.showTextDocument(doc, { preview: true });
      return;
    }
    const error = result?.error ?? this.store.get(slug)?.lastResult?.error;
    const channel = this.channels.get(slug);
    if (channel !== undefined || error) {
      const ch = this.channel(slug);
      if (error && channel === undefined) ch.appendLine(error);
      ch.show(true);
      return;
    }
    void vscode.window.showInformationMessage(`AIDP: '${slug}' has no log yet.`);
  }

  private async cancel(slug: string | undefined): Promise<void> {
    let slugs: string[];
    if (slug !== undefined) {
      slugs = [slug];
    } else {
      const live = this.items((ws) => isLive(ws));
      if (live.length === 0) {
        void vscode.window.showInformationMessage("AIDP: nothing is queued or running.");
        return;
      }
      const picks = await vscode.window.showQuickPick(live, { canPickMany: true, placeHolder: "Cancel which workstreams?" });
      if (!picks || picks.length === 0) return;
      slugs = picks.map((p) => p.label);
    }
    const result = await this.server.request<WsCancelResult>(WS_CANCEL, { slugs });
    if (result.cancelled.length === 0) {
      void vscode.window.showInformationMessage(`AIDP: ${slugs.join(", ")} ${slugs.length === 1 ? "was" : "were"} not running.`);
    } else {
      void vscode.window.setStatusBarMessage(`AIDP: cancelled ${result.cancelled.join(", ")}`, 5000);
    }
  }

  private async remove(arg: string | undefined): Promise<void> {
    const slug = arg ?? (await this.pickOne("Remove which workstream?", (ws) => !isLive(ws)));
    if (!slug) return;
    const ws = this.store.get(slug);
    const choice = await vscode.window.showWarningMessage(
      `Remove workstream '${slug}'?`,
      {
        modal: true,
        detail: `This deletes its worktree${ws ? ` ${ws.path}` : ""}. Its branch ${ws?.branch ?? `aidp/${slug}`} is kept unless you choose "Remove and Delete Branch".`,
      },
      "Remove",
      "Remove and Delete Branch",
    );
    if (choice === undefined) return;
    const deleteBranch = choice === "Remove and Delete Branch";
    try {
      await this.server.request(WS_REMOVE, { slug, deleteBranch });
    } catch (e) {
      if (!isDirtyRefusal(e)) throw e;
      const message = (e as { message: string }).message.replace(/\n?\(use --force to discard\)\s*$/, "");
      const force = await vscode.window.showWarningMessage(
        `AIDP did not remove '${slug}'.`,
        { modal: true, detail: `${message}\n\n"Force Remove" removes it anyway: that work is lost.` },
        "Force Remove",
      );
      if (force !== "Force Remove") return;
      await this.server.request(WS_REMOVE, { slug, deleteBranch, force: true });
    }
    this.channels.get(slug)?.dispose();
    this.channels.delete(slug);
    await this.fetchList();
  }

  private async newWorkstream(): Promise<void> {
    if (!this.store.loaded) await this.fetchList();
    const slug = await vscode.window.showInputBox({
      title: "New Workstream (1/2): slug",
      prompt: "Lowercase letters, digits and single hyphens; at most 64 characters. Branch: aidp/<slug>.",
      placeHolder: "fix-login-bug",
      ignoreFocusOut: true,
      validateInput: (value) => validateSlug(value, this.store.state.order),
    });
    if (slug === undefined) return;
    const task = await vscode.window.showInputBox({
      title: `New Workstream (2/2): task for '${slug}'`,
      prompt: "What should this workstream do?",
      ignoreFocusOut: true,
      validateInput: (value) => (value.trim().length === 0 ? "Describe the task." : undefined),
    });
    if (task === undefined) return;
    const ws = await this.server.request<Workstream>(WS_NEW, { slug, task: task.trim() });
    await this.fetchList();
    void vscode.window.setStatusBarMessage(`AIDP: created ${ws.slug} (${ws.branch})`, 5000);
  }

  dispose(): void {
    for (const d of this.disposables.splice(0).reverse()) {
      try {
        d.dispose();
      } catch {
        // keep disposing the rest
      }
    }
  }
}

function isLive(ws: Workstream): boolean {
  return ws.status === "running" || ws.status === "queued";
}

/** A slug from a command argument (a tree element is its slug); undefined from the palette. */
function slugArg(arg: unknown): string | undefined {
  return typeof arg === "string" && arg.length > 0 ? arg : undefined;
}

let extension: Extension | undefined;

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  extension = new Extension();
  context.subscriptions.push(extension);
  await extension.activate();
}

export async function deactivate(): Promise<void> {
  if (extension !== undefined) {
    await extension.server.stop();
    extension = undefined;
  }
}
