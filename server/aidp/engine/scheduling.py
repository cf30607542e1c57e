"""What starts next, and when a run will end: the pure decisions of the scheduler.

A run (executor.py) asks these functions; they know nothing of processes or the database, so they
are tested alone and benchmarked against the bounds they aim for.

Order: among the workstreams whose dependencies are done, the highest priority first; among equal
priorities, the one with the longest chain of expected work behind it (its "bottom level": its own
expected duration plus the longest chain of its dependents), which is both longest-processing-time
first for independent jobs and critical-path first in a DAG; then the order they were given in.
"""

from __future__ import annotations

import heapq
import random
import statistics
from collections.abc import Callable, Mapping, Sequence

BACKOFF_MAX_S = 300.0
# A workstream with no recorded history counts as this, when nothing in the run has any either:
# every job then weighs the same, and the order is by priority and then as given.
UNKNOWN_S = 1.0

Graph = Mapping[str, Sequence[str]]  # slug -> the slugs it runs after


def find_cycle(graph: Graph) -> list[str] | None:
    """A dependency cycle as a path that ends where it starts (['a', 'b', 'a']), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in graph.get(node, ()):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def closure(graph: Graph, slugs: Sequence[str]) -> list[str]:
    """`slugs` and everything they run after, transitively (dependencies first met, then the rest)."""
    seen: dict[str, None] = {}

    def visit(node: str) -> None:
        if node in seen:
            return
        seen[node] = None
        for dep in graph.get(node, ()):
            visit(dep)

    for slug in slugs:
        visit(slug)
    return list(seen)


def with_fallback(expected: Mapping[str, float | None]) -> dict[str, float]:
    """Expected durations with the unknown ones filled in by the median of the known ones."""
    known = [e for e in expected.values() if e is not None]
    fill = statistics.median(known) if known else UNKNOWN_S
    return {slug: fill if e is None else e for slug, e in expected.items()}


def bottom_levels(graph: Graph, expected: Mapping[str, float]) -> dict[str, float]:
    """For each slug in `expected`: its expected duration plus the longest chain of its dependents'
    (within `expected`): how long the run lasts at least once it starts."""
    dependents: dict[str, list[str]] = {slug: [] for slug in expected}
    for slug in expected:
        for dep in graph.get(slug, ()):
            if dep in dependents:
                dependents[dep].append(slug)
    levels: dict[str, float] = {}

    def level(slug: str) -> float:
        if slug not in levels:
            levels[slug] = expected[slug] + max((level(d) for d in dependents[slug]), default=0.0)
        return levels[slug]

    for slug in expected:
        level(slug)
    return levels


def order_key(priority: int, level: float, index: int) -> tuple[int, float, int]:
    """Sort key: higher priority, then longer bottom level, then the order given."""
    return (-priority, -level, index)


def forecast(
    pending: Mapping[str, float],
    running: Mapping[str, float],
    graph: Graph,
    bound: int,
    key: Callable[[str], tuple[int, float, int]],
) -> float:
    """The time until every job has ended if each takes its expected duration, as the executor
    would schedule them: whenever a slot frees, the first job in `key` order whose dependencies
    have ended starts there (a slot stays idle only while no job is ready). `pending`: slug ->
    expected seconds; `running`: slug -> seconds left of the jobs already running, which hold
    their slots (all of them, when more run than `bound` after it was lowered) and end on time.
    A dependency in neither is done. O((jobs + dependencies) log jobs)."""
    ends: dict[str, float] = dict(running)
    busy = sorted(running.values())
    # When more run than the bound, a slot frees only as the surplus ends.
    slots = busy[-bound:] if len(busy) >= bound else [0.0] * (bound - len(busy)) + busy
    heapq.heapify(slots)
    waiting_on = {s: {d for d in graph.get(s, ()) if d in pending} for s in pending}
    dependents: dict[str, list[str]] = {}
    for slug, deps in waiting_on.items():
        for dep in deps:
            dependents.setdefault(dep, []).append(slug)

    def available(slug: str) -> float:
        return max((ends[d] for d in graph.get(slug, ()) if d in ends), default=0.0)

    later = [(available(s), key(s), s) for s, deps in waiting_on.items() if not deps]  # by when they can start
    heapq.heapify(later)
    ready: list[tuple[tuple[int, float, int], str]] = []  # can start now, by key
    makespan = max(busy, default=0.0)
    left = len(pending)
    while left:
        now = heapq.heappop(slots)
        while later and later[0][0] <= now:
            _, k, slug = heapq.heappop(later)
            heapq.heappush(ready, (k, slug))
        if not ready:
            heapq.heappush(slots, later[0][0])  # idle until the next job can start
            continue
        _, slug = heapq.heappop(ready)
        ends[slug] = now + pending[slug]
        makespan = max(makespan, ends[slug])
        heapq.heappush(slots, ends[slug])
        left -= 1
        for dependent in dependents.get(slug, ()):
            waiting_on[dependent].discard(slug)
            if not waiting_on[dependent]:
                heapq.heappush(later, (available(dependent), key(dependent), dependent))
    return makespan


def backoff(attempt: int, base_s: float, rng: random.Random | None = None) -> float:
    """Seconds to wait before attempt `attempt + 1`: exponential in the attempts made, with jitter
    (between half and one and a half times), so many retries do not come back at the same moment."""
    raw = base_s * 2.0 ** (attempt - 1)
    jitter: float = (rng or random).uniform(0.5, 1.5)
    return min(BACKOFF_MAX_S, raw * jitter)


def auto_bound(cores: int, available_kb: int | None, peak_rss_kb: int | None, ceiling: int = 64) -> tuple[int, str]:
    """`max_concurrent = "auto"`: as many as there are cores, fewer when the peak memory recorded
    for these workstreams would not fit in 80% of the memory available. Returns it and why."""
    bound, why = max(1, min(cores, ceiling)), f"{cores} cores"
    if available_kb is not None and peak_rss_kb:
        fit = int(available_kb * 0.8 // peak_rss_kb)
        why += f", {available_kb / 1048576:.1f} GiB available, peak {peak_rss_kb / 1024:.0f} MiB per run"
        if fit < bound:
            bound = max(1, fit)
            why += f" (memory for {fit})"
    else:
        why += ", no memory use recorded yet"
    return bound, f"auto: {bound} ({why})"
