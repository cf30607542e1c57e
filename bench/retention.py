"""Scenario: how big `.aidp/state.db` grows over many runs, keeping every run or `[state] keep_runs`.

A real run of a trivial harness costs a process and milliseconds; 100,000 of them would take an
hour here. What grows is the database, so each simulated run writes exactly what a run of `N`
workstreams writes, through the store's own transitions (claim, `running` with its pid, the result
with exit code, stamps and log path: 3 events per workstream), the starts and the results grouped
as group commit does, and then, on the retention side, what the engine does at a run's end
(`Store.prune_runs`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from aidp.engine.engine import new_run_id
from aidp.engine.model import Status, WorkstreamResult, utc_now
from aidp.engine.store import Store
from bench.common import Params, Row, Section, fmt_mb, fmt_ms
from bench.fixtures import create_workstreams, make_repo

KEEP = 10


async def run(p: Params) -> list[Section]:
    n, rounds = p.retention_ws, p.retention_rounds
    section = Section("retention", f"Events retention: {n * rounds:,} runs ({n} workstreams × {rounds})")
    sizes: dict[str, float] = {}
    for keep in (None, KEEP):
        repo = make_repo(p.work / f"retention-{keep}", ["true"])
        slugs = [f"ws-{i:03d}" for i in range(n)]
        await create_workstreams(repo, slugs)
        prune_s, wall = simulate(repo / ".aidp" / "state.db", slugs, rounds, keep)
        name = "keep every run" if keep is None else f"[state] keep_runs = {keep}"
        sizes[name] = size(repo / ".aidp" / "state.db")
        detail = f"{wall:.0f} s to write" + (f"; forgetting took {fmt_ms(prune_s / rounds)} per run" if keep else "")
        section.rows.append(Row(name, fmt_mb(sizes[name]), detail))
    section.figures = {"runs": n * rounds, "sizes_bytes": sizes}
    section.notes.append(
        f"Each of {rounds} runs claims all {n} workstreams, records each one `running` and then its result "
        "(the store's own transitions, as the executor calls them, starts and results each grouped in one "
        f"transaction); with `keep_runs = {KEEP}` the run's end then forgets older runs as the engine does. "
        "Size = `state.db` after a WAL checkpoint (`VACUUM` not run: freed pages are reused, the file does "
        "not shrink). Log files are deleted with their runs too (not counted here)."
    )
    return [section]


def simulate(db_path: Path, slugs: list[str], rounds: int, keep: int | None) -> tuple[float, float]:
    """(seconds spent forgetting, total seconds) for `rounds` runs of every slug."""
    store = Store(db_path)
    owner = (os.getpid(), 0)
    pruning = 0.0
    started = time.perf_counter()
    try:
        for _ in range(rounds):
            run_id = new_run_id() + f"-{time.perf_counter_ns()}"  # unique within one second
            store.claim(slugs, run_id, owner, {})
            now = utc_now()
            store.group([_starter(store, run_id, slug, now) for slug in slugs])
            store.group([_finisher(store, run_id, slug, now) for slug in slugs])
            if keep is not None:
                t0 = time.perf_counter()
                store.prune_runs(slugs, keep)
                pruning += time.perf_counter() - t0
    finally:
        store.close()
    return pruning, time.perf_counter() - started


def _starter(store: Store, run_id: str, slug: str, now: str) -> Callable[[], bool]:
    log = f"/repo/.aidp/logs/{slug}/{run_id}.log"
    return lambda: store.mark_running(run_id, slug, (12345, 67890, None), log, now, 1, ["true"])


def _finisher(store: Store, run_id: str, slug: str, now: str) -> Callable[[], bool]:
    result = WorkstreamResult(
        slug=slug, status=Status.COMPLETED, exit_code=0, started_at=now, finished_at=now, duration_s=0.004
    )
    return lambda: store.finish(run_id, result)


def size(db_path: Path) -> float:
    Store(db_path).close()  # the last connection closing checkpoints the WAL into the file
    return sum(p.stat().st_size for p in db_path.parent.glob(db_path.name + "*"))
