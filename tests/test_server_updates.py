"""`aidp/wsUpdated`: a client that declares it (`capabilities.experimental.aidp.wsUpdated`) gets the
records of the workstreams whose runs ended, as `aidp/wsList` would give them, instead of a
`aidp/wsListChanged` that makes it fetch the whole list; a client that does not gets the list change
as before. A record never follows a newer status of its workstream. The server, the harnesses and git
are real; the client speaks JSON-RPC over the server's real stdio."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from server_helpers import (
    WS_LIST_CHANGED,
    WS_STATUS,
    WS_UPDATED,
    AidpClient,
    initialize_params,
    lsp_session,
    raw_session,
    server_command,
)
from support import wait_until

from aidp.engine import Engine
from aidp.engine.model import Workstream
from aidp.server.updates import RecordUpdates

pytestmark = pytest.mark.timeout(120)

COMMITS = ["sh", "-c", "echo work > made.txt && git add made.txt && git commit -qm 'made it'"]


@pytest.fixture
async def records_client(repo: Path, tmp_path: Path) -> AsyncIterator[AidpClient]:
    async with lsp_session(server_command(repo), tmp_path, initialize_params(records=True)) as session:
        yield session


@pytest.fixture
async def list_client(repo: Path, tmp_path: Path) -> AsyncIterator[AidpClient]:
    async with lsp_session(server_command(repo), tmp_path, initialize_params()) as session:
        yield session


def index(client: AidpClient, method: str, slug: str, status: str | None = None) -> list[int]:
    """Where `method`'s notifications naming `slug` (with `status`) came, in arrival order."""
    found = []
    for i, (m, params) in enumerate(client.notes):
        if m != method:
            continue
        slugs = [ws["slug"] for ws in params["workstreams"]] if method == WS_UPDATED else [params.get("slug")]
        if slug in slugs and (status is None or params.get("status") == status):
            found.append(i)
    return found


async def test_a_runs_end_sends_its_records_not_a_list_change(records_client: AidpClient) -> None:
    client = records_client
    await client.call("aidp/wsNew", {"slug": "commits", "task": "t", "command": COMMITS})
    await client.call("aidp/wsNew", {"slug": "fails", "task": "t", "command": ["sh", "-c", "exit 3"]})
    before = len(client.notes)
    summary = await client.call("aidp/wsRun", {"slugs": ["commits", "fails"]})
    assert (summary["completed"], summary["failed"]) == (1, 1)

    await wait_until(
        lambda: all(index(client, WS_UPDATED, slug) for slug in ("commits", "fails")), what="both records sent"
    )
    assert not [m for m, _ in client.notes[before:] if m == WS_LIST_CHANGED]
    listed = await client.workstreams()
    sent: dict[str, dict[str, Any]] = {}
    for update in client.of(WS_UPDATED):
        sent.update({ws["slug"]: ws for ws in update["workstreams"]})
    for slug, status in (("commits", "completed"), ("fails", "failed")):
        # After its final status, and what the whole list says of it.
        assert index(client, WS_STATUS, slug, status)[0] < index(client, WS_UPDATED, slug)[0]
        assert sent[slug] == listed[slug]
    changes = sent["commits"]["changes"]
    assert (changes["ahead"], changes["files"]) == (1, 1)  # what its run changed: its status says none of it
    assert sent["fails"]["lastResult"]["exitCode"] == 3


async def test_a_client_that_does_not_take_records_gets_the_list_change(list_client: AidpClient) -> None:
    client = list_client
    await client.call("aidp/wsNew", {"slug": "commits", "task": "t", "command": COMMITS})
    await client.call("aidp/wsRun", {"slugs": ["commits"]})
    final = index(client, WS_STATUS, "commits", "completed")[0]
    assert [m for m, _ in client.notes[final + 1 :]][:1] == [WS_LIST_CHANGED]
    assert not client.of(WS_UPDATED)


async def test_a_terminals_run_sends_its_record_too(
    records_client: AidpClient, repo: Path, driver: Callable[..., Any]
) -> None:
    """A run of another aidp process (told as statuses `elsewhere`) changes the record as the
    server's own do: its record follows its final status."""
    client = records_client
    await client.call("aidp/wsNew", {"slug": "term", "task": "t", "command": COMMITS})
    run = driver(repo, "term", cli=True)
    _, stderr = await asyncio.to_thread(run.communicate, timeout=60)
    assert run.returncode == 0, stderr
    await wait_until(lambda: bool(index(client, WS_UPDATED, "term")), what="its record sent")
    ended = index(client, WS_STATUS, "term", "completed")
    assert ended and ended[0] < index(client, WS_UPDATED, "term")[0]
    assert client.notes[ended[0]][1]["elsewhere"] is True
    sent = next(ws for u in client.of(WS_UPDATED) for ws in u["workstreams"] if ws["slug"] == "term")
    assert sent == (await client.workstreams())["term"]
    assert sent["changes"]["ahead"] == 1


async def test_a_record_never_follows_a_newer_status_of_its_workstream(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A status told while its record was computed: that record is not sent but computed again."""
    await engine.create("a", "t", command=["true"])
    sent: list[list[Workstream]] = []
    computed: list[list[str]] = []
    fell_back: list[bool] = []
    updates = RecordUpdates(engine, sent.append, lambda: fell_back.append(True))
    real = engine.records

    async def records(slugs: list[str], changes: bool = True) -> list[Workstream]:
        found = await real(slugs, changes)
        computed.append(slugs)
        if len(computed) == 1:
            await engine.db.call(engine.db.store.set_paused, "a", True)  # a newer state ...
            updates.told("a")  # ... told as its status while the record was computed
        return found

    monkeypatch.setattr(engine, "records", records)
    updates.ended("a")

    await wait_until(lambda: bool(sent), what="the record sent")
    assert computed == [["a"], ["a"]]
    assert [[ws.status for ws in batch] for batch in sent] == [["paused"]]
    assert not fell_back
    await updates.close()


async def test_a_bad_aidp_capability_is_refused_with_its_place(repo: Path, markers: Path) -> None:
    async with raw_session(server_command(repo), markers) as raw:
        caps = {"experimental": {"aidp": {"wsUpdated": "yes"}}}
        response = await raw.request("initialize", {"processId": None, "capabilities": caps})
        assert response["error"]["code"] == -32602
        assert "capabilities.experimental.aidp.wsUpdated" in response["error"]["message"]
        # Another client's experimental capabilities are not aidp's to judge.
        other = {"experimental": {"someEditor": [1, 2]}}
        assert "result" in await raw.request("initialize", {"processId": None, "capabilities": other})
