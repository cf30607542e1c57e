"""Scheduling over JSON-RPC, end to end: priorities and dependencies on `aidp/wsNew` and
`aidp/wsSet`, dependencies pulled into `aidp/wsRun` (or refused with `noDeps`), blocked dependents,
retries, `halt`, `aidp/runProgress` and the ETA in `$/progress`. The server is a real subprocess on
real stdio (pytest-lsp), harnesses are real processes; every order is read from the stamps the
children write themselves."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import toml_list, write_config, write_script
from lsprotocol import types as lsp
from server_helpers import RUN_PROGRESS, AidpClient, initialize_params, lsp_session, server_command
from support import cancel_b_harness, git, wait_until
from test_schedule import read_stamps, stamp_command

pytestmark = pytest.mark.timeout(180)

INVALID_PARAMS = -32602
FAIL = ["sh", "-c", "echo broken; exit 3"]


def configure(repo: Path, scripts: Path, stamps: Path, harness: str = "") -> None:
    """Every workstream runs the stamping harness unless it names its own command."""
    command = toml_list(stamp_command(scripts, stamps))
    write_config(repo, f"[harness]\ngrace_s = 0.5\ncommand = {command}\n{harness}")


@pytest.fixture
def stamps(tmp_path: Path) -> Path:
    return tmp_path / "stamps"


@pytest.fixture
async def client(repo: Path, scripts: Path, stamps: Path, tmp_path: Path) -> AsyncIterator[AidpClient]:
    configure(repo, scripts, stamps)
    async with lsp_session(server_command(repo), tmp_path, initialize_params(progress=True)) as session:
        yield session


async def new(client: AidpClient, slug: str, **params: Any) -> dict[str, Any]:
    return await client.call("aidp/wsNew", {"slug": slug, "task": f"task of {slug}", **params})  # type: ignore[no-any-return]


def progress_of(client: AidpClient, title: str) -> list[Any]:
    """The `$/progress` values of the last run with this title."""
    runs = [r for r in client.progress_reports.values() if r and getattr(r[0], "title", None) == title]
    return runs[-1] if runs else []


# -- priorities and dependencies on wsNew and wsSet -----------------------------------------------------


async def test_ws_new_takes_a_priority_and_dependencies(client: AidpClient, repo: Path) -> None:
    base = await new(client, "base")
    assert (base["priority"], base["after"], base["expectedS"]) == (0, [], None)
    urgent = await new(client, "urgent", priority="high", after=["base"])
    assert (urgent["priority"], urgent["after"]) == (10, ["base"])
    assert (await new(client, "fine", priority=-42))["priority"] == -42
    listed = await client.workstreams()
    assert {s: (w["priority"], w["after"]) for s, w in listed.items()} == {
        "base": (0, []),
        "urgent": (10, ["base"]),
        "fine": (-42, []),
    }

    for bad, field in ((101, "priority"), ("urgent", "priority"), (True, "priority"), (["Bad"], "after")):
        key = "after" if field == "after" else "priority"
        err = await client.fails("aidp/wsNew", {"slug": "nope", "task": "t", key: bad})
        assert err.code == INVALID_PARAMS and f"$.{field}" in err.message, err
    err = await client.fails("aidp/wsNew", {"slug": "nope", "task": "t", "after": ["ghost"]})
    assert err.code == INVALID_PARAMS and err.data == {"unknown": ["ghost"]}, err
    assert "ghost" in err.message
    assert list(await client.workstreams()) == ["base", "urgent", "fine"]
    assert not (repo / ".worktrees" / "nope").exists()
    assert git(repo, "branch", "--list", "aidp/nope") == ""


async def test_ws_set_changes_priority_and_dependencies_and_refuses_a_cycle(client: AidpClient) -> None:
    for slug in ("a", "b", "c"):
        await new(client, slug)
    ws = await client.call("aidp/wsSet", {"slug": "b", "priority": "low", "after": ["a"]})
    assert (ws["slug"], ws["priority"], ws["after"]) == ("b", -10, ["a"])
    ws = await client.call("aidp/wsSet", {"slug": "c", "after": ["b"]})
    assert (ws["priority"], ws["after"]) == (0, ["b"])
    ws = await client.call("aidp/wsSet", {"slug": "b", "priority": 7})
    assert (ws["priority"], ws["after"]) == (7, ["a"])  # what is not given stays

    err = await client.fails("aidp/wsSet", {"slug": "a", "after": ["c"]})
    assert err.code == INVALID_PARAMS, err
    assert "cycle" in err.message and "a -> c -> b -> a" in err.message, err.message
    err = await client.fails("aidp/wsSet", {"slug": "a", "priority": "high", "after": ["a"]})
    assert err.code == INVALID_PARAMS, err
    err = await client.fails("aidp/wsSet", {"slug": "a"})
    assert err.code == INVALID_PARAMS and "nothing to set" in err.message, err
    err = await client.fails("aidp/wsSet", {"slug": "ghost", "priority": 1})
    assert err.code == INVALID_PARAMS and err.data == {"unknown": ["ghost"]}, err
    err = await client.fails("aidp/wsSet", {"slug": "a", "priority": "soon"})
    assert err.code == INVALID_PARAMS and "$.priority" in err.message, err
    listed = await client.workstreams()
    assert {s: (w["priority"], w["after"]) for s, w in listed.items()} == {
        "a": (0, []),
        "b": (7, ["a"]),
        "c": (0, ["b"]),
    }, "nothing of a refused request is stored"

    ws = await client.call("aidp/wsSet", {"slug": "c", "after": []})
    assert ws["after"] == []


# -- runs ----------------------------------------------------------------------------------------------


async def test_ws_run_pulls_in_a_dependency_and_no_deps_refuses(client: AidpClient, stamps: Path) -> None:
    await new(client, "schema")
    await new(client, "api", after=["schema"])
    err = await client.fails("aidp/wsRun", {"slugs": ["api"], "noDeps": True})
    assert err.code == INVALID_PARAMS and "schema" in err.message, err
    assert client.statuses() == [] and not stamps.exists(), "a refused run starts nothing"

    summary = await client.call("aidp/wsRun", {"slugs": ["api"], "maxConcurrent": 2})
    assert summary["pulledIn"] == ["schema"]
    assert (summary["total"], summary["completed"], summary["blocked"]) == (2, 2, 0)
    assert summary["concurrency"] == 2
    order, starts, ends = read_stamps(stamps)
    assert order == ["schema", "api"] and ends["schema"] <= starts["api"]
    waits = [n["waiting"] for n in client.statuses("api") if n["status"] == "queued"]
    assert any(w and "schema" in w for w in waits), waits

    # Done now: with noDeps the dependent runs alone.
    summary = await client.call("aidp/wsRun", {"slugs": ["api"], "noDeps": True})
    assert (summary["total"], summary["completed"], summary["pulledIn"]) == (1, 1, [])


async def test_a_failed_dependency_blocks_its_dependent(client: AidpClient, stamps: Path) -> None:
    await new(client, "base", command=FAIL)
    await new(client, "child", after=["base"])
    summary = await client.call("aidp/wsRun", {"slugs": ["base", "child"]})
    assert (summary["failed"], summary["blocked"], summary["completed"]) == (1, 1, 0)
    (blocked,) = [r for r in summary["results"] if r["slug"] == "child"]
    assert blocked["status"] == "blocked" and "base" in blocked["error"]
    final = client.statuses("child")[-1]
    assert final["status"] == "blocked" and final["runId"] == summary["runId"]
    assert final["error"].startswith("blocked:") and "base" in final["error"]
    assert not stamps.exists(), "the blocked dependent never started"
    end = progress_of(client, "Running 2 workstreams")[-1]
    assert isinstance(end, lsp.WorkDoneProgressEnd) and end.message == "1 failed, 1 blocked"
    assert (await client.workstreams())["child"]["status"] == "blocked"


async def test_a_retried_attempt_shows_as_attempt_2(
    repo: Path, scripts: Path, stamps: Path, tmp_path: Path, markers: Path
) -> None:
    configure(repo, scripts, stamps, "retries = 1\nretry_backoff_s = 0.05\n")
    once = markers / "failed-once"
    flaky = ["sh", "-c", f'if [ -e "{once}" ]; then echo fine; else touch "{once}"; exit 1; fi']
    async with lsp_session(server_command(repo), tmp_path, initialize_params()) as client:
        await new(client, "flaky", command=flaky)
        summary = await client.call("aidp/wsRun", {"slugs": ["flaky"]})
        assert summary["completed"] == 1
        assert [(r["attempt"], r["status"]) for r in summary["results"]] == [(2, "completed")]
        notes = client.statuses("flaky")
        running = [(n["attempt"], n["maxAttempts"]) for n in notes if n["status"] == "running"]
        assert running == [(1, 2), (2, 2)], notes
        final = notes[-1]
        assert (final["status"], final["attempt"], final["maxAttempts"]) == ("completed", 2, 2)


async def test_halt_now_cancels_what_runs(client: AidpClient, stamps: Path, tmp_path: Path) -> None:
    # `slow` runs until the test is done; `bad` fails once `slow` has started, which halts the run.
    started = f'while ! grep -q "start slow" "{stamps}" 2>/dev/null; do sleep 0.02; done; exit 1'
    await new(client, "slow", command=["sh", "-c", f'echo "start slow 0" >> "{stamps}"; sleep 600'])
    await new(client, "bad", command=["sh", "-c", started])
    await new(client, "later", priority="low")
    summary = await client.call("aidp/wsRun", {"slugs": ["slow", "bad", "later"], "maxConcurrent": 2, "halt": "now"})
    by_slug = {r["slug"]: r for r in summary["results"]}
    assert {s: r["status"] for s, r in by_slug.items()} == {"slow": "cancelled", "bad": "failed", "later": "cancelled"}
    assert "halted after bad failed" in by_slug["slow"]["error"]
    assert by_slug["later"]["error"].startswith("not started")
    assert read_stamps(stamps)[0] == ["slow"], "nothing started after the halt"
    err = await client.fails("aidp/wsRun", {"slugs": ["slow"], "halt": "later"})
    assert err.code == INVALID_PARAMS and "$.halt" in err.message, err


async def test_run_progress_and_the_eta_once_history_exists(client: AidpClient, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    held = ["sh", "-c", f'while [ ! -e "{gate}" ]; do sleep 0.02; done']
    for slug in ("one", "two", "three"):
        await new(client, slug, command=held)
    gate.touch()
    first = await client.call("aidp/wsRun", {"slugs": ["one", "two", "three"]})
    assert first["completed"] == 3 and first["forecastS"] is None
    ran = [n for n in client.of(RUN_PROGRESS) if n["runId"] == first["runId"]]
    assert ran and all(n["total"] == 3 and n["etaS"] is None for n in ran)
    assert (ran[-1]["done"], ran[-1]["running"]) == (3, 0)
    assert [n["done"] for n in ran] == sorted(n["done"] for n in ran)
    reports = [v for v in progress_of(client, "Running 3 workstreams") if isinstance(v, lsp.WorkDoneProgressReport)]
    assert reports and not any("left" in (r.message or "") for r in reports), "no ETA without history"

    # The second run has history: each workstream's expected time, so a forecast and an ETA.
    gate.unlink()
    assert all(w["expectedS"] is not None for w in (await client.workstreams()).values())
    run = client.start_call("aidp/wsRun", {"slugs": ["one", "two", "three"], "maxConcurrent": 1})

    def eta_reported() -> bool:
        values = progress_of(client, "Running 3 workstreams")
        return any(isinstance(v, lsp.WorkDoneProgressReport) and "left" in (v.message or "") for v in values)

    await wait_until(eta_reported, what="a $/progress report with the ETA")
    gate.touch()
    second = await run
    assert second["completed"] == 3 and second["forecastS"] is not None and second["concurrency"] == 1
    messages = [v.message for v in progress_of(client, "Running 3 workstreams")[1:-1]]
    assert any(m.startswith("0/3 done, about ") and m.endswith(" left") for m in messages), messages
    ran = [n for n in client.of(RUN_PROGRESS) if n["runId"] == second["runId"]]
    assert any(n["etaS"] is not None for n in ran)
    assert (ran[-1]["done"], ran[-1]["total"]) == (3, 3)


async def test_priority_orders_starts_and_ws_set_reorders_a_run_going_on(
    client: AidpClient, stamps: Path, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    first = ["sh", "-c", f'echo "start first 0" >> "{stamps}"; while [ ! -e "{gate}" ]; do sleep 0.02; done']
    await new(client, "low-one", priority="low")
    await new(client, "plain")
    await new(client, "late-riser", priority="low")
    await new(client, "first", priority="high", command=first)
    run = client.start_call("aidp/wsRun", {"slugs": ["low-one", "plain", "late-riser", "first"], "maxConcurrent": 1})
    await wait_until(lambda: stamps.exists() and "first" in stamps.read_text(), what="first started")
    # While `first` holds the only slot, `late-riser` goes from low to the top.
    assert (await client.call("aidp/wsSet", {"slug": "late-riser", "priority": 50}))["priority"] == 50
    gate.touch()
    summary = await run
    assert summary["completed"] == 4
    order, starts, ends = read_stamps(stamps)
    assert order == ["first", "late-riser", "plain", "low-one"]
    assert ends["late-riser"] <= starts["plain"] and ends["plain"] <= starts["low-one"]


async def test_ws_run_all_with_base_from_deps_and_the_repository_bound(
    repo: Path, scripts: Path, tmp_path: Path
) -> None:
    writes = write_script(scripts, "writes.sh", 'echo "$AIDP_SLUG" > "$AIDP_SLUG.txt"; ls > "seen-$AIDP_SLUG.txt"\n')
    write_config(
        repo,
        f'[scheduler]\nmax_concurrent = 2\n[harness]\ncommand = ["sh", "{writes}"]\ncommit = "on-success"\n',
    )
    async with lsp_session(server_command(repo), tmp_path, initialize_params()) as client:
        await new(client, "schema")
        await new(client, "api", after=["schema"])
        params = {"baseFromDeps": True, "halt": "soon", "maxConcurrent": 8}
        summary = await client.call("aidp/wsRunAll", params)
        assert (summary["completed"], summary["pulledIn"]) == (2, [])
        assert summary["concurrency"] == 2
        assert "8" in summary["concurrencyNote"] and "2" in summary["concurrencyNote"]
        assert "schema.txt" in (repo / ".worktrees" / "api" / "seen-api.txt").read_text().split()
        err = await client.fails("aidp/wsRunAll", {"baseFromDeps": "yes"})
        assert err.code == INVALID_PARAMS and "$.baseFromDeps" in err.message, err


async def test_a_queued_workstream_cancelled_from_a_terminal_as_its_slot_frees_never_starts(
    repo: Path, tmp_path: Path
) -> None:
    """The server's run, with one slot: `a` has a terminal's `aidp ws cancel b` record a cancel of
    the queued `b`, and ends the moment it is recorded, before the server's ticker can have read
    it. `b`'s start record reads it: `b` never starts and ends `cancelled`, told as such."""
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    write_config(repo, f"[harness]\ncommand = {toml_list(cancel_b_harness(tmp_path, repo, stamps))}\n")
    async with lsp_session(server_command(repo), tmp_path, initialize_params()) as client:
        for slug in ("a", "b"):
            await new(client, slug)
        summary = await client.call("aidp/wsRun", {"slugs": ["a", "b"], "maxConcurrent": 1})
        assert (stamps / "asked").read_text() == "cancelling b\n"
        assert sorted(p.name for p in stamps.iterdir()) == ["a", "asked"]
        by_slug = {r["slug"]: r for r in summary["results"]}
        assert by_slug["a"]["status"] == "completed"
        assert (by_slug["b"]["status"], by_slug["b"]["error"]) == ("cancelled", "cancelled before it started")
        told = [n["status"] for n in client.statuses("b")]
        assert told[-1] == "cancelled" and "running" not in told
