/**
 * What the VS Code end-to-end test and the tree benchmark share: code-server with the packaged extension,
 * opened on a repository in Chromium through playwright-core (`openWorkbench`), and the helpers that
 * drive the workbench (`Workbench`: the command palette, the tree's rows, toasts, screenshots).
 * See e2e.ts for what it needs and the environment it reads.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as http from "node:http";
import * as net from "node:net";
import * as path from "node:path";
import { chromium, type Browser, type Locator, type Page } from "playwright-core";

export const CLIENT_DIR = path.resolve(__dirname, "..", "..", "..");
export const REPO_ROOT = path.resolve(CLIENT_DIR, "..");
export const PYTHON = process.env.AIDP_PYTHON ?? path.join(REPO_ROOT, ".venv", "bin", "python");
export const ARTIFACTS = process.env.AIDP_E2E_ARTIFACTS ?? path.join(REPO_ROOT, "test-artifacts", "vscode");
const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
export const VSIX = path.join(CLIENT_DIR, "aidp.vsix");

export const LONG = 180_000; // generous: 2 noisy cores

/** When the program started: its log lines count from here. */
export const t0 = Date.now();
/** The program's name ("e2e", "tree-e2e"), which its log lines start with. */
const NAME = path.basename(process.argv[1] ?? "e2e", ".js");

export function log(message: string): void {
  const s = ((Date.now() - t0) / 1000).toFixed(1).padStart(6);
  console.log(`[${NAME} ${s}s] ${message}`);
}

export function run(cmd: string, args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): string {
  const r = spawnSync(cmd, args, { encoding: "utf8", cwd: opts.cwd, env: opts.env ?? process.env });
  if (r.error) throw new Error(`${cmd} ${args.join(" ")}: ${r.error.message}`);
  if (r.status !== 0) {
    throw new Error(`${cmd} ${args.join(" ")} exited ${String(r.status)}:\n${r.stdout}\n${r.stderr}`);
  }
  return r.stdout;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const address = srv.address();
      srv.close(() => {
        if (address && typeof address === "object") resolve(address.port);
        else reject(new Error("no port"));
      });
    });
  });
}

function httpOk(url: string): Promise<boolean> {
  return new Promise((resolve) => {
    const req = http.get(url, (res) => {
      res.resume();
      resolve((res.statusCode ?? 500) < 500);
    });
    req.on("error", () => resolve(false));
    req.setTimeout(5000, () => {
      req.destroy();
      resolve(false);
    });
  });
}

export async function waitFor<T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = LONG): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

export class Workbench {
  constructor(readonly page: Page) {}

  async shot(name: string): Promise<string> {
    const file = path.join(ARTIFACTS, `${name}.png`);
    await this.page.screenshot({ path: file });
    log(`screenshot ${file}`);
    return file;
  }

  /** Runs a command from the palette by its exact title ("AIDP: Run All Workstreams"). The palette
   * can close, or stay hidden, when focus moves (VS Code leaving a completed walkthrough, an output
   * panel revealed): then it is opened again, twice at most. */
  async command(title: string, timeoutMs = 30_000): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      const input = await this.openPalette();
      await input.fill(`>${title}`);
      const row = this.page
        .locator(".quick-input-widget .monaco-list-row")
        .filter({ has: this.page.locator(".label-name", { hasText: new RegExp(`^${escapeRe(title)}$`) }) })
        .first();
      try {
        await row.waitFor({ state: "visible", timeout: timeoutMs });
        await row.click({ timeout: 10_000 });
        return;
      } catch (e) {
        if (attempt >= 2) throw e;
        log(`the palette closed before "${title}" was clicked; opening it again`);
      }
    }
  }

  private async openPalette(): Promise<Locator> {
    const input = this.page.locator(".quick-input-widget input").first();
    for (let attempt = 0; ; attempt++) {
      await this.page.keyboard.press("Escape");
      await this.page.keyboard.press("F1");
      try {
        await input.waitFor({ state: "visible", timeout: 10_000 });
        return input;
      } catch (e) {
        if (attempt >= 3) throw e;
        await this.page.locator(".monaco-workbench").click({ position: { x: 700, y: 300 } });
      }
    }
  }

  /** Replaces the user settings through VS Code's own settings.json editor (and saves). */
  async editUserSettings(settings: Record<string, unknown>): Promise<void> {
    await this.command("Preferences: Open User Settings (JSON)");
    const editor = this.page.locator(".editor-instance .monaco-editor").first();
    await editor.waitFor({ state: "visible", timeout: 30_000 });
    await this.page.locator(".tabs-container .tab.active", { hasText: "settings.json" }).waitFor({ timeout: 30_000 });
    await editor.click({ position: { x: 200, y: 50 } });
    await this.page.keyboard.press("Control+A");
    await this.page.keyboard.press("Delete");
    // insertText types no key events, so auto-closing brackets and quotes do not interfere.
    await this.page.keyboard.insertText(JSON.stringify(settings, null, 1).replace(/\n\s*/g, " "));
    await this.page.keyboard.press("Control+S");
    await this.page.locator(".tabs-container .tab.active.dirty").waitFor({ state: "detached", timeout: 30_000 });
  }

  row(slug: string): Locator {
    return this.page.locator(`.part.sidebar .monaco-list-row[aria-label^="${slug},"]`).first();
  }

  async label(slug: string): Promise<string | undefined> {
    const row = this.row(slug);
    if ((await row.count()) === 0) return undefined;
    return (await row.getAttribute("aria-label", { timeout: 2000 }).catch(() => null)) ?? undefined;
  }

  async waitStatus(slug: string, status: string, timeoutMs = LONG): Promise<string> {
    return waitFor(
      `${slug} to show ${status}`,
      async () => {
        const label = await this.label(slug);
        return label !== undefined && label.includes(status) ? label : undefined;
      },
      timeoutMs,
    );
  }

  toast(text: string | RegExp): Locator {
    return this.page.locator(".notifications-toasts .notification-toast", { hasText: text }).first();
  }

  /** Dismisses every notification, so the next toast looked up is the next step's. */
  async clearNotifications(): Promise<void> {
    await this.command("Notifications: Clear All Notifications");
    await waitFor("the toasts to clear", async () => (await this.page.locator(".notifications-toasts .notification-toast").count()) === 0, 30_000);
  }

  /** The rows of the open quick pick whose label is exactly `label`. */
  pickRow(label: string): Locator {
    return this.page
      .locator(".quick-input-widget .monaco-list-row")
      .filter({ has: this.page.locator(".label-name", { hasText: new RegExp(`^${escapeRe(label)}$`) }) })
      .first();
  }

  checkbox(row: Locator): Locator {
    return row.locator('.monaco-checkbox, [role="checkbox"], input[type="checkbox"]').first();
  }

  async isPicked(row: Locator): Promise<boolean> {
    const aria = await row.getAttribute("aria-checked");
    if (aria === "true" || aria === "false") return aria === "true";
    return this.checkbox(row).isChecked();
  }

  /** In the open multi-select quick pick, checks exactly `wanted` among `labels` (by clicking checkboxes). */
  async pickExactly(labels: string[], wanted: string[]): Promise<void> {
    for (const label of labels) {
      const row = this.pickRow(label);
      await row.waitFor({ state: "visible", timeout: 30_000 });
      const want = wanted.includes(label);
      if ((await this.isPicked(row)) !== want) await this.checkbox(row).click();
      await waitFor(`${label} to be ${want ? "checked" : "unchecked"}`, async () => (await this.isPicked(row)) === want, 30_000);
    }
  }

  /** Accepts the open multi-select quick pick with its OK button. Enter could instead toggle the
   * checkbox `pickExactly` last clicked, while that checkbox still has the focus (seen in CI). */
  async acceptPicks(): Promise<void> {
    await this.page.locator(".quick-input-widget .quick-input-action .monaco-button", { hasText: /^OK$/ }).first().click();
  }

  /** Spinning icons in the status bar: our status item while it spins, VS Code's own `$/progress` item. */
  async statusBarSpinners(): Promise<number> {
    return this.page.locator(".part.statusbar .codicon-modifier-spin, .part.statusbar [class*='~spin']").count();
  }

  /** The Workstreams view's welcome text, if it shows one (it does only when the tree is empty). */
  async welcome(): Promise<string> {
    const content = this.page.locator(".part.sidebar .welcome-view-content");
    if ((await content.count().catch(() => 0)) === 0) return "";
    return (await content.first().innerText().catch(() => "")).replace(/\s+/g, " ");
  }

  /** The badges (file decorations) a tree row shows: the `::after` texts of its label's parts. */
  /** The row's badges once `badge` is among them (a decoration is drawn after the label), or what it
   * has when the wait runs out. */
  async waitBadge(row: Locator, badge: string, timeoutMs = 30_000): Promise<string[]> {
    const deadline = Date.now() + timeoutMs;
    let found = await this.badges(row);
    while (!found.includes(badge) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 200));
      found = await this.badges(row);
    }
    return found;
  }

  async badges(row: Locator): Promise<string[]> {
    // This file is compiled without the DOM library: describe the little of it used here.
    interface Styled {
      querySelectorAll(selector: string): ArrayLike<Styled>;
      ownerDocument: { defaultView: { getComputedStyle(e: Styled, pseudo: string): { content: string } } };
    }
    return row.evaluate((root) => {
      const el = root as unknown as Styled;
      return [el, ...Array.from(el.querySelectorAll("*"))]
        .map((e) => el.ownerDocument.defaultView.getComputedStyle(e, "::after").content)
        .filter((c) => c !== "none" && c !== "normal" && c !== '""')
        .map((c) => c.replace(/^"|"$/g, ""));
    });
  }

  /** The text of the active editor area (every editor it shows), with Monaco's non-breaking spaces made plain. */
  async editorText(): Promise<string> {
    return (await this.page.locator(".part.editor").first().innerText().catch(() => "")).replace(/\u00a0/g, " ");
  }

  /** Opens the output channel `name` in the Output view. */
  async showOutputChannel(name: string): Promise<void> {
    await this.command("Output: Show Output Channels...");
    await this.page.locator(".quick-input-widget input").first().fill(name);
    await this.pickRow(name).click();
  }

  /** The text of the editor in the panel (the Output view), with Monaco's non-breaking spaces made plain. */
  async outputText(): Promise<string> {
    const lines = this.page.locator(".part.panel .monaco-editor .view-lines").first();
    if ((await lines.count()) === 0) return "";
    return (await lines.innerText().catch(() => "")).replace(/\u00a0/g, " ");
  }
}

/**
 * The traced messages of the aidp server's channel (with `aidp.trace.server: messages`) between `from` and
 * `to` (epoch ms): [ms after `from`, message].
 */
export function tracedBetween(userData: string, from: number, to: number): [number, string][] {
  const lines = logLines(path.join(userData, "logs"), /\[Trace - .*(Received|Sending)/);
  const out: [number, string][] = [];
  for (const line of lines) {
    const m = /(\d{4}-\d\d-\d\d) (\d\d:\d\d:\d\d\.\d{3}) .*\[Trace - [^\]]*\] (.*)$/.exec(line);
    if (m === null) continue;
    const at = new Date(`${m[1]}T${m[2]}`).getTime();
    // The log's stamps are in milliseconds, the page's too: a message of the same millisecond counts.
    if (at >= from && at <= to) out.push([at - from, m[3]?.replace(/^(Received|Sending) /, "") ?? ""]);
  }
  return out;
}

/** Every file under `dir` whose name ends with `suffix` (none when `dir` does not exist yet). */
export function logFiles(dir: string, suffix: string): string[] {
  if (!fs.existsSync(dir)) return [];
  return fs
    .readdirSync(dir, { recursive: true, encoding: "utf8" })
    .filter((name) => name.endsWith(suffix))
    .map((name) => path.join(dir, name))
    .filter((file) => fs.statSync(file).isFile());
}

/** Lines of every log file under `dir` (VS Code's and the extension host's) that match `pattern`. */
export function logLines(dir: string, pattern: RegExp): string[] {
  return logFiles(dir, ".log").flatMap((file) =>
    fs
      .readFileSync(file, "utf8")
      .split("\n")
      .filter((line) => pattern.test(line))
      .map((line) => `${path.basename(file)}: ${line}`),
  );
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** Checks a fact (counted by the e2e test; the benchmark's throws). */
export type Check = (condition: unknown, what: string) => asserts condition;

/** code-server showing a repository in Chromium, with the AIDP commands loaded. */
export interface Session {
  readonly page: Page;
  readonly wb: Workbench;
  readonly userData: string;
  /** Closes the browser and stops code-server (its whole process group: the extension host, aidp serve). */
  close(): Promise<void>;
}

/**
 * Sets up code-server (cached), installs the packaged extension into `base`, starts code-server on
 * `repo` with the user settings `settings` (over quiet defaults that start aidp with PYTHON) and opens
 * it in Chromium. Resolves once the AIDP commands are in the palette and the Workstreams view shows.
 */
export async function openWorkbench(base: string, repo: string, check: Check, settings: Record<string, unknown> = {}): Promise<Session> {
  log("setting up code-server (cached after the first time)");
  const setup = run("bash", [path.join(CLIENT_DIR, "scripts", "setup-code-server.sh")]).trim().split("\n");
  const codeServer = setup[setup.length - 1] ?? "";
  check(fs.existsSync(codeServer), `code-server at ${codeServer}`);

  const extensions = path.join(base, "extensions");
  const userData = path.join(base, "user-data");
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    XDG_CONFIG_HOME: path.join(base, "xdg-config"),
    XDG_DATA_HOME: path.join(base, "xdg-data"),
  };
  let server: ChildProcess | undefined;
  let browser: Browser | undefined;
  const close = async (): Promise<void> => {
    await browser?.close().catch(() => undefined);
    if (server?.pid !== undefined) {
      try {
        process.kill(-server.pid, "SIGTERM");
      } catch {
        // already gone
      }
      await new Promise((r) => setTimeout(r, 1500));
      try {
        process.kill(-server.pid, "SIGKILL");
      } catch {
        // already gone
      }
    }
  };
  try {
    fs.mkdirSync(path.join(userData, "User"), { recursive: true });
    fs.writeFileSync(
      path.join(userData, "User", "settings.json"),
      JSON.stringify(
        {
          "aidp.server.command": [PYTHON, "-m", "aidp", "serve"],
          "security.workspace.trust.enabled": false,
          "workbench.startupEditor": "none",
          "workbench.tips.enabled": false,
          "workbench.welcomePage.walkthroughs.openOnInstall": false,
          "telemetry.telemetryLevel": "off",
          "extensions.autoCheckUpdates": false,
          "extensions.autoUpdate": false,
          "extensions.ignoreRecommendations": true,
          "update.mode": "none",
          "window.restoreWindows": "none",
          "workbench.colorTheme": "Default Dark Modern",
          ...settings,
        },
        null,
        2,
      ),
    );
    run(codeServer, ["--extensions-dir", extensions, "--user-data-dir", userData, "--install-extension", VSIX], { env });
    check(
      fs.readdirSync(extensions).some((d) => d.startsWith("aidp.aidp-")),
      "the .vsix installed into code-server",
    );

    const port = await freePort();
    fs.mkdirSync(ARTIFACTS, { recursive: true });
    const serverLog = fs.openSync(path.join(ARTIFACTS, "code-server.log"), "w");
    server = spawn(
      codeServer,
      [
        "--bind-addr",
        `127.0.0.1:${port}`,
        "--auth",
        "none",
        "--disable-telemetry",
        "--disable-update-check",
        "--disable-workspace-trust",
        "--extensions-dir",
        extensions,
        "--user-data-dir",
        userData,
        repo,
      ],
      { env, detached: true, stdio: ["ignore", serverLog, serverLog] },
    );
    await waitFor("code-server to listen", async () => httpOk(`http://127.0.0.1:${port}/healthz`));
    log(`code-server on port ${port}`);

    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    });
    const page = await browser.newPage({ viewport: { width: 1500, height: 900 } });
    page.setDefaultTimeout(60_000);
    const wb = new Workbench(page);
    await page.goto(`http://127.0.0.1:${port}/?folder=${encodeURIComponent(repo)}`);
    await page.locator(".monaco-workbench").waitFor({ state: "visible", timeout: LONG });
    check(true, "the workbench loaded");

    // The extension activates on .aidp/config.toml; open its view.
    // Its commands appear in the palette once the extension host has loaded it: retry until then.
    await waitFor(
      "the AIDP commands in the palette",
      async () =>
        wb.command("AIDP: Show Workstreams", 5000).then(
          () => true,
          () => false,
        ),
      LONG,
    );
    return { page, wb, userData, close };
  } catch (e) {
    await close();
    throw e;
  }
}

/** Closes `session` (if it opened) and removes `base`, which AIDP_E2E_KEEP=1 keeps to look at. */
export async function closeAndClean(session: Session | undefined, base: string): Promise<void> {
  await session?.close();
  if (process.env.AIDP_E2E_KEEP === "1") log(`kept ${base}`);
  else fs.rmSync(base, { recursive: true, force: true });
}
