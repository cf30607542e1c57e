/** The connection to `aidp serve`: start, stop, restart, requests and notification fan-out. */
import { spawn, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as vscode from "vscode";
import {
  CloseAction,
  ErrorAction,
  LanguageClient,
  RevealOutputChannelOn,
  State,
  type InitializeParams,
  type LanguageClientOptions,
} from "vscode-languageclient/node";
import {
  RUN_PROGRESS,
  WS_LIST_CHANGED,
  WS_OUTPUT,
  WS_STATUS,
  WS_UPDATED,
  type RunProgressNotification,
  type WsOutputNotification,
  type WsStatusNotification,
  type WsUpdatedNotification,
} from "./protocol";
import {
  appendTail,
  diagnoseStartFailure,
  formatCommandLine,
  resolveServerCommand,
  type ServerCommand,
  type StartFailure,
} from "./core/serverCommand";

export type ServerState = "stopped" | "starting" | "running" | "failed";

export interface NotificationHandlers {
  onStatus(n: WsStatusNotification): void;
  onOutput(n: WsOutputNotification): void;
  onListChanged(): void;
  onRecords(n: WsUpdatedNotification): void;
  onProgress(n: RunProgressNotification): void;
}

class SpawnError extends Error {
  constructor(readonly failure: StartFailure) {
    super(diagnoseStartFailure(failure));
  }
}

/**
 * The language client, minus its own error pop-ups while the server starts: a start-up failure gets
 * one actionable message from AidpServer instead of the client's generic "couldn't create connection".
 */
class AidpLanguageClient extends LanguageClient {
  quietStart = true;

  override error(message: string, data?: unknown, showNotification: boolean | "force" = true): void {
    super.error(message, data, this.quietStart ? false : showNotification);
  }

  /**
   * Declines server-created work-done progress: each run already shows the extension's own
   * notification (with its "2/5 done, running: ..." and Cancel), and a second indicator for the
   * same run would only repeat it with other words.
   */
  protected override fillInitializeParams(params: InitializeParams): void {
    super.fillInitializeParams(params);
    if (params.capabilities.window !== undefined) params.capabilities.window.workDoneProgress = false;
    // The records of ended runs (`aidp/wsUpdated`), not a whole list after each: see docs/protocol.md.
    params.capabilities.experimental = { ...(params.capabilities.experimental as object | undefined), aidp: { wsUpdated: true } };
  }
}

const MAX_RESTARTS = 3;
const RESTART_WINDOW_MS = 3 * 60 * 1000;

export class AidpServer implements vscode.Disposable {
  private client: LanguageClient | undefined;
  private child: ChildProcess | undefined;
  private command: ServerCommand | undefined;
  private stderrTail = "";
  private crashes: number[] = [];
  private _state: ServerState = "stopped";
  private readonly stateEmitter = new vscode.EventEmitter<ServerState>();
  /** Fires on every state change; "running" also after an automatic restart. */
  readonly onDidChangeState = this.stateEmitter.event;
  /** The start (or restart) in progress: requests made meanwhile wait for it. */
  private startPromise: Promise<boolean> | undefined;
  /** Set by dispose(): the output channel may close any moment, so late process events stay quiet. */
  private disposed = false;

  constructor(
    private readonly folder: vscode.WorkspaceFolder | undefined,
    private readonly log: vscode.LogOutputChannel,
    private readonly handlers: NotificationHandlers,
  ) {}

  get state(): ServerState {
    return this._state;
  }

  private setState(state: ServerState): void {
    if (this._state === state) return;
    this.log.info(`state: ${this._state} -> ${state}`);
    this._state = state;
    void vscode.commands.executeCommand("setContext", "aidp.serverState", state);
    this.stateEmitter.fire(state);
  }

  private resolveCommand(): ServerCommand {
    const setting = vscode.workspace.getConfiguration("aidp", this.folder).get<unknown>("server.command");
    return resolveServerCommand({
      setting,
      folder: this.folder?.uri.fsPath,
      platform: process.platform,
      exists: (file) => fs.existsSync(file),
    });
  }

  /** Spawns the server process; resolves once it has started, rejects with a diagnosis when it cannot. */
  private spawnServer(cmd: ServerCommand): Promise<ChildProcess> {
    this.stderrTail = "";
    this.log.info(`starting: ${formatCommandLine(cmd)} (cwd ${this.folder?.uri.fsPath ?? process.cwd()})`);
    const child = spawn(cmd.command, cmd.args, {
      cwd: this.folder?.uri.fsPath,
      stdio: ["pipe", "pipe", "pipe"],
      env: { ...process.env, PYTHONUNBUFFERED: "1" },
    });
    child.stderr?.on("data", (data: Buffer) => {
      this.stderrTail = appendTail(this.stderrTail, data.toString("utf8"));
    });
    child.on("exit", (code, signal) => {
      if (!this.disposed) this.log.info(`server process exited (code ${String(code)}, signal ${String(signal)})`);
    });
    return new Promise((resolve, reject) => {
      child.once("spawn", () => {
        this.child = child;
        resolve(child);
      });
      child.once("error", (err: NodeJS.ErrnoException) => {
        reject(new SpawnError({ command: cmd, spawnErrorCode: err.code, message: err.message }));
      });
    });
  }

  /** Starts the server; shows an actionable error and returns false when it cannot start. */
  start(): Promise<boolean> {
    return this.startPromise ?? this.track(this.doStart());
  }

  /** Makes `starting` the start that requests wait for, until it settles. */
  private track(starting: Promise<boolean>): Promise<boolean> {
    const tracked = starting.finally(() => {
      if (this.startPromise === tracked) this.startPromise = undefined;
    });
    this.startPromise = tracked;
    return tracked;
  }

  private async doStart(): Promise<boolean> {
    if (this.client !== undefined) return true;
    this.setState("starting");
    const cmd = this.resolveCommand();
    this.command = cmd;
    let first: ChildProcess;
    try {
      first = await this.spawnServer(cmd);
    } catch (e) {
      return this.failed(e instanceof SpawnError ? e.failure : { command: cmd, message: String(e) });
    }
    let pending: ChildProcess | undefined = first;
    const serverOptions = async (): Promise<ChildProcess> => {
      // The first start uses the process spawned above; automatic restarts spawn a new one.
      const ready = pending ?? (await this.spawnServer(cmd));
      pending = undefined;
      return ready;
    };
    const clientOptions: LanguageClientOptions = {
      documentSelector: [],
      workspaceFolder: this.folder,
      outputChannel: this.log,
      revealOutputChannelOn: RevealOutputChannelOn.Never,
      initializationFailedHandler: () => false,
      errorHandler: {
        error: () => ({ action: ErrorAction.Continue, handled: true }),
        closed: () => {
          if (this._state !== "running") {
            return { action: CloseAction.DoNotRestart, handled: true };
          }
          const now = Date.now();
          this.crashes = [...this.crashes.filter((t) => now - t < RESTART_WINDOW_MS), now];
          if (this.crashes.length <= MAX_RESTARTS) {
            this.log.warn(`the server stopped unexpectedly; restarting (${this.crashes.length}/${MAX_RESTARTS})`);
            this.setState("starting");
            return { action: CloseAction.Restart, handled: true };
          }
          void this.failed({ command: cmd, stderr: this.stderrTail, message: "the server stopped repeatedly" });
          return { action: CloseAction.DoNotRestart, handled: true };
        },
      },
    };
    const client = new AidpLanguageClient("aidp", "AIDP Server", serverOptions, clientOptions);
    // One handler per method (the client keeps only one); the handlers fan out.
    client.onNotification(WS_STATUS, (n: WsStatusNotification) => this.handlers.onStatus(n));
    client.onNotification(WS_OUTPUT, (n: WsOutputNotification) => this.handlers.onOutput(n));
    client.onNotification(WS_LIST_CHANGED, () => this.handlers.onListChanged());
    client.onNotification(WS_UPDATED, (n: WsUpdatedNotification) => this.handlers.onRecords(n));
    client.onNotification(RUN_PROGRESS, (n: RunProgressNotification) => this.handlers.onProgress(n));
    client.onDidChangeState((e) => {
      if (e.newState === State.Running && this.client === client) this.setState("running");
    });
    this.client = client;
    try {
      await client.start();
      // vscode-languageclient 9 resolves start() with undefined when the connection closes during
      // start-up (its close handler clears the pending start promise): check that it really runs.
      if (!client.isRunning()) throw new Error("the server closed the connection during start-up");
      client.quietStart = false;
    } catch (e) {
      this.log.info(`the server did not start: ${e instanceof Error ? e.message : String(e)}`);
      this.client = undefined;
      await this.waitForExit(first, 3000);
      const exitCode = first.exitCode;
      void client.dispose(2000).catch(() => undefined);
      return this.failed({
        command: cmd,
        exitCode,
        stderr: this.stderrTail,
        message: e instanceof Error ? e.message : String(e),
      });
    }
    this.setState("running");
    return true;
  }

  private waitForExit(child: ChildProcess, ms: number): Promise<void> {
    if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      child.once("exit", () => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  private failed(failure: StartFailure): Promise<false> {
    this.setState("failed");
    const message = diagnoseStartFailure(failure);
    this.log.error(message);
    if (failure.stderr) this.log.error(`server stderr (last lines):\n${failure.stderr.trimEnd()}`);
    // Not awaited: activation must not wait for a person to answer.
    void vscode.window
      .showErrorMessage(message, "Open Setting", "Show Server Log", "Restart Server")
      .then(async (choice) => {
        if (choice === "Open Setting") {
          await vscode.commands.executeCommand("workbench.action.openSettings", "@id:aidp.server.command");
        } else if (choice === "Show Server Log") {
          this.log.show();
        } else if (choice === "Restart Server") {
          await vscode.commands.executeCommand("aidp.restartServer");
        }
      });
    return Promise.resolve(false);
  }

  /** Stops the server and waits (boundedly) until its process has gone. */
  async stop(): Promise<void> {
    await this.stopProcess();
    this.setState("stopped");
  }

  private async stopProcess(): Promise<void> {
    const client = this.client;
    const child = this.child;
    this.client = undefined;
    this.child = undefined;
    if (client !== undefined) {
      try {
        if (client.isRunning()) await client.stop(5000);
      } catch (e) {
        this.log.warn(`stopping the server: ${String(e)}`);
      }
      await client.dispose(1000).catch(() => undefined);
    }
    if (child !== undefined && child.exitCode === null && child.signalCode === null) {
      await this.waitForExit(child, 3000);
      if (child.exitCode === null && child.signalCode === null) {
        child.kill("SIGTERM");
        await this.waitForExit(child, 2000);
      }
    }
  }

  /**
   * Stops the server and starts it again. The state goes straight to "starting" (never "stopped"),
   * and requests made meanwhile (a list fetch, a status that names a new slug) wait for the new
   * server instead of failing.
   */
  restart(): Promise<boolean> {
    this.crashes = [];
    this.setState("starting");
    const previous = this.startPromise;
    return this.track(
      (async () => {
        await previous;
        await this.stopProcess();
        return this.doStart();
      })(),
    );
  }

  /** Sends a request; rejects with a ResponseError (code, message, data) when the server refuses. */
  async request<R>(method: string, params: object, token?: vscode.CancellationToken): Promise<R> {
    if (this.client === undefined || this._state !== "running") {
      const ok = this._state === "starting" && this.startPromise ? await this.startPromise : false;
      if (!ok || this.client === undefined) {
        throw new Error('the aidp server is not running (run "AIDP: Restart Server")');
      }
    }
    return token === undefined
      ? this.client.sendRequest<R>(method, params)
      : this.client.sendRequest<R>(method, params, token);
  }

  commandLine(): string | undefined {
    return this.command === undefined ? undefined : formatCommandLine(this.command);
  }

  /** Stops the server; after it, nothing is written to the output channel (its owner closes it next). */
  async dispose(): Promise<void> {
    await this.stop();
    this.disposed = true;
    this.stateEmitter.dispose();
  }
}
