"""Scenario: thousands of workstreams (issue 13, goal 3). The create curve: how long the Nth
`aidp/wsNew` takes as worktrees accumulate, against `git worktree add -b` in the same repository at
the same count, the two alternating; and the list at each count: `aidp/wsList` on the same server
and the whole `aidp ws list` process."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from bench.common import Params, Row, Section, Stopwatch, fmt_ms, median, percentile
from bench.fixtures import aidp_cli, make_repo, process_cpu, sh, sh_cpu, start_server
from bench.rpc import RpcClient

CHECKPOINTS = (10, 100, 1000, 2000, 5000, 10000)
WINDOW = 5  # creations timed on each side around a checkpoint (alternating)
LISTS = 20  # `aidp/wsList` requests per checkpoint
CLI_LISTS = 3  # `aidp ws list` processes per checkpoint
RACY_S = 2.1  # dirty.RACY_NS and a little: after it, a list reuses what git said (see aidp.engine.dirty)


async def run(p: Params) -> list[Section]:
    biggest = 200 if p.quick else int(os.environ.get("AIDP_BENCH_SCALE_N", "10000"))
    checkpoints = [n for n in CHECKPOINTS if n <= biggest]
    repo = make_repo(p.work / "scale", ["true"])
    client = await start_server(repo, p.work / "server-scale.log")
    created = 0
    curve: list[Point] = []
    try:
        for checkpoint in checkpoints:
            while created < checkpoint - WINDOW:
                await new(client, created)
                created += 1
            aidp, git = [], []
            for i in range(WINDOW):  # alternating, so both sides see the same count and load
                aidp.append(await new(client, created))
                created += 1
                path = repo / ".worktrees" / f"ref-{checkpoint}-{i}"
                git.append(sh(["git", "worktree", "add", "-q", "-b", f"ref/{checkpoint}-{i}", str(path), "HEAD"], repo))
            curve.append(await point(client, repo, checkpoint, aidp, git))
            print(f"   {checkpoint}: wsNew {fmt_ms(median(aidp))}, git {fmt_ms(median(git))}", flush=True)
    finally:
        await client.close()
    return [section(curve)]


async def new(client: RpcClient, i: int) -> float:
    with Stopwatch() as watch:
        await client.request("aidp/wsNew", {"slug": f"ws-{i:05d}", "task": f"bench task {i}"})
    return watch.elapsed


@dataclasses.dataclass
class Point:
    n: int
    ws_new_s: list[float]
    git_add_s: list[float]
    first_list_s: float
    ws_list_s: list[float]
    ws_list_cpu_s: float  # the server's CPU per request (its git children included)
    cli_list_s: list[float]
    cli_list_cpu_s: list[float]
    load: float


async def point(client: RpcClient, repo: Path, n: int, aidp: list[float], git: list[float]) -> Point:
    """The lists at this count. The first after creating asks git of every new worktree; once the
    racy window has passed, what git said is reused where nothing changed: both are measured."""
    with Stopwatch() as first:
        await client.request("aidp/wsList", {})
    time.sleep(RACY_S)
    ws_list = []
    cpu = process_cpu(client.pid)
    for _ in range(LISTS):
        with Stopwatch() as watch:
            await client.request("aidp/wsList", {})
        ws_list.append(watch.elapsed)
    cpu = (process_cpu(client.pid) - cpu) / LISTS
    cli = [sh_cpu([*aidp_cli(), "ws", "list"], cwd=repo) for _ in range(CLI_LISTS)]
    return Point(
        n, aidp, git, first.elapsed, ws_list, cpu, [t for t, _ in cli], [c for _, c in cli], os.getloadavg()[0]
    )


def section(curve: list[Point]) -> Section:
    s = Section("scale", f"Scale: the create curve and the list, up to {curve[-1].n:,} workstreams")
    first_new, first_git = median(curve[0].ws_new_s), median(curve[0].git_add_s)
    for at in curve:
        n, aidp, git, lists, cli = f"{at.n:,}", at.ws_new_s, at.git_add_s, at.ws_list_s, at.cli_list_s
        s.rows += [
            Row(
                f"{n}: aidp/wsNew",
                fmt_ms(median(aidp)),
                f"range {fmt_ms(min(aidp))}–{fmt_ms(max(aidp))}; load {at.load:.1f}",
                f"{median(aidp) / first_new:.2f}x",
            ),
            Row(
                f"{n}: git worktree add -b",
                fmt_ms(median(git)),
                f"range {fmt_ms(min(git))}–{fmt_ms(max(git))}",
                f"{median(git) / first_git:.2f}x",
            ),
            Row(
                f"{n}: aidp/wsList p50 / p99",
                f"{fmt_ms(median(lists))} / {fmt_ms(percentile(lists, 99))}",
                f"CPU {fmt_ms(at.ws_list_cpu_s)} a request; the first list after creating: {fmt_ms(at.first_list_s)}",
            ),
            Row(
                f"{n}: aidp ws list",
                fmt_ms(median(cli)),
                f"range {fmt_ms(min(cli))}–{fmt_ms(max(cli))}; CPU {fmt_ms(median(at.cli_list_cpu_s))}",
            ),
        ]
    s.figures = {"curve": [dataclasses.asdict(at) for at in curve]}
    s.notes.append(
        f"One repository, one server; workstreams are created one after another by `aidp/wsNew` (the "
        f"workstream's own worktree and branch, its record). Around each count, {WINDOW} `aidp/wsNew` and "
        f"{WINDOW} `git worktree add -b <branch> <path> HEAD` alternate (the references count as worktrees "
        "too); medians, and the ratio against the first count. Then the list: one `aidp/wsList` right after "
        f"creating (git is asked about every new worktree), {LISTS} more once {RACY_S} s have passed (what "
        "git said is reused where nothing changed: `aidp.engine.dirty`), p50 / p99, and the server's CPU "
        f"per request (`/proc/<pid>/stat`, its git children included); and {CLI_LISTS} whole `aidp ws list` "
        "processes (start-up included), median wall and CPU (user + system, children included). On a shared "
        "machine wall times follow the load; CPU is the steadier figure. Load average: the 1-minute figure "
        "at each count."
    )
    return s
