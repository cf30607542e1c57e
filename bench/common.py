"""Shared shapes: the parameters of a run (full or quick), what a scenario hands back, and the
alternating repetition loop every comparison goes through."""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Params:
    """Sizes and repetitions; `--quick` shrinks them to a smoke run."""

    quick: bool
    work: Path
    overhead_n: int = 500
    overhead_reps: int = 7
    setup_reps: int = 2
    cli_new_n: int = 20
    makespan_n: int = 40
    makespan_reps: int = 3
    flood_bytes: int = 200_000_000
    flood_reps: int = 3
    busy_bytes: int = 300_000_000
    busy_reps: int = 3
    idle_samples: int = 200
    memory_n: int = 64  # the most the repository's bound allows at once
    memory_sleep_s: float = 4.0
    memory_reps: int = 3
    memory_listed: int = 10_000
    memory_run_n: int = 200  # issue 13's "200 running": one run of them, the repository's bound at once
    startup_reps: int = 10
    conflicts_n: int = 20
    conflicts_reps: int = 7
    order_reps: int = 5
    retention_ws: int = 100
    retention_rounds: int = 1000
    ray_n: int = 200  # `true` runs per executor, 8 at a time (issue 14's Ray executor)
    ray_reps: int = 2

    @classmethod
    def for_mode(cls, quick: bool, work: Path) -> Params:
        if not quick:
            return cls(quick=False, work=work)
        return cls(
            quick=True,
            work=work,
            overhead_n=100,
            overhead_reps=2,
            setup_reps=1,
            cli_new_n=5,
            makespan_n=12,
            makespan_reps=1,
            flood_bytes=50_000_000,
            flood_reps=1,
            busy_bytes=150_000_000,
            busy_reps=1,
            idle_samples=50,
            memory_sleep_s=2.0,
            memory_reps=1,
            memory_listed=2_000,
            memory_run_n=80,
            startup_reps=3,
            conflicts_reps=3,
            order_reps=1,
            retention_ws=20,
            retention_rounds=50,
            ray_n=40,
            ray_reps=1,
        )


@dataclass
class Row:
    """One line of the printed table."""

    what: str
    value: str
    reference: str = ""
    ratio: str = ""


@dataclass
class Section:
    """A scenario's outcome: table rows, a few paragraphs for the docs, raw figures for plots/JSON."""

    key: str
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    plot: str | None = None  # file name of the PNG, once drawn

    @classmethod
    def from_json(cls, saved: dict[str, Any]) -> Section:
        rows = [Row(**row) for row in saved.pop("rows")]
        return cls(**saved, rows=rows)


Side = Callable[[], Awaitable[float]]


async def alternate(
    reps: int,
    sides: Mapping[str, Side],
    between: Callable[[], None] | None = None,
    warmup: bool = False,
) -> dict[str, list[float]]:
    """Run every side once per repetition, rotating the order each time so no side always runs
    first (cold caches) or last (after the others warmed the machine). `between` runs untimed
    after each side (resets); `warmup` runs each side once, untimed, before the repetitions."""
    names = list(sides)
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(-1 if warmup else 0, reps):
        shift = max(rep, 0) % len(names)
        for name in names[shift:] + names[:shift]:
            elapsed = await sides[name]()
            if rep >= 0:
                times[name].append(elapsed)
            if between is not None:
                between()
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): a value that was really observed."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


class Stopwatch:
    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        self.elapsed = 0.0
        return self

    def __exit__(self, *_: object) -> None:
        self.elapsed = time.perf_counter() - self.start


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def fmt_s(seconds: float) -> str:
    return f"{seconds:.2f} s"


def fmt_mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def fmt_ratio(x: float) -> str:
    return f"{x:.2f}x"
