// A second client of `aidp serve` that is not Python: Node's built-in test runner driving the real
// server over stdio with vscode-jsonrpc, the JSON-RPC library VS Code's own language client is built
// on. It checks the contract of docs/protocol.md from the outside: runs, statuses, live output,
// work-done progress, errors, cancellation by `$/cancelRequest`, and a clean shutdown.
//
// The tests in the `describe` share one server and run in order; each builds on the state the
// previous ones left. Nothing asserts timing, only ordering and facts.
//
// Python: env AIDP_PYTHON, else <repo-root>/.venv/bin/python. AIDP_TEST_STDERR=1 shows the server's
// stderr as it comes; a failed wait shows its tail anyway.

import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

// vscode-jsonrpc is CommonJS without an exports map: import the file, then take the names.
import jsonrpc from 'vscode-jsonrpc/node.js';

const {
  CancellationTokenSource,
  ProgressType,
  ResponseError,
  StreamMessageReader,
  StreamMessageWriter,
  createMessageConnection,
} = jsonrpc;

const HERE = path.dirname(fileURLToPath(import.meta.url));
const PYTHON = process.env.AIDP_PYTHON || path.resolve(HERE, '../../.venv/bin/python');

const GIT_IDENTITY = {
  GIT_AUTHOR_NAME: 'aidp tests',
  GIT_AUTHOR_EMAIL: 'tests@aidp.invalid',
  GIT_COMMITTER_NAME: 'aidp tests',
  GIT_COMMITTER_EMAIL: 'tests@aidp.invalid',
};

// The harness of every workstream without its own command: say hello, take a moment, and fail
// with exit code 3 when the workstream is `bad`.
const HARNESS = ['sh', '-c', 'echo hello $AIDP_SLUG; sleep 0.3; [ "$AIDP_SLUG" != bad ] || exit 3'];

const WAIT_MS = 60_000; // generous: the machine may be small and busy
const FINAL = new Set(['completed', 'failed', 'error', 'cancelled']);
const ISO_UTC = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/;

const ERR = {
  invalidParams: -32602,
  serverBusy: -32002,
  requestCancelled: -32800,
};

/** `promise`'s value, or null after `ms`; leaves no timer behind to hold the process open. */
async function within(promise, ms) {
  let timer;
  const timeout = new Promise((resolve) => {
    timer = setTimeout(() => resolve(null), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function git(cwd, ...args) {
  const out = spawnSync('git', args, {
    cwd,
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...GIT_IDENTITY },
  });
  assert.equal(out.status, 0, `git ${args.join(' ')} failed: ${out.stderr}`);
  return out.stdout;
}

/** A fresh repository on `main` with one commit and `.aidp/config.toml`. */
function makeRepo(parent) {
  const repo = path.join(parent, 'repo');
  mkdirSync(repo);
  git(repo, 'init', '-q', '-b', 'main');
  git(repo, 'config', 'user.name', GIT_IDENTITY.GIT_AUTHOR_NAME);
  git(repo, 'config', 'user.email', GIT_IDENTITY.GIT_AUTHOR_EMAIL);
  git(repo, 'config', 'commit.gpgsign', 'false');
  writeFileSync(path.join(repo, 'README.md'), 'hello\n');
  git(repo, 'add', 'README.md');
  git(repo, 'commit', '-q', '-m', 'initial');
  mkdirSync(path.join(repo, '.aidp'));
  // A JSON array of ASCII strings is a valid TOML inline array: quotes come out as \" either way.
  writeFileSync(path.join(repo, '.aidp', 'config.toml'), `[harness]\ncommand = ${JSON.stringify(HARNESS)}\n`);
  return repo;
}

/** `python -m aidp serve` once the CLI has `aidp.cli.main`; until then the server's own entry point.
 * Keyed on the module existing (not on `serve` working), so a broken CLI fails this test loudly. */
function serverArgv(repo) {
  const probe = spawnSync(
    PYTHON,
    ['-c', "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('aidp.cli.main') else 1)"],
    { stdio: 'ignore' },
  );
  if (probe.status === 0) {
    return { via: 'cli', argv: ['-m', 'aidp', 'serve', '--root', repo] };
  }
  const code =
    'from aidp.server.lifecycle import serve; from pathlib import Path; import sys; raise SystemExit(serve(Path(sys.argv[1])))';
  return { via: 'aidp.server.lifecycle.serve', argv: ['-c', code, repo] };
}

describe('aidp serve, driven by vscode-jsonrpc', { timeout: 300_000 }, () => {
  let tmp;
  let repo;
  let proc;
  let exited; // Promise<{code, signal}>
  let conn;
  let stderr = '';
  let stopping = false;

  // Everything the server sent us, in arrival order: notifications, its requests, and (as
  // `response`) the moment one of our requests was answered.
  const events = [];
  const waiters = [];
  const progressTokens = []; // tokens of window/workDoneProgress/create, in order
  const unhandledProgress = [];

  function record(method, params) {
    const ev = { seq: events.length, method, params };
    events.push(ev);
    for (const w of [...waiters]) {
      if (w.pred(ev)) {
        waiters.splice(waiters.indexOf(w), 1);
        clearTimeout(w.timer);
        w.resolve(ev);
      }
    }
    return ev;
  }

  /** The first event (already received or still to come) for which `pred` holds. */
  function waitFor(what, pred, ms = WAIT_MS) {
    const seen = events.find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const w = { pred, resolve };
      w.timer = setTimeout(() => {
        waiters.splice(waiters.indexOf(w), 1);
        reject(new Error(`timed out waiting for ${what}\n--- server stderr (tail) ---\n${stderr.slice(-4000)}`));
      }, ms);
      waiters.push(w);
    });
  }

  /** Send a request; its answer is recorded in `events` at the point it arrived. */
  async function request(method, params, token) {
    try {
      // Only the arguments there are: an explicit `undefined` would turn params into an array.
      const args = [params, token].filter((a) => a !== undefined);
      const result = await conn.sendRequest(method, ...args);
      record('response', { method, result });
      return result;
    } catch (error) {
      record('response', { method, error });
      throw error;
    }
  }

  const statusesOf = (runId, slug) =>
    events.filter((e) => e.method === 'aidp/wsStatus' && e.params.runId === runId && e.params.slug === slug);

  const progressOf = (token) => events.filter((e) => e.method === '$/progress' && e.params.token === token);

  function workstreams(list) {
    return Object.fromEntries(list.workstreams.map((ws) => [ws.slug, ws]));
  }

  before(async () => {
    assert.ok(existsSync(PYTHON), `no Python at ${PYTHON}: create the venv or set AIDP_PYTHON`);
    tmp = realpathSync(mkdtempSync(path.join(os.tmpdir(), 'aidp-node-')));
    repo = makeRepo(tmp);
    const { via, argv } = serverArgv(repo);
    process.stderr.write(`aidp server started via ${via}: ${PYTHON} ${argv.join(' ')}\n`);
    proc = spawn(PYTHON, argv, {
      cwd: tmp,
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...process.env, ...GIT_IDENTITY },
    });
    exited = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));
    // A server that dies unasked fails the pending requests at once instead of leaving them hanging.
    exited.then(({ code, signal }) => {
      if (!stopping) {
        process.stderr.write(`aidp server died (code ${code}, signal ${signal}); stderr tail:\n${stderr.slice(-4000)}\n`);
        conn.dispose();
      }
    });
    proc.stderr.setEncoding('utf8');
    proc.stderr.on('data', (chunk) => {
      stderr = (stderr + chunk).slice(-64 * 1024);
      if (process.env.AIDP_TEST_STDERR) process.stderr.write(chunk);
    });
    proc.stdin.on('error', () => {}); // a dead server surfaces through the assertions, not an EPIPE crash

    conn = createMessageConnection(new StreamMessageReader(proc.stdout), new StreamMessageWriter(proc.stdin));
    conn.onNotification('aidp/wsStatus', (params) => record('aidp/wsStatus', params));
    conn.onNotification('aidp/wsOutput', (params) => record('aidp/wsOutput', params));
    conn.onNotification('aidp/wsListChanged', (params) => record('aidp/wsListChanged', params));
    conn.onNotification('aidp/runProgress', (params) => record('aidp/runProgress', params));
    // As VS Code does: accept the token, then follow its `$/progress` by that token.
    conn.onRequest('window/workDoneProgress/create', (params) => {
      record('window/workDoneProgress/create', params);
      progressTokens.push(params.token);
      conn.onProgress(new ProgressType(), params.token, (value) => record('$/progress', { token: params.token, value }));
      return null;
    });
    conn.onUnhandledProgress((params) => unhandledProgress.push(params));
    conn.onUnhandledNotification((msg) => record(`unhandled:${msg.method}`, msg.params));
    conn.listen();

    const init = await within(
      request('initialize', {
        processId: process.pid,
        rootUri: null,
        capabilities: { window: { workDoneProgress: true } },
        workspaceFolders: [{ uri: pathToFileURL(repo).href, name: 'r' }],
      }),
      WAIT_MS,
    );
    assert.notEqual(init, null, `no answer to initialize\n--- server stderr (tail) ---\n${stderr.slice(-4000)}`);
    assert.equal(typeof init, 'object');
    assert.ok(init.capabilities, 'initialize answers with server capabilities');
    await conn.sendNotification('initialized', {});
  });

  after(async () => {
    try {
      if (proc && proc.exitCode === null && proc.signalCode === null) {
        // A test failed before `exit`: end the server the way an editor would, then by force.
        stopping = true;
        proc.stdin.end();
        const gone = await within(exited, 10_000);
        if (gone === null) {
          proc.kill('SIGKILL');
          await exited;
        }
      }
    } finally {
      conn?.dispose();
      if (tmp) rmSync(tmp, { recursive: true, force: true });
    }
  });

  it('creates workstreams with aidp/wsNew', async () => {
    const good = await request('aidp/wsNew', { slug: 'good', task: 'say hello' });
    assert.equal(good.slug, 'good');
    assert.equal(good.task, 'say hello');
    assert.equal(good.status, 'active');
    assert.equal(good.branch, 'aidp/good');
    assert.equal(good.path, path.join(repo, '.worktrees', 'good'));
    assert.equal(good.command, null);
    assert.equal(good.lastResult, null);
    assert.match(good.createdAt, ISO_UTC);
    assert.match(good.updatedAt, ISO_UTC);
    assert.ok(existsSync(good.path), 'the worktree exists');

    await request('aidp/wsNew', { slug: 'bad', task: 'fail with exit code 3' });
    await request('aidp/wsNew', { slug: 'other', task: 'never run' });
    const slow = await request('aidp/wsNew', { slug: 'slow', task: 'take long', command: ['sleep', '30'] });
    assert.deepEqual(slow.command, ['sleep', '30']);

    await waitFor('4 wsListChanged', () => events.filter((e) => e.method === 'aidp/wsListChanged').length >= 4);
  });

  it('runs two workstreams: summary, statuses, output and progress', async () => {
    const start = events.length;
    const summary = await request('aidp/wsRun', { slugs: ['good', 'bad'], maxConcurrent: 2 });
    const answered = events.at(-1).seq;

    assert.equal(typeof summary.runId, 'string');
    assert.ok(summary.runId.length > 0);
    assert.deepEqual(
      summary.results.map((r) => r.slug),
      ['good', 'bad'],
      'results in request order',
    );
    assert.equal(summary.total, 2);
    assert.equal(summary.completed, 1);
    assert.equal(summary.failed, 1);
    assert.equal(summary.errored, 0);
    assert.equal(summary.cancelled, 0);
    assert.equal(typeof summary.wallS, 'number');

    const [good, bad] = summary.results;
    assert.equal(good.status, 'completed');
    assert.equal(good.exitCode, 0);
    assert.equal(good.error, null);
    assert.equal(bad.status, 'failed');
    assert.equal(bad.exitCode, 3);
    assert.match(bad.error, /3/, 'the error names the exit code');
    assert.match(bad.error, /hello bad/, 'the error carries the last lines of output');
    for (const r of summary.results) {
      assert.match(r.startedAt, ISO_UTC);
      assert.match(r.finishedAt, ISO_UTC);
      assert.ok(Date.parse(r.startedAt) <= Date.parse(r.finishedAt));
      assert.equal(typeof r.durationS, 'number');
      assert.equal(typeof r.logPath, 'string');
      assert.ok(existsSync(r.logPath), `the log ${r.logPath} exists`);
    }

    // Statuses: queued -> running -> final, each before the answer.
    for (const [slug, final, exitCode] of [
      ['good', 'completed', 0],
      ['bad', 'failed', 3],
    ]) {
      const seen = statusesOf(summary.runId, slug);
      assert.deepEqual(
        seen.map((e) => e.params.status),
        ['queued', 'running', final],
        `statuses of ${slug}`,
      );
      assert.ok(
        seen.every((e) => e.seq >= start && e.seq < answered),
        `statuses of ${slug} arrive during the request`,
      );
      const last = seen.at(-1).params;
      assert.equal(last.exitCode, exitCode);
      assert.equal(typeof last.durationS, 'number');
      if (final === 'failed') assert.equal(typeof last.error, 'string');
      else assert.equal(last.error, null);
    }
    assert.deepEqual(
      events.filter((e) => e.seq >= start && e.method === 'aidp/wsStatus').map((e) => e.params.slug).sort(),
      ['bad', 'bad', 'bad', 'good', 'good', 'good'],
      'no status for a workstream outside the run',
    );

    // Live output: each workstream's hello, before its final status.
    for (const slug of ['good', 'bad']) {
      const finalSeq = statusesOf(summary.runId, slug).at(-1).seq;
      const text = events
        .filter((e) => e.method === 'aidp/wsOutput' && e.params.runId === summary.runId && e.params.slug === slug)
        .filter((e) => e.seq < finalSeq)
        .map((e) => e.params.text)
        .join('');
      assert.match(text, new RegExp(`hello ${slug}\\n`), `output of ${slug} before its final status`);
    }

    // Work-done progress on a fresh token: begin, one report per ended workstream, end.
    assert.equal(progressTokens.length, 1, 'one progress token for the run');
    const token = progressTokens[0];
    const created = events.find((e) => e.method === 'window/workDoneProgress/create' && e.params.token === token);
    assert.ok(created.seq >= start);
    const progress = progressOf(token);
    assert.deepEqual(
      progress.map((e) => e.params.value.kind),
      ['begin', 'report', 'report', 'end'],
    );
    assert.ok(progress.every((e) => e.seq > created.seq && e.seq < answered), 'progress ends before the answer');
    const [begin, r1, r2, end] = progress.map((e) => e.params.value);
    assert.match(begin.title, /\b2\b/, 'the title counts the workstreams');
    assert.equal(r1.message, '1/2 done');
    assert.equal(r2.message, '2/2 done');
    assert.ok(r1.percentage <= r2.percentage && r2.percentage <= 100);
    assert.match(end.message, /1 completed/);
    assert.match(end.message, /1 failed/);
    assert.deepEqual(unhandledProgress, [], 'no progress on a token the client was not asked to create');
  });

  it('lists the statuses the run left with aidp/wsList', async () => {
    const ws = workstreams(await request('aidp/wsList', {}));
    assert.deepEqual(Object.keys(ws).sort(), ['bad', 'good', 'other', 'slow']);
    assert.equal(ws.good.status, 'completed');
    assert.equal(ws.good.lastResult.status, 'completed');
    assert.equal(ws.bad.status, 'failed');
    assert.equal(ws.bad.lastResult.exitCode, 3);
    assert.equal(ws.other.status, 'active');
    assert.equal(ws.other.lastResult, null);
    assert.equal(ws.slow.status, 'active');
  });

  it('rejects unknown slugs with -32602 and data.unknown, starting nothing', async () => {
    const start = events.length;
    const tokens = progressTokens.length;
    for (const slugs of [['nope'], ['good', 'nope']]) {
      await assert.rejects(request('aidp/wsRun', { slugs }), (err) => {
        assert.ok(err instanceof ResponseError, `a ResponseError, got ${err}`);
        assert.equal(err.code, ERR.invalidParams);
        assert.deepEqual(err.data, { unknown: ['nope'] });
        return true;
      });
    }
    assert.equal(progressTokens.length, tokens, 'no progress for a refused run');
    assert.deepEqual(
      events.filter((e) => e.seq >= start && e.method === 'aidp/wsStatus'),
      [],
      'no workstream was queued',
    );
    const ws = workstreams(await request('aidp/wsList', {}));
    assert.equal(ws.good.status, 'completed');
  });

  it('refuses a second run of a running workstream (-32002); cancels a run by $/cancelRequest (-32800)', async () => {
    const start = events.length;
    const cts = new CancellationTokenSource();
    const settled = request('aidp/wsRun', { slugs: ['slow'] }, cts.token).then(
      (result) => ({ result }),
      (error) => ({ error }),
    );
    const running = await waitFor(
      'slow running',
      (e) => e.seq >= start && e.method === 'aidp/wsStatus' && e.params.slug === 'slow' && e.params.status === 'running',
    );

    // While it runs, a second run of it is refused whole.
    await assert.rejects(request('aidp/wsRun', { slugs: ['other', 'slow'] }), (err) => {
      assert.ok(err instanceof ResponseError, `a ResponseError, got ${err}`);
      assert.equal(err.code, ERR.serverBusy);
      assert.deepEqual(err.data, { running: ['slow'] });
      return true;
    });
    assert.deepEqual(
      events.filter((e) => e.method === 'aidp/wsStatus' && e.params.slug === 'other'),
      [],
      'nothing of the refused run starts',
    );

    cts.cancel();
    const { result, error } = await settled;
    assert.equal(result, undefined, `the cancelled run must not answer with a result: ${JSON.stringify(result)}`);
    assert.ok(error instanceof ResponseError, `a ResponseError, got ${error}`);
    assert.equal(error.code, ERR.requestCancelled);

    const runId = running.params.runId;
    assert.equal(typeof runId, 'string');
    const final = await waitFor(
      'slow cancelled',
      (e) => e.method === 'aidp/wsStatus' && e.params.runId === runId && e.params.slug === 'slow' && FINAL.has(e.params.status),
    );
    assert.equal(final.params.status, 'cancelled');
    assert.deepEqual(
      statusesOf(runId, 'slow').map((e) => e.params.status),
      ['queued', 'running', 'cancelled'],
    );

    // The run's progress is closed, so no editor is left with a spinner.
    assert.equal(progressTokens.length, 2, 'a fresh progress token for the second run');
    const token = progressTokens[1];
    assert.notEqual(token, progressTokens[0]);
    await waitFor('progress end of the cancelled run', (e) => e.method === '$/progress' && e.params.token === token && e.params.value.kind === 'end');
    const kinds = progressOf(token).map((e) => e.params.value.kind);
    assert.equal(kinds[0], 'begin');
    assert.equal(kinds.at(-1), 'end');
    assert.match(progressOf(token)[0].params.value.title, /\b1\b/);

    const ws = workstreams(await request('aidp/wsList', {}));
    assert.equal(ws.slow.status, 'cancelled');
    assert.equal(ws.slow.lastResult.status, 'cancelled');
    assert.equal(ws.good.status, 'completed');
    assert.equal(ws.other.status, 'active');
  });

  it('shuts down on shutdown + exit with exit code 0', async () => {
    assert.equal(await request('shutdown'), null);
    stopping = true;
    await conn.sendNotification('exit');
    const gone = await within(exited, WAIT_MS);
    assert.notEqual(gone, null, `the server did not exit\n--- server stderr (tail) ---\n${stderr.slice(-4000)}`);
    assert.deepEqual(gone, { code: 0, signal: null }, `server stderr (tail):\n${stderr.slice(-4000)}`);
    assert.deepEqual(unhandledProgress, []);
    assert.deepEqual(
      events.filter((e) => e.method.startsWith('unhandled:')).map((e) => e.method),
      [],
      'no notification outside the contract',
    );
  });
});
