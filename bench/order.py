"""Scenario: the order a run starts its jobs in (issue 10), first without history, then with it.

(a) A skewed workload: 20 short sleeps created first, 2 long ones created last, 4 at a time. A
run with no history starts them as created (FIFO), so the long ones start last and 2 slots idle
while they run; the second run of the same workstreams knows every duration (recorded by the
first) and starts the longest first (LPT).
(b) A DAG: 12 independent sleeps created first, then a chain of 3 (each after the previous), 3 at
a time. The bound no order can beat is max(critical path, total work / bound).

Every job is a `bash` that stamps its own start and end (`$EPOCHREALTIME`, no extra process)
around `sleep D`; the makespan is the last end minus the first start, so the CLI's own start-up
is outside it. Each repetition uses a fresh repository, so its first run really has no history.
"""

from __future__ import annotations

import heapq
import itertools
import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from aidp.engine import scheduling
from bench.common import Params, Row, Section, Stopwatch, fmt_ms, fmt_ratio, fmt_s, median
from bench.fixtures import ENV, aidp_cli, create_workstreams, make_repo, reset_statuses
from bench.makespan import into_lanes

# $1: the stamp file, $2: seconds to sleep. A constant script; the values come as arguments.
STAMPED_SLEEP = 'start=$EPOCHREALTIME; sleep "$2"; echo "$start $EPOCHREALTIME" > "$1"'
RUNS = ("run 1: no history", "run 2: history-aware")


@dataclass(frozen=True)
class Workload:
    """Jobs (slug -> seconds) in creation order, what each runs after, and the bound."""

    key: str
    label: str
    bound: int
    jobs: dict[str, float]
    after: dict[str, list[str]] = field(default_factory=dict)

    @property
    def lower_bound(self) -> float:
        """max(critical path, total / bound): for independent jobs the critical path is the longest."""
        return max(max(self.levels(self.jobs).values()), sum(self.jobs.values()) / self.bound)

    def levels(self, weights: Mapping[str, float]) -> dict[str, float]:
        return scheduling.bottom_levels(self.after, weights)

    def engine_order(self, weights: Mapping[str, float]) -> list[str]:
        """The order the engine picks in when it expects `weights` (all priorities equal)."""
        levels, index = self.levels(weights), {slug: i for i, slug in enumerate(self.jobs)}
        return sorted(self.jobs, key=lambda s: scheduling.order_key(0, levels[s], index[s]))

    def ideals(self) -> dict[str, float]:
        """Makespans of ideal list schedules (zero overhead) in the orders worth comparing."""
        return {
            "FIFO (creation order)": list_schedule(self, list(self.jobs)),
            "engine's order without history": list_schedule(self, run_order(self, 0)),
            "engine's order with history": list_schedule(self, run_order(self, 1)),
        }


def skewed() -> Workload:
    jobs = {f"j{i:02d}-short": 0.4 for i in range(1, 21)} | {"j21-long": 4.0, "j22-long": 4.0}
    return Workload("skewed", "(a) skewed", 4, jobs)


def dag() -> Workload:
    jobs = {f"j{i:02d}": 0.5 for i in range(1, 13)} | {"j13-chain1": 1.0, "j14-chain2": 1.0, "j15-chain3": 1.0}
    return Workload("dag", "(b) DAG", 3, jobs, {"j14-chain2": ["j13-chain1"], "j15-chain3": ["j14-chain2"]})


def list_schedule(load: Workload, order: Sequence[str]) -> float:
    """Event by event: whenever a slot is free, start the first job in `order` whose dependencies
    have ended (never hold a slot for a job that is not ready). Returns when the last one ends."""
    now, done, todo = 0.0, set[str](), list(order)
    running: list[tuple[float, str]] = []
    while todo or running:
        for slug in [s for s in todo if all(d in done for d in load.after.get(s, ()))]:
            if len(running) == load.bound:
                break
            todo.remove(slug)
            heapq.heappush(running, (now + load.jobs[slug], slug))
        now, slug = heapq.heappop(running)
        done.add(slug)
        while running and running[0][0] == now:
            done.add(heapq.heappop(running)[1])
    return now


@dataclass
class Measured:
    """One run: each job's span as its child stamped it and as the engine recorded it (startedAt:
    just before the spawn, finishedAt: once the exit was handled), in seconds since the first
    child's start; the whole CLI's wall time; the run's forecast; the load before it."""

    spans: dict[str, tuple[float, float]]
    engine_spans: dict[str, tuple[float, float]]
    cli_wall_s: float
    forecast_s: float | None
    load_1min: float

    @property
    def makespan(self) -> float:
        return max(end for _, end in self.spans.values())

    def gaps(self) -> dict[str, list[float]]:
        """Each idle gap in a slot (a child's end to the next child's start there), in three parts:
        `exit` (child's end stamp to the engine's finishedAt: reap, clean-up, recording the result
        begins), `dispatch` (finishedAt to the next startedAt: recording, choosing, taking a slot),
        `spawn` (startedAt to the next child's start stamp: log file, exec, the shell starting)."""
        lanes, _ = into_lanes(list(self.spans.values()))
        slug_of = {span: slug for slug, span in self.spans.items()}
        parts: dict[str, list[float]] = {"gap": [], "exit": [], "dispatch": [], "spawn": []}
        for lane in lanes:
            for before, after in itertools.pairwise(slug_of[span] for span in lane):
                ended, finished = self.spans[before][1], self.engine_spans[before][1]
                started, began = self.engine_spans[after][0], self.spans[after][0]
                for part, value in (
                    ("gap", began - ended),
                    ("exit", finished - ended),
                    ("dispatch", started - finished),
                    ("spawn", began - started),
                ):
                    parts[part].append(value)
        return parts


async def measure(p: Params, load: Workload, rep: int) -> list[Measured]:
    """A fresh repository: create the workstreams, run them all twice (the second run has the
    first's history), and read the stamps of each run."""
    base = p.work / f"order-{load.key}-{rep}"
    stamps = base / "stamps"
    stamps.mkdir(parents=True)
    repo = make_repo(base / "repo", ["true"], max_concurrent=load.bound)
    commands = [["bash", "-c", STAMPED_SLEEP, "bash", str(stamps / slug), str(d)] for slug, d in load.jobs.items()]
    await create_workstreams(repo, list(load.jobs), commands, load.after)
    runs = []
    for _ in RUNS:
        load_1min = os.getloadavg()[0]
        cmd = [*aidp_cli(), "ws", "run-all", "--max-concurrent", str(load.bound), "--json"]
        with Stopwatch() as watch:
            out = subprocess.run(cmd, cwd=repo, env=ENV, capture_output=True, check=False)
        summary = json.loads(out.stdout or "{}")
        assert summary.get("completed") == len(load.jobs), f"{load.key}: {out.stdout!r} {out.stderr!r}"
        stamped = read_stamps(stamps)
        first = min(start for start, _ in stamped.values())
        spans = {slug: (start - first, end - first) for slug, (start, end) in stamped.items()}
        engine_spans = {
            r["slug"]: (epoch(r["startedAt"]) - first, epoch(r["finishedAt"]) - first) for r in summary["results"]
        }
        runs.append(Measured(spans, engine_spans, watch.elapsed, summary.get("forecastS"), load_1min))
        shutil.rmtree(stamps)
        stamps.mkdir()
        reset_statuses(repo)
    shutil.rmtree(base)
    return runs


def read_stamps(stamps: Path) -> dict[str, tuple[float, float]]:
    """slug -> (start, end) in seconds since the epoch, as each child wrote them."""
    spans = {}
    for stamp in stamps.iterdir():
        start, end = stamp.read_text().split()
        spans[stamp.name] = (float(start), float(end))
    return spans


def epoch(stamp: str) -> float:
    """An engine timestamp (ISO 8601, UTC, milliseconds) in seconds since the epoch."""
    return datetime.fromisoformat(stamp).timestamp()


async def run(p: Params) -> list[Section]:
    section = Section("order", "Scheduling order: first run (no history) vs second run (history-aware)")
    loads = (skewed(), dag())
    measured: dict[str, list[list[Measured]]] = {load.key: [] for load in loads}
    for rep in range(p.order_reps):
        for load in loads:
            measured[load.key].append(await measure(p, load, rep))
    for load in loads:
        section.rows += rows(load, measured[load.key])
        section.figures[load.key] = figures(load, measured[load.key])
    loads_seen = [m.load_1min for reps in measured.values() for rep in reps for m in rep]
    section.notes.append(
        "(a) 20 workstreams sleeping 0.4 s, created first, then 2 sleeping 4 s, 4 at a time; (b) 12 "
        "independent workstreams sleeping 0.5 s, created first, then a chain of 3 sleeping 1 s each "
        "(each `--after` the previous one), 3 at a time. Each repetition creates the workstreams in a "
        "fresh repository and runs `aidp ws run-all --max-concurrent B --json` twice: run 1 has no "
        "history (every job counts as 1 s), run 2 has the durations run 1 recorded. Every job is "
        "`bash -c` stamping `$EPOCHREALTIME` around `sleep D`; the makespan is the last end minus the "
        "first start by those stamps (the CLI's own start-up is outside it; the whole CLI's wall time is "
        "the last row of each part). The lower bound is max(critical path, total / bound). The ideal "
        "list schedules start, whenever a slot is free, the first ready job in an order, with zero "
        "overhead: FIFO is the creation order; the engine's orders are `scheduling.order_key` by bottom "
        "level, with every job counting 1 s (no history) or with the real durations. Gaps: from a child's "
        "end stamp to the next child's start stamp in the same slot (slots rebuilt from the stamps), split "
        "by the engine's `startedAt` (just before the spawn) and `finishedAt` (exit handled) into exit, "
        "dispatch and spawn (the engine's stamps have millisecond resolution, so a part can read slightly "
        "negative); the last column of that row is the ideal of the run's order with every job "
        "longer by the median gap, against the lower bound: what the order reaches with aidp's per-job "
        f"cost. Forecast: the run summary's `forecastS`. {p.order_reps} repetitions, medians and ranges; "
        f"1-minute load average before the runs {min(loads_seen):.2f}–{max(loads_seen):.2f} (2 shared cores)."
    )
    return [section]


def rows(load: Workload, reps: list[list[Measured]]) -> list[Row]:
    bound, ideals = load.lower_bound, load.ideals()
    what = "max(critical path, total/3)" if load.after else "max(longest, total/4)"
    out = [Row(f"{load.label}: lower bound {what}", fmt_s(bound))]
    out += [Row(f"{load.label}: ideal, {name}", fmt_s(t), "", fmt_ratio(t / bound)) for name, t in ideals.items()]
    for i, name in enumerate(RUNS):
        runs = [rep[i] for rep in reps]
        spans = [m.makespan for m in runs]
        ideal = list_schedule(load, run_order(load, i))
        detail = f"range {min(spans):.2f}–{max(spans):.2f} s; {fmt_ratio(median(spans) / ideal)} its ideal; "
        detail += key_starts(load, runs)
        forecasts = [m.forecast_s for m in runs if m.forecast_s is not None]
        detail += f"; forecast {median(forecasts):.1f} s" if forecasts else ""
        out.append(Row(f"{load.label}: {name}", fmt_s(median(spans)), detail, fmt_ratio(median(spans) / bound)))
        gaps = pooled_gaps(runs)
        gap = median(gaps["gap"])
        slower = replace(load, jobs={slug: d + gap for slug, d in load.jobs.items()})
        parts = "medians: " + ", ".join(
            f"{part} {fmt_ms(median(gaps[part]))}" for part in ("exit", "dispatch", "spawn")
        )
        with_gaps = list_schedule(slower, run_order(load, i))
        out.append(
            Row(
                f"{load.label}: {name}, gap between jobs in a slot",
                fmt_ms(gap),
                f"{parts}; its ideal with the gap: {fmt_s(with_gaps)}",
                fmt_ratio(with_gaps / bound),
            )
        )
    walls = [median([rep[i].cli_wall_s for rep in reps]) for i in range(len(RUNS))]
    out.append(Row(f"{load.label}: `aidp ws run-all` wall, run 1 / run 2", " / ".join(fmt_s(w) for w in walls)))
    return out


def run_order(load: Workload, run: int) -> list[str]:
    """The order run 1 (nothing known: every job counts the same) or run 2 (the real durations) uses."""
    return load.engine_order(load.jobs if run else scheduling.with_fallback(dict.fromkeys(load.jobs)))


def pooled_gaps(runs: list[Measured]) -> dict[str, list[float]]:
    pooled: dict[str, list[float]] = {}
    for m in runs:
        for part, values in m.gaps().items():
            pooled.setdefault(part, []).extend(values)
    return pooled


def key_starts(load: Workload, runs: list[Measured]) -> str:
    """When the jobs that decide the makespan (the long ones, the chain) started, median over runs."""
    slugs = [s for s in load.jobs if "-long" in s or "-chain" in s]
    starts = [median([m.spans[s][0] for m in runs]) for s in slugs]
    return f"{', '.join(slugs)} started at {', '.join(f'{t:.2f}' for t in starts)} s"


def figures(load: Workload, reps: list[list[Measured]]) -> dict[str, Any]:
    """The raw figures (for --json, the headline and the plot)."""
    return {
        "bound": load.bound,
        "jobs_s": load.jobs,
        "after": load.after,
        "lower_bound_s": load.lower_bound,
        "ideals_s": load.ideals(),
        "runs": {
            name: [
                {
                    "makespan_s": rep[i].makespan,
                    "cli_wall_s": rep[i].cli_wall_s,
                    "forecast_s": rep[i].forecast_s,
                    "load_1min": rep[i].load_1min,
                    "gaps_s": rep[i].gaps(),
                }
                for rep in reps
            ]
            for i, name in enumerate(RUNS)
        },
        "last_lanes": {name: lanes_of(reps[-1][i].spans) for i, name in enumerate(RUNS)},
    }


def lanes_of(spans: Mapping[str, tuple[float, float]]) -> list[list[tuple[float, float, str]]]:
    """The slots rebuilt from the stamps (as in the makespan scenario), each bar with its slug."""
    lanes, _ = into_lanes(list(spans.values()))
    slug_of = {span: slug for slug, span in spans.items()}
    return [[(start, end, slug_of[start, end]) for start, end in lane] for lane in lanes]
