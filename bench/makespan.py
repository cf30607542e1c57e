"""Scenario 2: does the pool keep 4 slots busy? 40 workstreams sleeping known, varied durations.

The floor no scheduler can beat is max(longest job, total work / 4). A run without history starts
jobs in FIFO order (each free worker takes the next), so its fair target is the makespan of that
same list schedule on 4 ideal machines; once runs are recorded (from the second repetition on,
the same workstreams are run again) aidp starts the longest expected first, whose target is the
longest-first (LPT) list schedule. Anything above the target is aidp's own per-job gap.
"""

from __future__ import annotations

import heapq
import random
import time
from typing import Any

from bench.common import Params, Row, Section, alternate, fmt_ms, fmt_ratio, fmt_s, median
from bench.fixtures import create_workstreams, make_repo, reset_statuses, sh, start_server

CONCURRENCY = 4


def durations(n: int) -> list[float]:
    """Fixed pseudo-random durations in 0.1-1.0 s (same list every run, so runs compare)."""
    rng = random.Random(2026)
    return [round(rng.uniform(0.1, 1.0), 2) for _ in range(n)]


def lower_bound(jobs: list[float], machines: int) -> float:
    return max(max(jobs), sum(jobs) / machines)


def fifo_makespan(jobs: list[float], machines: int) -> float:
    """List scheduling in the given order: each job goes to the machine that frees up first."""
    free = [0.0] * machines
    for job in jobs:
        heapq.heappush(free, heapq.heappop(free) + job)
    return max(free)


def into_lanes(spans: list[tuple[float, float]]) -> tuple[list[list[tuple[float, float]]], list[float]]:
    """Rebuild which slot ran what: each job goes to the slot that freed up last before it
    started. Returns the slots and the idle gaps between consecutive jobs in a slot."""
    lanes: list[list[tuple[float, float]]] = []
    gaps: list[float] = []
    for start, end in sorted(spans):
        free = [lane for lane in lanes if lane[-1][1] <= start]
        if free:
            lane = max(free, key=lambda lane: lane[-1][1])
            gaps.append(start - lane[-1][1])
            lane.append((start, end))
        else:
            lanes.append([(start, end)])
    return lanes, gaps


async def run(p: Params) -> list[Section]:
    jobs = durations(p.makespan_n)
    repo = make_repo(p.work / "makespan", ["true"], max_concurrent=CONCURRENCY)
    slugs = [f"job-{i:02d}" for i in range(len(jobs))]
    await create_workstreams(repo, slugs, [["sleep", str(d)] for d in jobs])
    triples = b"".join(f"{repo / '.worktrees' / s}\0sleep\0{d}\0".encode() for s, d in zip(slugs, jobs, strict=True))
    client = await start_server(repo, p.work / "server-makespan.log")
    seen: dict[str, list[float]] = {}  # slug -> [running, completed] as the client saw them
    t0 = 0.0

    def watch(method: str, params: Any) -> None:
        if method == "aidp/wsStatus" and params["status"] in ("running", "completed"):
            seen.setdefault(params["slug"], []).append(time.perf_counter() - t0)

    client.handlers.append(watch)

    async def aidp() -> float:
        nonlocal t0
        seen.clear()
        t0 = time.perf_counter()
        summary = await client.request("aidp/wsRunAll", {"maxConcurrent": CONCURRENCY})
        assert summary["completed"] == len(jobs), summary
        return time.perf_counter() - t0

    async def xargs() -> float:
        return sh(["xargs", "-0", "-n", "3", "-P", str(CONCURRENCY), "env", "-C"], stdin=triples)

    times = await alternate(p.makespan_reps, {"aidp/wsRunAll": aidp, "xargs -P 4": xargs}, lambda: reset_statuses(repo))
    await client.close()

    bound, fifo = lower_bound(jobs, CONCURRENCY), fifo_makespan(jobs, CONCURRENCY)
    lpt = fifo_makespan(sorted(jobs, reverse=True), CONCURRENCY)
    section = Section("makespan", f"Makespan: {len(jobs)} sleeps of 0.1–1.0 s, 4 at a time")
    section.rows.append(Row("lower bound max(longest, sum/4)", fmt_s(bound)))
    section.rows.append(Row("FIFO list-schedule bound", fmt_s(fifo), fmt_s(bound), fmt_ratio(fifo / bound)))
    section.rows.append(Row("LPT (longest-first) schedule bound", fmt_s(lpt), fmt_s(bound), fmt_ratio(lpt / bound)))
    for name, values in times.items():
        m = median(values)
        detail = f"FIFO {fmt_ratio(m / fifo)}, LPT {fmt_ratio(m / lpt)}"
        if name == "aidp/wsRunAll" and len(values) > 1:
            detail += f"; run 1 (no history) {fmt_s(values[0])}, later runs {fmt_s(median(values[1:]))}"
        section.rows.append(Row(name, fmt_s(m), detail, fmt_ratio(m / bound)))
    lanes, gaps = into_lanes([(s, e) for s, e in seen.values()])
    section.rows.append(
        Row("aidp: gap between jobs in a slot", fmt_ms(median(gaps)), f"max {fmt_ms(max(gaps))}", "last run")
    )
    section.figures = {
        "jobs_s": jobs,
        "lower_bound_s": bound,
        "fifo_s": fifo,
        "lpt_s": lpt,
        "times_s": times,
        "lanes": lanes,
    }
    section.notes.append(
        f"{len(jobs)} workstreams, each with its own command `sleep D` (D from a fixed pseudo-random list, "
        f"total {sum(jobs):.1f} s of sleep), run by `aidp/wsRunAll {{maxConcurrent: 4}}` on a running server; "
        "the reference runs the same `env -C <worktree> sleep D` list with `xargs -0 -n 3 -P 4`. "
        "Ratios in the last column are against the lower bound; the middle column is against the FIFO "
        "and longest-first (LPT) list-schedule bounds (that order, 4 ideal slots, zero overhead): what a "
        "pool starting jobs in that order can reach at best. The repetitions run the same workstreams "
        "again, so aidp's first run has no history and starts them as created (FIFO, like xargs), and "
        "later runs start the longest recorded first (LPT; see Scheduling order). "
        f"{p.makespan_reps} repetitions, medians. The gap between jobs is measured from "
        "the notifications of the last aidp run: from one job's `completed` to the next `running` in the "
        "same slot (recording the result, spawning the next harness, recording `running`)."
    )
    return [section]
