"""Scenario 5: the server's memory idle and with 100 workstreams running at once.

`maxConcurrent` is capped at 64 by the protocol, so 100 at once are two concurrent `aidp/wsRun`
requests of 50 each (disjoint slugs, one server): the server holds 100 running jobs either way.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bench.common import Params, Row, Section, fmt_mb, median
from bench.fixtures import create_workstreams, make_repo, proc_status, start_server

BATCHES = 2


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

    rss_idle, rss_busy = median(idle), median(busy)
    section = Section("memory", f"Memory: server RSS idle and with {n} workstreams running")
    section.rows.append(Row("server RSS idle", fmt_mb(rss_idle)))
    section.rows.append(Row(f"server RSS, {n} running", fmt_mb(rss_busy)))
    section.rows.append(Row("per running workstream", f"{(rss_busy - rss_idle) / n / 1e3:.1f} kB"))
    section.figures = {"n": n, "idle_rss": idle, "busy_rss": busy}
    section.notes.append(
        f"VmRSS of the server process (children not included) from `/proc/<pid>/status`: idle after "
        f"`initialize` and one `aidp/wsList` with {n} workstreams defined; busy = the largest of 5 samples "
        f"taken once all {n} `sleep {p.memory_sleep_s:g}` harnesses are `running`. The protocol caps "
        f"`maxConcurrent` at 64, so the {n} run as {BATCHES} concurrent `aidp/wsRun` requests of {n // BATCHES}. "
        f"A fresh server per repetition, {p.memory_reps} repetitions, medians; "
        "per workstream = (busy − idle) / n."
    )
    return [section]
