"""Scenario: what `[sandbox] kind = "bwrap"` costs per workstream (issue 15). N runs of `true`, 8 at
a time, through the CLI, without and with the sandbox; then its two parts apart: bubblewrap's own
start (`bwrap ... true` against `env -C <worktree> true`, one after the other) and the refs approach
(detaching HEAD before a run and fast-forwarding the branch after, `sandbox.prepare` + `leave`).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aidp.engine import sandbox
from aidp.engine.config import Sandbox
from aidp.engine.model import Status, WorkstreamResult
from bench.common import Params, Row, Section, Stopwatch, alternate, fmt_ms, fmt_ratio, fmt_s, median
from bench.fixtures import ENV, aidp_cli, create_workstreams, make_repo, reset_statuses

CONCURRENCY = 8
BWRAP = Sandbox(kind="bwrap")
SAMPLE = 50  # sequential spawns and prepare/leave pairs timed for the parts


async def run(p: Params) -> list[Section]:
    n = p.overhead_n
    repos = {"no sandbox": make_repo(p.work / "sandbox-none", ["true"], CONCURRENCY)}
    repos["bwrap"] = make_repo(p.work / "sandbox-bwrap", ["true"], CONCURRENCY)
    with (repos["bwrap"] / ".aidp" / "config.toml").open("a") as config:
        config.write('[sandbox]\nkind = "bwrap"\n')
    slugs = [f"s-{i:03d}" for i in range(n)]
    for repo in repos.values():
        await create_workstreams(repo, slugs)

    def side(repo: Path) -> Callable[[], Awaitable[float]]:
        async def timed() -> float:
            cmd = [*aidp_cli(), "ws", "run-all", "--max-concurrent", str(CONCURRENCY), "--json"]
            with Stopwatch() as watch:
                out = subprocess.run(cmd, cwd=repo, env=ENV, capture_output=True, check=False)
            summary = json.loads(out.stdout)
            assert summary["completed"] == n, f"completed {summary['completed']} of {n}: {out.stderr!r}"
            return watch.elapsed

        return timed

    def reset() -> None:
        for repo in repos.values():
            reset_statuses(repo)

    times = await alternate(p.overhead_reps, {name: side(repo) for name, repo in repos.items()}, between=reset)
    section = Section("sandbox", f"Sandbox: {n} workstreams running `true`, {CONCURRENCY} at a time, with bwrap")
    base = median(times["no sandbox"])
    for name, values in times.items():
        m = median(values)
        section.rows.append(Row(f"aidp ws run-all, {name}", f"{fmt_ms(m / n)} /ws", fmt_s(m), fmt_ratio(m / base)))
    worktree = repos["bwrap"] / ".worktrees" / slugs[0]
    parts = {
        "`env -C <worktree> true`, one at a time": _spawns(["env", "-C", str(worktree), "true"]),
        "`bwrap <aidp's argv> true`, one at a time": _spawns(await _bwrap_argv(worktree)),
        "refs: detach HEAD before, fast-forward after": await _refs(worktree),
    }
    for name, seconds in parts.items():
        section.rows.append(Row(name, f"{fmt_ms(seconds)} each"))
    section.figures = {"n": n, "times_s": times, "parts_s": parts}
    section.notes.append(
        "Whole CLI processes, "
        f"{p.overhead_reps} repetitions, order rotated, medians; ratio against the same run without the sandbox. "
        f"The parts are the medians of {SAMPLE} sequential runs each: bubblewrap's start (namespaces, mounts, "
        "its init) and the git processes of the refs approach (2 before; 2 after when nothing was committed, "
        "4 when the branch moves)."
    )
    return [section]


async def _bwrap_argv(worktree: Path) -> list[str]:
    box = await sandbox.prepare(BWRAP, worktree, f"aidp/{worktree.name}", ENV, worktree.parent.parent)
    assert box is not None
    await sandbox.leave(box, WorkstreamResult(slug=worktree.name, status=Status.COMPLETED))
    return [*box.prefix, "true"]


def _spawns(argv: list[str]) -> float:
    times = []
    for _ in range(SAMPLE):
        t0 = time.perf_counter()
        subprocess.run(argv, env=ENV, stdin=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t0)
    return median(times)


async def _refs(worktree: Path) -> float:
    result = WorkstreamResult(slug=worktree.name, status=Status.COMPLETED)
    times = []
    for _ in range(SAMPLE):
        t0 = time.perf_counter()
        box = await sandbox.prepare(BWRAP, worktree, f"aidp/{worktree.name}", ENV, worktree.parent.parent)
        assert box is not None
        await sandbox.leave(box, result)
        times.append(time.perf_counter() - t0)
    return median(times)
