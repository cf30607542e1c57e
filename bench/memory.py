"""Scenario 5: the server's memory idle, with n workstreams running at once, and after listing
many (issue 13: 10,000).

`maxConcurrent` is capped at 64 by the protocol, so n at once are two concurrent `aidp/wsRun`
requests of n/2 each (disjoint slugs, one server): the server holds n running jobs either way.
The listed workstreams are rows inserted into the store directly (creating 10,000 worktrees takes
hours): their worktrees and branches do not exist, so the list carries no change summaries.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sqlite3
from typing import Any

from aidp.engine.model import Status, utc_now
from aidp.engine.store import Store
from bench.common import Params, Row, Section, fmt_mb, median
from bench.fixtures import create_workstreams, make_repo, proc_status, reset_statuses, start_server

BATCHES = 2
RUN_SLEEP_S = 1.0
RUN_SAMPLE_S = 0.05


async def run(p: Params) -> list[Section]:
    n = p.memory_n
    # The repository's bound (at most 64, `[scheduler] max_concurrent`) must let all n run at once.
    repo = make_repo(p.work / "memory", ["sleep", str(p.memory_sleep_s)], max_concurrent=n)
    slugs = [f"sleeper-{i:03d}" for i in range(n)]
    await create_workstreams(repo, slugs)
    idle: list[float] = []
    busy: list[float] = []

    for _ in range(p.memory_reps):
        client = await start_server(repo, p.work / "server-memory.log")
        await client.request("aidp/wsList", {})  # warm: the first list builds what later ones reuse
        await asyncio.sleep(0.2)
        idle.append(proc_status(client.pid, "VmRSS"))

        everyone = asyncio.Event()
        running: set[str] = set()

        def watch(method: str, params: Any, running: set[str] = running, everyone: asyncio.Event = everyone) -> None:
            if method == "aidp/wsStatus" and params["status"] == "running":
                running.add(params["slug"])
                if len(running) == n:
                    everyone.set()

        client.handlers.append(watch)
        size = n // BATCHES
        runs = [
            asyncio.create_task(client.request("aidp/wsRun", {"slugs": slugs[i : i + size], "maxConcurrent": size}))
            for i in range(0, n, size)
        ]
        await asyncio.wait_for(everyone.wait(), timeout=p.memory_sleep_s * 10)
        samples = []
        for _ in range(5):
            samples.append(proc_status(client.pid, "VmRSS"))
            await asyncio.sleep(0.05)
        busy.append(max(samples))
        for summary in await asyncio.gather(*runs):
            assert summary["completed"] == size, summary
        await client.close()

    in_run = await _run_rss(p)
    listed = await _listed_rss(p)
    rss_idle, rss_busy = median(idle), median(busy)
    section = Section("memory", f"Memory: server RSS idle and with {n} workstreams running")
    section.rows.append(Row("server RSS idle", fmt_mb(rss_idle)))
    section.rows.append(Row(f"server RSS, {n} running", fmt_mb(rss_busy)))
    section.rows.append(Row("per running workstream", f"{(rss_busy - rss_idle) / n / 1e3:.1f} kB"))
    section.rows.append(
        Row(
            f"server RSS, a run of {p.memory_run_n} ({n} at once)",
            fmt_mb(median(in_run)),
            f"max {fmt_mb(max(in_run))}; the rest queued in the same run",
        )
    )
    section.rows.append(
        Row(f"server RSS after listing {p.memory_listed:,}", fmt_mb(median(listed)), f"max {fmt_mb(max(listed))}")
    )
    section.figures = {
        "n": n,
        "idle_rss": idle,
        "busy_rss": busy,
        "run_n": p.memory_run_n,
        "run_rss": in_run,
        "listed_n": p.memory_listed,
        "listed_rss": listed,
    }
    section.notes.append(
        f"VmRSS of the server process (children not included) from `/proc/<pid>/status`: idle after "
        f"`initialize` and one `aidp/wsList` with {n} workstreams defined; busy = the largest of 5 samples "
        f"taken once all {n} `sleep {p.memory_sleep_s:g}` harnesses are `running`. The protocol caps "
        f"`maxConcurrent` at 64, so the {n} run as {BATCHES} concurrent `aidp/wsRun` requests of {n // BATCHES}. "
        f"A fresh server per repetition, {p.memory_reps} repetitions, medians; "
        "per workstream = (busy − idle) / n. "
        f"Listed: {p.memory_listed:,} workstreams inserted into `.aidp/state.db` directly (no worktrees or "
        "branches: no change summaries), VmRSS after `initialize` and 3 `aidp/wsList` requests answered "
        f"(the largest of the samples after each), a fresh server per repetition."
    )
    return [section]


async def _run_rss(p: Params) -> list[float]:
    """The server's largest RSS while one run holds `memory_run_n` workstreams, as many at once as
    a repository allows."""
    n = p.memory_run_n
    repo = make_repo(p.work / "memory-run", ["sleep", f"{RUN_SLEEP_S:g}"], max_concurrent=p.memory_n)
    slugs = [f"run-{i:03d}" for i in range(n)]
    await create_workstreams(repo, slugs)
    peaks: list[float] = []
    for _ in range(p.memory_reps):
        reset_statuses(repo)  # run again what the last repetition completed
        client = await start_server(repo, p.work / "server-memory-run.log")
        run = asyncio.create_task(client.request("aidp/wsRun", {"slugs": slugs, "maxConcurrent": p.memory_n}))
        peak = 0
        while not run.done():
            peak = max(peak, proc_status(client.pid, "VmRSS"))
            await asyncio.sleep(RUN_SAMPLE_S)
        summary = await run
        assert summary["completed"] == n, summary
        peaks.append(peak)
        await client.close()
    return peaks


async def _listed_rss(p: Params) -> list[float]:
    repo = make_repo(p.work / "memory-listed", ["true"])
    path = repo / ".aidp" / "state.db"
    Store(path, True).close()  # the schema
    # Straight into the table, one transaction: `Store.insert` checks the dependency graph each time,
    # which makes 10,000 inserts take minutes (the overhead scenario resets statuses this way too).
    now = utc_now()
    rows = [
        (
            secrets.token_hex(8),
            slug,
            f"bench task {i}: a line about as long as a real task's first line",
            Status.ACTIVE.value,
            f"aidp/{slug}",
            str(repo / ".worktrees" / slug),
            "main",
            now,
            now,
        )
        for i, slug in ((i, f"listed-{i:05d}") for i in range(p.memory_listed))
    ]
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.executemany(
            "INSERT INTO workstreams (id, slug, task, status, branch, path, base_branch, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    samples: list[float] = []
    for _ in range(p.memory_reps):
        client = await start_server(repo, p.work / "server-memory-listed.log")
        peak = 0
        for _ in range(3):
            answer = await client.request("aidp/wsList", {})
            assert len(answer["workstreams"]) == p.memory_listed
            peak = max(peak, proc_status(client.pid, "VmRSS"))
        samples.append(peak)
        await client.close()
    return samples
