"""Cancel, timeout and recovery, end to end: afterwards nothing of a harness's process group is
alive (grandchildren included), and the status is recorded in the summary, the workstream and its
events. Also across processes: a second aidp process cannot start a claimed workstream, can
cancel it, and corrects what a SIGKILLed one left behind."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import read_int, wait_file, wait_status, write_config
from support import group_members, pid_alive, wait_until

from aidp.engine import Engine, Status
from aidp.engine.errors import Busy, InvalidInput
from aidp.engine.executor import Flag, _until

pytestmark = pytest.mark.timeout(120)

Driver = Callable[..., "subprocess.Popen[str]"]

# A harness with a grandchild: records its group (= its own pid: it leads its session) and the
# grandchild's pid, then says "started". With `ignore-term` it and the grandchild (which inherits
# the disposition) ignore SIGTERM, so only the SIGKILL after the grace period ends them.
TREE = """
d=$1; slug=$2; mode=$3
if [ "$mode" = ignore-term ]; then trap '' TERM; fi
sleep 300 &
echo $! > "$d/$slug.gc"
echo $$ > "$d/$slug.pgid"
touch "$d/$slug.started"
while :; do wait; done
"""


def tree_command(markers: Path, mode: str = "plain") -> list[str]:
    return ["sh", "-c", TREE, "tree", str(markers), "{slug}", mode]


def assert_all_gone(markers: Path, slug: str) -> None:
    """No live process of the harness's group and no grandchild (a zombie runs nothing)."""
    pgid, grandchild = read_int(markers / f"{slug}.pgid"), read_int(markers / f"{slug}.gc")
    assert group_members(pgid) == [], f"{slug}: group {pgid} still has {group_members(pgid)}"
    assert not pid_alive(grandchild), f"{slug}: grandchild {grandchild} is alive"


@pytest.mark.parametrize("mode", ["plain", "ignore-term"])
async def test_cancel_running_ends_the_whole_group(engine: Engine, repo: Path, markers: Path, mode: str) -> None:
    write_config(repo, "[harness]\ngrace_s = 0.3\n")
    await engine.create("victim", "t", command=tree_command(markers, mode))
    await engine.create("bystander", "t", command=tree_command(markers))
    run = await engine.start(["victim", "bystander"])
    await wait_file(markers / "victim.started")
    await wait_file(markers / "bystander.started")
    grandchild = read_int(markers / "victim.gc")
    assert pid_alive(grandchild)

    assert await engine.cancel(["victim"]) == ["victim"]
    await wait_status(engine, "victim", Status.CANCELLED)
    assert not pid_alive(grandchild)
    # The other workstream of the same run is untouched until it is cancelled in turn.
    assert (await engine.get("bystander")).status == Status.RUNNING
    assert pid_alive(read_int(markers / "bystander.gc"))
    assert await engine.cancel(run_id=run.run_id) == ["bystander"]
    summary = await engine.wait(run)

    assert (summary.total, summary.cancelled) == (2, 2)
    for slug in ("victim", "bystander"):
        assert_all_gone(markers, slug)
        result = next(r for r in summary.results if r.slug == slug)
        assert result.status == Status.CANCELLED and result.error == "cancelled"
        ws = await engine.get(slug)
        assert ws.status == Status.CANCELLED
        assert ws.last_result is not None and ws.last_result.status == Status.CANCELLED
        history = await engine.history(slug)
        assert [e.status for e in history[-3:]] == [Status.QUEUED, Status.RUNNING, Status.CANCELLED]
        assert all(e.run_id == run.run_id for e in history[-3:])
    if mode == "ignore-term":
        # Only SIGKILL could end it.
        victim = next(r for r in summary.results if r.slug == "victim")
        assert victim.exit_code == -signal.SIGKILL
    # Cancelling what has ended is a no-op that says so.
    assert await engine.cancel(["victim"]) == []


@pytest.mark.parametrize("where", ["option", "config"])
async def test_timeout_fails_with_timed_out_and_ends_the_group(
    engine: Engine, repo: Path, markers: Path, where: str
) -> None:
    await engine.create("slow", "t", command=tree_command(markers, "ignore-term"))
    if where == "config":
        write_config(repo, "[harness]\ngrace_s = 0.2\ntimeout_s = 2\n")
        summary = await engine.run(["slow"])
    else:
        write_config(repo, "[harness]\ngrace_s = 0.2\ntimeout_s = 600\n")
        summary = await engine.run(["slow"], timeout_s=2)

    assert (markers / "slow.started").exists(), "the harness should have started within the timeout"
    assert_all_gone(markers, "slow")
    result = summary.results[0]
    assert (result.status, summary.failed) == (Status.FAILED, 1)
    assert result.error is not None and "timed out after 2 s" in result.error
    assert "killed by SIGKILL" in result.error
    ws = await engine.get("slow")
    assert ws.status == Status.FAILED
    assert ws.last_result is not None and ws.last_result.error == result.error
    last = (await engine.history("slow"))[-1]
    assert last.status == Status.FAILED and last.message is not None and "timed out" in last.message


async def test_cancelling_the_waiter_cancels_the_run(engine: Engine, markers: Path) -> None:
    await engine.create("w", "t", command=tree_command(markers))
    waiter = asyncio.create_task(engine.run(["w"]))
    await wait_file(markers / "w.started")
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert_all_gone(markers, "w")
    assert (await engine.get("w")).status == Status.CANCELLED


async def test_close_cancels_and_records(repo: Path, markers: Path) -> None:
    engine = await Engine.open(repo)
    await engine.create("c", "t", command=tree_command(markers))
    await engine.start(["c"])
    await wait_file(markers / "c.started")
    await engine.close()
    assert_all_gone(markers, "c")
    again = await Engine.open(repo)
    try:
        assert (await again.get("c")).status == Status.CANCELLED
    finally:
        await again.close()


async def test_never_twice_at_once_in_one_process(engine: Engine, repo: Path, markers: Path) -> None:
    await engine.create("once", "t", command=tree_command(markers))
    await engine.create("other", "t", command=["sh", "-c", f"touch {markers}/other.ran"])
    run = await engine.start(["once"])
    await wait_file(markers / "once.started")
    with pytest.raises(Busy, match="already running: once") as info:
        await engine.start(["other", "once"])
    assert info.value.running == ["once"]
    second = await Engine.open(repo)
    try:
        with pytest.raises(Busy, match="once"):
            await second.start(["once"])
        with pytest.raises(Busy, match="once"):
            await second.start(["other", "once"])
    finally:
        await second.close()
    assert not (markers / "other.ran").exists()
    assert (await engine.get("other")).status == Status.ACTIVE
    assert (await engine.get("other")).last_result is None
    assert await engine.log("other") == (None, "")
    assert len(group_members(read_int(markers / "once.pgid"))) >= 1  # the first run is unaffected
    await engine.cancel(["once"])
    assert (await engine.wait(run)).cancelled == 1


def _summary(proc: subprocess.Popen[str]) -> dict[str, object]:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert isinstance(summary, dict)
    return summary


async def test_never_twice_at_once_across_processes(engine: Engine, repo: Path, markers: Path, driver: Driver) -> None:
    release = markers / "release"
    await engine.create(
        "held",
        "t",
        command=["sh", "-c", f"touch {markers}/held.started; while [ ! -e {release} ]; do sleep 0.05; done"],
    )
    await engine.create("good", "t", command=["sh", "-c", f"touch {markers}/good.ran"])
    proc = driver(repo, "held")
    await wait_file(markers / "held.started")

    with pytest.raises(Busy) as info:
        await engine.start(["good", "held"])
    assert info.value.running == ["held"] and "held" in str(info.value)
    with pytest.raises(Busy):
        await engine.remove("held", force=True)
    assert not (markers / "good.ran").exists()
    assert (await engine.get("good")).status == Status.ACTIVE
    await wait_status(engine, "held", Status.RUNNING)  # marked once the spawn returned
    # Opening an engine meanwhile corrects nothing: the owner is alive.
    fresh = await Engine.open(repo)
    try:
        assert await fresh.recover() == []
        assert (await fresh.get("held")).status == Status.RUNNING
    finally:
        await fresh.close()
    # run_all in this process skips what the other process runs.
    summary = await engine.run_all()
    assert [r.slug for r in summary.results] == ["good"]

    release.touch()
    out = await asyncio.to_thread(_summary, proc)
    assert out["completed"] == 1 and out["total"] == 1
    assert (await engine.get("held")).status == Status.COMPLETED


async def test_cancel_from_another_process(engine: Engine, repo: Path, markers: Path, driver: Driver) -> None:
    write_config(repo, "[harness]\ngrace_s = 0.3\n")
    await engine.create("remote", "t", command=tree_command(markers, "ignore-term"))
    proc = driver(repo, "remote")
    await wait_file(markers / "remote.started")

    assert await engine.cancel(["remote"]) == ["remote"]
    out = await asyncio.to_thread(_summary, proc)
    assert out["cancelled"] == 1
    results = out["results"]
    assert isinstance(results, list) and results[0]["status"] == "cancelled"
    assert_all_gone(markers, "remote")
    ws = await engine.get("remote")
    assert ws.status == Status.CANCELLED
    assert (await engine.history("remote"))[-1].status == Status.CANCELLED


@pytest.mark.parametrize("owner_kind", ["driver", "cli"])
async def test_sigkilled_owner_is_corrected_by_the_next_open(
    repo: Path, markers: Path, driver: Driver, owner_kind: str
) -> None:
    write_config(repo, "[harness]\ngrace_s = 0.3\n")
    setup = await Engine.open(repo)
    try:
        await setup.create("a", "t", command=tree_command(markers, "ignore-term"))
        await setup.create("b", "t", command=tree_command(markers))
        await setup.create("c", "t", command=tree_command(markers))
    finally:
        await setup.close()
    # max_concurrent 3 (the default): all three run at once.
    proc = driver(repo, "a", "b", "c", cli=owner_kind == "cli")
    for slug in ("a", "b", "c"):
        await wait_file(markers / f"{slug}.started")
    owner = proc.pid
    os.kill(owner, signal.SIGKILL)
    await asyncio.to_thread(proc.wait, 30)
    for slug in ("a", "b", "c"):  # the owner is gone but its harnesses are not
        assert pid_alive(read_int(markers / f"{slug}.gc"))

    engine = await Engine.open(repo)
    try:
        for slug in ("a", "b", "c"):
            assert_all_gone(markers, slug)
            ws = await engine.get(slug)
            assert ws.status == Status.CANCELLED
            last = (await engine.history(slug))[-1]
            assert last.status == Status.CANCELLED
            assert last.message is not None and last.message.startswith("interrupted")
            assert f"pid {owner}" in last.message
            assert ws.last_result is not None and ws.last_result.error == last.message
        # The claims are released: the workstreams run again.
        assert await engine.recover() == []
        write_config(repo, '[harness]\ncommand = ["true"]\n')
        for slug in ("a", "b", "c"):
            await engine.remove(slug, force=True)
            await engine.create(slug, "again")
        summary = await engine.run(["a", "b", "c"])
        assert summary.ok
    finally:
        await engine.close()


async def test_cancel_a_queued_workstream(engine: Engine, markers: Path) -> None:
    await engine.create("first", "t", command=tree_command(markers))
    await engine.create("second", "t", command=tree_command(markers))
    run = await engine.start(["first", "second"], max_concurrent=1)
    await wait_file(markers / "first.started")
    assert (await engine.get("second")).status == Status.QUEUED
    assert await engine.cancel(["second"]) == ["second"]
    await engine.cancel(["first"])
    summary = await engine.wait(run)
    by_slug = {r.slug: r for r in summary.results}
    assert by_slug["second"].status == Status.CANCELLED
    assert by_slug["second"].error == "cancelled before it started"
    assert by_slug["second"].log_path is None
    assert not (markers / "second.started").exists()
    assert (await engine.get("second")).status == Status.CANCELLED
    assert_all_gone(markers, "first")


async def test_wait_on_a_run_of_another_engine_is_refused(engine: Engine, repo: Path) -> None:
    await engine.create("x", "t", command=["true"])
    run = await engine.start(["x"])
    other = await Engine.open(repo)
    try:
        with pytest.raises(InvalidInput, match="not running in this process"):
            await other.wait(run)
    finally:
        await other.close()
    assert (await engine.wait(run)).ok


@pytest.mark.parametrize("first", ["list", "pause"])
async def test_an_engine_already_open_corrects_what_a_sigkilled_owner_left(
    repo: Path, markers: Path, driver: Driver, first: str
) -> None:
    """A long-lived engine (the server's) does not wait for a restart: listing or running
    corrects the dead owner's workstreams and ends its process groups."""
    write_config(repo, "[harness]\ngrace_s = 0.3\n")
    engine = await Engine.open(repo)
    try:
        await engine.create("a", "t", command=tree_command(markers))
        proc = driver(repo, "a")
        await wait_file(markers / "a.started")
        assert (await engine.get("a")).status == Status.RUNNING
        os.kill(proc.pid, signal.SIGKILL)
        await asyncio.to_thread(proc.wait, 30)

        if first == "list":
            await engine.workstreams()
            await engine.settled()  # a harness slow to end is stopped in the background
            listed = {ws.slug: ws.status for ws in await engine.workstreams()}
            assert listed["a"] == Status.CANCELLED
        else:  # pausing is not refused as "already running"
            assert (await engine.set_paused("a", True)).status == Status.PAUSED
            assert [e.status for e in await engine.history("a")][-2:] == [Status.CANCELLED, Status.PAUSED]
        assert_all_gone(markers, "a")
        await engine.remove("a", force=True)
        await engine.create("a", "again", command=["true"])
        assert (await engine.run(["a"])).ok
    finally:
        await engine.close()


async def test_sigkilled_owner_with_a_queued_workstream_and_an_orphaned_grandchild(
    repo: Path, markers: Path, driver: Driver
) -> None:
    """`lead` exits on its own after the owner died, leaving only its grandchild in the group (found
    by its environment marker); `waiting` was still queued behind it (max_concurrent = 1)."""
    release = markers / "release"
    lead = f"""
        sleep 300 &
        echo $! > {markers}/lead.gc
        echo $$ > {markers}/lead.pgid
        touch {markers}/lead.started
        while [ ! -e {release} ]; do sleep 0.05; done
        touch {markers}/lead.exited
    """
    write_config(repo, "[harness]\ngrace_s = 0.3\nmax_concurrent = 1\n")
    setup = await Engine.open(repo)
    try:
        await setup.create("lead", "t", command=["sh", "-c", lead])
        await setup.create("waiting", "t", command=["sh", "-c", f"touch {markers}/waiting.ran"])
    finally:
        await setup.close()
    proc = driver(repo, "lead", "waiting")
    await wait_file(markers / "lead.started")
    os.kill(proc.pid, signal.SIGKILL)
    await asyncio.to_thread(proc.wait, 30)
    release.touch()
    await wait_file(markers / "lead.exited")
    pgid = read_int(markers / "lead.pgid")
    await wait_until(lambda: not pid_alive(pgid), what="the harness to exit")
    assert pid_alive(read_int(markers / "lead.gc"))

    engine = await Engine.open(repo)
    try:
        assert_all_gone(markers, "lead")
        for slug in ("lead", "waiting"):
            assert (await engine.get(slug)).status == Status.CANCELLED
            message = (await engine.history(slug))[-1].message
            assert message is not None and message.startswith("interrupted")
        assert not (markers / "waiting.ran").exists()
    finally:
        await engine.close()


async def test_an_engine_in_the_same_process_does_not_steal_live_claims(
    engine: Engine, repo: Path, markers: Path
) -> None:
    await engine.create("mine", "t", command=tree_command(markers))
    run = await engine.start(["mine"])
    await wait_file(markers / "mine.started")
    other = await Engine.open(repo)
    try:
        assert await other.recover() == []
        assert pid_alive(read_int(markers / "mine.gc"))
        # Another engine of the same process cancels through the database flag.
        assert await other.cancel(["mine"]) == ["mine"]
    finally:
        await other.close()
    summary = await engine.wait(run)
    assert summary.cancelled == 1
    assert_all_gone(markers, "mine")


async def test_wait_after_the_run_ended_returns_its_summary(engine: Engine) -> None:
    """A caller may await something else between start and wait (the server asks the client for a
    progress token): the run may have ended meanwhile, and wait still gives its summary."""
    await engine.create("quick", "t", command=["true"])
    run = await engine.start(["quick"])
    await wait_status(engine, "quick", Status.COMPLETED)
    await wait_until(lambda: not engine.active_runs(), what="the run to end")
    summary = await engine.wait(run)
    assert summary.run_id == run.run_id and summary.ok
    assert await engine.wait(run) == summary


async def test_two_processes_racing_for_one_workstream(
    engine: Engine, repo: Path, markers: Path, driver: Driver
) -> None:
    release = markers / "release"
    await engine.create(
        "race",
        "t",
        command=["sh", "-c", f"echo $$ >> {markers}/race.runs; while [ ! -e {release} ]; do sleep 0.05; done"],
    )
    first, second = driver(repo, "race"), driver(repo, "race")
    await wait_until(lambda: first.poll() is not None or second.poll() is not None, what="one driver to give up")
    loser, winner = (first, second) if first.poll() is not None else (second, first)
    _, err = await asyncio.to_thread(loser.communicate, timeout=30)
    assert loser.returncode != 0 and "Busy" in err and "already running: race" in err
    release.touch()
    out = await asyncio.to_thread(_summary, winner)
    assert out["completed"] == 1
    assert len((markers / "race.runs").read_text().splitlines()) == 1


async def test_two_starts_at_once_in_one_process(engine: Engine, markers: Path) -> None:
    await engine.create("same", "t", command=tree_command(markers))
    outcomes = await asyncio.gather(engine.start(["same"]), engine.start(["same"]), return_exceptions=True)
    runs = [o for o in outcomes if not isinstance(o, BaseException)]
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(runs) == 1 and len(errors) == 1 and isinstance(errors[0], Busy)
    await wait_file(markers / "same.started")
    await engine.cancel(["same"])
    assert (await engine.wait(runs[0])).cancelled == 1


async def test_owner_loop_stopped_without_close_records_cancelled(
    engine: Engine, repo: Path, markers: Path, driver: Driver
) -> None:
    """The owner's event loop ends with the run in flight (neither wait nor close): the engine
    ends each process group and records `cancelled` before the process exits."""
    await engine.create("left", "t", command=tree_command(markers))
    proc = driver(repo, "left", env={"DRIVER_ABANDON_WHEN": str(markers / "left.started")})
    _, err = await asyncio.to_thread(proc.communicate, timeout=60)
    assert proc.returncode == 0, err
    assert_all_gone(markers, "left")
    ws = await engine.get("left")
    assert ws.status == Status.CANCELLED
    assert ws.last_result is not None and ws.last_result.error == "cancelled (aidp was stopped)"
    assert await engine.recover() == []  # nothing was left to correct


async def test_a_wait_for_exit_or_cancel_never_ends_the_exit_it_shares() -> None:
    """A harness's wait ends at its exit, its cancel or its timeout; when aidp is stopped the
    waiting task is cancelled, and the harness's exit (which the kill then waits for) must stay
    pending: a cancelled exit would make that kill raise instead of reaping."""
    loop = asyncio.get_running_loop()
    exit_ = loop.create_future()
    flag = Flag()
    waiting = asyncio.create_task(_until(exit_, flag, None))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert not exit_.cancelled() and not exit_.done()

    waiting = asyncio.create_task(_until(exit_, flag, None))
    await asyncio.sleep(0)
    flag.set()
    await asyncio.wait_for(waiting, 5)  # the cancel wakes it, the exit still pending
    assert not exit_.done()

    await asyncio.wait_for(_until(exit_, Flag(), 0.01), 5)  # the timeout wakes it
    assert not exit_.done()
    exit_.set_result(0)
    await asyncio.wait_for(_until(exit_, Flag(), None), 5)  # an exit already there: no wait
