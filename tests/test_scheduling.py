"""Unit tests of the scheduler's pure decisions (aidp.engine.scheduling): dependency cycles and
closures, critical-path levels and the pick order, the makespan forecast (with jobs already
running, more of them than the bound, and dependencies), retry back-off and the automatic bound."""

from __future__ import annotations

import itertools
import random

import pytest

from aidp.engine.scheduling import (
    BACKOFF_MAX_S,
    UNKNOWN_S,
    Graph,
    auto_bound,
    backoff,
    bottom_levels,
    closure,
    find_cycle,
    forecast,
    order_key,
    with_fallback,
)


def is_cycle_of(path: list[str], graph: Graph) -> bool:
    """A closed path along the graph's edges (each node runs after the next one)."""
    return path[0] == path[-1] and all(b in graph.get(a, ()) for a, b in itertools.pairwise(path))


# -- cycles and closures ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "graph",
    [
        {},
        {"a": []},
        {"b": ["a"], "c": ["b"]},
        {"b": ["a"], "c": ["a"], "d": ["b", "c"]},  # a diamond is no cycle
        {"a": ["gone"]},  # a dependency outside the graph ends the path
    ],
)
def test_no_cycle(graph: Graph) -> None:
    assert find_cycle(graph) is None


@pytest.mark.parametrize(
    ("graph", "cycle"),
    [
        ({"a": ["a"]}, ["a", "a"]),
        ({"a": ["b"], "b": ["a"]}, ["a", "b", "a"]),
        ({"a": ["b"], "b": ["c"], "c": ["b"]}, ["b", "c", "b"]),  # a leads into it, is not part of it
        ({"x": ["a"], "a": ["b"], "b": ["c"], "c": ["a"], "d": []}, ["a", "b", "c", "a"]),
    ],
)
def test_a_cycle_is_named_as_a_closed_path(graph: Graph, cycle: list[str]) -> None:
    found = find_cycle(graph)
    assert found == cycle
    assert is_cycle_of(cycle, graph)


def test_closure_adds_every_dependency_transitively_once() -> None:
    graph = {"d": ["b", "c"], "b": ["a"], "c": ["a"], "a": [], "other": ["a"]}
    found = closure(graph, ["d"])
    assert sorted(found) == ["a", "b", "c", "d"]
    assert found[0] == "d"  # what was named comes first; "other" depends on a, it is not a dependency


def test_closure_of_several_keeps_the_named_ones_and_what_they_need() -> None:
    graph = {"c": ["b"], "b": ["a"], "x": []}
    assert closure(graph, ["x", "c"]) == ["x", "c", "b", "a"]
    assert closure(graph, ["a"]) == ["a"]
    assert closure(graph, []) == []


# -- levels and the order they give ---------------------------------------------------------------


def test_bottom_level_is_the_longest_chain_of_work_from_a_job() -> None:
    graph = {"b": ["a"], "c": ["a"], "d": ["b", "c"]}
    levels = bottom_levels(graph, {"a": 1.0, "b": 2.0, "c": 5.0, "d": 1.0})
    assert levels == {"a": 7.0, "b": 3.0, "c": 6.0, "d": 1.0}


def test_bottom_levels_only_count_what_is_in_expected() -> None:
    """A dependency or dependent outside the run adds nothing."""
    graph = {"b": ["a", "outside"], "later": ["b"]}
    assert bottom_levels(graph, {"a": 2.0, "b": 3.0}) == {"a": 5.0, "b": 3.0}


def test_with_fallback_fills_unknown_durations() -> None:
    assert with_fallback({"a": 1.0, "b": 5.0, "c": 3.0, "d": None}) == {"a": 1.0, "b": 5.0, "c": 3.0, "d": 3.0}
    assert with_fallback({"a": None, "b": None}) == {"a": UNKNOWN_S, "b": UNKNOWN_S}


def ordered(priorities: dict[str, int], levels: dict[str, float]) -> list[str]:
    index = {slug: i for i, slug in enumerate(priorities)}
    return sorted(priorities, key=lambda s: order_key(priorities[s], levels[s], index[s]))


def test_order_is_priority_then_level_then_as_given() -> None:
    priorities = {"first-given": 0, "long": 0, "urgent-short": 10, "low-long": -10, "second-given": 0}
    levels = {"first-given": 1.0, "long": 9.0, "urgent-short": 0.1, "low-long": 99.0, "second-given": 1.0}
    assert ordered(priorities, levels) == ["urgent-short", "long", "first-given", "second-given", "low-long"]


def test_critical_path_before_a_longer_lone_job() -> None:
    """The head of a chain goes before a job longer than the head but shorter than the chain."""
    graph = {"tail": ["head"]}
    levels = bottom_levels(graph, {"lone": 3.5, "head": 1.0, "tail": 3.0})
    assert ordered({"lone": 0, "head": 0, "tail": 0}, levels) == ["head", "lone", "tail"]


def test_without_history_a_chain_still_leads_by_its_length() -> None:
    """Unknown durations all count the same, so the order among independent jobs is as given
    while a chain's head goes first (its dependents count)."""
    graph = {"c2": ["c1"]}
    levels = bottom_levels(graph, with_fallback(dict.fromkeys(["x", "y", "c1", "c2"])))
    assert ordered(dict.fromkeys(["x", "y", "c1", "c2"], 0), levels) == ["c1", "x", "y", "c2"]


# -- the forecast ---------------------------------------------------------------------------------


def as_given(slug: str) -> tuple[int, float, int]:
    return order_key(0, 0.0, 0)


def test_forecast_of_nothing_pending_is_the_longest_running() -> None:
    assert forecast({}, {"r": 2.0, "q": 5.0}, {}, 2, as_given) == 5.0
    assert forecast({}, {}, {}, 2, as_given) == 0.0


def test_forecast_is_the_list_schedule_on_the_bound() -> None:
    pending = {"a": 3.0, "b": 2.0, "c": 2.0, "d": 1.0}
    # longest first on 2 slots: a 0-3, b 0-2, c 2-4, d 3-4
    assert forecast(pending, {}, {}, 2, lambda s: order_key(0, pending[s], 0)) == 4.0
    assert forecast(pending, {}, {}, 1, lambda s: order_key(0, pending[s], 0)) == 8.0
    assert forecast(pending, {}, {}, 8, lambda s: order_key(0, pending[s], 0)) == 3.0


def test_forecast_follows_the_given_order() -> None:
    """The order changes the result: shortest first on 2 slots leaves the longest job for last."""
    pending = {"a": 3.0, "b": 1.0, "c": 1.0}
    longest_first = forecast(pending, {}, {}, 2, lambda s: order_key(0, pending[s], 0))
    shortest_first = forecast(pending, {}, {}, 2, lambda s: order_key(0, -pending[s], 0))
    assert (longest_first, shortest_first) == (3.0, 4.0)


def test_forecast_waits_for_the_running_jobs_slots() -> None:
    # 2 slots, one busy for 1.5 s more: a starts at 0 on the free one, b when the other frees
    assert forecast({"a": 2.0, "b": 2.0}, {"r": 1.5}, {}, 2, as_given) == 3.5
    # every slot busy: the first to free takes the job
    assert forecast({"a": 1.0}, {"r": 3.0, "q": 2.0}, {}, 2, as_given) == 3.0


def test_forecast_with_more_running_than_the_bound() -> None:
    """The bound was lowered (a rate limit) while 3 ran: with room for 2, the next job starts
    when fewer than 2 are left running, after the second end (at 4), not the first (at 1)."""
    assert forecast({"a": 3.0}, {"r": 1.0, "q": 4.0, "p": 5.0}, {}, 2, as_given) == 7.0
    assert forecast({"a": 3.0}, {"r": 1.0, "q": 4.0, "p": 5.0}, {}, 1, as_given) == 8.0


def test_forecast_starts_a_job_after_its_dependencies() -> None:
    pending = {"a": 1.0, "b": 1.0, "c": 2.0}
    graph = {"b": ["a"], "c": ["b"]}
    levels = bottom_levels(graph, pending)
    # a free slot does not help a chain: 1 + 1 + 2
    assert forecast(pending, {}, graph, 3, lambda s: order_key(0, levels[s], 0)) == 4.0
    # a dependency outside the pending ones (done, or not in the run) is not waited for
    assert forecast({"b": 1.0}, {}, {"b": ["gone"]}, 1, as_given) == 1.0


def test_forecast_never_holds_a_slot_for_a_job_not_ready() -> None:
    """A chain of three 1 s jobs beside twelve 0.5 s ones on 3 slots: the chain's next step waits
    for its dependency while the free slots run short jobs, as the executor does: 3 s, not 4."""
    pending = {"c1": 1.0, "c2": 1.0, "c3": 1.0, **{f"s{i}": 0.5 for i in range(12)}}
    graph = {"c2": ["c1"], "c3": ["c2"]}
    levels = bottom_levels(graph, pending)
    assert forecast(pending, {}, graph, 3, lambda s: order_key(0, levels[s], 0)) == 3.0


def test_forecast_waits_for_a_running_dependency() -> None:
    # the chain's head runs for 1 s more; its two 1 s steps follow it: 3 s, not 2
    assert forecast({"b": 1.0, "c": 1.0}, {"a": 1.0}, {"b": ["a"], "c": ["b"]}, 2, as_given) == 3.0


# -- back-off and the automatic bound ---------------------------------------------------------------


@pytest.mark.parametrize("seed", range(20))
def test_backoff_doubles_with_jitter_within_bounds(seed: int) -> None:
    rng = random.Random(seed)
    for attempt in range(1, 12):
        raw = 0.5 * 2.0 ** (attempt - 1)
        delay = backoff(attempt, 0.5, rng)
        assert min(BACKOFF_MAX_S, raw * 0.5) <= delay <= min(BACKOFF_MAX_S, raw * 1.5)


def test_backoff_is_capped_jittered_and_repeatable() -> None:
    assert backoff(30, 1.0, random.Random(1)) == BACKOFF_MAX_S
    assert backoff(3, 0.0, random.Random(1)) == 0.0
    assert backoff(2, 1.0, random.Random(7)) == backoff(2, 1.0, random.Random(7))
    rng = random.Random(7)
    assert len({backoff(2, 1.0, rng) for _ in range(10)}) == 10  # jitter: no two retries come back together


def test_auto_bound_is_the_cores_without_memory_figures() -> None:
    assert auto_bound(4, None, None) == (4, "auto: 4 (4 cores, no memory use recorded yet)")
    assert auto_bound(4, 8 * 1048576, None)[0] == 4
    assert auto_bound(0, None, None)[0] == 1
    assert auto_bound(200, None, None)[0] == 64
    assert auto_bound(200, None, None, ceiling=10)[0] == 10


def test_auto_bound_lowers_to_what_fits_in_memory() -> None:
    # 80% of 1 GiB holds 3 runs of 256 MiB
    bound, why = auto_bound(8, 1048576, 262144)
    assert bound == 3
    assert why == "auto: 3 (8 cores, 1.0 GiB available, peak 256 MiB per run (memory for 3))"
    # plenty of memory: the cores decide, and it says what it saw
    bound, why = auto_bound(2, 16 * 1048576, 262144)
    assert bound == 2
    assert "16.0 GiB available, peak 256 MiB per run" in why and "memory for" not in why
    # not even one fits: still one at a time, never none
    assert auto_bound(4, 100_000, 200_000)[0] == 1
