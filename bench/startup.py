"""Scenario 6: start-up. How long an editor waits for `aidp serve` to answer `initialize`, and a
user for `aidp ws list`; the bare interpreter start is the floor both stand on."""

from __future__ import annotations

from bench.common import Params, Row, Section, Stopwatch, alternate, fmt_ms, fmt_ratio, median
from bench.fixtures import ENV, PYTHON, aidp_cli, create_workstreams, make_repo, serve_argv, sh
from bench.rpc import RpcClient

LISTED = 100


async def run(p: Params) -> list[Section]:
    repo = make_repo(p.work / "startup", ["true"])
    await create_workstreams(repo, [f"ws-{i:03d}" for i in range(LISTED)])
    argv = serve_argv(repo)

    async def serve() -> float:
        with Stopwatch() as watch:
            client = await RpcClient.spawn(argv, repo, p.work / "server-startup.log", ENV)
            await client.initialize(repo)
        await client.close()
        return watch.elapsed

    async def ws_list() -> float:
        return sh([*aidp_cli(), "ws", "list"], cwd=repo)

    async def bare() -> float:
        return sh([PYTHON, "-c", "pass"])

    sides = {"aidp serve → initialize answered": serve, "aidp ws list": ws_list, "python -c pass": bare}
    times = await alternate(p.startup_reps, sides)
    base = median(times["python -c pass"])
    section = Section("startup", "Start-up")
    for name, values in times.items():
        m = median(values)
        section.rows.append(Row(name, fmt_ms(m), f"min {fmt_ms(min(values))}", fmt_ratio(m / base)))
    section.figures = {"times_s": times}
    section.notes.append(
        "`aidp serve`: from spawning the process to the answer to `initialize` (which opens the repository "
        f"and its SQLite state). `aidp ws list`: the whole CLI process in a repository with {LISTED} "
        "workstreams. `python -c pass` (same venv interpreter) is the floor. "
        f"{p.startup_reps} repetitions, order rotated, medians; ratio = against `python -c pass`."
    )
    return [section]
