"""The scheduler end to end: priorities, dependencies, blocked dependents, retries, rate limits,
halt, the repository-wide bound across processes and the order learnt from history. Real git, real
harness processes; every ordering is read from the stamps the children write themselves."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import spawn_cli, workstreams
from conftest import toml_list, write_config, write_script
from support import PYTHON, cli, git, pid_alive, wait_until, wait_until_sync

from aidp.engine import Engine, Status, WorkstreamResult
from aidp.engine.errors import InvalidInput, Refused, UnknownSlugs
from aidp.engine.events import EngineEvent, RunProgress, StatusChanged
from aidp.engine.executor import Job, Run
from aidp.engine.store import MIGRATIONS, SCHEMA, Store

pytestmark = pytest.mark.timeout(180)

# start/end stamps (monotonic, machine-wide) of each harness, written by the harness itself.
STAMP = """
    import os, sys, time
    stamps, slug, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])

    def note(kind):
        fd = os.open(stamps, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.write(fd, f"{kind} {slug} {time.monotonic()!r}\\n".encode())
        os.close(fd)

    note("start")
    gate = os.environ.get("GATE")
    while gate and not os.path.exists(gate):
        time.sleep(0.02)
    time.sleep(seconds)
    note("end")
    sys.exit(int(os.environ.get("EXIT_" + slug.replace("-", "_").upper(), "0")))
"""


def stamp_command(scripts: Path, stamps: Path, seconds: float = 0.05) -> list[str]:
    script = write_script(scripts, "stamp.py", STAMP)
    return [PYTHON, str(script), str(stamps), "{slug}", str(seconds)]


def read_stamps(stamps: Path) -> tuple[list[str], dict[str, float], dict[str, float]]:
    """The order the harnesses started in, and each one's start and end."""
    order, starts, ends = [], {}, {}
    for line in stamps.read_text().splitlines():
        kind, slug, stamp = line.split()
        if kind == "start":
            order.append(slug)
            starts[slug] = float(stamp)
        else:
            ends[slug] = float(stamp)
    return order, starts, ends


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    points = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    best = current = 0
    for _, delta in points:
        current += delta
        best = max(best, current)
    return best


async def test_higher_priority_starts_first(engine: Engine, repo: Path, scripts: Path, tmp_path: Path) -> None:
    stamps = tmp_path / "stamps"
    write_config(
        repo, f"[scheduler]\nmax_concurrent = 1\n[harness]\ncommand = {toml_list(stamp_command(scripts, stamps))}\n"
    )
    for slug, priority in (("low-one", "low"), ("plain-a", "normal"), ("urgent", "high"), ("plain-b", 0)):
        await engine.create(slug, f"task {slug}", priority=priority)
    summary = await engine.run_all()
    assert summary.ok, summary
    assert read_stamps(stamps)[0] == ["urgent", "plain-a", "plain-b", "low-one"]
    assert [ws.priority for ws in await engine.workstreams(changes=False)] == [-10, 0, 10, 0]


async def test_a_priority_set_by_another_process_counts_at_the_next_free_slot(
    repo: Path, scripts: Path, tmp_path: Path
) -> None:
    stamps, gate = tmp_path / "stamps", tmp_path / "gate"
    write_config(
        repo, f"[scheduler]\nmax_concurrent = 1\n[harness]\ncommand = {toml_list(stamp_command(scripts, stamps))}\n"
    )
    engine = await Engine.open(repo)
    try:
        await engine.create("first", "holds the only slot", priority="high")
        for slug in ("x", "y", "z"):
            await engine.create(slug, f"task {slug}")
    finally:
        await engine.close()
    run = spawn_cli(repo, "ws", "run-all", "--json", env={**os.environ, "GATE": str(gate)})
    try:
        await wait_until(lambda: stamps.exists() and "first" in stamps.read_text(), what="first started")
        other = await Engine.open(repo)  # this test's process: not the one running the run
        try:
            await other.set_schedule("z", priority="high")
        finally:
            await other.close()
        gate.touch()
        _, stderr = await asyncio.to_thread(run.communicate, timeout=120)
    finally:
        gate.touch()
    assert run.returncode == 0, stderr
    assert read_stamps(stamps)[0] == ["first", "z", "x", "y"]


async def test_a_dag_runs_in_order_and_in_parallel(engine: Engine, repo: Path, scripts: Path, tmp_path: Path) -> None:
    stamps = tmp_path / "stamps"
    write_config(
        repo,
        f"[scheduler]\nmax_concurrent = 3\n[harness]\ncommand = {toml_list(stamp_command(scripts, stamps, 0.5))}\n",
    )
    await engine.create("base", "the migration")
    await engine.create("left", "one endpoint", after=["base"])
    await engine.create("right", "another endpoint", after=["base"])
    await engine.create("top", "the client", after=["left", "right"])
    summary = await engine.run(["top"])  # the rest is pulled in
    assert summary.ok and sorted(summary.pulled_in) == ["base", "left", "right"], summary
    _, starts, ends = read_stamps(stamps)
    assert starts["left"] >= ends["base"] and starts["right"] >= ends["base"]
    assert starts["top"] >= max(ends["left"], ends["right"])
    # Independent work is not serialised: left and right ran at the same time.
    assert max_overlap([(starts[s], ends[s]) for s in ("left", "right")]) == 2


async def test_no_deps_refuses_and_names_them(engine: Engine, repo: Path) -> None:
    write_config(repo, '[harness]\ncommand = ["true"]\n')
    await engine.create("a", "first")
    await engine.create("b", "second", after=["a"])
    with pytest.raises(Refused, match=r"not done yet, and named as dependencies: a"):
        await engine.start(["b"], no_deps=True)
    assert {ws.slug: ws.status for ws in await engine.workstreams(changes=False)} == {
        "a": Status.ACTIVE,
        "b": Status.ACTIVE,
    }


async def test_dependents_of_a_failure_are_blocked_then_run_later(
    engine: Engine, repo: Path, scripts: Path, tmp_path: Path
) -> None:
    stamps = tmp_path / "stamps"
    write_config(repo, f"[harness]\ncommand = {toml_list(stamp_command(scripts, stamps))}\n")
    await engine.create("migrate", "the migration", command=["false"])
    await engine.create("api", "the endpoints", after=["migrate"])
    await engine.create("ui", "the screens", after=["api"])
    await engine.create("docs", "independent")
    summary = await engine.run_all()
    assert (summary.failed, summary.blocked, summary.completed) == (1, 2, 1), summary
    found = {ws.slug: ws for ws in await engine.workstreams(changes=False)}
    assert found["api"].status == found["ui"].status == Status.BLOCKED
    assert found["api"].last_result is not None and found["api"].last_result.error == (
        "blocked: its dependency migrate failed"
    )
    assert found["ui"].last_result is not None and found["ui"].last_result.error == (
        "blocked: its dependency api blocked"
    )
    assert read_stamps(stamps)[0] == ["docs"]  # nothing blocked ever started

    # The dependency fixed and done: a later run runs what it blocked.
    await engine.remove("migrate", delete_branch=True)
    await engine.create("migrate", "the migration, fixed")
    await engine.set_schedule("api", after=["migrate"])
    summary = await engine.run_all()
    assert summary.ok and summary.total == 3, summary
    assert read_stamps(stamps)[0] == ["docs", "migrate", "api", "ui"]


async def test_cycles_and_unknown_dependencies_are_refused_and_nothing_is_stored(engine: Engine, repo: Path) -> None:
    await engine.create("a", "first")
    await engine.create("b", "second", after=["a"])
    await engine.create("c", "third", after=["b"])
    with pytest.raises(InvalidInput, match=r"cycle: a -> c -> b -> a"):
        await engine.set_schedule("a", after=["c"])
    with pytest.raises(InvalidInput, match="cannot run after itself"):
        await engine.create("d", "fourth", after=["d"])
    with pytest.raises(UnknownSlugs, match="unknown workstream: nope"):
        await engine.create("e", "fifth", after=["nope"])
    with pytest.raises(UnknownSlugs, match="nope"):
        await engine.set_schedule("a", after=["nope"], priority="high")
    found = {ws.slug: (ws.after, ws.priority) for ws in await engine.workstreams(changes=False)}
    assert found == {"a": ([], 0), "b": (["a"], 0), "c": (["b"], 0)}
    with pytest.raises(InvalidInput, match="invalid priority 'urgent'"):
        await engine.set_schedule("a", priority="urgent")


async def test_removing_a_dependency_frees_its_dependents(engine: Engine, repo: Path) -> None:
    await engine.create("a", "first")
    await engine.create("b", "second", after=["a"])
    notes = await engine.remove("a")
    assert "b no longer run after a" in notes
    assert (await engine.get("b", changes=False)).after == []
    assert (await engine.history("b"))[-1].message == "no longer after a: a was removed"


FLAKY = """
    import os, sys
    count = os.path.join(sys.argv[1], os.environ["AIDP_SLUG"])
    n = int(open(count).read()) + 1 if os.path.exists(count) else 1
    open(count, "w").write(str(n))
    print(f"attempt {n} of {os.environ['AIDP_SLUG']}")
    sys.exit(0 if n > int(sys.argv[2]) else int(sys.argv[3]))
"""


async def test_retries_each_attempt_its_own_record_and_log(
    engine: Engine, repo: Path, scripts: Path, markers: Path
) -> None:
    flaky = write_script(scripts, "flaky.py", FLAKY)
    write_config(repo, "[harness]\nretries = 3\nretry_backoff_s = 0.05\nretry_on_exit = [3]\n")
    await engine.create("twice-failing", "flaky", command=[PYTHON, str(flaky), str(markers), "2", "3"])
    await engine.create("wrong-code", "not retried", command=[PYTHON, str(flaky), str(markers), "5", "4"])
    events: list[EngineEvent] = []
    engine.events.subscribe(events.append)
    summary = await engine.run_all()
    results = {r.slug: r for r in summary.results}
    assert (results["twice-failing"].status, results["twice-failing"].attempt) == (Status.COMPLETED, 3)
    assert (results["wrong-code"].status, results["wrong-code"].attempt) == (Status.FAILED, 1)
    assert (markers / "twice-failing").read_text() == "3"
    retried = [
        (e.attempt, e.max_attempts, e.waiting)
        for e in events
        if isinstance(e, StatusChanged) and e.slug == "twice-failing" and e.status == Status.QUEUED and e.attempt
    ]
    assert [(a, m) for a, m, _ in retried[:2]] == [(2, 4), (3, 4)]
    assert all(w and "back-off (retry)" in w for _, _, w in retried[:2])
    with sqlite3.connect(repo / ".aidp" / "state.db") as db:
        rows = db.execute(
            "SELECT attempt, status, log_path FROM runs WHERE slug = 'twice-failing' ORDER BY attempt"
        ).fetchall()
    assert [(a, s) for a, s, _ in rows] == [(1, "failed"), (2, "failed"), (3, "completed")]
    logs = [Path(p).read_text() for _, _, p in rows]
    assert logs == [f"attempt {n} of twice-failing\n" for n in (1, 2, 3)]


# Stamps like STAMP; fails its first attempt (exit 3) when argv[3] is "1".
ONCE = """
    import os, sys, time
    stamps, slug, fail_first = sys.argv[1], sys.argv[2], sys.argv[3] == "1"

    def note(kind):
        fd = os.open(stamps, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.write(fd, f"{kind} {slug} {time.monotonic()!r}\\n".encode())
        os.close(fd)

    note("start")
    first = sum(line.split()[:2] == ["start", slug] for line in open(stamps)) == 1
    time.sleep(0.02)
    note("end")
    sys.exit(3 if fail_first and first else 0)
"""


async def test_one_slot_starts_each_job_once_and_a_retry_once_more(
    engine: Engine, repo: Path, scripts: Path, tmp_path: Path
) -> None:
    """The scheduler keeps its plain jobs (no dependency, no setup) in order between passes and
    looks at the others at every pass. With one slot: the high-priority job starts first, fails
    and goes back among the jobs still waiting; the dependent starts after its dependency ended;
    every job starts exactly as often as it should, one at a time."""
    stamps = tmp_path / "stamps"
    script = write_script(scripts, "once.py", ONCE)
    write_config(
        repo, "[scheduler]\nmax_concurrent = 1\n[harness]\nretries = 1\nretry_backoff_s = 0.05\nretry_on_exit = [3]\n"
    )

    def command(fail_first: bool) -> list[str]:
        return [PYTHON, str(script), str(stamps), "{slug}", "1" if fail_first else "0"]

    await engine.create("flaky", "fails once", command=command(True), priority="high")
    for slug in ("a", "b", "c"):
        await engine.create(slug, f"task {slug}", command=command(False))
    await engine.create("after-a", "after a", command=command(False), after=["a"])
    summary = await engine.run_all()
    results = {r.slug: (r.status, r.attempt) for r in summary.results}
    assert results == {
        "flaky": (Status.COMPLETED, 2),
        **{slug: (Status.COMPLETED, 1) for slug in ("a", "b", "c", "after-a")},
    }
    order, starts, ends = read_stamps(stamps)
    assert order[0] == "flaky" and sorted(order) == ["a", "after-a", "b", "c", "flaky", "flaky"]
    assert starts["after-a"] > ends["a"]
    kinds = [line.split()[0] for line in stamps.read_text().splitlines()]
    assert kinds == ["start", "end"] * 6  # one at a time


def successor_looked_for(monkeypatch: pytest.MonkeyPatch, slug: str) -> threading.Event:
    """Set once the run has looked for the job to hand `slug`'s slot to (as `slug` ended): what a
    test holding the store's thread waits for, instead of a guess of how long that takes."""
    looked = threading.Event()
    successor = Run._successor

    def looking(run: Run, job: Job, result: WorkstreamResult) -> Job | None:
        try:
            return successor(run, job, result)
        finally:
            if job.ws.slug == slug:
                looked.set()

    monkeypatch.setattr(Run, "_successor", looking)
    return looked


async def test_a_slot_handed_over_while_a_pass_takes_slots_starts_nothing_twice(
    engine: Engine, repo: Path, scripts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ending job hands its slot to the next one in the transaction that records its end, while
    a pass takes slots for the jobs it picked in a round trip of its own. Here a pass picks `r`
    (made high priority by another process, so the first end's handover is refused) and waits on
    a slow `take_slots` while `b` ends: `b` must not hand its slot to `r` too."""
    stamps, gates = tmp_path / "stamps", tmp_path / "gates"
    gates.mkdir()
    write_config(
        repo, f"[scheduler]\nmax_concurrent = 2\n[harness]\ncommand = {toml_list(stamp_command(scripts, stamps, 0))}\n"
    )
    for slug in ("a", "b"):  # they hold both slots until their gates open
        gated = ["env", f"GATE={gates / slug}", *stamp_command(scripts, stamps, 0)]
        await engine.create(slug, f"task {slug}", command=gated, priority="high")
    for slug in ("p", "q", "r"):
        await engine.create(slug, f"task {slug}")
    taking, slow = threading.Event(), threading.Event()
    b_ended = successor_looked_for(monkeypatch, "b")
    take_slots = Store.take_slots

    def slow_take_slots(store: Store, *args: Any) -> list[str]:
        if slow.is_set():
            slow.clear()
            taking.set()
            b_ended.wait(30)  # on the store's thread: the pass's round trip stays open until then
        return take_slots(store, *args)

    monkeypatch.setattr(Store, "take_slots", slow_take_slots)
    told: list[tuple[str, Status]] = []  # each start and end told: a job started twice is told twice

    def listen(event: EngineEvent) -> None:
        if isinstance(event, StatusChanged) and event.status != Status.QUEUED:
            told.append((event.slug, event.status))

    engine.events.subscribe(listen)
    run = asyncio.create_task(engine.run_all())
    await wait_until(lambda: stamps.exists() and stamps.read_text().count("start") == 2, what="a and b started")
    other = await Engine.open(repo)
    try:
        await other.set_schedule("r", priority="high")
    finally:
        await other.close()
    slow.set()
    (gates / "a").touch()
    assert await asyncio.to_thread(taking.wait, 30), "no pass took slots after a's end"
    (gates / "b").touch()  # ends while the pass that picked `r` waits for its slot
    summary = await asyncio.wait_for(run, 60)
    assert summary.ok, summary
    order, _, _ = read_stamps(stamps)
    assert sorted(order) == ["a", "b", "p", "q", "r"], order  # each once
    assert sorted(told) == sorted((s, st) for s in "abpqr" for st in (Status.RUNNING, Status.COMPLETED)), told
    # The priority set meanwhile counts (the order aidp started them in: r's and p's harnesses start
    # at nearly the same moment, so their own stamps may come in either order).
    started = {r.slug: r.started_at or "" for r in summary.results}
    assert started["r"] <= min(started["p"], started["q"]), started


async def test_a_slot_handed_over_as_the_run_halts_starts_nothing(
    engine: Engine, repo: Path, scripts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`x` ends and hands its slot to `y` while `bad`'s failure, recorded just before, has not yet
    halted the run: once `x`'s end and the handover are recorded, the run has halted, so `y` must
    not start (the slot goes back with its claim)."""
    stamps, gates = tmp_path / "stamps", tmp_path / "gates"
    gates.mkdir()
    write_config(
        repo, f"[scheduler]\nmax_concurrent = 2\n[harness]\ncommand = {toml_list(stamp_command(scripts, stamps, 0))}\n"
    )
    for slug in ("x", "bad"):  # they hold both slots until their gates open
        gated = ["env", f"GATE={gates / slug}", "EXIT_BAD=1", *stamp_command(scripts, stamps, 0)]
        await engine.create(slug, f"task {slug}", command=gated, priority="high")
    await engine.create("y", "queued behind")
    recording = threading.Event()
    x_ended = successor_looked_for(monkeypatch, "x")
    finish = Store.finish

    def slow_finish(store: Store, run_id: str, result: WorkstreamResult, *args: Any) -> bool:
        if result.slug == "bad":
            recording.set()
            x_ended.wait(30)  # on the store's thread: `x` ends and hands its slot over meanwhile
        return finish(store, run_id, result, *args)

    monkeypatch.setattr(Store, "finish", slow_finish)
    run = asyncio.create_task(engine.run_all(halt="soon"))
    await wait_until(lambda: stamps.exists() and stamps.read_text().count("start") == 2, what="x and bad started")
    (gates / "bad").touch()
    assert await asyncio.to_thread(recording.wait, 30), "bad's end was never recorded"
    (gates / "x").touch()
    summary = await asyncio.wait_for(run, 60)
    results = {r.slug: (r.status, r.error) for r in summary.results}
    assert results["y"] == (Status.CANCELLED, "not started: halted after bad failed (--halt soon)"), results
    assert results["x"][0] == Status.COMPLETED and results["bad"][0] == Status.FAILED, results
    assert sorted(read_stamps(stamps)[0]) == ["bad", "x"]  # y's harness never ran
    assert (await engine.get("y", changes=False)).status == Status.CANCELLED  # its record says so too


async def test_a_timeout_is_not_retried_unless_asked(engine: Engine, repo: Path) -> None:
    write_config(repo, "[harness]\nretries = 2\nretry_backoff_s = 0.05\n")
    await engine.create("slow", "sleeps", command=["sleep", "30"])
    summary = await engine.run(["slow"], timeout_s=0.3)
    assert (summary.results[0].status, summary.results[0].attempt) == (Status.FAILED, 1)
    write_config(repo, "[harness]\nretries = 1\nretry_backoff_s = 0.05\nretry_on_timeout = true\n")
    summary = await engine.run(["slow"], timeout_s=0.3)
    assert (summary.results[0].status, summary.results[0].attempt) == (Status.FAILED, 2)
    assert summary.results[0].error is not None and summary.results[0].error.startswith("timed out after 0.3 s")


async def test_rate_limits_lower_the_pace_and_calm_restores_it(
    engine: Engine, repo: Path, scripts: Path, markers: Path, tmp_path: Path
) -> None:
    flaky = write_script(scripts, "flaky.py", FLAKY)
    stamps = tmp_path / "stamps"
    write_config(
        repo,
        f"""
        [scheduler]
        max_concurrent = 4
        rate_limit_recover_s = 0.5
        [harness]
        command = {toml_list(stamp_command(scripts, stamps, 0.4))}
        rate_limit_pattern = "(?i)rate limit"
        retry_backoff_s = 0.05
        """,
    )
    # Its first attempt says it hit a rate limit; the retry succeeds.
    limited = write_script(
        scripts, "limited.sh", f'{PYTHON} {flaky} {markers} 1 1 && exit 0; echo "Rate limit hit"; exit 1\n'
    )
    await engine.create("limited", "hits a limit once", command=["sh", str(limited)], priority="high")
    for i in range(10):
        await engine.create(f"job-{i}", "steady work")
    progress: list[RunProgress] = []
    engine.events.subscribe(lambda e: progress.append(e) if isinstance(e, RunProgress) else None)
    summary = await engine.run_all()
    assert summary.ok, summary
    paces = [p.concurrency or 0 for p in progress]
    assert paces[0] == 4
    assert 2 in paces and paces.index(2) < len(paces) - 1
    assert max(paces[paces.index(2) :]) > 2  # raised again after a calm stretch
    notes = [p.note for p in progress if p.note]
    assert any(n.startswith("rate limited (limited): concurrency 4 -> 2") for n in notes)
    assert any(n.startswith("no rate limit for 0.5 s: concurrency back up to 3") for n in notes)
    limited_result = next(r for r in summary.results if r.slug == "limited")
    assert limited_result.attempt == 2


async def test_halt_soon_and_now(engine: Engine, repo: Path, scripts: Path, tmp_path: Path) -> None:
    stamps, gate = tmp_path / "stamps", tmp_path / "gate"
    write_config(
        repo,
        f"""
        [scheduler]
        max_concurrent = 2
        [harness]
        command = {toml_list(stamp_command(scripts, stamps, 0.1))}
        env = {{GATE = "{gate}"}}
        """,
    )
    await engine.create("long", "waits for the gate", priority="high")
    await engine.create("bad", "fails at once", command=["false"], priority="high")
    await engine.create("later", "queued behind")
    run = await engine.start_all(halt="now")
    summary = await engine.wait(run)
    results = {r.slug: r for r in summary.results}
    assert results["bad"].status == Status.FAILED
    assert results["long"].status == Status.CANCELLED
    assert results["long"].error == "cancelled: halted after bad failed (--halt now)"
    assert (results["later"].status, results["later"].error) == (
        Status.CANCELLED,
        "not started: halted after bad failed (--halt now)",
    )
    gate.touch()
    summary = await engine.run(["long", "bad", "later"], halt="soon")
    results = {r.slug: r for r in summary.results}
    assert (results["long"].status, results["bad"].status, results["later"].status) == (
        Status.COMPLETED,
        Status.FAILED,
        Status.CANCELLED,
    )


def test_the_repository_bound_holds_across_processes(repo: Path, scripts: Path, tmp_path: Path) -> None:
    stamps = tmp_path / "stamps"
    write_config(
        repo,
        f"[scheduler]\nmax_concurrent = 2\n[harness]\ncommand = {toml_list(stamp_command(scripts, stamps, 0.6))}\n",
    )
    groups = [[f"p{p}-{i}" for i in range(3)] for p in range(3)]
    for slug in (s for group in groups for s in group):
        cli(repo, "ws", "new", slug, "work")
    runs = [spawn_cli(repo, "ws", "run", *group, "--json") for group in groups]
    waiting: set[str] = set()

    def someone_waits_for_a_slot() -> bool:
        listed = json.loads(cli(repo, "ws", "list", "--json").stdout)
        waiting.update(ws["currentRun"]["waiting"] for ws in listed if ws["currentRun"] and ws["currentRun"]["waiting"])
        return any(w.startswith("waiting for a slot") for w in waiting) or all(r.poll() is not None for r in runs)

    wait_until_sync(someone_waits_for_a_slot, what="a queued workstream says it waits for a slot")
    for run in runs:
        _, stderr = run.communicate(timeout=120)
        assert run.returncode == 0, stderr
    _, starts, ends = read_stamps(stamps)
    assert len(starts) == 9
    assert max_overlap([(starts[s], ends[s]) for s in starts]) == 2
    assert any(w.startswith("waiting for a slot") and "by other aidp processes (pid" in w for w in waiting), waiting


def test_a_killed_processs_slots_come_back(repo: Path, markers: Path) -> None:
    write_config(repo, "[scheduler]\nmax_concurrent = 1\n")
    pid_file = markers / "pid"
    cli(repo, "ws", "new", "hog", "holds the slot", "--command", f"sh -c 'echo $$ > {pid_file}; exec sleep 300'")
    cli(repo, "ws", "new", "next", "runs after", "--command", "true")
    owner = spawn_cli(repo, "ws", "run", "hog")
    try:
        wait_until_sync(lambda: pid_file.exists() and pid_file.read_text().strip() != "", what="hog started")
        harness_pid = int(pid_file.read_text())
        owner.send_signal(signal.SIGKILL)
        owner.wait(30)
        done = cli(repo, "ws", "run", "next", "--json")
    finally:
        if owner.poll() is None:
            owner.kill()
    assert json.loads(done.stdout)["completed"] == 1
    assert not pid_alive(harness_pid)
    assert workstreams(repo)["hog"]["status"] == "cancelled"


async def test_history_puts_the_longest_first(engine: Engine, repo: Path, scripts: Path, tmp_path: Path) -> None:
    stamps = tmp_path / "stamps"
    script = write_script(scripts, "stamp.py", STAMP)
    write_config(repo, "[scheduler]\nmax_concurrent = 1\n")
    durations = {"short": 0.05, "medium": 0.3, "long": 0.6}
    for slug, seconds in durations.items():
        await engine.create(slug, slug, command=[PYTHON, str(script), str(stamps), "{slug}", str(seconds)])
    assert (await engine.run(list(durations))).ok
    expected = {ws.slug: ws.expected_s for ws in await engine.workstreams(changes=False)}
    assert all((e := expected[s]) is not None and e >= durations[s] for s in durations), expected
    stamps.unlink()
    summary = await engine.run(list(durations))
    assert summary.ok and summary.forecast_s is not None and summary.forecast_s >= sum(durations.values())
    assert read_stamps(stamps)[0] == ["long", "medium", "short"]


async def test_base_from_deps_builds_on_the_dependencies_work(engine: Engine, repo: Path, scripts: Path) -> None:
    writes = write_script(scripts, "writes.sh", 'echo "$AIDP_SLUG" > "$AIDP_SLUG.txt"; ls > "seen-$AIDP_SLUG.txt"\n')
    write_config(repo, f'[harness]\ncommand = ["sh", "{writes}"]\ncommit = "on-success"\n')
    await engine.create("schema", "the schema")
    await engine.create("models", "the models")
    await engine.create("api", "the endpoints", after=["schema", "models"])
    summary = await engine.run(["api"], base_from_deps=True)
    assert summary.ok, summary
    worktree = repo / ".worktrees" / "api"
    assert {"schema.txt", "models.txt"} <= set((worktree / "seen-api.txt").read_text().split())
    started = [e.message for e in await engine.history("api") if e.message and e.message.startswith("started from")]
    assert len(started) == 1 and "aidp/schema at" in started[0] and "aidp/models at" in started[0]

    # Dependencies that do not merge: refused with the conflicting file, the branch left as it was.
    await engine.create("one", "writes x")
    await engine.create("two", "writes x too")
    await engine.create("both", "needs both", after=["one", "two"])
    write_config(repo, '[harness]\ncommand = ["sh", "-c", "echo $AIDP_SLUG > x.txt"]\ncommit = "on-success"\n')
    before = git(repo, "rev-parse", "aidp/both")
    summary = await engine.run(["both"], base_from_deps=True)
    result = next(r for r in summary.results if r.slug == "both")
    assert result.status == Status.ERROR and result.error is not None
    assert "cannot start both from its dependencies" in result.error and "x.txt" in result.error
    assert git(repo, "rev-parse", "aidp/both") == before


async def test_auto_bound_says_what_it_chose(engine: Engine, repo: Path) -> None:
    write_config(repo, '[scheduler]\nmax_concurrent = "auto"\n[harness]\ncommand = ["true"]\n')
    await engine.create("a", "first")
    summary = await engine.run(["a"])
    assert summary.concurrency is not None and 1 <= summary.concurrency <= (os.cpu_count() or 1)
    assert summary.concurrency_note is not None
    assert summary.concurrency_note.startswith(f"auto: {summary.concurrency} ({os.cpu_count()} cores")


async def test_a_share_above_the_repository_bound_is_lowered_and_said(engine: Engine, repo: Path) -> None:
    write_config(repo, '[scheduler]\nmax_concurrent = 2\n[harness]\ncommand = ["true"]\n')
    await engine.create("a", "first")
    summary = await engine.run(["a"], max_concurrent=8)
    assert summary.concurrency == 2
    assert summary.concurrency_note == "--max-concurrent 8 lowered to the repository's bound 2"


def test_a_database_from_before_scheduling_is_upgraded_with_its_runs(repo: Path) -> None:
    """Migration 5 rebuilds `runs` (attempts are part of its key): a run recorded before it is
    still the workstream's last result, and the workstream runs again as attempt 1 of a new run."""
    scheduling = next(i for i, script in enumerate(MIGRATIONS) if "runs_v5" in script)
    path = repo / ".aidp" / "state.db"
    path.parent.mkdir()
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(SCHEMA)
    for script in MIGRATIONS[:scheduling]:
        db.executescript(script)
    db.execute(f"PRAGMA user_version = {scheduling}")
    git(repo, "worktree", "add", "-q", "-b", "aidp/x", str(repo / ".worktrees" / "x"))
    db.execute(
        "INSERT INTO workstreams (id, slug, task, status, branch, path, created_at, updated_at, last_run_id, command) "
        "VALUES ('abc', 'x', 'old work', 'failed', 'aidp/x', ?, '2026-01-01T00:00:00.000Z', "
        "'2026-01-01T00:00:02.000Z', 'run-1', '[\"true\"]')",
        (str(repo / ".worktrees" / "x"),),
    )
    db.execute(
        "INSERT INTO runs (run_id, slug, ws_id, status, exit_code, started_at, finished_at, duration_s) "
        "VALUES ('run-1', 'x', 'abc', 'failed', 3, '2026-01-01T00:00:01.000Z', '2026-01-01T00:00:02.000Z', 1.0)"
    )
    db.close()

    (listed,) = json.loads(cli(repo, "ws", "list", "--json").stdout)
    assert (listed["priority"], listed["after"]) == (0, [])
    assert listed["lastResult"]["exitCode"] == 3 and listed["lastResult"]["attempt"] == 1
    ran = json.loads(cli(repo, "ws", "run", "x", "--json").stdout)
    assert ran["completed"] == 1 and ran["results"][0]["attempt"] == 1
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert db.execute("SELECT run_id, status FROM runs ORDER BY started_at").fetchall() == [
            ("run-1", "failed"),
            (ran["runId"], "completed"),
        ]


async def test_a_cancel_during_a_back_off_ends_it_at_once(engine: Engine, repo: Path) -> None:
    write_config(repo, '[harness]\ncommand = ["false"]\nretries = 2\nretry_backoff_s = 600\n')
    await engine.create("flaky", "fails")
    run = await engine.start(["flaky"])
    await wait_until(
        lambda: run.jobs["flaky"].attempt == 2, what="the first attempt failed and the retry waits its back-off"
    )
    listed = await engine.get("flaky", changes=False)
    assert listed.status == Status.QUEUED and listed.current_run is not None
    assert listed.current_run.attempt == 2 and (listed.current_run.waiting or "").startswith("attempt 2/3 after a")
    assert await engine.cancel(["flaky"]) == ["flaky"]
    summary = await engine.wait(run)
    (result,) = summary.results
    assert (result.status, result.attempt, result.error) == (Status.CANCELLED, 2, "cancelled before attempt 2")
    assert (await engine.get("flaky", changes=False)).current_run is None
