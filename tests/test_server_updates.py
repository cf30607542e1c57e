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

import msgspec
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


async def test_a_runs_end_sends_the_records_whose_forecast_it_moved(records_client: AidpClient) -> None:
    """A workstream with no completed run of its own takes its forecast from its command's runs by
    any workstream, so another's run moves it: its record follows, as the whole list gives it. One
    of another command is not sent."""
    client = records_client
    slow = ["sh", "-c", "sleep 0.3"]
    for slug in ("ran", "borrows"):
        await client.call("aidp/wsNew", {"slug": slug, "task": "t", "command": slow})
    await client.call("aidp/wsNew", {"slug": "other", "task": "t", "command": ["true"]})
    assert (await client.workstreams())["borrows"]["expectedS"] is None
    assert (await client.call("aidp/wsRun", {"slugs": ["ran"]}))["completed"] == 1

    await wait_until(lambda: bool(index(client, WS_UPDATED, "borrows")), what="the borrower's record sent")
    listed = await client.workstreams()
    forecast = listed["borrows"]["expectedS"]
    assert forecast is not None and forecast >= 0.3
    sent = [ws for u in client.of(WS_UPDATED) for ws in u["workstreams"] if ws["slug"] == "borrows"]
    assert sent[-1] == listed["borrows"]
    assert not index(client, WS_UPDATED, "other")
    assert listed["other"]["expectedS"] is None


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


async def test_a_runs_end_sends_the_records_of_workstreams_on_its_branch(records_client: AidpClient) -> None:
    """A workstream made on another's branch (`baseBranch`) is compared with that branch: a run
    that commits there moves it (its base is one commit ahead of it now), and its record follows."""
    client = records_client
    await client.call("aidp/wsNew", {"slug": "below", "task": "t", "command": COMMITS})
    await client.call("aidp/wsNew", {"slug": "above", "task": "t", "command": ["true"], "baseBranch": "aidp/below"})
    await client.call("aidp/wsNew", {"slug": "aside", "task": "t", "command": ["true"]})
    assert (await client.workstreams())["above"]["changes"]["behind"] == 0
    assert (await client.call("aidp/wsRun", {"slugs": ["below"]}))["completed"] == 1

    await wait_until(lambda: bool(index(client, WS_UPDATED, "above")), what="the record of the one above sent")
    listed = await client.workstreams()
    assert listed["above"]["changes"]["behind"] == 1
    sent = [ws for u in client.of(WS_UPDATED) for ws in u["workstreams"] if ws["slug"] == "above"]
    assert sent[-1] == listed["above"]
    assert not index(client, WS_UPDATED, "aside")


async def test_a_forecast_is_sent_when_it_is_no_longer_the_one_given(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compared with what the client was last given, by the whole list or by a record after it: a
    forecast that did not move sends nothing; one the list gave otherwise is sent again."""
    for slug in ("a", "b", "c"):
        await engine.create(slug, "t", command=["true"])
    sent: list[list[tuple[str, float | None]]] = []
    fell_back: list[bool] = []
    updates = RecordUpdates(
        engine, lambda found: sent.append([(ws.slug, ws.expected_s) for ws in found]), lambda: fell_back.append(True)
    )
    forecasts: dict[str, float | None] = {}
    compared: list[bool] = []

    async def borrowed_forecasts() -> dict[str, float | None]:
        compared.append(True)
        return dict(forecasts)

    async def records(slugs: list[str], changes: bool = True) -> list[Workstream]:
        return [msgspec.structs.replace(ws, expected_s=forecasts.get(ws.slug)) for ws in await real(slugs, changes)]

    real = engine.records
    monkeypatch.setattr(engine, "borrowed_forecasts", borrowed_forecasts)
    monkeypatch.setattr(engine, "records", records)

    async def end(slug: str, batches: int) -> list[list[tuple[str, float | None]]]:
        """`slug`'s run ended: the batches of records sent, once the forecasts were compared."""
        sent.clear()
        looked = len(compared)
        updates.ended(slug)
        await wait_until(lambda: len(compared) > looked and len(sent) == batches, what=f"{batches} batches sent")
        return sent

    updates.listed(await engine.workstreams())  # no forecasts
    forecasts.update(b=1.0, c=None)
    assert await end("a", 2) == [[("a", None)], [("b", 1.0)]]
    assert await end("a", 1) == [[("a", None)]]  # b still 1.0, as its record said
    listed = await engine.workstreams()
    updates.listed([msgspec.structs.replace(ws, expected_s=2.0 if ws.slug == "b" else None) for ws in listed])
    assert await end("a", 2) == [[("a", None)], [("b", 1.0)]]  # the list said 2.0 since
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
