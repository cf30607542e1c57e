"""A run started from a terminal (`aidp ws run` in another process) seen through `aidp serve`: its
output arrives as `aidp/wsOutput` while it runs, its statuses as `aidp/wsStatus` (as the server's
own runs' do), and its start time is on the wire, so a client that noticed it late counts the
elapsed time from when it really started. The server, the CLI and the harness are real processes;
the client speaks JSON-RPC over the server's real stdio. The store's part (which events are another
process's) is checked on a real SQLite file through two connections."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import toml_list, write_config
from server_helpers import WS_OUTPUT, WS_STATUS, AidpClient, initialize_params, lsp_session, server_command
from support import cli, wait_until

from aidp.engine import Engine, Status
from aidp.engine.events import EngineEvent, ListChanged, StatusSeen
from aidp.engine.model import Progress
from aidp.engine.store import Store

pytestmark = pytest.mark.timeout(150)


def gated(gate: Path) -> list[str]:
    """Says it started, waits until the test creates `gate`, says it was released."""
    return ["sh", "-c", f'echo started; while [ ! -e "{gate}" ]; do sleep 0.05; done; echo released']


@pytest.fixture
async def client(repo: Path, tmp_path: Path) -> AsyncIterator[AidpClient]:
    write_config(repo, f"[harness]\ngrace_s = 0.5\ncommand = {toml_list(['true'])}\n")
    async with lsp_session(server_command(repo), tmp_path, initialize_params()) as session:
        yield session


def output(client: AidpClient, slug: str) -> list[dict[str, Any]]:
    return [n for n in client.of(WS_OUTPUT) if n["slug"] == slug]


async def test_a_terminals_run_reaches_the_client_live_with_its_start_time(
    client: AidpClient, repo: Path, markers: Path, driver: Callable[..., Any]
) -> None:
    gate = markers / "gate"
    await client.call("aidp/wsNew", {"slug": "term", "task": "from a terminal", "command": gated(gate)})
    cli = driver(repo, "term", cli=True)

    # Live: the first line arrives while the harness still waits for the gate.
    await wait_until(lambda: "started" in "".join(n["text"] for n in output(client, "term")), what="live output")
    in_flight = (await client.workstreams())["term"]
    assert in_flight["status"] == "running"
    current = in_flight["currentRun"]
    assert current is not None and current["startedAt"] is not None

    gate.touch()
    stdout, stderr = await asyncio.to_thread(cli.communicate, timeout=60)
    assert cli.returncode == 0, stderr
    result = json.loads(stdout)["results"][0]
    # The client was told the run's own start, not when it noticed the run.
    assert (current["runId"], current["startedAt"]) == (json.loads(stdout)["runId"], result["startedAt"])

    # Every byte of the log, once, in order, under the run's id: nothing lost after the run ended.
    log = Path(result["logPath"]).read_text()
    assert log == "started\nreleased\n"
    await wait_until(lambda: "".join(n["text"] for n in output(client, "term")) == log, what="the whole log")
    assert {n["runId"] for n in output(client, "term")} == {current["runId"]}
    assert (await client.workstreams())["term"]["currentRun"] is None


async def test_the_servers_own_run_says_when_it_started(client: AidpClient, markers: Path) -> None:
    gate = markers / "gate"
    await client.call("aidp/wsNew", {"slug": "own", "task": "here", "command": gated(gate)})
    run = client.start_call("aidp/wsRun", {"slugs": ["own"]})
    await wait_until(lambda: any(n["status"] == "running" for n in client.statuses("own")), what="running")
    running = next(n for n in client.statuses("own") if n["status"] == "running")
    listed = (await client.workstreams())["own"]["currentRun"]
    gate.touch()
    result = (await run)["results"][0]

    assert running["startedAt"] == listed["startedAt"] == result["startedAt"]
    assert listed["runId"] == running["runId"]
    assert [n["startedAt"] for n in client.statuses("own") if n["status"] != "running"] == [None, None]
    assert not any(n["elsewhere"] for n in client.statuses("own"))
    # Its output is sent once: the follower leaves this server's own runs to the run itself.
    assert "".join(n["text"] for n in output(client, "own")) == "started\nreleased\n"


async def test_a_terminals_run_is_told_as_statuses_its_end_after_its_output(
    client: AidpClient, repo: Path, markers: Path, driver: Callable[..., Any]
) -> None:
    gate = markers / "gate"
    await client.call("aidp/wsNew", {"slug": "told", "task": "from a terminal", "command": gated(gate)})
    cli = driver(repo, "told", cli=True)
    # Told running while the harness still waits for the gate, with the run's own id and start.
    await wait_until(lambda: any(n["status"] == "running" for n in client.statuses("told")), what="told running")
    running = next(n for n in client.statuses("told") if n["status"] == "running")
    gate.touch()
    stdout, stderr = await asyncio.to_thread(cli.communicate, timeout=60)
    assert cli.returncode == 0, stderr
    summary = json.loads(stdout)
    result = summary["results"][0]
    assert (running["runId"], running["startedAt"]) == (summary["runId"], result["startedAt"])
    assert running["elsewhere"] is True

    await wait_until(lambda: client.statuses("told")[-1]["status"] == "completed", what="told completed")
    told = client.statuses("told")
    final = told[-1]
    assert (final["runId"], final["exitCode"], final["durationS"]) == (summary["runId"], 0, result["durationS"])
    assert [n["status"] for n in told].count("completed") == 1
    assert all(n["elsewhere"] for n in told if n["runId"] == summary["runId"])
    # Its whole output went out before its end was told.
    order = [(m, params) for m, params in client.notes if params.get("slug") == "told"]
    last_output = max(i for i, (m, _) in enumerate(order) if m == WS_OUTPUT)
    ended = next(i for i, (m, params) in enumerate(order) if m == WS_STATUS and params["status"] == "completed")
    assert last_output < ended
    assert "".join(n["text"] for n in output(client, "told")) == "started\nreleased\n"


async def test_a_terminals_run_that_ends_between_two_looks_is_told_as_it_ended(
    client: AidpClient, repo: Path, driver: Callable[..., Any]
) -> None:
    await client.call("aidp/wsNew", {"slug": "quick", "task": "t", "command": ["sh", "-c", "exit 3"]})
    cli = driver(repo, "quick", cli=True)
    stdout, _ = await asyncio.to_thread(cli.communicate, timeout=60)
    summary = json.loads(stdout)
    await wait_until(lambda: any(n["status"] == "failed" for n in client.statuses("quick")), what="told failed")
    told = client.statuses("quick")
    assert told[-1]["status"] == "failed"
    assert (told[-1]["runId"], told[-1]["exitCode"]) == (summary["runId"], 3)
    assert [n["status"] for n in told].count("failed") == 1


async def test_transitions_are_the_run_events_of_other_connections_only(engine: Engine) -> None:
    """Two connections to one state file stand for a server and a terminal's aidp: the server is
    told the terminal's run events, never its own, nor events of no run."""
    await engine.create("a", "t", command=["true"])
    server, terminal = Store(engine.db.store.path), Store(engine.db.store.path)
    try:
        assert server.transitions() == []  # the first call marks where to start
        terminal.note("a", "r1", Status.RUNNING, "pid 1")
        server.note("a", "own", Status.COMPLETED, "the server's own")
        terminal.set_paused("a", True)  # an event of no run
        told = server.transitions()
        assert [(t.slug, t.run_id, t.status) for t in told] == [("a", "r1", Status.RUNNING)]
        server.note("b", "own2", Status.RUNNING, "the server's own, while nobody else wrote")
        assert server.transitions() == []

        # An event the server wrote and rolled back gave its id back; the terminal's next event
        # takes it, and is told.
        with pytest.raises(RuntimeError), server._tx():
            server._event("b", "rolled-back", Status.FAILED, None, "now")
            rolled_back = server._db.execute("SELECT max(id) FROM events").fetchone()[0]
            raise RuntimeError
        terminal.note("b", "r2", Status.FAILED, "exit 1")
        reused = terminal._db.execute("SELECT max(id) FROM events").fetchone()[0]
        assert reused == rolled_back
        assert [(t.event_id, t.run_id) for t in server.transitions()] == [(reused, "r2")]
    finally:
        server.close()
        terminal.close()


async def test_a_terminals_run_is_no_list_change_but_its_new_workstream_is(
    engine: Engine, repo: Path, markers: Path, driver: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`watch_others` says `ListChanged` (a client fetches the whole list) only for what no run's
    status tells: a terminal's run reaches the server as statuses alone, a workstream the terminal
    creates as a list change."""
    gate = markers / "gate"
    await engine.create("term", "t", command=gated(gate))
    events: list[EngineEvent] = []
    engine.events.subscribe(events.append)
    looks = 0
    check_state = engine.check_state

    async def counted() -> None:  # each look of the watch begins with it
        nonlocal looks
        looks += 1
        await check_state()

    def seen(status: Status) -> bool:
        return any(isinstance(e, StatusSeen) and e.change.status == status for e in events)

    monkeypatch.setattr(engine, "check_state", counted)
    watch = asyncio.create_task(engine.watch_others(interval_s=0.05))
    try:
        await wait_until(lambda: looks >= 1, what="the watch's first look")
        run = driver(repo, "term", cli=True)
        await wait_until(lambda: seen(Status.RUNNING), what="told running")
        gate.touch()
        _, stderr = await asyncio.to_thread(run.communicate, timeout=60)
        assert run.returncode == 0, stderr
        await wait_until(lambda: seen(Status.COMPLETED), what="told completed")
        after = looks
        await wait_until(lambda: looks >= after + 2, what="a whole look after the run's last commit")
        assert not [e for e in events if isinstance(e, ListChanged)]

        made = await asyncio.to_thread(cli, repo, "ws", "new", "other", "a task")
        assert made.returncode == 0, made.stderr
        await wait_until(lambda: any(isinstance(e, ListChanged) for e in events), what="its list change")
    finally:
        watch.cancel()
        await asyncio.wait({watch})


async def test_what_a_terminals_queued_run_waits_for_is_told(
    client: AidpClient, repo: Path, markers: Path, driver: Callable[..., Any]
) -> None:
    """Its owner stores it on the claim without an event: the follower tells it as the owner's
    clients get it, a `queued` status with `waiting`, and then the run's start."""
    gate = markers / "gate"
    await client.call("aidp/wsNew", {"slug": "first", "task": "t", "command": gated(gate)})
    await client.call("aidp/wsNew", {"slug": "second", "task": "t", "command": ["true"], "after": ["first"]})
    run = driver(repo, "first", "second", cli=True)
    await wait_until(
        lambda: any(n["waiting"] == "waiting for first" for n in client.statuses("second")), what="told waiting"
    )
    waits = next(n for n in client.statuses("second") if n["waiting"] is not None)
    assert (waits["status"], waits["elsewhere"], waits["attempt"]) == ("queued", True, 1)
    gate.touch()
    _, stderr = await asyncio.to_thread(run.communicate, timeout=60)
    assert run.returncode == 0, stderr
    await wait_until(lambda: client.statuses("second")[-1]["status"] == "completed", what="second completed")
    told = [n["status"] for n in client.statuses("second")]
    assert told.index("queued") < told.index("completed")
    assert [n["waiting"] for n in client.statuses("second")].count("waiting for first") == 1


async def test_list_changes_count_all_but_what_runs_write(engine: Engine) -> None:
    """The counter behind `watch_others`: a run's writes leave it; every other change to the list
    moves it, and every column of `workstreams` a run does not set is watched."""
    await engine.create("a", "t", command=["true"])
    store = engine.db.store
    columns = {row[1] for row in store._db.execute("PRAGMA table_info(workstreams)")}
    (watched,) = store._db.execute("SELECT sql FROM sqlite_master WHERE name = 'list_ws_edited'").fetchone()
    listed = watched.split("UPDATE OF", 1)[1].split(" ON workstreams", 1)[0]
    unwatched = columns - {name.strip(' "') for name in listed.split(",")}
    assert unwatched == {"status", "updated_at", "last_run_id", "last_attempt"}

    def changes() -> int:
        return store.versions()[1]

    for change in (
        lambda: store.set_paused("a", True),
        lambda: store.set_paused("a", False),
        lambda: store.set_schedule("a", 10, None),
    ):
        before = changes()
        change()
        assert changes() > before
    before = changes()
    store.claim(["a"], "r1", (1, 1), {}, 1)
    store.note("a", "r1", Status.RUNNING, "a run's note")
    store.set_waiting("r1", {"a": "a slot"})
    store.set_progress("r1", {"a": Progress(percent=50)})
    assert changes() == before
