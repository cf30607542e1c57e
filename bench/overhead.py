"""Scenario 1: what aidp costs per workstream when the work itself is nothing (`true`).

Setup first (creating N worktrees: aidp vs `git worktree add` in a shell loop), then N runs of
`true` with 8 at a time through every runner, each spawning one process per worktree with the
worktree as its cwd.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from bench.common import Params, Row, Section, Stopwatch, alternate, fmt_ms, fmt_ratio, fmt_s, median
from bench.fixtures import (
    ENV,
    PYTHON,
    aidp_cli,
    children_cpu,
    cli_available,
    make_repo,
    process_cpu,
    reset_statuses,
    sh,
    sh_cpu,
    start_server,
    worktrees,
)

CONCURRENCY = 8
BARE_LOOP = Path(__file__).with_name("bare_loop.py")

SIDES_DOC = {
    "xargs -P 8": (
        "`xargs -0 -P 8 -I{} env -C {} true`: fork, exec `env`, chdir, exec `true` in place "
        "(two execs per job: without a shell there is no other way to set the cwd)"
    ),
    "GNU parallel -j 8": "`parallel --will-cite -0 -j 8 env -C {} true`: the same command line through GNU parallel",
    "bare asyncio loop": (
        "`python bench/bare_loop.py 8 true`: 8 asyncio workers, `create_subprocess_exec(cwd=worktree)` "
        "(one exec per job, output to /dev/null, nothing recorded)"
    ),
    "aidp ws run-all (CLI)": "`python -m aidp ws run-all --max-concurrent 8 --json`: a whole CLI process",
    "aidp/wsRunAll (server)": "`aidp/wsRunAll {maxConcurrent: 8}` to a running `aidp serve`, request to answer",
}


def slugs(n: int) -> list[str]:
    return [f"ws-{i:03d}" for i in range(n)]


async def run(p: Params) -> list[Section]:
    setup, repo = await measure_setup(p)
    return [setup, await measure_runs(p, repo)]


async def measure_setup(p: Params) -> tuple[Section, Path]:
    """aidp/wsNew (one server, N requests in a row) against `git worktree add` in a shell loop,
    each into a fresh repository; plus `aidp ws new` as separate CLI processes on a sample."""
    n = p.overhead_n
    repos: list[Path] = []

    async def aidp_side(rep: int) -> float:
        repos.append(make_repo(p.work / f"setup-aidp-{rep}", ["true"]))
        client = await start_server(repos[-1], p.work / "server-setup.log")
        with Stopwatch() as watch:
            for slug in slugs(n):
                await client.request("aidp/wsNew", {"slug": slug, "task": f"bench task {slug}"})
        await client.close()
        return watch.elapsed

    async def git_side(rep: int) -> float:
        repo = make_repo(p.work / f"setup-git-{rep}", ["true"])
        loop = 'for s in "$@"; do git worktree add -q -b "aidp/$s" ".worktrees/$s" HEAD || exit 1; done'
        elapsed = sh(["sh", "-c", loop, "sh", *slugs(n)], cwd=repo)
        shutil.rmtree(repo)
        return elapsed

    async def cli_side(rep: int) -> float:
        repo = make_repo(p.work / f"setup-cli-{rep}", ["true"])
        with Stopwatch() as watch:
            for slug in slugs(p.cli_new_n):
                sh([*aidp_cli(), "ws", "new", slug, "bench task"], cwd=repo)
        shutil.rmtree(repo)
        return watch.elapsed * n / p.cli_new_n  # scaled to N so the columns compare

    sides = {"aidp/wsNew (server)": aidp_side, "git worktree add loop": git_side}
    if cli_available():
        sides["aidp ws new (CLI)"] = cli_side
    times: dict[str, list[float]] = {name: [] for name in sides}
    for rep in range(p.setup_reps):
        order = list(sides.items())
        for name, side in order if rep % 2 == 0 else reversed(order):
            times[name].append(await side(rep))
    for repo in repos[:-1]:
        shutil.rmtree(repo)

    base = median(times["git worktree add loop"])
    section = Section("setup", f"Setup: creating {n} worktrees")
    for name, values in times.items():
        m = median(values)
        label = f"{name} [sample of {p.cli_new_n}, scaled]" if "CLI" in name else name
        section.rows.append(Row(label, f"{fmt_ms(m / n)} /ws", fmt_s(m), fmt_ratio(m / base)))
    section.figures = {"n": n, "times_s": times}
    section.notes.append(
        f"Each repetition creates {n} worktrees in a fresh repository. `aidp/wsNew` goes through a running "
        "server (validation, 3 git processes: branch check, HEAD check, `git worktree add`; one SQLite "
        "transaction); the reference is `git worktree add -q -b aidp/<slug> .worktrees/<slug> HEAD` in a "
        f"`sh` loop. `aidp ws new` (one CLI process per workstream) is timed on {p.cli_new_n} workstreams and "
        f"scaled to {n} (in a fresh repository, where `git worktree add` is at its fastest, so this "
        "understates it slightly). Ratio = against the git loop. "
        f"{p.setup_reps} repetitions, medians."
    )
    return section, repos[-1]


async def measure_runs(p: Params, repo: Path) -> Section:
    n = p.overhead_n
    paths = b"".join(str(w).encode() + b"\0" for w in worktrees(repo))
    client = await start_server(repo, p.work / "server-overhead.log")
    notifications: list[int] = []
    cpu: dict[str, list[float]] = {}

    def timed(name: str, cmd: list[str], stdin: bytes | None = None) -> float:
        wall, used = sh_cpu(cmd, cwd=repo, stdin=stdin)
        cpu.setdefault(name, []).append(used)
        return wall

    async def xargs() -> float:
        return timed("xargs -P 8", ["xargs", "-0", "-P", "8", "-I{}", "env", "-C", "{}", "true"], paths)

    async def parallel() -> float:
        cmd = ["parallel", "--will-cite", "-0", "-j", "8", "env", "-C", "{}", "true"]
        return timed("GNU parallel -j 8", cmd, paths)

    async def bare() -> float:
        return timed("bare asyncio loop", [PYTHON, str(BARE_LOOP), "8", "true"], paths)

    async def cli() -> float:
        cmd = [*aidp_cli(), "ws", "run-all", "--max-concurrent", "8", "--json"]
        before = children_cpu()
        with Stopwatch() as watch:
            out = subprocess.run(cmd, cwd=repo, env=ENV, capture_output=True, check=False)
        cpu.setdefault("aidp ws run-all (CLI)", []).append(children_cpu() - before)
        summary = json.loads(out.stdout)
        assert summary["completed"] == n, f"CLI run-all completed {summary['completed']} of {n}: {out.stderr!r}"
        return watch.elapsed

    async def server() -> float:
        before, cpu_before = sum(client.notifications.values()), process_cpu(client.pid)
        with Stopwatch() as watch:
            summary = await client.request("aidp/wsRunAll", {"maxConcurrent": CONCURRENCY})
        assert summary["completed"] == n, f"wsRunAll completed {summary['completed']} of {n}"
        cpu.setdefault("aidp/wsRunAll (server)", []).append(process_cpu(client.pid) - cpu_before)
        notifications.append(sum(client.notifications.values()) - before)
        return watch.elapsed

    sides = {
        "xargs -P 8": xargs,
        "GNU parallel -j 8": parallel,
        "bare asyncio loop": bare,
        "aidp/wsRunAll (server)": server,
    }
    if cli_available():
        sides["aidp ws run-all (CLI)"] = cli
    times = await alternate(p.overhead_reps, sides, between=lambda: reset_statuses(repo))
    await client.close()

    base, base_cpu = median(times["xargs -P 8"]), median(cpu["xargs -P 8"])
    section = Section("overhead", f"Overhead: {n} workstreams running `true`, 8 at a time")
    for name, values in times.items():
        m, c = median(values), median(cpu[name])
        paired = median([a / b for a, b in zip(values, times["xargs -P 8"], strict=True)])
        detail = f"{fmt_s(m)}; best {fmt_ms(min(values) / n)} /ws; paired {fmt_ratio(paired)}"
        section.rows.append(Row(f"{name}: wall", f"{fmt_ms(m / n)} /ws", detail, fmt_ratio(m / base)))
        section.rows.append(
            Row(f"{name}: CPU", f"{fmt_ms(c / n)} /ws", "user+sys, with children", fmt_ratio(c / base_cpu))
        )
    section.figures = {"n": n, "times_s": times, "cpu_s": cpu, "server_notifications": notifications}
    section.notes.append(
        "What each side does, per worktree, 8 at a time:\n\n"
        + "\n".join(f"- **{name}**: {SIDES_DOC[name]}" for name in times)
        + "\n\naidp does more per workstream than the baselines, and all of it is inside the timing: it opens "
        "a log file and hands it to the child as stdout/stderr, starts the child in its own session with "
        "an environment carrying `AIDP_*`, records `running` and the result in SQLite (two transitions, each "
        "durable before it is announced; group commit lets workstreams that end together share a transaction), "
        "and, for the server, sends 3 `aidp/wsStatus` notifications and a `$/progress` report per workstream "
        f"(the client read {median([float(x) for x in notifications]):.0f} notifications per run). "
        "Command-line sides are timed as whole processes (interpreter start-up included); the server side "
        "from request to answer on a server already running. Between repetitions every workstream's status "
        "is set back to `active` directly in `.aidp/state.db` (aidp has no reset; run-all skips completed "
        f"workstreams), untimed. {p.overhead_reps} repetitions, order rotated each time, medians; "
        "ratio = median against the median of `xargs -P 8`; *paired* = the median of the per-repetition "
        "ratios (each side against the `xargs` run of the same repetition, moments apart), which cancels "
        "slow swings in the machine's load.\n\n"
        "CPU is user + system time of the whole side: for command lines, the process and every descendant "
        "(`getrusage(RUSAGE_CHILDREN)` around it); for the server, its own threads plus the harness "
        "processes it reaped (`/proc/<pid>/stat` utime+stime+cutime+cstime). On this shared, noisy 2-core "
        "machine wall times swing by 2x between repetitions; CPU per workstream is the steadier figure."
    )
    return section
