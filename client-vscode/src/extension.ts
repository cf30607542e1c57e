/** Entry point: wires the server connection, the store, the tree, the status bar and the commands. */
import * as fs from "node:fs";
import * as path from "node:path";
import * as vscode from "vscode";
import { wsRunAllParams, wsRunParams, type RunSettings } from "./core/args";
import { describeError, isCancelled, isDirtyRefusal } from "./core/errors";
import { describe, failures, firstLine, formatDuration, formatOutcome, statusBarText, summaryMessage } from "./core/format";
import { failureNotice } from "./core/ready";
import { RunTracker } from "./core/runTracker";
import { parsePriority, priorityChoices, priorityError, priorityName, pulledInNote, RunProgressBoard } from "./core/schedule";
import { validateSlug } from "./core/slug";
import { doctorLines, doctorSummary } from "./core/doctor";
import { isRunAllCandidate } from "./core/state";
import { WorkstreamStore } from "./core/store";
import {
  DOCTOR,
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
  WS_SET,
  WS_SETUP,
  type DoctorReport,
  type FinalStatus,
  type RunProgressNotification,
  type RunSummary,
  type Workstream,
  type WorkstreamResult,
  type WsCancelResult,
  type WsListResult,
  type WsLogResult,
  type WsOutputNotification,
  type WsSetParams,
  type WsStatusNotification,
} from "./protocol";
import { Review } from "./review";
import { AidpServer } from "./server";
import { WorkstreamTreeProvider } from "./tree";

const VIEW_ID = "aidp.workstreams";
/** Logs open as read-only documents of this scheme, so the tab can name the workstream. */
const LOG_SCHEME = "aidp-log";
/** A log editor shows at most this much (the end); the file keeps every byte. */
const LOG_VIEW_MAX = 16 * 1024 * 1024;

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
  "aidp.reviewChanges": "review the changes",
  "aidp.openFileDiff": "open the changes",
  "aidp.landWorkstream": "land",
  "aidp.showConflicts": "show the conflicts",
  "aidp.setPriority": "set the priority",
  "aidp.setDependencies": "set the dependencies",
  "aidp.redoSetup": "redo the setup",
  "aidp.doctor": "run the doctor",
};

class Extension implements vscode.Disposable {
  readonly store = new WorkstreamStore();
  readonly log = vscode.window.createOutputChannel("AIDP Server", { log: true });
  readonly server: AidpServer;
  private readonly review: Review;
  private readonly channels = new Map<string, vscode.OutputChannel>();
  private doctorChannel: vscode.OutputChannel | undefined;
  private readonly trackers = new Set<{ tracker: RunTracker; update: () => void }>();
  private readonly statusBar = vscode.window.createStatusBarItem("aidp.status", vscode.StatusBarAlignment.Left, 10);
  /** The runs' progress and time left, from aidp/runProgress; shown only while a run goes. */
  private readonly progressBar = vscode.window.createStatusBarItem("aidp.progress", vscode.StatusBarAlignment.Left, 9);
  private readonly progress = new RunProgressBoard();
  private readonly disposables: { dispose(): unknown }[] = [];
  private fetching: Promise<void> | undefined;
  private refetch = false;
  /** Per output channel, the run whose header it shows last. */
  private readonly announced = new Map<string, string>();
  /** Slugs whose channel shows a run of another aidp process that has not ended yet. */
  private readonly followed = new Set<string>();
  private readonly logs = new LogDocuments();
  /** Failures already notified (`aidp.notifyOnFailure`), by run and workstream. */
  private readonly notifiedFailures = new Set<string>();
  private shuttingDown: Promise<void> | undefined;

  constructor() {
    const folder = vscode.workspace.workspaceFolders?.[0];
    this.server = new AidpServer(folder, this.log, {
      onStatus: (n) => this.onStatus(n),
      onOutput: (n) => this.onOutput(n),
      onListChanged: () => void this.fetchList(),
      onRecords: (n) => {
        if (!this.store.applyRecords(n.workstreams)) void this.fetchList();
      },
      onProgress: (n) => this.onProgress(n),
    });
    this.review = new Review({
      server: this.server,
      store: this.store,
      repo: folder?.uri.fsPath ?? "",
      pickOne: (placeHolder, filter) => this.pickOne(placeHolder, filter),
      fetchList: () => this.fetchList(),
      log: this.log,
    });
    const tree = new WorkstreamTreeProvider(this.store, this.review);
    const view = vscode.window.createTreeView(VIEW_ID, { treeDataProvider: tree, showCollapseAll: false });
    this.statusBar.name = "AIDP Workstreams";
    this.statusBar.command = "aidp.showWorkstreams";
    this.progressBar.name = "AIDP Run Progress";
    this.progressBar.command = "aidp.showWorkstreams";
    // The server and its log channel are not in this list: `shutdown` ends them last, in order.
    this.disposables.push(this.review, tree, view, this.statusBar, this.progressBar, this.logs);
    this.disposables.push(vscode.workspace.registerTextDocumentContentProvider(LOG_SCHEME, this.logs));
    this.disposables.push({ dispose: this.store.onChange(() => this.onStoreChange()) });
    this.disposables.push(
      this.server.onDidChangeState((state) => {
        // The list stays while the server restarts (no "No workstreams yet" flash); it goes only
        // when the server cannot run, so the view can say so.
        if (state === "failed") this.store.clear();
        // A stopping server ends its runs: their progress goes with them.
        if (state !== "running") this.endProgress();
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
    if (n.elsewhere === true) {
      this.onStatusElsewhere(n);
      return;
    }
    if (!this.store.applyStatus(n)) void this.fetchList();
    this.notifyFailure(n);
    const owned = (runId: string): boolean =>
      [...this.trackers].some((t) => t.tracker.runId === runId);
    for (const entry of this.trackers) {
      if (entry.tracker.accept(n, owned)) entry.update();
    }
    if (n.status === "running" && n.runId !== null) {
      this.followed.delete(n.slug);
      this.announce(n.slug, n.runId, n.startedAt ?? new Date().toISOString(), "");
    } else if (this.channels.has(n.slug) && isFinalStatus(n.status)) {
      this.footer(n.slug, { ...n, status: n.status });
    }
  }

  /**
   * Another aidp process's run, as the server follows it: the tree shows it, its channel says whose it
   * is, and its end is written from the store as when only its output came (see onStoreChange). No
   * progress of this window's runs adopts it and no failure of it pops up: this window did not start it.
   */
  private onStatusElsewhere(n: WsStatusNotification): void {
    if (n.runId !== null && (n.status === "running" || this.announced.get(n.slug) === n.runId)) {
      if (this.announced.get(n.slug) !== n.runId) this.announce(n.slug, n.runId, n.startedAt ?? null, " by another aidp process");
      this.followed.add(n.slug);
    }
    if (!this.store.applyStatus(n)) void this.fetchList();
  }

  private onProgress(n: RunProgressNotification): void {
    this.progress.apply(n);
    this.updateProgressBar();
  }

  /** Ends the progress shown for `runId`, or for every run. */
  private endProgress(runId?: string | null): void {
    if (runId === undefined) this.progress.clear();
    else if (runId !== null) this.progress.end(runId);
    this.updateProgressBar();
  }

  private updateProgressBar(): void {
    const text = this.progress.text();
    if (text === undefined) {
      this.progressBar.hide();
      return;
    }
    this.progressBar.text = text;
    this.progressBar.tooltip = `${this.progress.tooltip()}\nClick to show the workstreams.`;
    this.progressBar.show();
  }

  private onOutput(n: WsOutputNotification): void {
    if (this.announced.get(n.slug) !== n.runId) {
      // No `running` status came first: another aidp process (a terminal) runs it, and the server
      // follows its log. Its start and its end come with the list (see onStoreChange).
      const view = this.store.state.items.get(n.slug);
      const since = view?.runningSince;
      this.announce(n.slug, n.runId, since ? new Date(since).toISOString() : null, " by another aidp process");
      if (view !== undefined && isLive(view.ws)) this.followed.add(n.slug);
    }
    this.channel(n.slug).append(n.text);
  }

  /** The channel's last line for a run: "=== failed · exit 3 · 1.2s ===" and the error, if any. */
  private footer(slug: string, r: { status: FinalStatus; exitCode: number | null; durationS: number | null; error: string | null }): void {
    const channel = this.channel(slug);
    const parts: string[] = [formatOutcome(r.status, r.exitCode)];
    if (r.durationS !== null) parts.push(formatDuration(r.durationS));
    channel.appendLine(`=== ${parts.join(" · ")} ===`);
    if (r.error) channel.appendLine(r.error.trimEnd());
  }

  /** The channel's first line for a run; `startedAt` is null when the list has not said it yet. */
  private announce(slug: string, runId: string, startedAt: string | null, where: string): void {
    this.announced.set(slug, runId);
    this.channel(slug).appendLine(`=== run ${runId} started${startedAt ? ` ${startedAt}` : ""}${where} ===`);
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
    for (const slug of this.followed) {
      const ws = this.store.get(slug);
      if (ws !== undefined && isLive(ws)) continue;
      this.followed.delete(slug);
      if (ws?.lastResult) this.footer(slug, ws.lastResult);
    }
    const counts = this.store.counts();
    // Nothing queued or running: no run goes, whatever progress its last notification gave.
    if (counts.running === 0 && counts.queued === 0) this.endProgress();
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
      // While this window's own progress notification shows, the item counts without spinning: one spinner.
      this.statusBar.text = statusBarText(counts, this.trackers.size === 0);
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
          if (this.shuttingDown === undefined) this.log.error(describeError("list workstreams", e));
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
    reg("aidp.reviewChanges", (arg) => this.review.reviewChanges(slugArg(arg)));
    reg("aidp.openFileDiff", (arg) => this.review.openFileDiff(arg));
    reg("aidp.landWorkstream", (arg) => this.review.land(slugArg(arg)));
    reg("aidp.showConflicts", () => this.review.showConflicts());
    reg("aidp.setPriority", (arg) => this.setPriority(slugArg(arg)));
    reg("aidp.setDependencies", (arg) => this.setDependencies(slugArg(arg)));
    reg("aidp.redoSetup", (arg) => this.redoSetup(slugArg(arg)));
    reg("aidp.showWorkstreams", () => vscode.commands.executeCommand(`${VIEW_ID}.focus`));
    reg("aidp.doctor", () => this.doctor());
    reg("aidp.restartServer", async () => {
      if (await this.server.restart()) {
        void vscode.window.setStatusBarMessage("AIDP: server restarted", 3000);
      }
    });
  }

  /** `aidp doctor`'s findings in an output channel, and their counts in a message. */
  private async doctor(): Promise<void> {
    const report = await this.server.request<DoctorReport>(DOCTOR, {});
    if (!this.doctorChannel) {
      this.doctorChannel = vscode.window.createOutputChannel("AIDP: Doctor");
      this.disposables.push(this.doctorChannel);
    }
    this.doctorChannel.replace(doctorLines(report).join("\n") + "\n");
    this.doctorChannel.show(true);
    const message = `AIDP doctor: ${doctorSummary(report)}`;
    void (report.ok ? vscode.window.showInformationMessage(message) : vscode.window.showWarningMessage(message));
  }

  /** Copy the configured files and run the setup command again (`aidp/wsSetup`); say how it went. */
  private async redoSetup(arg: string | undefined): Promise<void> {
    const slug = arg ?? (await this.pickOne("Redo the setup of which workstream?", (ws) => !isLive(ws)));
    if (!slug) return;
    const ws = await vscode.window.withProgress(
      { location: vscode.ProgressLocation.Notification, title: `AIDP: setting up ${slug}…` },
      () => this.server.request<Workstream>(WS_SETUP, { slug }),
    );
    await this.fetchList();
    if (ws.setup?.status === "failed") {
      void vscode.window.showErrorMessage(`AIDP: the setup of ${slug} failed: ${firstLine(ws.setup.error ?? "", 200)}`);
    } else {
      void vscode.window.setStatusBarMessage(`AIDP: ${slug} set up`, 3000);
    }
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
    const tracker = new RunTracker(expected);
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
        this.updateStatusBar();
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
          } else if (this.server.state !== "running" || this.shuttingDown !== undefined) {
            // Restarted or stopped mid-run: the server cancels its runs as it stops (or, after a
            // crash, the next server records them cancelled). A closing window has no one to tell.
            if (this.shuttingDown === undefined) {
              void vscode.window.showInformationMessage("AIDP: the run ended when the server stopped; its workstreams are cancelled.");
            }
          } else {
            void vscode.window.showErrorMessage(describeError("run", e));
          }
        } finally {
          this.trackers.delete(entry);
          this.endProgress(tracker.runId);
          this.updateStatusBar();
        }
      },
    );
  }

  /** `aidp.notifyOnFailure`: a notification for each failed workstream, as it fails. */
  private notifyFailure(n: WsStatusNotification): void {
    const config = vscode.workspace.getConfiguration("aidp", vscode.workspace.workspaceFolders?.[0]);
    if (!config.get<boolean>("notifyOnFailure", false)) return;
    const notice = failureNotice(n, this.notifiedFailures);
    if (notice === undefined) return;
    void vscode.window.showWarningMessage(notice, "Show Log").then((choice) => {
      if (choice === "Show Log") void this.showLog(n.slug);
    });
  }

  private async showSummary(summary: RunSummary): Promise<void> {
    const failed = failures(summary);
    const message = summaryMessage(summary) + pulledInNote(summary);
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
      description: formatOutcome(r.status, r.exitCode),
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
      const doc = await vscode.workspace.openTextDocument(this.logs.uri(slug, logPath));
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
    this.announced.delete(slug);
    this.followed.delete(slug);
    await this.fetchList();
  }

  private async setPriority(arg: string | undefined): Promise<void> {
    const slug = arg ?? (await this.pickOne("Set the priority of which workstream?", () => true));
    if (!slug) return;
    const current = this.store.get(slug)?.priority ?? 0;
    const pick = await vscode.window.showQuickPick(priorityChoices(current), {
      title: `Priority of '${slug}'`,
      placeHolder: "Among the workstreams ready to start, a higher priority starts first.",
    });
    if (pick === undefined) return;
    let priority = pick.priority;
    if (priority === undefined) {
      const text = await vscode.window.showInputBox({
        title: `Priority of '${slug}'`,
        prompt: "A whole number from -100 to 100 (high is 10, normal 0, low -10); higher starts first.",
        value: String(current),
        validateInput: priorityError,
      });
      if (text === undefined) return;
      priority = parsePriority(text);
      if (priority === undefined) return;
    }
    const params: WsSetParams = { slug, priority };
    await this.server.request<Workstream>(WS_SET, params);
    await this.fetchList();
    void vscode.window.setStatusBarMessage(`AIDP: ${slug} has priority ${priorityName(priority)}`, 5000);
  }

  private async setDependencies(arg: string | undefined): Promise<void> {
    const slug = arg ?? (await this.pickOne("Set the dependencies of which workstream?", () => true));
    if (!slug) return;
    const current = new Set(this.store.get(slug)?.after ?? []);
    const items = this.items((ws) => ws.slug !== slug).map((item) => ({ ...item, picked: current.has(item.label) }));
    if (items.length === 0) {
      void vscode.window.showInformationMessage(`AIDP: there is no other workstream for '${slug}' to run after.`);
      return;
    }
    const picks = await vscode.window.showQuickPick(items, {
      canPickMany: true,
      title: `'${slug}' runs after...`,
      placeHolder: "It starts only once those it runs after have completed. None picked: it waits for none.",
      matchOnDescription: true,
      matchOnDetail: true,
    });
    if (picks === undefined) return;
    const after = picks.map((p) => p.label);
    const params: WsSetParams = { slug, after };
    await this.server.request<Workstream>(WS_SET, params);
    await this.fetchList();
    const message = after.length > 0 ? `runs after ${after.join(", ")}` : "waits for no other workstream";
    void vscode.window.setStatusBarMessage(`AIDP: ${slug} ${message}`, 5000);
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
    // Cancellable: the repository's post-checkout hook (`npm install`, say) may take minutes or never end.
    const ws = await vscode.window.withProgress(
      { location: vscode.ProgressLocation.Notification, title: `AIDP: creating ${slug}…`, cancellable: true },
      async (_progress, token) => {
        try {
          return await this.server.request<Workstream>(WS_NEW, { slug, task: task.trim() }, token);
        } catch (e) {
          if (!token.isCancellationRequested && !isCancelled(e)) throw e;
          return undefined;
        }
      },
    );
    await this.fetchList();
    if (ws === undefined) {
      void vscode.window.showInformationMessage(
        `AIDP: creating ${slug} was cancelled and its git hooks ended. Its worktree stays: New Workstream '${slug}' again adopts it.`,
      );
      return;
    }
    void vscode.window.setStatusBarMessage(`AIDP: created ${ws.slug} (${ws.branch})`, 5000);
  }

  /**
   * Stops the server first and waits for it (bounded), then disposes the rest, the "AIDP Server"
   * channel last: the server's last words (its exit, the client's stop) still have a channel to go to.
   */
  shutdown(): Promise<void> {
    this.shuttingDown ??= (async () => {
      try {
        await this.server.dispose();
      } finally {
        for (const d of [...this.disposables.splice(0).reverse(), this.log]) {
          try {
            d.dispose();
          } catch {
            // keep disposing the rest
          }
        }
      }
    })();
    return this.shuttingDown;
  }

  dispose(): void {
    void this.shutdown();
  }
}

/**
 * Log files as read-only documents named after the workstream ("fix-login · <run id>.log" on the
 * tab, where the file itself is only "<run id>.log"). Each open reads the file afresh.
 */
class LogDocuments implements vscode.TextDocumentContentProvider, vscode.Disposable {
  private readonly changed = new vscode.EventEmitter<vscode.Uri>();
  readonly onDidChange = this.changed.event;

  uri(slug: string, logPath: string): vscode.Uri {
    const uri = vscode.Uri.from({ scheme: LOG_SCHEME, path: `/${slug} · ${path.basename(logPath)}`, query: logPath });
    this.changed.fire(uri); // an already open document shows the log as it is now
    return uri;
  }

  async provideTextDocumentContent(uri: vscode.Uri): Promise<string> {
    const file = uri.query;
    const handle = await fs.promises.open(file, "r");
    try {
      const { size } = await handle.stat();
      const start = Math.max(0, size - LOG_VIEW_MAX);
      const { buffer, bytesRead } = await handle.read(Buffer.alloc(size - start), 0, size - start, start);
      const text = buffer.subarray(0, bytesRead).toString("utf8");
      return start > 0 ? `[aidp: the first ${start} bytes are left out here; ${file} has them all]\n${text}` : text;
    } finally {
      await handle.close();
    }
  }

  dispose(): void {
    this.changed.dispose();
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
    await extension.shutdown();
    extension = undefined;
  }
}
