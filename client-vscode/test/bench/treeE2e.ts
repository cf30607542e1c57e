/**
 * How long a status change takes to show in the VS Code tree at 10,000 workstreams, in real VS Code:
 * code-server in Chromium, the packaged extension, the real `aidp serve` (test/e2e/workbench.ts), on
 * a repository of 10,000 workstreams made in bulk (`python -m bench.tree_repo`) whose harness is `true`.
 *
 * Each round runs one workstream and times it from a stamp taken just before the trigger to the
 * browser's DOM showing it completed: its row, under the expanded "completed" group, and the group's
 * new count (polled at every animation frame in the page). Two triggers alternate:
 *   - terminal: `aidp ws run <slug>` in another process, as typed in a terminal; the server follows
 *     the other process's run and sends its `aidp/wsStatus` (`elsewhere`), then `aidp/wsUpdated` with
 *     its record (no list fetched).
 *   - palette: AIDP: Run Workstream, the slug picked (the stamp is taken before the pick's click):
 *     this server's run sends `aidp/wsStatus`, which refreshes the two groups the item moved between,
 *     then `aidp/wsUpdated` with its record (no list fetched).
 * The server's messages as the extension traced them (`aidp.trace.server: messages`) say which path
 * each update took, and how many whole lists each round fetched. Also timed: from the harness's end
 * (its `finishedAt`) to the DOM.
 *
 * Run: `npm run --silent bench:tree-e2e` (builds aidp.vsix, takes /tmp/aidp-e2e.lock). Not part of
 * `make test` or `npm run test:e2e`. Environment: AIDP_BENCH_TREE_N (workstreams, 10000),
 * AIDP_BENCH_TREE_ROUNDS (rounds of each trigger, 6), and e2e.ts's (AIDP_PYTHON, CHROMIUM_PATH...).
 */
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import type { Page } from "playwright-core";
import { GROUP_AT } from "../../src/core/groups";
import { LONG, PYTHON, REPO_ROOT, VSIX, closeAndClean, log, openWorkbench, run, tracedBetween, type Check, type Session } from "../e2e/workbench";

const N = wholeNumber("AIDP_BENCH_TREE_N", 10_000);
if (N <= GROUP_AT) throw new Error(`AIDP_BENCH_TREE_N must be above ${GROUP_AT}, where the tree groups workstreams by status`);
const ROUNDS = wholeNumber("AIDP_BENCH_TREE_ROUNDS", 6);
/** After a round, for the list reload it set off to end: each round starts on a quiet tree. */
const SETTLE_MS = 3_000;

type Trigger = "terminal" | "palette";

interface Round {
  readonly trigger: Trigger;
  readonly slug: string;
  /** From the stamp before the trigger to the DOM showing the change. */
  readonly ms: number;
  /** From the harness's end, as aidp recorded it, to the DOM showing the change. */
  readonly fromEndMs: number;
  /** The messages between the extension and the server from the stamp until the round settled, with
   * when (ms after the stamp), and where among them the tree showed the change. */
  readonly messages: string[];
}

/** A DOM element, as far as used here (this file is compiled without the DOM library). */
interface Element {
  getAttribute(name: string): string | null;
}

function wholeNumber(name: string, fallback: number): number {
  const value = process.env[name];
  if (value === undefined) return fallback;
  if (!/^[1-9]\d*$/.test(value)) throw new Error(`${name} must be a whole number above 0, not ${JSON.stringify(value)}`);
  return Number(value);
}

const check: Check = (condition, what) => {
  if (!condition) throw new Error(`check failed: ${what}`);
  log(what);
};

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? (sorted[mid] ?? NaN) : ((sorted[mid - 1] ?? NaN) + (sorted[mid] ?? NaN)) / 2;
}

/** The group's label as the tree shows it ("completed · 1,234"; its aria-label adds a space). */
function groupLabel(status: string, count: number): string {
  return `${status} · ${count.toLocaleString("en-US")}`;
}

/**
 * Waits, polling at every animation frame in the page, until the sidebar shows the group `group`
 * and (unless `slug` is null: its group is folded) the row of `slug` as completed; resolves to the
 * page's clock at that frame.
 */
async function shownAt(page: Page, slug: string | null, group: string): Promise<number> {
  interface Doc {
    querySelectorAll(selector: string): ArrayLike<Element>;
  }
  const handle = await page.waitForFunction(
    ({ slug, group }) => {
      const doc = (globalThis as unknown as { document: Doc }).document;
      const labels = Array.from(doc.querySelectorAll(".part.sidebar .monaco-list-row"), (row) => (row.getAttribute("aria-label") ?? "").trim());
      const row = slug === null || labels.some((l) => l.startsWith(`${slug}, completed`));
      return labels.includes(group) && row ? Date.now() : false;
    },
    { slug, group },
    { polling: "raf", timeout: LONG },
  );
  return (await handle.jsonValue()) as number;
}

/** When aidp recorded the harness's end of the workstream's last run (epoch ms). */
function finishedAt(repo: string, slug: string): number {
  const ws = JSON.parse(run(PYTHON, ["-m", "aidp", "ws", "status", "--json", slug], { cwd: repo })) as {
    lastResult?: { finishedAt?: string | null } | null;
  };
  const finished = ws.lastResult?.finishedAt;
  if (typeof finished !== "string") throw new Error(`${slug} has no finished run: ${JSON.stringify(ws)}`);
  return new Date(finished).getTime();
}

/**
 * Runs `slug` one way and measures until the tree shows it completed, the group holding `completed`
 * (only the group's label while it is folded).
 */
async function round(session: Session, repo: string, trigger: Trigger, slug: string, completed: number, folded = false): Promise<Round> {
  const { page, wb, userData } = session;
  let stamp: number;
  let ended: Promise<number | null> | undefined; // the terminal's process, until it exits
  if (trigger === "terminal") {
    stamp = Date.now();
    const cli = spawn(PYTHON, ["-m", "aidp", "ws", "run", slug], { cwd: repo, stdio: "ignore" });
    ended = new Promise((resolve) => cli.on("exit", (code) => resolve(code)));
  } else {
    await wb.command("AIDP: Run Workstream");
    await page.locator(".quick-input-widget input").first().fill(slug);
    const row = wb.pickRow(slug);
    await row.waitFor({ state: "visible", timeout: LONG });
    stamp = Date.now();
    await row.click();
  }
  const shown = await shownAt(page, folded ? null : slug, groupLabel("completed", completed));
  if (ended !== undefined) check((await ended) === 0, `the terminal's aidp ws run ${slug} succeeded`);
  await new Promise((r) => setTimeout(r, SETTLE_MS));
  const events = [...tracedBetween(userData, stamp, shown + SETTLE_MS), [shown - stamp, "THE TREE SHOWS IT"] as [number, string]];
  // Stable: a message logged in the same millisecond as the frame that showed it comes first.
  const messages = events.sort((a, b) => a[0] - b[0]).map(([ms, what]) => `+${ms} ms ${what}`);
  const result = { trigger, slug, ms: shown - stamp, fromEndMs: shown - finishedAt(repo, slug), messages };
  log(`${trigger} ${slug}: shown at +${result.ms} ms (${result.fromEndMs} ms after the harness ended); traced: ${messages.join("; ")}`);
  return result;
}

function summary(rounds: Round[], trigger: Trigger): string {
  const mine = rounds.filter((r) => r.trigger === trigger);
  const ms = mine.map((r) => r.ms);
  const fromEnd = mine.map((r) => r.fromEndMs);
  // What each round cost beyond showing it: the whole list fetched again (6 MB at 10,000) or not.
  const lists = mine.map((r) => r.messages.filter((m) => m.includes(" request 'aidp/wsList")).length);
  return (
    `${trigger}: median ${median(ms).toFixed(0)} ms, max ${Math.max(...ms)} ms over ${mine.length} rounds ` +
    `(from the harness's end: median ${median(fromEnd).toFixed(0)} ms, max ${Math.max(...fromEnd)} ms); ` +
    `whole lists fetched: ${lists.reduce((a, b) => a + b, 0)} in ${mine.length} rounds`
  );
}

async function main(): Promise<void> {
  if (!fs.existsSync(VSIX)) throw new Error(`${VSIX} is missing: run "npm run package" first`);
  const base = fs.mkdtempSync(path.join(os.tmpdir(), "aidp-bench-tree-"));
  let session: Session | undefined;
  try {
    const repo = path.join(base, "repo");
    const made = Date.now();
    run(PYTHON, ["-m", "bench.tree_repo", repo, String(N)], { cwd: REPO_ROOT });
    log(`${N.toLocaleString("en-US")} workstreams made in bulk in ${((Date.now() - made) / 1000).toFixed(0)} s`);

    session = await openWorkbench(base, repo, check, { "aidp.trace.server": "messages" });
    const { page } = session;
    const active = page.locator(`.part.sidebar .monaco-list-row[aria-label^="${groupLabel("active", N)} "]`);
    const opened = Date.now();
    await active.waitFor({ state: "visible", timeout: LONG });
    log(`the tree shows "${groupLabel("active", N)}" ${((Date.now() - opened) / 1000).toFixed(1)} s after the commands loaded`);

    // A first run makes the "completed" group (the whole tree is refreshed when a group appears); it
    // is then expanded, so that each measured round sees its row arrive in it.
    let completed = 0;
    let next = 0;
    const slug = (): string => `ws-${String(next++).padStart(5, "0")}`;
    await round(session, repo, "terminal", slug(), ++completed, true);
    await page.locator(`.part.sidebar .monaco-list-row[aria-label^="${groupLabel("completed", completed)} "] .monaco-tl-twistie`).click();
    const rounds: Round[] = [];
    for (let i = 0; i < ROUNDS; i++) {
      for (const trigger of ["terminal", "palette"] as const) rounds.push(await round(session, repo, trigger, slug(), ++completed));
    }
    await session.wb.shot("tree-e2e");

    console.log(`\nA status change in the VS Code tree at ${N.toLocaleString("en-US")} workstreams (code-server ${os.hostname()}):`);
    for (const trigger of ["terminal", "palette"] as const) console.log(`  ${summary(rounds, trigger)}`);
    for (const trigger of ["terminal", "palette"] as const) {
      const first = rounds.find((r) => r.trigger === trigger);
      console.log(`  ${trigger}, first round: shown at +${first?.ms ?? NaN} ms; traced: ${first?.messages.join("; ") ?? ""}`);
    }
    console.log(`  load average (1, 5, 15 min): ${os.loadavg().map((l) => l.toFixed(2)).join(", ")}; ${os.cpus().length} cores`);
  } catch (e) {
    if (session !== undefined) {
      await session.wb.shot("tree-e2e-failure").catch(() => undefined);
      const rows = session.page.locator(".part.sidebar .monaco-list-row");
      log(`the sidebar's rows: ${JSON.stringify(await rows.evaluateAll((all) => all.map((r) => (r as unknown as Element).getAttribute("aria-label"))).catch(() => []))}`);
    }
    throw e;
  } finally {
    await closeAndClean(session, base);
  }
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    console.error(e instanceof Error ? (e.stack ?? e.message) : String(e));
    process.exit(1);
  },
);
