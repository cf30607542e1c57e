/**
 * End-to-end test: the packaged extension in real VS Code (code-server), driven by playwright-core,
 * against the real `aidp serve` of this repository's Python venv.
 *
 * Run with `npm run test:e2e` from client-vscode/ (builds aidp.vsix first). Needs Node 20, the Debian
 * packages chromium, ripgrep and code-server's build dependencies, and `<repo>/.venv` with aidp installed.
 *
 * Environment (all optional):
 *   AIDP_PYTHON          interpreter with aidp installed   (default <repo>/.venv/bin/python)
 *   AIDP_CACHE           cache dir for code-server          (default ~/.cache/aidp)
 *   AIDP_E2E_ARTIFACTS   where screenshots go               (default <repo>/test-artifacts/vscode)
 *   CHROMIUM_PATH        browser executable                 (default /usr/bin/chromium)
 *   AIDP_E2E_KEEP=1      keep the temporary directory
 *   AIDP_E2E_UPDATE_DOCS=1  copy the "running" screenshot to docs/vscode-workstreams.png
 */
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import type { Locator } from "playwright-core";
import {
  ARTIFACTS,
  LONG,
  PYTHON,
  REPO_ROOT,
  VSIX,
  closeAndClean,
  log,
  logFiles,
  logLines,
  openWorkbench,
  run,
  t0,
  tracedBetween,
  waitFor,
  type Session,
  type Workbench,
} from "./workbench";

let passed = 0;

function check(condition: unknown, what: string): asserts condition {
  if (!condition) throw new Error(`check failed: ${what}`);
  passed += 1;
  log(`ok: ${what}`);
}

/** A temporary git repository with three workstreams made by the real CLI. */
function prepareRepository(base: string): string {
  const repo = path.join(base, "repo");
  const harness = path.join(base, "harness.sh");
  fs.writeFileSync(
    harness,
    [
      "#!/bin/sh",
      'case "$1" in',
      '  ok) echo "ok: all good in $(pwd)"; exit 0 ;;',
      '  fail) echo "fail: about to fail"; echo "something broke" >&2; exit 3 ;;',
      '  slow) i=0; while [ "$i" -lt 8 ]; do echo "slow: tick $i"; i=$((i+1)); sleep 1; done; exit 0 ;;',
      '  commit) echo "made by a harness" > made.txt && git add made.txt && git commit -qm "made.txt" ;;',
      // Runs until the test creates the file $2: "slow" without depending on how fast the machine is. It says
      // how far it is through aidp's progress channel (a JSON line appended to $AIDP_PROGRESS).
      "  gate) echo \"gate: waiting for the gate\"; " +
        `echo '{"percent": 40, "step": "WAITING", "message": "for the gate"}' >> "$AIDP_PROGRESS"; ` +
        'while [ ! -e "$2" ]; do sleep 0.2; done; echo "gate: released"; exit 0 ;;',
      '  *) echo "unknown mode $1" >&2; exit 2 ;;',
      "esac",
      "",
    ].join("\n"),
    { mode: 0o755 },
  );
  fs.mkdirSync(path.join(repo, ".aidp"), { recursive: true });
  const git = (...args: string[]): string => run("git", args, { cwd: repo });
  git("init", "-q", "-b", "main");
  git("config", "user.email", "e2e@example.invalid");
  git("config", "user.name", "aidp e2e");
  fs.writeFileSync(path.join(repo, "README.md"), "# e2e fixture\n");
  fs.writeFileSync(path.join(repo, ".gitignore"), ".aidp/\n.worktrees/\n");
  fs.writeFileSync(
    path.join(repo, ".aidp", "config.toml"),
    `[harness]\ncommand = ["sh", ${JSON.stringify(harness)}, "ok"]\nmax_concurrent = 3\ngrace_s = 2\n`,
  );
  git("add", "README.md", ".gitignore");
  git("commit", "-q", "-m", "initial");
  const aidp = (...args: string[]): string => run(PYTHON, ["-m", "aidp", ...args], { cwd: repo });
  aidp("ws", "new", "ok-ws", "finish", "fine", "--command", `sh ${harness} ok`);
  aidp("ws", "new", "fail-ws", "fail", "with", "exit", "3", "--command", `sh ${harness} fail`);
  aidp("ws", "new", "slow-ws", "take", "about", "eight", "seconds", "--command", `sh ${harness} slow`);
  log(`workstreams:\n${aidp("ws", "list")}`);
  return repo;
}

/**
 * Errors with `message` logged by the extension hosts under `dir` whose stack passes through the aidp
 * extension (other extensions, such as VS Code's JSON support, have their own).
 */
function aidpErrors(dir: string, message: string): string[] {
  // An entry: its timestamped line and the stack lines after it.
  return logFiles(dir, "exthost.log").flatMap((file) =>
    fs
      .readFileSync(file, "utf8")
      .split(/\n(?=\d{4}-\d\d-\d\d )/)
      .filter((logged) => logged.includes(message) && logged.includes("aidp.aidp-")),
  );
}

/** Whether the process runs (a zombie, which no init may reap in a container, does not). */
function processAlive(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z /.test(fs.readFileSync(`/proc/${pid}/stat`, "utf8"));
  } catch {
    return false;
  }
}

/** Records every distinct aria-label a row shows, until stopped. */
function watchRows(wb: Workbench, slugs: string[]): { seen: Map<string, string[]>; stop: () => Promise<void> } {
  const seen = new Map<string, string[]>(slugs.map((s) => [s, []]));
  let running = true;
  const sample = async (): Promise<void> => {
    for (const slug of slugs) {
      const label = await wb.label(slug).catch(() => undefined);
      const list = seen.get(slug);
      if (label !== undefined && list !== undefined) {
        const status = label.slice(slug.length + 2).split(/[ ·]/)[0] ?? "";
        if (list[list.length - 1] !== status) list.push(status);
      }
    }
  };
  const loop = (async () => {
    while (running) {
      await sample();
      await new Promise((r) => setTimeout(r, 150));
    }
  })();
  return {
    seen,
    stop: async () => {
      running = false;
      await loop;
      await sample(); // the final state, after the waits that preceded stop()
    },
  };
}

/** An Output channel's text from the header of the last run another aidp process ran, to its end. */
function terminalRun(text: string): string {
  const header = text.lastIndexOf("by another aidp process");
  return header < 0 ? "" : text.slice(text.lastIndexOf("=== run ", header));
}

async function main(): Promise<void> {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  for (const f of fs.readdirSync(ARTIFACTS)) if (f.endsWith(".png")) fs.rmSync(path.join(ARTIFACTS, f));
  if (!fs.existsSync(VSIX)) throw new Error(`${VSIX} is missing: run "npm run package" first`);
  if (!fs.existsSync(PYTHON)) throw new Error(`${PYTHON} is missing: create the repository's venv (AIDP_PYTHON overrides)`);
  run(PYTHON, ["-m", "aidp", "serve", "--help"]);
  check(true, `aidp serve is runnable with ${PYTHON}`);

  const base = fs.mkdtempSync(path.join(os.tmpdir(), "aidp-e2e-"));
  let session: Session | undefined;
  let wb: Workbench | undefined;
  try {
    const repo = prepareRepository(base);
    check(fs.existsSync(path.join(repo, ".worktrees", "slow-ws")), "the CLI created the worktrees");

    // The trace says which messages an update took (see "A run's end updates its row in place").
    session = await openWorkbench(base, repo, check, { "aidp.maxConcurrent": 3, "aidp.trace.server": "messages" });
    const { page, userData } = session;
    wb = session.wb;
    for (const slug of ["ok-ws", "fail-ws", "slow-ws"]) await wb.waitStatus(slug, "active");
    check(true, "the tree lists the three workstreams as active");
    await wb.shot("01-workstreams");

    // ---- The getting-started walkthrough: four steps, none done before their commands run -------------
    // Opened first here: VS Code starts tracking the steps' completion events from then on.
    const configure = "Configure your coding agent";
    const stepTitles = [configure, "Create a workstream", "Run them all", "Review and land"];
    const step = (title: string): Locator =>
      page.locator(".gettingStartedContainer .getting-started-step").filter({ hasText: title }).first();
    // A done step's checkbox icon is `codicon-getting-started-step-checked` (else `...-unchecked`).
    const stepDone = async (title: string): Promise<boolean> =>
      (await step(title).locator(".complete, [class*='getting-started-step-checked']").count()) > 0;
    const openWalkthrough = async (): Promise<void> => {
      await wb?.command("Welcome: Open Walkthrough...");
      await page.locator(".quick-input-widget input").first().fill("Get Started with AIDP");
      await wb?.pickRow("Get Started with AIDP").click();
      for (const title of stepTitles) await step(title).waitFor({ state: "visible", timeout: 30_000 });
    };
    await openWalkthrough();
    check(true, `the walkthrough shows its steps: ${stepTitles.join(", ")}`);
    const doneEarly = await Promise.all(stepTitles.map(stepDone));
    check(!doneEarly.some(Boolean), `no walkthrough step is done before its command ran (${JSON.stringify(doneEarly)})`);
    await wb.command("View: Close Editor");

    // ---- Run all ------------------------------------------------------------------------------------
    const watcher = watchRows(wb, ["ok-ws", "fail-ws", "slow-ws"]);
    await wb.command("AIDP: Run All Workstreams");
    await wb.waitStatus("slow-ws", "running");
    check(true, "slow-ws shows running");
    const progress = wb.toast("AIDP: running all workstreams");
    await progress.waitFor({ state: "visible", timeout: 30_000 });
    check(
      (await wb.statusBarSpinners()) === 0 && (await wb.label("slow-ws"))?.includes("running"),
      "during the run, its progress notification is the one indicator (no spinner in the status bar, no $/progress)",
    );
    const runningShot = await wb.shot("02-running");
    if (process.env.AIDP_E2E_UPDATE_DOCS === "1") {
      fs.copyFileSync(runningShot, path.join(REPO_ROOT, "docs", "vscode-workstreams.png"));
      log("updated docs/vscode-workstreams.png");
    }
    await wb.waitStatus("ok-ws", "completed");
    await wb.waitStatus("fail-ws", "failed");
    await wb.waitStatus("slow-ws", "completed");
    await watcher.stop();
    log(`statuses seen: ${JSON.stringify(Object.fromEntries(watcher.seen))}`);
    const slowSeen = watcher.seen.get("slow-ws") ?? [];
    check(
      slowSeen.includes("running") && slowSeen.lastIndexOf("completed") > slowSeen.indexOf("running"),
      "slow-ws went running -> completed",
    );
    check((await wb.label("fail-ws"))?.includes("exit 3"), "fail-ws shows its exit code 3");
    const summary = wb.toast(/ran 3 workstreams/);
    await summary.waitFor({ state: "visible", timeout: 60_000 });
    const summaryText = (await summary.innerText()).replace(/\s+/g, " ");
    check(/2 completed, 1 failed/.test(summaryText), `the run notification counts outcomes: "${summaryText}"`);
    await wb.shot("03-finished");

    // Show Failures -> quick pick of failures -> the log.
    await summary.locator(".monaco-button", { hasText: "Show Failures" }).click();
    const failPick = page.locator(".quick-input-widget .monaco-list-row", { hasText: "fail-ws" }).first();
    await failPick.waitFor({ state: "visible", timeout: 30_000 });
    check(
      (await page.locator(".quick-input-widget .monaco-list-row", { hasText: "ok-ws" }).count()) === 0,
      "Show Failures lists fail-ws only",
    );
    await failPick.click();
    const logTab = page.locator(".tabs-container .tab", { hasText: /fail-ws · .*\.log/ }).first();
    await logTab.waitFor({ state: "visible", timeout: 30_000 });
    check(true, `the failure's log opened in an editor whose tab names the workstream ("${await logTab.innerText()}")`);
    const logEditor = page.locator(".editor-instance .monaco-editor .view-lines").first();
    await waitFor("the log's text in the editor", async () => (await logEditor.innerText()).replace(/\u00a0/g, " ").includes("something broke"), 30_000);
    check(true, "the log editor shows the harness's output");
    await wb.shot("04-failure-log");

    // ---- Run one slow workstream and cancel it from the progress notification ----------------------
    // Start it from the row's inline Run action (shown only when the item can run).
    const slowRow = wb.row("slow-ws");
    await slowRow.hover();
    await slowRow.locator('.action-label[aria-label="Run Workstream"]').click();
    await wb.waitStatus("slow-ws", "running");
    await slowRow.hover();
    await slowRow.locator('.action-label[aria-label="Cancel Workstream"]').waitFor({ state: "visible", timeout: 30_000 });
    check(
      (await slowRow.locator('.action-label[aria-label="Run Workstream"]').count()) === 0,
      "while running, the row offers Cancel and not Run",
    );
    const cancelToast = wb.toast("AIDP: running slow-ws");
    await cancelToast.waitFor({ state: "visible", timeout: 30_000 });
    await wb.shot("05-before-cancel");
    await cancelToast.hover();
    await cancelToast.locator(".monaco-button", { hasText: "Cancel" }).click();
    const cancelledLabel = await wb.waitStatus("slow-ws", "cancelled");
    check(true, `cancelling from the progress notification ends slow-ws cancelled ("${cancelledLabel}")`);
    check(
      !cancelledLabel.includes("signal") && (!cancelledLabel.includes("(") || /\(stopped by SIG[A-Z]+\)/.test(cancelledLabel)),
      `the cancelled row says how it ended as a person would ("${cancelledLabel}")`,
    );
    await wb.toast("run cancelled").waitFor({ state: "visible", timeout: 60_000 });
    check(true, "the extension reported the cancelled run");
    await wb.shot("06-cancelled");

    // ---- New Workstream: the slug is validated as you type ------------------------------------------
    await wb.command("AIDP: New Workstream");
    const input = page.locator(".quick-input-widget input").first();
    await input.fill("Bad_Slug");
    const invalid = page.locator(".quick-input-widget .quick-input-message", { hasText: /Use lowercase letters only/ });
    await invalid.waitFor({ state: "visible", timeout: 30_000 });
    check(true, "New Workstream rejects 'Bad_Slug' as you type");
    await wb.shot("07-new-validation");
    await input.fill("new-ws");
    await waitFor("the slug to be accepted", async () => (await invalid.count()) === 0, 30_000);
    await page.keyboard.press("Enter");
    await page.locator(".quick-input-widget .quick-input-title", { hasText: "2/2" }).waitFor({ state: "visible", timeout: 30_000 });
    await input.fill("leave a dirty file behind");
    await page.keyboard.press("Enter");
    await wb.waitStatus("new-ws", "active");
    check(true, "New Workstream created new-ws and the tree shows it");

    // ---- Remove: asks first, shows the server's refusal for uncommitted work, offers Force ------------
    fs.writeFileSync(path.join(repo, ".worktrees", "new-ws", "dirty.txt"), "uncommitted\n");
    await wb.command("AIDP: Remove Workstream");
    await input.fill("new-ws");
    await page.locator(".quick-input-widget .monaco-list-row", { hasText: "new-ws" }).first().click();
    const ask = page.locator(".monaco-dialog-box", { hasText: "Remove workstream 'new-ws'?" });
    await ask.waitFor({ state: "visible", timeout: 30_000 });
    await ask.getByRole("button", { name: "Remove", exact: true }).click();
    const refusal = page.locator(".monaco-dialog-box", { hasText: "did not remove" });
    await refusal.waitFor({ state: "visible", timeout: 60_000 });
    const refusalText = (await refusal.innerText()).replace(/\s+/g, " ");
    check(/uncommitted/.test(refusalText), `the server's refusal is shown: "${refusalText.slice(0, 160)}"`);
    await wb.shot("08-remove-refused");
    await refusal.getByRole("button", { name: "Force Remove" }).click();
    await waitFor("new-ws to leave the tree", async () => (await wb?.row("new-ws").count()) === 0, 60_000);
    check(!fs.existsSync(path.join(repo, ".worktrees", "new-ws")), "Force Remove removed new-ws and its worktree");
    await wb.shot("09-removed");

    // ---- New Workstream cancelled while the repository's post-checkout hook (ignoring SIGTERM) runs ---
    const hookFile = path.join(repo, ".git", "hooks", "post-checkout");
    const hookPidFile = path.join(base, "post-checkout.pid");
    fs.writeFileSync(hookFile, `#!/bin/sh\ntrap '' TERM\necho $$ > "${hookPidFile}"\nwhile :; do sleep 0.2; done\n`, {
      mode: 0o755,
    });
    await wb.command("AIDP: New Workstream");
    await input.fill("hooked-ws");
    await page.keyboard.press("Enter");
    await page.locator(".quick-input-widget .quick-input-title", { hasText: "2/2" }).waitFor({ state: "visible", timeout: 30_000 });
    await input.fill("wait for a hook that never ends");
    await page.keyboard.press("Enter");
    const creating = wb.toast("AIDP: creating hooked-ws");
    await creating.waitFor({ state: "visible", timeout: 30_000 });
    const hookPid = await waitFor("the post-checkout hook to start", () => {
      const text = fs.existsSync(hookPidFile) ? fs.readFileSync(hookPidFile, "utf8") : "";
      return Promise.resolve(text.endsWith("\n") && Number(text.trim()));
    });
    check(processAlive(hookPid), "New Workstream shows a cancellable notification while the post-checkout hook runs");
    await creating.hover();
    await creating.locator(".monaco-button", { hasText: "Cancel" }).click();
    await wb.toast("creating hooked-ws was cancelled").waitFor({ state: "visible", timeout: 60_000 });
    check(!processAlive(hookPid), "cancelling it ended the hook, which ignored SIGTERM");
    check((await wb.row("hooked-ws").count()) === 0, "the cancelled creation made no workstream");
    fs.unlinkSync(hookFile);
    run("git", ["worktree", "remove", "--force", path.join(repo, ".worktrees", "hooked-ws")], { cwd: repo });
    run("git", ["branch", "-D", "aidp/hooked-ws"], { cwd: repo });

    // ---- A server that cannot start: an actionable error with a button to the setting ---------------
    const settingsFile = path.join(userData, "User", "settings.json");
    const settings = JSON.parse(fs.readFileSync(settingsFile, "utf8")) as Record<string, unknown>;
    const missing = path.join(base, "no-such-python");
    await wb.editUserSettings({ ...settings, "aidp.server.command": [missing, "-m", "aidp", "serve"] });
    const offer = wb.toast("the server command changed");
    await offer.waitFor({ state: "visible", timeout: 60_000 });
    await offer.locator(".monaco-button", { hasText: "Restart Server" }).click();
    const startError = wb.toast("cannot start the server");
    await startError.waitFor({ state: "visible", timeout: 60_000 });
    const startErrorText = (await startError.innerText()).replace(/\s+/g, " ");
    check(
      startErrorText.includes(`'${missing}' was not found`) && startErrorText.includes("aidp.server.command"),
      `a missing interpreter is reported with what to do: "${startErrorText.slice(0, 200)}"`,
    );
    check((await startError.locator(".monaco-button", { hasText: "Open Setting" }).count()) === 1, "the error offers Open Setting");
    await wb.shot("10-server-error");
    await startError.locator(".monaco-button", { hasText: "Open Setting" }).click();
    await page
      .locator(".settings-editor .monaco-list-row", { hasText: /Server: Command/ })
      .first()
      .waitFor({ state: "visible", timeout: 60_000 });
    check(true, "Open Setting opens the settings editor at aidp.server.command");
    await wb.shot("11-open-setting");

    // Put the working command back and restart: the tree comes back.
    await wb.editUserSettings(settings);
    const offerAgain = wb.toast("the server command changed");
    await offerAgain.waitFor({ state: "visible", timeout: 60_000 });
    await offerAgain.locator(".monaco-button", { hasText: "Restart Server" }).click();
    await wb.waitStatus("ok-ws", "completed", LONG);
    await wb.waitStatus("slow-ws", "cancelled", LONG);
    check(true, "after AIDP: Restart Server with the right command the tree is back");
    await wb.shot("12-restarted");

    // ---- Pause / Resume (the server announces aidp/wsListChanged; the tree re-fetches) ---------------
    await wb.command("AIDP: Pause Workstream");
    await page.locator(".quick-input-widget input").first().fill("fail-ws");
    await page.locator(".quick-input-widget .monaco-list-row", { hasText: "fail-ws" }).first().click();
    await wb.waitStatus("fail-ws", "paused");
    check(true, "Pause Workstream shows fail-ws paused");
    await wb.command("AIDP: Resume Workstream");
    await page.locator(".quick-input-widget .monaco-list-row", { hasText: "fail-ws" }).first().click();
    // Resting status after resume: the last run's status (protocol.md).
    await wb.waitStatus("fail-ws", "failed");
    check(true, "Resume Workstream shows fail-ws with its last status (failed) again");

    // ---- A workstream that runs until the test opens its gate (made by the CLI in a terminal) ---------
    const gate = path.join(base, "gate-open");
    const harness = path.join(base, "harness.sh");
    run(PYTHON, ["-m", "aidp", "ws", "new", "gate-ws", "wait", "for", "the", "gate", "--command", `sh ${harness} gate ${gate}`], {
      cwd: repo,
    });
    await wb.waitStatus("gate-ws", "active");
    check(true, "gate-ws, made by the CLI in another process, appears in the tree without a refresh");
    await wb.clearNotifications();

    // ---- Run Workstreams...: pick ok-ws and fail-ws in the multi-select quick pick --------------------
    const before = { slow: await wb.label("slow-ws"), gate: await wb.label("gate-ws") };
    const pickWatcher = watchRows(wb, ["ok-ws", "fail-ws", "slow-ws", "gate-ws"]);
    await wb.command("AIDP: Run Workstreams...");
    const all4 = ["ok-ws", "fail-ws", "slow-ws", "gate-ws"];
    await wb.pickExactly(all4, ["ok-ws", "fail-ws"]);
    await wb.shot("13-run-picked");
    await wb.acceptPicks();
    const pickedSummary = wb.toast(/ran 2 workstreams/);
    await pickedSummary.waitFor({ state: "visible", timeout: LONG });
    const pickedText = (await pickedSummary.innerText()).replace(/\s+/g, " ");
    check(/1 completed, 1 failed/.test(pickedText), `Run Workstreams... ran the two picked: "${pickedText}"`);
    await wb.waitStatus("ok-ws", "completed");
    await wb.waitStatus("fail-ws", "failed");
    await pickWatcher.stop();
    log(`statuses seen: ${JSON.stringify(Object.fromEntries(pickWatcher.seen))}`);
    check(
      (await wb.label("ok-ws"))?.includes("completed") && (await wb.label("fail-ws"))?.includes("exit 3"),
      "ok-ws ends completed and fail-ws failed (exit 3)",
    );
    const slowAfter = pickWatcher.seen.get("slow-ws") ?? [];
    const gateAfter = pickWatcher.seen.get("gate-ws") ?? [];
    check(
      slowAfter.join() === "cancelled" && gateAfter.join() === "active" && (await wb.label("gate-ws")) === before.gate,
      `the workstreams not picked did not run (slow-ws ${slowAfter.join("->")}, gate-ws ${gateAfter.join("->")}; was "${before.slow}")`,
    );
    await wb.shot("14-run-picked-done");
    await wb.clearNotifications();

    // ---- Live output, then AIDP: Cancel Workstream from the palette --------------------------------------
    fs.rmSync(gate, { force: true });
    const gateRow = wb.row("gate-ws");
    await gateRow.hover();
    await gateRow.locator('.action-label[aria-label="Run Workstream"]').click();
    await wb.waitStatus("gate-ws", "running");
    const withProgress = await wb.waitStatus("gate-ws", "· 40% WAITING");
    check(true, `the running workstream's progress (from $AIDP_PROGRESS) shows in its row ("${withProgress}")`);
    await wb.shot("15a-progress");
    await wb.command("Output: Show Output Channels...");
    await page.locator(".quick-input-widget input").first().fill("AIDP: gate-ws");
    await wb.pickRow("AIDP: gate-ws").click();
    await waitFor("the harness's line in the Output view", async () => (await wb?.outputText())?.includes("gate: waiting for the gate"));
    check(
      (await wb.label("gate-ws"))?.includes("running"),
      "while gate-ws runs, its output channel 'AIDP: gate-ws' shows the harness's printed line",
    );
    await wb.shot("15-live-output");
    await wb.command("AIDP: Cancel Workstream");
    await wb.pickExactly(["gate-ws"], ["gate-ws"]);
    check(
      (await page.locator(".quick-input-widget .monaco-list-row", { hasText: "ok-ws" }).count()) === 0,
      "Cancel Workstream offers only the running workstream",
    );
    await wb.shot("16-cancel-pick");
    await wb.acceptPicks();
    const gateCancelled = await wb.waitStatus("gate-ws", "cancelled");
    check(true, `AIDP: Cancel Workstream from the palette ends gate-ws cancelled ("${gateCancelled}")`);
    await waitFor("the final status in the Output view", async () => (await wb?.outputText())?.includes("=== cancelled"));
    const gateOutput = await wb.outputText();
    check(
      gateOutput.indexOf("gate: waiting for the gate") < gateOutput.indexOf("=== cancelled") && !gateOutput.includes("gate: released"),
      "the output channel shows the harness's line, then '=== cancelled'",
    );
    await wb.shot("17-cancelled-from-palette");
    await wb.clearNotifications();

    // ---- Restart Server during a run: the list stays on screen, the run ends cancelled, no errors -----
    fs.rmSync(gate, { force: true });
    await gateRow.hover();
    await gateRow.locator('.action-label[aria-label="Run Workstream"]').click();
    await wb.waitStatus("gate-ws", "running");
    const welcomes = new Set<string>();
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        const text = await wb.welcome();
        if (text) welcomes.add(text);
        await new Promise((r) => setTimeout(r, 100));
      }
    })();
    try {
      // The stopping server cancels the run: it answers with the summary, or the connection closes first.
      const ended = wb.toast(/the run ended when the server stopped|ran 1 workstream .*1 cancelled/);
      const restarted = page.locator(".part.statusbar", { hasText: "server restarted" });
      await wb.command("AIDP: Restart Server");
      await Promise.all([ended.waitFor({ state: "visible", timeout: LONG }), restarted.waitFor({ timeout: LONG })]);
      check(true, `the server restarted and the run's end is reported: "${(await ended.innerText()).replace(/\s+/g, " ")}"`);
      await wb.waitStatus("gate-ws", "cancelled");
      await wb.waitStatus("ok-ws", "completed");
    } finally {
      sampling = false;
      await sampler;
    }
    check(welcomes.size === 0, `the tree stayed on screen through the restart (welcome texts seen: ${JSON.stringify([...welcomes])})`);
    const listErrors = logLines(path.join(userData, "logs"), /cannot list workstreams/);
    check(listErrors.length === 0, `a restart during a run logs no list errors (${JSON.stringify(listErrors)})`);
    await wb.shot("17b-restarted-during-run");
    await wb.clearNotifications();

    // ---- A run in another process (a terminal's `aidp ws run`) shows live, without a refresh ----------
    // The server watches the state for other processes' changes, so the tree follows the CLI's run and
    // never offers Run for a workstream that runs elsewhere.
    fs.rmSync(gate, { force: true });
    const cli = spawn(PYTHON, ["-m", "aidp", "ws", "run", "gate-ws"], { cwd: repo, stdio: "ignore" });
    const cliDone = new Promise<number | null>((resolve) => cli.on("exit", (code) => resolve(code)));
    try {
      await wb.waitStatus("gate-ws", "running");
      check(true, "the CLI's run of gate-ws shows as running in the tree, unasked");
      await wb.showOutputChannel("AIDP: gate-ws");
      await waitFor("the terminal's run in the output channel", async () => {
        const text = (await wb?.outputText()) ?? "";
        const header = text.lastIndexOf("by another aidp process");
        return header >= 0 && text.indexOf("gate: waiting for the gate", header) > header;
      });
      check(true, "the terminal's run output reaches the 'AIDP: gate-ws' output channel while it runs");
      await wb.shot("18a-terminal-output");
      await gateRow.hover();
      check(
        (await gateRow.locator('.action-label[aria-label="Run Workstream"]').count()) === 0,
        "the row offers no Run while another process runs it",
      );
      await wb.shot("18-running-elsewhere");
    } finally {
      fs.writeFileSync(gate, "");
      const code = await cliDone;
      log(`the CLI's run of gate-ws exited ${String(code)}`);
    }
    await wb.waitStatus("gate-ws", "completed");
    check(true, "when the CLI's run ends, the tree shows gate-ws completed, unasked");
    // Its statuses and its output both came: the channel still tells its run once, and its end once.
    await waitFor("the terminal's run's end in its channel", async () => /=== completed/.test(terminalRun((await wb?.outputText()) ?? "")));
    const told = terminalRun(await wb.outputText());
    check(
      (told.match(/=== run /g) ?? []).length === 1 && (told.match(/=== completed/g) ?? []).length === 1,
      `the terminal's run is announced once and its end written once in its channel (${JSON.stringify(told)})`,
    );
    await wb.clearNotifications();

    // ---- A run's end updates its row in place (aidp/wsUpdated): what it changed shows, no list fetched ----
    run(PYTHON, ["-m", "aidp", "ws", "new", "made-ws", "make", "a", "file", "--command", `sh ${harness} commit`], { cwd: repo });
    // made-twin has the same command and never runs: its forecast is that command's runs' by any workstream.
    run(PYTHON, ["-m", "aidp", "ws", "new", "made-twin", "the", "same", "--command", `sh ${harness} commit`], { cwd: repo });
    await wb.waitStatus("made-ws", "active");
    await wb.waitStatus("made-twin", "active");
    // The server looks at other processes' commits once a second (Engine.watch_others), and the
    // CLI's creation commits more than once (the record, then its hold released): a look between
    // them announces the list changed twice, the second up to a second later. One look past the
    // CLI's exit, every announcement of the creation is made.
    await new Promise((r) => setTimeout(r, 1500));
    // Any list the new workstream set off is over before the stamp: the refresh's own answer is traced.
    const refreshed = Date.now();
    await wb.command("AIDP: Refresh Workstreams");
    await waitFor("the refreshed list", () =>
      Promise.resolve(tracedBetween(userData, refreshed, Date.now()).some(([, message]) => message.startsWith("response 'aidp/wsList"))),
    );
    const madeRow = wb.row("made-ws");
    const beforeRun = Date.now();
    await madeRow.hover();
    await madeRow.locator('.action-label[aria-label="Run Workstream"]').click();
    check(!(await wb.label("made-twin"))?.includes("expected"), "made-twin shows no forecast before its command ever ran");
    const madeLabel = await wb.waitStatus("made-ws", "+1 −0 · 1 file");
    const twinLabel = await wb.waitStatus("made-twin", "expected");
    const traced = tracedBetween(userData, beforeRun, Date.now()).map(([, message]) => message);
    check(
      traced.some((m) => m.startsWith("notification 'aidp/wsUpdated'")) && !traced.some((m) => m.startsWith("request 'aidp/wsList")),
      `made-ws's row shows what its run committed ("${madeLabel}"), and made-twin the forecast that run gave it ("${twinLabel}"), from aidp/wsUpdated, without fetching the list (${JSON.stringify(traced)})`,
    );

    // ---- Scheduling: priority and dependencies from the commands, a blocked dependent, the ETA --------
    const aidpNew = (...args: string[]): string => run(PYTHON, ["-m", "aidp", "ws", "new", ...args], { cwd: repo });
    aidpNew("dep-a", "fail", "first", "--command", `sh ${harness} fail`);
    aidpNew("dep-b", "build", "on", "dep-a", "--command", `sh ${harness} ok`);
    await wb.waitStatus("dep-b", "active");
    const quickInput = page.locator(".quick-input-widget input").first();

    // AIDP: Set Priority from the palette: a named level.
    await wb.command("AIDP: Set Priority");
    await quickInput.fill("dep-b");
    await wb.pickRow("dep-b").click();
    await wb.pickRow("high").click();
    check((await wb.waitStatus("dep-b", "↑ high")).length > 0, "AIDP: Set Priority → high shows '↑ high' on dep-b's row");

    // ... and any number, checked as it is typed.
    await wb.command("AIDP: Set Priority");
    await quickInput.fill("dep-a");
    await wb.pickRow("dep-a").click();
    await wb.pickRow("Other number...").click();
    await quickInput.fill("urgent");
    const badPriority = page.locator(".quick-input-widget .quick-input-message", { hasText: /Type high, normal or low, or a whole number/ });
    await badPriority.waitFor({ state: "visible", timeout: 30_000 });
    check(true, "a priority that is neither a level nor a number from -100 to 100 is refused as it is typed");
    await quickInput.fill("-5");
    await waitFor("the number to be accepted", async () => (await badPriority.count()) === 0, 30_000);
    await page.keyboard.press("Enter");
    check((await wb.waitStatus("dep-a", "↓ -5")).length > 0, "a priority of -5 shows as '↓ -5' on dep-a's row");

    // AIDP: Set Dependencies from the row's context menu: dep-b runs after dep-a.
    await wb.row("dep-b").click({ button: "right" });
    await page.locator(".monaco-menu .action-item", { hasText: "Set Dependencies" }).first().click();
    // A context menu opened under the pointer sometimes takes that click as a hover (the item highlighted,
    // the menu still open): Enter then runs the highlighted item.
    await page
      .locator(".quick-input-widget")
      .first()
      .waitFor({ state: "visible", timeout: 5_000 })
      .catch(() => page.keyboard.press("Enter"));
    await wb.pickExactly(["dep-a"], ["dep-a"]);
    check(
      (await wb.pickRow("dep-b").count()) === 0,
      "Set Dependencies offers the other workstreams, not dep-b itself",
    );
    await wb.shot("18c-set-dependencies");
    await wb.acceptPicks();
    const after = await wb.waitStatus("dep-b", "after: dep-a");
    check(true, `the tree shows dep-b's dependency ("${after}")`);
    await wb.command("AIDP: Set Dependencies");
    await quickInput.fill("dep-b");
    await wb.pickRow("dep-b").click();
    await wb.pickRow("dep-a").waitFor({ state: "visible", timeout: 30_000 });
    check(await wb.isPicked(wb.pickRow("dep-a")), "Set Dependencies opens with the current dependency (dep-a) picked");
    await page.keyboard.press("Escape");

    // A cycle is refused with the server's reason, and nothing changes.
    await wb.command("AIDP: Set Dependencies");
    await quickInput.fill("dep-a");
    await wb.pickRow("dep-a").click();
    // dep-b also shows in the first picker (its task names dep-a): pick it only in the second one.
    await page
      .locator(".quick-input-widget .quick-input-title", { hasText: "'dep-a' runs after" })
      .waitFor({ state: "visible", timeout: 30_000 });
    await wb.pickExactly(["dep-b"], ["dep-b"]);
    await wb.acceptPicks();
    const cycle = wb.toast("cannot set the dependencies");
    await cycle.waitFor({ state: "visible", timeout: 60_000 });
    const cycleText = (await cycle.innerText()).replace(/\s+/g, " ");
    check(/cycle/i.test(cycleText) && !(await wb.label("dep-a"))?.includes("after:"), `a cycle is refused: "${cycleText.slice(0, 200)}"`);
    await wb.clearNotifications();

    // Running dep-b pulls in dep-a, which fails: dep-b ends blocked, with the reason naming dep-a.
    const depB = wb.row("dep-b");
    await depB.hover();
    await depB.locator('.action-label[aria-label="Run Workstream"]').click();
    await wb.waitStatus("dep-a", "failed");
    const blocked = await wb.waitStatus("dep-b", "blocked");
    check(blocked.includes("dep-a"), `dep-b is blocked, its reason names dep-a ("${blocked}")`);
    check((await depB.locator(".codicon-debug-disconnect").count()) === 1, "a blocked row has its own icon");
    const blockedSummary = wb.toast(/ran 2 workstreams/);
    await blockedSummary.waitFor({ state: "visible", timeout: LONG });
    const blockedText = (await blockedSummary.innerText()).replace(/\s+/g, " ");
    check(
      /1 failed, 1 blocked\. Pulled in as dependencies: dep-a\./.test(blockedText),
      `the run's summary counts the blocked one and names the dependency it pulled in: "${blockedText}"`,
    );
    await wb.shot("18d-blocked");
    await wb.clearNotifications();

    // dep-c (made by the CLI) runs after gate-b, which has never run: running dep-c pulls gate-b in, and
    // dep-c waits, saying for what. Meanwhile the status bar shows the run's progress and time left
    // (both commands have past runs to go by: gate-b's is gate-ws's); once the run ends, that item goes.
    aidpNew("gate-b", "wait", "for", "the", "gate", "--command", `sh ${harness} gate ${gate}`);
    aidpNew("dep-c", "after", "gate-b", "--after", "gate-b", "--command", `sh ${harness} ok`);
    await wb.waitStatus("dep-c", "after: gate-b");
    const progressItem = page.locator(".part.statusbar .statusbar-item", { hasText: /AIDP: \d+\/\d+/ });
    check((await progressItem.count()) === 0, "no run goes: the status bar shows no run progress");
    fs.rmSync(gate, { force: true });
    const depC = wb.row("dep-c");
    await depC.hover();
    await depC.locator('.action-label[aria-label="Run Workstream"]').click();
    await wb.waitStatus("gate-b", "running");
    const waiting = await wb.waitStatus("dep-c", "queued · waiting for gate-b");
    check(true, `the dependency not done yet was pulled into the run, and dep-c says it waits for it ("${waiting}")`);
    const eta = await waitFor("the run's ETA in the status bar", async () => {
      const text = (await progressItem.first().innerText().catch(() => "")).replace(/\s+/g, " ");
      return /AIDP: 0\/2 · .*left/.test(text) ? text : undefined;
    });
    check(true, `the status bar shows the run's progress and time left ("${eta}")`);
    await wb.shot("18e-eta");
    fs.writeFileSync(gate, "");
    await wb.waitStatus("gate-b", "completed");
    await wb.waitStatus("dep-c", "completed");
    await waitFor("the progress item to go", async () => (await progressItem.count()) === 0, 60_000);
    check(true, "when the run ends (gate-b, then dep-c completed), the status bar's progress item goes");
    await wb.clearNotifications();

    // ---- Review and land: two workstreams that change the same line (their agents committed) ----------
    const commitIn = (slug: string, files: Record<string, string>): void => {
      const worktree = path.join(repo, ".worktrees", slug);
      for (const [name, text] of Object.entries(files)) fs.writeFileSync(path.join(worktree, name), text);
      run("git", ["add", "-A"], { cwd: worktree });
      run("git", ["commit", "-q", "-m", `${slug}: its work`], { cwd: worktree });
    };
    for (const slug of ["rev-a", "rev-b"]) {
      run(PYTHON, ["-m", "aidp", "ws", "new", slug, "change", "the", "readme", "--command", `sh ${harness} ok`], { cwd: repo });
    }
    commitIn("rev-a", { "README.md": "# e2e fixture, landed by rev-a\n", "a.txt": "new file by rev-a\n" });
    commitIn("rev-b", { "README.md": "# e2e fixture, changed by rev-b\n" });
    await wb.waitStatus("rev-b", "active");
    await wb.command("AIDP: Refresh Workstreams");
    const revA = await wb.waitStatus("rev-a", "+2 −1 · 2 files");
    const revB = await wb.waitStatus("rev-b", "+1 −1 · 1 file");
    check(!revA.includes("conflicts") && !revB.includes("conflicts"), `each row shows its change summary ("${revA}", "${revB}")`);

    // The changed files are the row's children; a click on one opens its diff.
    await wb.row("rev-a").locator(".monaco-tl-twistie").click();
    const fileRow = page.locator('.part.sidebar .monaco-list-row[aria-label^="a.txt,"]').first();
    await fileRow.waitFor({ state: "visible", timeout: 60_000 });
    check(
      (await page.locator('.part.sidebar .monaco-list-row[aria-label^="README.md,"]').count()) === 1,
      "rev-a's changed files (a.txt, README.md) are its children in the tree",
    );
    await fileRow.click();
    await page.locator(".tabs-container .tab", { hasText: "a.txt (rev-a: merge-base ↔ branch)" }).waitFor({ state: "visible", timeout: 60_000 });
    await waitFor("a.txt's new text in the diff editor", async () => (await wb?.editorText())?.includes("new file by rev-a"), 60_000);
    check(true, "a click on a.txt opens its diff, merge-base against the branch");
    await wb.shot("20-file-diff");

    // AIDP: Review Changes: the multi-file diff editor, both sides read with git show.
    await wb.command("AIDP: Review Changes");
    await page.locator(".quick-input-widget input").first().fill("rev-a");
    await wb.pickRow("rev-a").click();
    // The editor adds the file count to the title.
    await page.locator(".tabs-container .tab", { hasText: "rev-a: main…aidp/rev-a (2 files)" }).waitFor({ state: "visible", timeout: 60_000 });
    await waitFor(
      "both files' changes in the multi-diff editor",
      async () => {
        const text = (await wb?.editorText()) ?? "";
        return text.includes("landed by rev-a") && text.includes("# e2e fixture") && text.includes("new file by rev-a");
      },
      60_000,
    );
    check(true, "AIDP: Review Changes opens the multi-file diff editor with rev-a's two files, old and new text");
    await wb.shot("21-review-changes");

    // AIDP: Show Conflicts lists the colliding pair and the file.
    await wb.command("AIDP: Show Conflicts");
    const pair = wb.pickRow("rev-a ↔ rev-b");
    await pair.waitFor({ state: "visible", timeout: 60_000 });
    check((await pair.innerText()).includes("README.md"), "AIDP: Show Conflicts lists rev-a ↔ rev-b colliding in README.md");
    await wb.shot("22-conflicts");
    await page.keyboard.press("Escape");

    // AIDP: Land Workstream: strategy, confirmation, then the tree shows it landed.
    await wb.command("AIDP: Land Workstream");
    await page.locator(".quick-input-widget input").first().fill("rev-a");
    await wb.pickRow("rev-a").click();
    await wb.pickRow("Merge").click();
    const confirmLand = page.locator(".monaco-dialog-box", { hasText: "Land 'rev-a' into main (merge)?" });
    await confirmLand.waitFor({ state: "visible", timeout: 30_000 });
    await wb.shot("23-land-confirm");
    await confirmLand.getByRole("button", { name: "Land", exact: true }).click();
    await wb.toast("landed rev-a into main (merge)").waitFor({ state: "visible", timeout: 60_000 });
    const landed = await wb.waitStatus("rev-a", "landed");
    check(
      run("git", ["show", "main:README.md"], { cwd: repo }) === "# e2e fixture, landed by rev-a\n",
      `rev-a landed: main has its README and the tree shows "${landed}"`,
    );

    // rev-b now conflicts with main: its row wears the badge, and landing it is refused with the reason.
    const conflicted = await wb.waitStatus("rev-b", "conflicts with main");
    const badges = await wb.waitBadge(wb.row("rev-b"), "!");
    check(badges.includes("!"), `rev-b shows the conflict badge ("${conflicted}", badges ${JSON.stringify(badges)})`);
    await wb.shot("24-landed-and-conflict");
    // Lands `slug` from the palette (merge) and waits for its refusal: the message, and whether main stayed where it was.
    const bench = wb; // (narrowed here; a closure would see `wb` as possibly undefined)
    const landRefused = async (slug: string): Promise<{ text: string; mainKept: boolean }> => {
      const before = run("git", ["rev-parse", "main"], { cwd: repo });
      await bench.command("AIDP: Land Workstream");
      await page.locator(".quick-input-widget input").first().fill(slug);
      await bench.pickRow(slug).click();
      await bench.pickRow("Merge").click();
      await page.locator(".monaco-dialog-box").getByRole("button", { name: "Land", exact: true }).click();
      const refused = bench.toast(`could not land '${slug}'`);
      await refused.waitFor({ state: "visible", timeout: 60_000 });
      const text = (await refused.innerText()).replace(/\s+/g, " ");
      return { text, mainKept: run("git", ["rev-parse", "main"], { cwd: repo }) === before };
    };
    const refusedB = await landRefused("rev-b");
    check(
      refusedB.text.includes("README.md") && refusedB.mainKept,
      `landing rev-b is refused with the reason and file, and main did not move: "${refusedB.text.slice(0, 200)}"`,
    );
    await wb.shot("25-land-refused");
    await wb.clearNotifications();

    // A land git itself refuses (a reference-transaction hook holds main): git's reason, the hook's words, main unmoved.
    run(PYTHON, ["-m", "aidp", "ws", "new", "rev-c", "add", "c.txt", "--command", `sh ${harness} ok`], { cwd: repo });
    commitIn("rev-c", { "c.txt": "new file by rev-c\n" });
    const hook = path.join(repo, ".git", "hooks", "reference-transaction");
    const frozen = '[ "$1" = prepared ] && grep -q " refs/heads/main$" && { echo "main is frozen for the e2e" >&2; exit 1; }';
    fs.writeFileSync(hook, `#!/bin/sh\n${frozen}\nexit 0\n`, { mode: 0o755 });
    await wb.command("AIDP: Refresh Workstreams");
    await wb.waitStatus("rev-c", "1 file");
    const refusedC = await landRefused("rev-c");
    check(
      refusedC.text.includes("git refused to move main") && refusedC.text.includes("main is frozen for the e2e") && refusedC.mainKept,
      `a land the repository's hook refuses says git refused, with the hook's words, and main did not move: "${refusedC.text.slice(0, 200)}"`,
    );
    fs.unlinkSync(hook);
    await wb.clearNotifications();

    // An agent that left its work uncommitted: the dirty badge, and the file under the row, marked so.
    fs.writeFileSync(path.join(repo, ".worktrees", "ok-ws", "scratch.txt"), "left uncommitted by ok-ws\n");
    await wb.command("AIDP: Refresh Workstreams");
    const dirtyLabel = await wb.waitStatus("ok-ws", "uncommitted changes");
    const dirtyBadges = await wb.waitBadge(wb.row("ok-ws"), "M");
    check(dirtyBadges.includes("M"), `ok-ws wears the dirty badge ("${dirtyLabel}", badges ${JSON.stringify(dirtyBadges)})`);
    await wb.row("ok-ws").locator(".monaco-tl-twistie").click();
    const scratchRow = page.locator('.part.sidebar .monaco-list-row[aria-label^="scratch.txt,"]').first();
    await scratchRow.waitFor({ state: "visible", timeout: 60_000 });
    check((await scratchRow.getAttribute("aria-label"))?.includes("uncommitted"), "the uncommitted file is under ok-ws, marked uncommitted");
    await scratchRow.click();
    await page.locator(".tabs-container .tab", { hasText: "scratch.txt (ok-ws: branch ↔ worktree)" }).waitFor({ state: "visible", timeout: 60_000 });
    await waitFor("the worktree's text in the diff editor", async () => (await wb?.editorText())?.includes("left uncommitted by ok-ws"), 60_000);
    check(true, "a click on it opens its diff, branch head against the file in the worktree");
    await wb.shot("26-uncommitted");

    // ---- Open Worktree: code-server opens the worktree folder in a new browser window -----------------
    const popup = page.context().waitForEvent("page", { timeout: 60_000 });
    await wb.command("AIDP: Open Worktree");
    await page.locator(".quick-input-widget input").first().fill("ok-ws");
    await wb.pickRow("ok-ws").click();
    const worktreePage = await popup;
    await worktreePage.waitForURL(/folder=/, { timeout: 60_000 }).catch(() => undefined);
    const opened = new URL(worktreePage.url()).searchParams.get("folder") ?? worktreePage.url();
    check(
      opened.endsWith(path.join(".worktrees", "ok-ws")),
      `AIDP: Open Worktree opens the worktree of ok-ws in a new window (${opened})`,
    );
    await worktreePage.locator(".monaco-workbench").waitFor({ state: "visible", timeout: LONG });
    await worktreePage
      .locator(".part.sidebar .monaco-list-row", { hasText: "README.md" })
      .first()
      .waitFor({ state: "visible", timeout: LONG });
    check(true, "the new window's explorer shows the worktree's files (README.md)");
    const worktreeShot = path.join(ARTIFACTS, "19-open-worktree.png");
    await worktreePage.screenshot({ path: worktreeShot });
    log(`screenshot ${worktreeShot}`);
    await worktreePage.close();
    check(
      (await page.locator(".notifications-toasts .notification-toast", { hasText: "cannot" }).count()) === 0,
      "Open Worktree showed no error",
    );

    // ---- A workstream run through Ray ([executor] kind = "ray", aidp's own Ray instance): its row says
    // which host runs it, as the server's notifications tell; the repository goes back to local after.
    const configPath = path.join(repo, ".aidp", "config.toml");
    const localConfig = fs.readFileSync(configPath, "utf8");
    fs.writeFileSync(configPath, `${localConfig}\n[executor]\nkind = "ray"\n`);
    const rayGate = path.join(base, "ray-gate-open");
    run(PYTHON, ["-m", "aidp", "ws", "new", "ray-ws", "run", "on", "ray", "--command", `sh ${harness} gate ${rayGate}`], { cwd: repo });
    await wb.waitStatus("ray-ws", "active");
    const rayRow = wb.row("ray-ws");
    await rayRow.hover();
    await rayRow.locator('.action-label[aria-label="Run Workstream"]').click();
    const onHost = await wb.waitStatus("ray-ws", `on ${os.hostname()}`);
    check(onHost.includes("running"), `a workstream run through Ray shows running on its host ("${onHost}")`);
    await wb.shot("19c-ray-running");
    fs.writeFileSync(rayGate, "");
    const rayDone = await wb.waitStatus("ray-ws", "completed");
    check(!rayDone.includes(`on ${os.hostname()}`), `once it ended, its row no longer says a host ("${rayDone}")`);
    fs.writeFileSync(configPath, localConfig);

    // ---- The walkthrough again: the real commands run since completed its steps ------------------------
    await openWalkthrough();
    for (const title of stepTitles.slice(1)) {
      await waitFor(`the walkthrough step "${title}" to be complete`, () => stepDone(title), 30_000);
    }
    check(true, "New Workstream, Run All and Land completed their walkthrough steps");
    check(!(await stepDone(configure)), "the configure step waits for AIDP: Doctor");
    await wb.command("AIDP: Doctor");
    // With its last step done, VS Code leaves the walkthrough for the Welcome page: open it again.
    await openWalkthrough();
    await waitFor("the configure step to be complete", () => stepDone(configure), 30_000);
    check(true, "running AIDP: Doctor completed the configure step");
    await wb.shot("19b-walkthrough");
    // Closed by its tab: the walkthrough takes the focus back as it redraws its steps, which closes the palette.
    const walkthroughTab = page.locator(".tabs-container .tab", { hasText: "Walkthrough" });
    await walkthroughTab.locator(".codicon-close").first().click();
    await walkthroughTab.first().waitFor({ state: "detached", timeout: 30_000 });

    // ---- The window closes (and opens again): no "Channel has been closed" as the extension stops --------
    // This window's servers: `aidp serve` processes working in the test's repository.
    const serverPids = (): string[] =>
      run("ps", ["-eo", "pid=,args="])
        .split("\n")
        .filter((l) => l.includes("-m aidp serve"))
        .map((l) => l.trim().split(/\s+/)[0] ?? "")
        .filter((pid) => {
          try {
            return fs.readlinkSync(`/proc/${pid}/cwd`) === repo;
          } catch {
            return false; // gone meanwhile
          }
        });
    const oldServers = serverPids();
    check(oldServers.length > 0, "the aidp server runs before the extension host stops");
    // Reloading closes the window (its extension host deactivates the extension) and opens it again.
    await wb.command("Developer: Reload Window");
    await waitFor("the old aidp server to stop", () => Promise.resolve(!serverPids().some((p) => oldServers.includes(p))), LONG);
    check(true, "closing the window stopped its aidp server");
    await page.locator(".monaco-workbench").waitFor({ state: "visible", timeout: LONG });
    await waitFor(
      "the extension to come back",
      async () =>
        (await wb?.command("AIDP: Show Workstreams", 5000).then(
          () => true,
          () => false,
        )) && (await wb?.label("ok-ws"))?.includes("completed"),
      LONG,
    );
    const closed = aidpErrors(path.join(userData, "logs"), "Channel has been closed");
    check(closed.length === 0, `stopping the extension raised no "Channel has been closed" (${JSON.stringify(closed.slice(0, 2))})`);
  } catch (e) {
    if (wb) await wb.shot("failure").catch(() => undefined);
    throw e;
  } finally {
    await closeAndClean(session, base);
  }
}

main().then(
  () => {
    console.log(`e2e: ${passed} passed, 0 failed`);
    console.log(`PASS: VS Code e2e (${((Date.now() - t0) / 1000).toFixed(0)}s); screenshots in ${ARTIFACTS}`);
    process.exit(0);
  },
  (e: unknown) => {
    console.error(e instanceof Error ? (e.stack ?? e.message) : String(e));
    console.log(`e2e: ${passed} passed, 1 failed`);
    console.log("FAIL: VS Code e2e");
    process.exit(1);
  },
);
