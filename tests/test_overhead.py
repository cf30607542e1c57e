"""The per-workstream overhead cuts (issue 13) keep every record: group commit still answers each
transition only once it is durable and rolls a failing one back alone; children are reaped through
their pidfd (no thread per child) with the right exit status, and by a thread where pidfd_open
fails; the config is parsed again only when its file changed, but every edit still counts; the
environment marker found without cgroups matches whole entries only.
Real SQLite files, real git repositories, real processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import toml_list, write_config
from support import PYTHON

from aidp.engine import Engine, Status, procs
from aidp.engine.errors import ConfigError
from aidp.engine.harness import spawn
from aidp.engine.store import AsyncStore, Store, rough

pytestmark = pytest.mark.timeout(120)


def statuses(repo: Path) -> dict[str, str]:
    """What another process reads from the database file right now."""
    with sqlite3.connect(repo / ".aidp" / "state.db") as db:
        return dict(db.execute("SELECT slug, status FROM workstreams").fetchall())


async def test_transitions_queued_together_share_one_commit_and_fail_alone(
    engine: Engine, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for slug in ("a", "c"):
        await engine.create(slug, f"task {slug}", command=["true"])
    groups: list[int] = []
    Outcomes = list[tuple[object, Exception | None]]
    group: Callable[[Store, list[Callable[[], object]]], Outcomes] = Store.group

    def counted(store: Store, transitions: list[Callable[[], object]]) -> Outcomes:
        groups.append(len(transitions))
        return group(store, transitions)

    monkeypatch.setattr(Store, "group", counted)
    store = engine.db.store

    def half_written() -> None:
        with store._tx() as db:
            db.execute("UPDATE workstreams SET status = 'paused' WHERE slug = 'c'")
            db.execute("INSERT INTO no_such_table VALUES (1)")  # a real SQLite error, after a write

    gate = threading.Event()
    blocked = asyncio.ensure_future(engine.db.call(gate.wait))  # holds the store's thread: the writes queue
    writes = [
        asyncio.ensure_future(engine.db.write(store.set_paused, "a", True)),
        asyncio.ensure_future(engine.db.write(half_written)),
        asyncio.ensure_future(engine.db.write(store.note, "a", None, Status.PAUSED, "noted")),
    ]
    await asyncio.sleep(0)
    assert not any(w.done() for w in writes)
    gate.set()
    await blocked
    first = await writes[0]
    assert first == Status.PAUSED
    assert statuses(repo)["a"] == "paused"  # durable (another connection sees it) once answered
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        await writes[1]
    await writes[2]
    assert groups == [3]
    assert statuses(repo)["c"] != "paused"  # rolled back alone
    events = await engine.history("a")
    assert any(e.message == "noted" for e in events)


async def test_a_run_records_every_result_through_group_commit(engine: Engine, repo: Path) -> None:
    """Many short jobs ending together: every status recorded, every log kept, no claim left."""
    slugs = [f"w{i}" for i in range(16)]
    for i, slug in enumerate(slugs):
        code = "import sys; print('out', sys.argv[1]); sys.exit(int(sys.argv[2]))"
        await engine.create(slug, "t", command=[PYTHON, "-c", code, slug, str(int(i % 3 == 0))])
    summary = await engine.run(slugs, max_concurrent=8)
    recorded = statuses(repo)
    for i, slug in enumerate(slugs):
        want = "failed" if i % 3 == 0 else "completed"
        assert recorded[slug] == want, (slug, recorded[slug])
        log_path, text = await engine.log(slug)
        assert log_path is not None and f"out {slug}" in text
    assert summary.completed == len([s for i, s in enumerate(slugs) if i % 3])
    assert not await engine.db.call(engine.db.store.claims)


async def test_children_are_reaped_through_their_pidfd_with_their_exit_status(tmp_path: Path) -> None:
    log_fd = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        gate = tmp_path / "gate"
        wait_for_gate = f"import os, time, sys\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.01)\nsys.exit(3)"
        proc = await spawn([PYTHON, "-c", wait_for_gate], tmp_path, dict(os.environ), log_fd)
        proc.go()
        assert not [t for t in threading.enumerate() if t.name == f"waitpid-{proc.pid}"]  # no thread for it
        gate.touch()
        assert await proc.wait() == 3
        assert proc.returncode == 3
        killed = await spawn(["sleep", "30"], tmp_path, dict(os.environ), log_fd)
        killed.go()
        os.killpg(killed.pid, signal.SIGKILL)
        assert await killed.wait() == -9
    finally:
        os.close(log_fd)


def carrying(marker: bytes) -> list[int]:
    """Live processes whose environment holds `marker` (a zombie's reads empty)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
    return found


def our_zombies() -> list[int]:
    """Children of this process (any of its threads) that exited and were never reaped."""
    children = [
        int(pid) for task in Path("/proc/self/task").iterdir() for pid in (task / "children").read_text().split()
    ]
    return [pid for pid in children if (fields := procs._stat_fields(pid)) is not None and fields[0] == "Z"]


async def test_a_spawn_cancelled_while_its_thread_starts_the_child_kills_and_reaps_it(tmp_path: Path) -> None:
    """The child is started on a worker thread; a cancel that comes meanwhile must not leave it
    running (nobody would end it) nor unreaped."""
    marker = f"AIDP_TEST_MARK=cancelled-spawn-{os.getpid()}"
    env = {**os.environ, "AIDP_TEST_MARK": marker.split("=", 1)[1]}
    log_fd = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        starting = asyncio.create_task(spawn(["sleep", "30"], tmp_path, env, log_fd))
        await asyncio.sleep(0)  # the task now waits for the thread
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting
        assert not carrying(marker.encode())
        assert not our_zombies()
    finally:
        os.close(log_fd)


async def test_without_pidfd_a_thread_reaps_the_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_pidfd(pid: int, flags: int = 0) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    proc = await spawn(["sh", "-c", "exit 5"], tmp_path, dict(os.environ), 1)
    proc.go()
    assert await proc.wait() == 5


async def test_expected_durations_come_from_the_latest_runs_only(engine: Engine, repo: Path, tmp_path: Path) -> None:
    """History is read per workstream through its index (not a window over every run): still each
    one's own latest `history_runs` completed runs, else its command's latest by any workstream."""
    seconds = tmp_path / "seconds"
    write_config(repo, "[scheduler]\nhistory_runs = 2\n")
    command = ["sh", "-c", f'sleep "$(cat {seconds})"']
    await engine.create("a", "runs slow, then fast", command=command)

    async def expected() -> dict[str, float | None]:
        return {ws.slug: ws.expected_s for ws in await engine.workstreams(changes=False)}

    seconds.write_text("3")
    assert (await engine.run(["a"])).ok
    slow = (await expected())["a"]
    assert slow is not None and slow >= 3
    seconds.write_text("0")
    for _ in range(2):
        assert (await engine.run(["a"])).ok
    await engine.create("b", "never ran, same command", command=command)
    await engine.create("c", "never ran, its own command", command=["true"])
    now = await expected()
    assert now["a"] is not None and now["a"] < 3  # the slow run is no longer among the latest 2
    assert now["b"] == now["a"]  # the command's latest 2, whoever ran them
    assert now["c"] is None


def test_forecasts_are_rough() -> None:
    """To two significant figures, a tenth of a second below ten: what a face shows, so a forecast
    moves (and with it the records of every workstream that borrows it) only when it shows."""
    cases = {0.04: 0.0, 0.26: 0.3, 3.04: 3.0, 9.96: 10.0, 42.4: 42.0, 137.0: 140.0, 1234.5: 1200.0, 86399.0: 86000.0}
    assert {seconds: rough(seconds) for seconds in cases} == cases


async def test_finding_runs_in_flight_reads_no_finished_run(engine: Engine, repo: Path) -> None:
    """A server polls for other processes' runs five times a second, forever: the work must follow
    the claims, not every run ever recorded (SQLite's planner scanned them all)."""
    store = engine.db.store

    def steps() -> int:
        """SQLite virtual machine instructions one `runs_in_flight` takes (a count, not a time)."""
        count = 0

        def step() -> int:
            nonlocal count
            count += 1
            return 0

        store._db.set_progress_handler(step, 1)
        try:
            store.runs_in_flight()
        finally:
            store._db.set_progress_handler(None, 1)
        return count

    slugs = [f"ws-{i}" for i in range(30)]
    for slug in slugs:
        await engine.create(slug, "a task", command=["true"])
    before = await engine.db.call(steps)
    for _ in range(2):
        assert (await engine.run(slugs, max_concurrent=8)).completed == len(slugs)
    assert await engine.db.call(steps) == before


async def test_the_config_is_read_again_after_every_edit(engine: Engine, repo: Path) -> None:
    assert engine.config().harness.command is None
    path = write_config(repo, f"[harness]\ncommand = {toml_list(['echo', 'one'])}\n")
    assert engine.config().harness.command == ["echo", "one"]
    assert engine.config() is not engine.config()  # changed just now: parsed each time (coarse file times)
    long_ago = time.time_ns() - 60 * 10**9
    os.utime(path, ns=(long_ago, long_ago))
    first = engine.config()
    assert engine.config() is first  # unchanged for a while: not parsed again
    write_config(repo, f"[harness]\ncommand = {toml_list(['echo', 'two'])}\n")  # same size, same inode
    assert engine.config().harness.command == ["echo", "two"]
    write_config(repo, "[harness\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        engine.config()
    (repo / ".aidp" / "config.toml").unlink()
    assert engine.config().harness.command is None


async def test_keep_runs_forgets_older_runs_rows_events_and_logs(engine: Engine, repo: Path) -> None:
    write_config(repo, "[state]\nkeep_runs = 2\n")
    await engine.create("w", "t", command=["echo", "hello"])
    await engine.create("other", "t", command=["echo", "hi"])
    summaries = [await engine.run(["w"]) for _ in range(4)]
    run_ids = [s.run_id for s in summaries]
    await engine.run(["other"])
    with sqlite3.connect(repo / ".aidp" / "state.db") as db:
        kept = {r for (r,) in db.execute("SELECT DISTINCT run_id FROM runs WHERE slug = 'w'")}
        runs_of_events = "SELECT DISTINCT run_id FROM events WHERE slug = 'w' AND run_id IS NOT NULL"
        evented = {r for (r,) in db.execute(runs_of_events)}
        other = db.execute("SELECT COUNT(*) FROM runs WHERE slug = 'other'").fetchone()[0]
    assert kept == set(run_ids[2:])
    assert evented == set(run_ids[2:])
    assert other == 1
    logs = repo / ".aidp" / "logs" / "w"
    for run_id in run_ids[:2]:
        assert not list(logs.glob(f"{run_id}.*"))  # log, task and progress files gone
    for run_id in run_ids[2:]:
        assert (logs / f"{run_id}.log").read_text() == "hello\n"
    events = await engine.history("w", limit=100)
    assert "created" in [e.message for e in events]  # the workstream's own events (no run) stay
    assert (await engine.get("w")).status == Status.COMPLETED


async def test_keep_runs_must_be_at_least_one(engine: Engine, repo: Path) -> None:
    write_config(repo, "[state]\nkeep_runs = 0\n")
    with pytest.raises(ConfigError, match="keep_runs"):
        engine.config()


async def test_a_write_after_close_is_refused_every_time(tmp_path: Path) -> None:
    db = AsyncStore(Store(tmp_path / "state.db"))
    db.close()
    for _ in range(2):  # the refused one is not left queued for a thread that will never come
        with pytest.raises(RuntimeError):
            await db.write(db.store.schedule_changes)


async def test_marked_groups_match_whole_environment_entries_only(tmp_path: Path) -> None:
    """Without cgroups, what left a harness's group is found by its environment marker, searched
    unparsed: a run id or slug that only starts like the marker (or ends like it) is not ours."""
    started = []
    for run_id, slug in [("run-1", "sl"), ("run-1", "sl2"), ("xrun-1", "sl")]:
        env = {**os.environ, "AIDP_RUN_ID": run_id, "AIDP_SLUG": slug}
        proc = await asyncio.create_subprocess_exec("sleep", "30", env=env, start_new_session=True)
        started.append(proc)
    try:
        ours = await asyncio.to_thread(procs.marked_groups, "run-1", "sl")
        assert ours & {p.pid for p in started} == {started[0].pid}
        assert await asyncio.to_thread(procs.marked_groups, "run-", "sl") & {p.pid for p in started} == set()
    finally:
        for proc in started:
            proc.kill()
            await proc.wait()
