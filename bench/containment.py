"""Scenario: what keeping every process of a harness costs (issue 8). N runs of `true`, and of a
harness that leaves a `setsid` descendant behind, 8 at a time, through the CLI: with a cgroup per
harness (where aidp may create them), and with `AIDP_CGROUPS=0` (process groups, plus a /proc scan
for the environment marker when a harness ends). Both end every descendant; the difference is the
price of the stronger guarantee.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench.common import Params, Row, Section, Stopwatch, alternate, fmt_ms, fmt_ratio, fmt_s, median
from bench.fixtures import ENV, aidp_cli, create_workstreams, make_repo, reset_statuses

HARNESSES = {"`true`": ["true"], "`setsid sleep 30 & exit 0`": ["sh", "-c", "setsid sleep 30 & exit 0"]}
MODES: dict[str, dict[str, str]] = {"cgroup per harness": {}, "AIDP_CGROUPS=0": {"AIDP_CGROUPS": "0"}}


async def run(p: Params) -> list[Section]:
    n = p.overhead_n // 2
    repos = {}
    for i, (label, harness) in enumerate(HARNESSES.items()):
        repos[label] = make_repo(p.work / f"containment-{i}", harness)
        await create_workstreams(repos[label], [f"c-{i:03d}" for i in range(n)])

    def side(repo: Path, extra: dict[str, str]) -> Callable[[], Awaitable[float]]:
        async def timed() -> float:
            cmd = [*aidp_cli(), "ws", "run-all", "--max-concurrent", "8", "--json"]
            with Stopwatch() as watch:
                out = subprocess.run(cmd, cwd=repo, env={**ENV, **extra}, capture_output=True, check=False)
            summary = json.loads(out.stdout)
            assert summary["completed"] == n, f"completed {summary['completed']} of {n}: {out.stderr!r}"
            return watch.elapsed

        return timed

    sides = {f"{label}, {mode}": side(repos[label], extra) for label in HARNESSES for mode, extra in MODES.items()}

    def reset() -> None:
        for repo in repos.values():
            reset_statuses(repo)

    times = await alternate(p.overhead_reps, sides, between=reset)
    section = Section("containment", f"Containment: {n} workstreams, 8 at a time, with and without cgroups")
    for name, values in times.items():
        m = median(values)
        base = median(times[name.rsplit(", ", 1)[0] + ", AIDP_CGROUPS=0"])
        section.rows.append(Row(name, f"{fmt_ms(m / n)} /ws", fmt_s(m), fmt_ratio(m / base)))
    section.figures = {"n": n, "times_s": times}
    section.notes.append(
        "`true` is the cost on the common path; the second harness starts `setsid sleep 30` and exits 0, and "
        "aidp must end the sleeper before it records the workstream. With cgroups the child moves itself "
        "into `aidp-<run>-<slug>` before its exec (aidp's native spawner; one exec, and no start gate, "
        "since the start is recorded first) and the leftover is found and killed through the cgroup; "
        "without, every harness starts through a constant `sh -c` that waits at the start gate, and the "
        "leftover is found by scanning /proc for the `AIDP_RUN_ID` marker. "
        f"Whole CLI processes, {p.overhead_reps} repetitions, order rotated, medians; ratio against the "
        "same harness with `AIDP_CGROUPS=0`."
    )
    return [section]
