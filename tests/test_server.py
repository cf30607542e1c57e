"""`aidp serve` end to end with pytest-lsp: the server is a real subprocess speaking JSON-RPC over its
real stdin/stdout, the repository is a real git repository, harnesses are real processes. Every
request, every notification and every error code of docs/protocol.md. Facts and orderings only,
never wall-clock timing."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import toml_list, write_config
from lsprotocol import types as lsp
from server_helpers import (
    WS_LIST_CHANGED,
    WS_OUTPUT,
    WS_STATUS,
    AidpClient,
    frame,
    initialize_params,
    lsp_session,
    raw_session,
    server_command,
)
from support import git, wait_until

pytestmark = pytest.mark.timeout(150)

FINAL = {"completed", "failed", "error", "cancelled"}
HELLO = ["sh", "-c", 'echo "hello $AIDP_SLUG"; echo "task: $AIDP_TASK"']

Open = Callable[..., Awaitable[AidpClient]]


def gated(gate: Path) -> list[str]:
    """A harness that says it started, then waits until the test creates `gate`."""
    return ["sh", "-c", f'echo started; while [ ! -e "{gate}" ]; do sleep 0.05; done; echo released']


@pytest.fixture
def configured(repo: Path) -> Path:
    write_config(repo, f"[harness]\ngrace_s = 0.5\ncommand = {toml_list(HELLO)}\n")
    return repo


@pytest.fixture
async def open_client(tmp_path: Path) -> AsyncIterator[Open]:
    """Open pytest-lsp sessions (server with --root); all are shut down at teardown."""
    async with contextlib.AsyncExitStack() as stack:

        async def open_(root: Path, progress: bool = False) -> AidpClient:
            return await stack.enter_async_context(
                lsp_session(server_command(root), tmp_path, initialize_params(progress=progress))
            )

        yield open_


@pytest.fixture
async def client(configured: Path, open_client: Open) -> AidpClient:
    return await open_client(configured)


async def new(client: AidpClient, slug: str, command: list[str] | None = None, task: str | None = None) -> Any:
    params: dict[str, Any] = {"slug": slug, "task": task or f"task of {slug}"}
    if command is not None:
        params["command"] = command
    return await client.call("aidp/wsNew", params)


def sequence(client: AidpClient, slug: str) -> list[str]:
    return [n["status"] for n in client.statuses(slug)]


def assert_run_sequence(client: AidpClient, slug: str, final: str, run_id: str) -> None:
    """queued, then running (unless it never started), then exactly one final status."""
    notes = [n for n in client.statuses(slug) if n["runId"] == run_id]
    seq = [n["status"] for n in notes]
    assert seq[0] == "queued", seq
    assert seq[-1] == final, seq
    assert seq[1:-1] in ([], ["running"]), seq
    assert sum(s in FINAL for s in seq) == 1, seq


# -- the repository root -----------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["--root", "workspaceFolders", "rootUri", "cwd"])
async def test_root_from_option_initialize_or_cwd(configured: Path, tmp_path: Path, how: str) -> None:
    elsewhere = tmp_path / "not-a-repo"
    elsewhere.mkdir()
    root_uri = configured.as_uri()
    if how == "--root":
        cmd, cwd, params = server_command(configured), elsewhere, initialize_params(root_uri=elsewhere.as_uri())
    elif how == "workspaceFolders":  # the first folder wins over rootUri
        cmd, cwd = server_command(None), elsewhere
        params = initialize_params(folders=[root_uri, elsewhere.as_uri()], root_uri=elsewhere.as_uri())
    elif how == "rootUri":
        cmd, cwd, params = server_command(None), elsewhere, initialize_params(root_uri=root_uri)
    else:  # from a subdirectory: the repository's root is found upwards
        sub = configured / "sub"
        sub.mkdir()
        cmd, cwd, params = server_command(None), sub, initialize_params()
    async with lsp_session(cmd, cwd, params) as client:
        ws = await new(client, "rooted")
        assert Path(ws["path"]) == configured.resolve() / ".worktrees" / "rooted"
        assert Path(ws["path"], "README.md").read_text() == "hello\n"
        assert list((await client.workstreams()).keys()) == ["rooted"]
    assert (configured / ".aidp" / "state.db").exists()
    assert not (elsewhere / ".aidp").exists()


async def test_not_a_repository_fails_requests_with_32803(tmp_path: Path) -> None:
    nowhere = tmp_path / "nowhere"
    nowhere.mkdir()
    async with lsp_session(server_command(None), nowhere, initialize_params(root_uri=nowhere.as_uri())) as client:
        err = await client.fails("aidp/wsList", {})
        assert err.code == -32803
        assert "git" in err.message
        assert client.server.returncode is None


async def test_request_before_initialize_is_32002(configured: Path, tmp_path: Path) -> None:
    async with raw_session(server_command(configured), tmp_path) as raw:
        response = await raw.request("aidp/wsList", {})
        assert response["error"]["code"] == -32002, response
        await raw.initialize()
        assert (await raw.result("aidp/wsList", {})) == {"workstreams": []}


# -- requests and their notifications -----------------------------------------------------------------


async def test_every_run_end_is_followed_by_a_list_change(client: AidpClient, configured: Path, tmp_path: Path) -> None:
    """To a client without `aidp/wsUpdated`, every run's end is followed by an
    `aidp/wsListChanged` (a whole list to fetch again). Runs whose results were recorded together
    share one (bench: 300 runs of `true` ended with ~170, not 300), so the count is the bench's
    to show; what must hold is that none of the ends is left without one after it."""
    gate = tmp_path / "go"
    for slug in "abc":
        await new(client, slug, ["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.01; done"])
    run = client.start_call("aidp/wsRun", {"slugs": list("abc"), "maxConcurrent": 3})
    await wait_until(lambda: all("running" in sequence(client, s) for s in "abc"), what="all three running")
    start = len(client.notes)
    gate.touch()
    assert (await run)["completed"] == 3

    def positions() -> tuple[list[int], list[int]]:
        after = client.notes[start:]
        finals = [i for i, (m, n) in enumerate(after) if m == WS_STATUS and n["status"] in FINAL]
        return finals, [i for i, (m, _) in enumerate(after) if m == WS_LIST_CHANGED]

    def covered() -> bool:
        finals, changes = positions()
        return len(finals) == 3 and all(any(j > i for j in changes) for i in finals)

    await wait_until(covered, what="a list change after each run's end")


async def test_new_list_run_log(client: AidpClient, configured: Path) -> None:
    created = await new(client, "alpha", task="say hello")
    assert created["slug"] == "alpha"
    assert created["status"] == "active"
    assert created["branch"] == "aidp/alpha"
    assert created["baseBranch"] == "main" and created["command"] is None  # the branch checked out at creation
    assert created["lastResult"] is None
    assert created["createdAt"].endswith("Z")
    await new(client, "bravo", ["sh", "-c", "echo about to fail; exit 3"])
    await new(client, "charlie", ["/nonexistent/program"])
    assert client.of(WS_LIST_CHANGED) == [{}, {}, {}]

    listed = await client.workstreams()
    assert sorted(listed) == ["alpha", "bravo", "charlie"]
    assert {ws["status"] for ws in listed.values()} == {"active"}
    assert listed["bravo"]["command"] == ["sh", "-c", "echo about to fail; exit 3"]

    summary = await client.call("aidp/wsRun", {"slugs": ["charlie", "bravo", "alpha"], "maxConcurrent": 2})
    assert [r["slug"] for r in summary["results"]] == ["charlie", "bravo", "alpha"]  # request order
    assert (summary["total"], summary["completed"], summary["failed"], summary["errored"], summary["cancelled"]) == (
        3,
        1,
        1,
        1,
        0,
    )
    assert isinstance(summary["wallS"], float | int) and summary["wallS"] >= 0
    run_id = summary["runId"]
    results = {r["slug"]: r for r in summary["results"]}
    assert results["alpha"]["status"] == "completed" and results["alpha"]["exitCode"] == 0
    assert results["bravo"]["status"] == "failed" and results["bravo"]["exitCode"] == 3
    assert "exit code 3" in results["bravo"]["error"] and "about to fail" in results["bravo"]["error"]
    assert results["charlie"]["status"] == "error" and "/nonexistent/program" in results["charlie"]["error"]

    # Every status change was notified, in order, before the response.
    assert_run_sequence(client, "alpha", "completed", run_id)
    assert_run_sequence(client, "bravo", "failed", run_id)
    assert_run_sequence(client, "charlie", "error", run_id)
    assert "running" in sequence(client, "alpha")
    final = client.statuses("bravo")[-1]
    assert (final["exitCode"], final["runId"]) == (3, run_id)
    assert final["durationS"] is not None and "exit code 3" in final["error"]

    # Live output is the harness's output, and the log has the same bytes.
    output = "".join(n["text"] for n in client.of(WS_OUTPUT) if n["slug"] == "alpha")
    assert output == "hello alpha\ntask: say hello\n"
    assert {n["runId"] for n in client.of(WS_OUTPUT)} == {run_id}
    log = await client.call("aidp/wsLog", {"slug": "alpha"})
    assert log["slug"] == "alpha"
    assert log["text"] == output
    assert Path(log["logPath"]) == configured.resolve() / ".aidp" / "logs" / "alpha" / f"{run_id}.log"
    assert Path(log["logPath"]) == Path(results["alpha"]["logPath"])
    assert (await client.call("aidp/wsLog", {"slug": "alpha", "tailBytes": 6}))["text"] == "hello\n"
    assert (await client.call("aidp/wsLog", {"slug": "alpha", "tailBytes": 0}))["text"] == ""

    listed = await client.workstreams()
    assert {s: ws["status"] for s, ws in listed.items()} == {
        "alpha": "completed",
        "bravo": "failed",
        "charlie": "error",
    }
    assert listed["bravo"]["lastResult"]["exitCode"] == 3


async def test_log_before_any_run(client: AidpClient) -> None:
    await new(client, "fresh")
    assert await client.call("aidp/wsLog", {"slug": "fresh"}) == {"slug": "fresh", "logPath": None, "text": ""}


async def test_run_all_skips_paused_and_completed_and_may_be_empty(client: AidpClient) -> None:
    await new(client, "done")
    await new(client, "broken", ["sh", "-c", "exit 1"])
    await new(client, "fresh")
    await new(client, "resting")
    first = await client.call("aidp/wsRun", {"slugs": ["done", "broken"]})
    assert (first["completed"], first["failed"]) == (1, 1)
    await client.call("aidp/wsPause", {"slug": "resting"})

    before = len(client.statuses())
    summary = await client.call("aidp/wsRunAll", {})
    assert sorted(r["slug"] for r in summary["results"]) == ["broken", "fresh"]
    assert (summary["total"], summary["completed"], summary["failed"]) == (2, 1, 1)
    ran = {n["slug"] for n in client.statuses()[before:]}
    assert ran == {"broken", "fresh"}

    # Fix `broken`'s harness? No: pause it, and nothing is left to run.
    await client.call("aidp/wsPause", {"slug": "broken"})
    before = len(client.statuses())
    empty = await client.call("aidp/wsRunAll", {"maxConcurrent": 5})
    assert empty["results"] == []
    assert (empty["total"], empty["completed"], empty["failed"], empty["errored"], empty["cancelled"]) == (0,) * 5
    assert isinstance(empty["runId"], str) and empty["wallS"] >= 0
    assert client.statuses()[before:] == []


async def test_pause_resume_notify_and_refuse_runs(client: AidpClient) -> None:
    await new(client, "nap")
    changed = len(client.of(WS_LIST_CHANGED))
    paused = await client.call("aidp/wsPause", {"slug": "nap"})
    assert paused["slug"] == "nap" and paused["status"] == "paused"
    await wait_until(lambda: len(client.of(WS_LIST_CHANGED)) == changed + 1, what="wsListChanged after pause")
    assert client.statuses("nap")[-1] == {
        "runId": None,
        "slug": "nap",
        "status": "paused",
        "exitCode": None,
        "durationS": None,
        "error": None,
        "startedAt": None,
        "sandbox": None,
        "attempt": None,
        "maxAttempts": None,
        "waiting": None,
        "progress": None,
        "host": None,
        "elsewhere": False,
    }
    err = await client.fails("aidp/wsRun", {"slugs": ["nap"]})
    assert err.code == -32602 and "paused" in err.message
    assert sequence(client, "nap") == ["paused"]

    resumed = await client.call("aidp/wsResume", {"slug": "nap"})
    assert resumed["status"] == "active"
    await wait_until(lambda: len(client.of(WS_LIST_CHANGED)) == changed + 2, what="wsListChanged after resume")
    assert sequence(client, "nap") == ["paused", "active"]
    summary = await client.call("aidp/wsRun", {"slugs": ["nap"]})
    assert summary["completed"] == 1


async def test_remove_refuses_uncommitted_work_unless_forced(client: AidpClient, configured: Path) -> None:
    ws = await new(client, "dirty")
    await new(client, "clean")
    Path(ws["path"], "scratch.txt").write_text("unsaved work\n")
    changed = len(client.of(WS_LIST_CHANGED))

    err = await client.fails("aidp/wsRemove", {"slug": "dirty"})
    assert err.code == -32602
    assert "uncommitted" in err.message and "scratch.txt" in err.message
    assert Path(ws["path"], "scratch.txt").exists()
    assert "dirty" in await client.workstreams()

    assert await client.call("aidp/wsRemove", {"slug": "dirty", "force": True}) == {}
    assert not Path(ws["path"]).exists()
    assert await client.call("aidp/wsRemove", {"slug": "clean", "deleteBranch": True}) == {}
    assert await client.workstreams() == {}
    await wait_until(lambda: len(client.of(WS_LIST_CHANGED)) == changed + 2, what="wsListChanged after removes")
    branches = git(configured, "branch", "--list", "aidp/*")
    assert "aidp/dirty" in branches and "aidp/clean" not in branches


async def test_cancel_by_slug_and_by_run_id(client: AidpClient, markers: Path) -> None:
    gate = markers / "never"
    await new(client, "one", gated(gate))
    await new(client, "two", gated(gate))
    await new(client, "three", gated(gate))
    assert await client.call("aidp/wsCancel", {}) == {"cancelled": []}

    run = client.start_call("aidp/wsRun", {"slugs": ["one", "two", "three"], "maxConcurrent": 2})
    await wait_until(
        lambda: sequence(client, "one")[-1:] == ["running"] and sequence(client, "two")[-1:] == ["running"]
    )
    run_id = client.statuses("one")[-1]["runId"]

    assert await client.call("aidp/wsCancel", {"slugs": ["one"]}) == {"cancelled": ["one"]}
    await wait_until(lambda: sequence(client, "one")[-1] == "cancelled", what="one cancelled")
    assert sequence(client, "two")[-1] in ("running", "queued")  # the rest of the run goes on
    await wait_until(lambda: "running" in sequence(client, "three"), what="three takes the free slot")

    cancelled = await client.call("aidp/wsCancel", {"runId": run_id})
    assert sorted(cancelled["cancelled"]) == ["three", "two"]
    summary = await run  # the run's own request answers with its summary
    assert summary["runId"] == run_id
    assert [r["status"] for r in summary["results"]] == ["cancelled"] * 3
    assert summary["cancelled"] == 3 and summary["total"] == 3
    for slug in ("one", "two", "three"):
        assert_run_sequence(client, slug, "cancelled", run_id)
    assert {ws["status"] for ws in (await client.workstreams()).values()} == {"cancelled"}
    assert await client.call("aidp/wsCancel", {"slugs": ["one"]}) == {"cancelled": []}


async def test_requests_are_answered_while_a_run_is_in_progress(client: AidpClient, markers: Path) -> None:
    gate = markers / "gate"
    await new(client, "slow", gated(gate))
    run = client.start_call("aidp/wsRun", {"slugs": ["slow"]})
    await wait_until(lambda: "running" in sequence(client, "slow"), what="slow running")
    listed = await client.workstreams()  # answered while the harness still waits for the gate
    assert listed["slow"]["status"] == "running"
    log = await client.call("aidp/wsLog", {"slug": "slow"})
    assert log["logPath"] is not None
    assert not run.done()
    gate.touch()
    summary = await run
    assert summary["completed"] == 1
    assert (await client.workstreams())["slow"]["status"] == "completed"


# -- progress -------------------------------------------------------------------------------------------


async def test_progress_fresh_token_per_run(configured: Path, open_client: Open) -> None:
    client = await open_client(configured, progress=True)
    await new(client, "good")
    await new(client, "bad", ["sh", "-c", "exit 2"])
    for _ in range(2):
        await client.call("aidp/wsRun", {"slugs": ["good", "bad"]})
    await wait_until(lambda: len(client.progress_reports) == 2, what="two progress tokens")
    await wait_until(
        lambda: all(isinstance(r[-1], lsp.WorkDoneProgressEnd) for r in client.progress_reports.values() if r),
        what="progress ends",
    )
    tokens = list(client.progress_reports)
    assert tokens[0] != tokens[1]
    for token in tokens:
        reports = client.progress_reports[token]
        begin, *middle, end = reports
        assert isinstance(begin, lsp.WorkDoneProgressBegin)
        assert begin.title == "Running 2 workstreams"
        assert all(isinstance(r, lsp.WorkDoneProgressReport) for r in middle)
        # Each end is reported; the second run has history, so its reports carry an ETA too.
        counts = [(r.message or "").split(" ")[0] for r in middle if isinstance(r, lsp.WorkDoneProgressReport)]
        assert [c for c in dict.fromkeys(counts) if c != "0/2"] == ["1/2", "2/2"], counts
        assert sorted(counts) == counts
        last = middle[-1]
        assert isinstance(last, lsp.WorkDoneProgressReport)
        assert (last.message, last.percentage) == ("2/2 done", 100)
        assert isinstance(end, lsp.WorkDoneProgressEnd)
        assert end.message == "1 completed, 1 failed"

    await client.call("aidp/wsRun", {"slugs": ["good"]})
    await wait_until(lambda: len(client.progress_reports) == 3, what="a third token")
    third = client.progress_reports[list(client.progress_reports)[2]]
    await wait_until(lambda: isinstance(third[-1], lsp.WorkDoneProgressEnd), what="third progress ends")
    assert isinstance(third[0], lsp.WorkDoneProgressBegin) and third[0].title == "Running 1 workstream"


async def test_progress_reports_every_end_even_when_the_client_is_slow_to_accept_the_token(
    configured: Path, tmp_path: Path
) -> None:
    async with raw_session(server_command(configured), tmp_path) as raw:
        await raw.initialize(progress=True)
        for slug in ("fast", "faster"):
            await raw.result("aidp/wsNew", {"slug": slug, "task": "t"})
        raw.answering.clear()  # hold the answer to window/workDoneProgress/create
        run = raw.request_nowait("aidp/wsRun", {"slugs": ["fast", "faster"]})
        await wait_until(
            lambda: sum(n["status"] in FINAL for n in raw.of(WS_STATUS)) == 2 and len(raw.server_requests) == 1,
            what="both ended while the token is not yet accepted",
        )
        raw.answering.set()
        summary = (await raw.response(run))["result"]
        assert summary["completed"] == 2
        (create,) = raw.server_requests
        assert create["method"] == "window/workDoneProgress/create"
        token = create["params"]["token"]
        values = [n["value"] for n in raw.of("$/progress") if n["token"] == token]
        assert [v["kind"] for v in values] == ["begin", "report", "report", "end"]
        assert values[0]["title"] == "Running 2 workstreams"
        assert [v["message"] for v in values[1:3]] == ["1/2 done", "2/2 done"]
        assert values[3]["message"] == "2 completed"


async def test_no_progress_without_the_capability(client: AidpClient) -> None:
    await new(client, "quiet")
    summary = await client.call("aidp/wsRun", {"slugs": ["quiet"]})
    assert summary["completed"] == 1
    await client.workstreams()  # a round trip: anything sent before it has arrived
    assert client.progress_reports == {}


async def test_no_progress_create_request_without_the_capability(configured: Path, tmp_path: Path) -> None:
    async with raw_session(server_command(configured), tmp_path) as raw:
        await raw.initialize(progress=False)
        await raw.result("aidp/wsNew", {"slug": "quiet", "task": "t"})
        assert (await raw.result("aidp/wsRun", {"slugs": ["quiet"]}))["completed"] == 1
        await raw.result("aidp/wsList", {})
        assert raw.server_requests == []
        assert raw.of("$/progress") == []


# -- errors -----------------------------------------------------------------------------------------------

BAD_PARAMS: list[tuple[str, Any, str]] = [
    ("aidp/wsRun", {}, "slugs"),
    ("aidp/wsRun", {"slugs": "existing"}, "slugs"),
    ("aidp/wsRun", {"slugs": []}, "slugs"),
    ("aidp/wsRun", {"slugs": ["Not A Slug"]}, "slugs"),
    ("aidp/wsRun", {"slugs": ["a" * 65]}, "slugs"),
    ("aidp/wsRun", {"slugs": [7]}, "slugs"),
    ("aidp/wsRun", {"slugs": ["existing"], "maxConcurrent": 0}, "maxConcurrent"),
    ("aidp/wsRun", {"slugs": ["existing"], "maxConcurrent": 65}, "maxConcurrent"),
    ("aidp/wsRun", {"slugs": ["existing"], "maxConcurrent": "3"}, "maxConcurrent"),
    ("aidp/wsRun", {"slugs": ["existing"], "maxConcurrent": True}, "maxConcurrent"),
    ("aidp/wsRun", {"slugs": ["existing"], "maxConcurrent": 2.5}, "maxConcurrent"),
    ("aidp/wsRun", {"slugs": ["existing"], "timeoutS": 0}, "timeoutS"),
    ("aidp/wsRun", {"slugs": ["existing"], "timeoutS": "1"}, "timeoutS"),
    ("aidp/wsRun", {"slugs": ["existing"], "mode": ""}, "mode"),
    ("aidp/wsRun", {"slugs": ["existing"], "steps": "a,b"}, "steps"),
    ("aidp/wsRun", {"slugs": ["existing"], "bogus": 1}, "bogus"),
    ("aidp/wsRun", {"slugs": ["existing"], "max_concurrent": 2}, "max_concurrent"),
    ("aidp/wsRun", ["existing"], "params"),
    ("aidp/wsRunAll", {"maxConcurrent": 0}, "maxConcurrent"),
    ("aidp/wsRunAll", {"maxConcurrent": 65}, "maxConcurrent"),
    ("aidp/wsRunAll", {"slugs": ["existing"]}, "slugs"),
    ("aidp/wsList", {"verbose": True}, "verbose"),
    ("aidp/wsNew", {"slug": "valid"}, "task"),
    ("aidp/wsNew", {"task": "t"}, "slug"),
    ("aidp/wsNew", {"slug": "Bad_Slug", "task": "t"}, "slug"),
    ("aidp/wsNew", {"slug": "-x", "task": "t"}, "slug"),
    ("aidp/wsNew", {"slug": "valid", "task": "t", "command": "echo"}, "command"),
    ("aidp/wsNew", {"slug": "valid", "task": "t", "command": []}, "command"),
    ("aidp/wsNew", {"slug": "valid", "task": ""}, "task"),
    ("aidp/wsNew", {"slug": "valid", "task": "t", "baseBranch": 3}, "baseBranch"),
    ("aidp/wsRemove", {"slug": "existing", "force": "yes"}, "force"),
    ("aidp/wsRemove", {"slug": "existing", "deleteBranch": 1}, "deleteBranch"),
    ("aidp/wsRemove", {}, "slug"),
    ("aidp/wsPause", {}, "slug"),
    ("aidp/wsPause", {"slug": None}, "slug"),
    ("aidp/wsResume", {"slug": "existing", "extra": 1}, "extra"),
    ("aidp/wsCancel", {"slugs": "existing"}, "slugs"),
    ("aidp/wsCancel", {"runId": 5}, "runId"),
    ("aidp/wsLog", {"slug": "existing", "tailBytes": -1}, "tailBytes"),
    ("aidp/wsLog", {"slug": "existing", "tailBytes": "10"}, "tailBytes"),
    ("aidp/wsLog", "existing", "params"),
]


async def test_bad_params_are_32602_naming_the_field(client: AidpClient) -> None:
    await new(client, "existing")
    before = await client.workstreams()
    notes = len(client.notes)
    for method, params, field in BAD_PARAMS:
        err = await client.fails(method, params)
        assert err.code == -32602, (method, params, err.code, err.message)
        assert field in err.message, (method, params, err.message)
    assert client.notes[notes:] == []  # nothing started, nothing changed
    assert await client.workstreams() == before
    assert not Path(before["existing"]["path"]).with_name("valid").exists()


async def test_unknown_slugs_are_all_listed_and_nothing_starts(client: AidpClient) -> None:
    await new(client, "known")
    await new(client, "other")
    before = await client.workstreams()
    notes = len(client.notes)

    err = await client.fails("aidp/wsRun", {"slugs": ["known", "ghost", "other", "phantom", "ghost"]})
    assert err.code == -32602
    assert err.data == {"unknown": ["ghost", "phantom"]}
    assert "ghost" in err.message and "phantom" in err.message
    for method in ("aidp/wsPause", "aidp/wsResume", "aidp/wsRemove", "aidp/wsLog"):
        err = await client.fails(method, {"slug": "ghost"})
        assert (err.code, err.data) == (-32602, {"unknown": ["ghost"]}), method
    err = await client.fails("aidp/wsCancel", {"slugs": ["known", "ghost"]})
    assert (err.code, err.data) == (-32602, {"unknown": ["ghost"]})

    await client.workstreams()
    assert client.of(WS_STATUS)[notes:] == []
    assert client.notes[notes:] == []
    assert await client.workstreams() == before


async def test_slug_running_elsewhere_is_32002_and_nothing_of_the_new_run_starts(
    client: AidpClient, markers: Path
) -> None:
    gate = markers / "gate"
    await new(client, "busy", gated(gate))
    await new(client, "bystander")
    first = client.start_call("aidp/wsRun", {"slugs": ["busy"]})
    await wait_until(lambda: "running" in sequence(client, "busy"), what="busy running")
    first_run = client.statuses("busy")[-1]["runId"]

    err = await client.fails("aidp/wsRun", {"slugs": ["bystander", "busy"]})
    assert err.code == -32002
    assert err.data == {"running": ["busy"]}
    assert "busy" in err.message
    err = await client.fails("aidp/wsRemove", {"slug": "busy", "force": True})
    assert err.code == -32002 and err.data == {"running": ["busy"]}
    assert sequence(client, "bystander") == []
    assert (await client.workstreams())["bystander"]["status"] == "active"

    gate.touch()
    summary = await first
    assert summary["runId"] == first_run
    assert [(r["slug"], r["status"]) for r in summary["results"]] == [("busy", "completed")]
    assert_run_sequence(client, "busy", "completed", first_run)
    assert sequence(client, "bystander") == []
    listed = await client.workstreams()
    assert (listed["busy"]["status"], listed["bystander"]["status"]) == ("completed", "active")


async def test_duplicate_slug_in_new_is_32602(client: AidpClient) -> None:
    await new(client, "twin")
    err = await client.fails("aidp/wsNew", {"slug": "twin", "task": "again"})
    assert err.code == -32602 and "twin" in err.message


async def test_unknown_method_is_32601(client: AidpClient) -> None:
    err = await client.fails("aidp/wsFrobnicate", {})
    assert err.code == -32601
    assert "aidp/wsFrobnicate" in err.message
    assert await client.workstreams() == {}


@pytest.mark.parametrize(
    "body",
    [
        b"{this is not json",
        b'{"jsonrpc": "2.0", "id": 99, "method": "aidp/wsList", "params": {}',
        b"\xff\xfe\x00garbage",
        b"null",
        b"[]",
        b'"just a string"',
    ],
    ids=["garbage", "truncated", "binary", "null", "array", "string"],
)
async def test_malformed_json_is_skipped_and_the_server_keeps_serving(
    configured: Path, tmp_path: Path, body: bytes
) -> None:
    async with raw_session(server_command(configured), tmp_path) as raw:
        await raw.initialize()
        raw.send_raw(frame(body))
        raw.send_raw(frame(body))
        assert await raw.result("aidp/wsList", {}) == {"workstreams": []}
        assert raw.proc.returncode is None
        await raw.result("aidp/wsNew", {"slug": "still-here", "task": "t"})
        assert [ws["slug"] for ws in (await raw.result("aidp/wsList", {}))["workstreams"]] == ["still-here"]


async def test_params_omitted_or_null(configured: Path, tmp_path: Path) -> None:
    async with raw_session(server_command(configured), tmp_path) as raw:
        await raw.initialize()
        assert (await raw.request("aidp/wsList", omit_params=True))["result"] == {"workstreams": []}
        assert (await raw.request("aidp/wsList", None))["result"] == {"workstreams": []}
        response = await raw.request("aidp/wsRun", None)
        assert response["error"]["code"] == -32602 and "slugs" in response["error"]["message"]


async def test_run_options_reach_the_harness(client: AidpClient, markers: Path) -> None:
    await new(client, "opts", ["sh", "-c", 'echo "$AIDP_MODE|$AIDP_STEPS|{mode}|{steps}|$AIDP_RUN_ID"'])
    summary = await client.call("aidp/wsRun", {"slugs": ["opts"], "mode": "review", "steps": ["lint", "test"]})
    log = await client.call("aidp/wsLog", {"slug": "opts"})
    assert log["text"] == f"review|lint,test|review|lint,test|{summary['runId']}\n"

    await new(client, "stuck", gated(markers / "never"))
    summary = await client.call("aidp/wsRun", {"slugs": ["stuck"], "timeoutS": 0.5})
    result = summary["results"][0]
    assert result["status"] == "failed" and "timed out" in result["error"]


async def test_unknown_base_branch_is_32602_and_leaves_nothing(client: AidpClient, configured: Path) -> None:
    err = await client.fails("aidp/wsNew", {"slug": "based", "task": "t", "baseBranch": "no-such-branch"})
    assert err.code == -32602 and "no-such-branch" in err.message
    assert not (configured / ".worktrees" / "based").exists()
    ws = await client.call("aidp/wsNew", {"slug": "based", "task": "t", "baseBranch": "main"})
    assert ws["baseBranch"] == "main"


@pytest.mark.parametrize("task", ["nul\x00byte", "lone \ud800 surrogate"], ids=["nul", "surrogate"])
async def test_task_the_engine_cannot_keep_is_refused_before_anything_exists(
    client: AidpClient, configured: Path, task: str
) -> None:
    err = await client.fails("aidp/wsNew", {"slug": "odd", "task": task})
    assert err.code == -32602
    assert not (configured / ".worktrees" / "odd").exists()
    assert "aidp/odd" not in git(configured, "branch", "--list")
    assert (await client.call("aidp/wsNew", {"slug": "odd", "task": "plain"}))["status"] == "active"


@pytest.mark.parametrize(
    ("command", "params"),
    [
        (["tr\x00ue"], {}),
        (None, {"mode": "a\x00b"}),
        (None, {"steps": ["\ud800"]}),
    ],
    ids=["nul-in-command", "nul-in-mode", "surrogate-in-steps"],
)
async def test_unpassable_arguments_end_in_error_not_stuck(
    client: AidpClient, command: list[str] | None, params: dict[str, Any]
) -> None:
    await new(client, "odd", command)
    summary = await client.call("aidp/wsRun", {"slugs": ["odd"], **params})
    assert [r["status"] for r in summary["results"]] == ["error"], summary
    assert "cannot start" in summary["results"][0]["error"]
    assert (await client.workstreams())["odd"]["status"] == "error"
    if command is None:  # not stuck: the next run works
        assert (await client.call("aidp/wsRun", {"slugs": ["odd"]}))["completed"] == 1


async def test_slug_running_in_another_process_is_32002_and_ws_cancel_reaches_it(
    client: AidpClient, configured: Path, markers: Path, driver: Callable[..., Any]
) -> None:
    gate, begun = markers / "gate", markers / "begun"
    await new(client, "remote", ["sh", "-c", f'touch "{begun}"; while [ ! -e "{gate}" ]; do sleep 0.05; done'])
    await new(client, "local")
    other = driver(configured, "remote")
    await wait_until(begun.exists, what="the other process's harness started")
    await wait_until(lambda: (configured / ".aidp" / "state.db").exists())

    err = await client.fails("aidp/wsRun", {"slugs": ["local", "remote"]})
    assert (err.code, err.data) == (-32002, {"running": ["remote"]})
    assert sequence(client, "local") == []
    assert (await client.workstreams())["remote"]["status"] == "running"

    assert await client.call("aidp/wsCancel", {"slugs": ["remote"]}) == {"cancelled": ["remote"]}
    out, _ = await asyncio.to_thread(other.communicate, timeout=60)
    assert '"status":"cancelled"' in out
    assert (await client.workstreams())["remote"]["status"] == "cancelled"


async def test_what_other_processes_do_reaches_the_client_unasked(
    client: AidpClient, configured: Path, markers: Path, driver: Callable[..., Any]
) -> None:
    """A CLI run beside the server: the client hears wsListChanged; that CLI SIGKILLed mid-run:
    the client hears its workstream `cancelled`. No request is sent in between."""
    begun = markers / "begun"
    await new(client, "beside")
    await new(client, "doomed", ["sh", "-c", f'touch "{begun}"; sleep 300'])
    changed = len(client.of(WS_LIST_CHANGED))
    other = driver(configured, "beside")
    assert await asyncio.to_thread(other.wait, 60) == 0
    await wait_until(lambda: len(client.of(WS_LIST_CHANGED)) > changed, what="wsListChanged after a CLI run")

    doomed = driver(configured, "doomed")
    await wait_until(begun.exists, what="the other process's harness started")
    doomed.kill()
    await asyncio.to_thread(doomed.wait, 30)
    await wait_until(lambda: "cancelled" in sequence(client, "doomed"), what="doomed corrected unasked")
    last = client.statuses("doomed")[-1]
    assert last["error"] is not None and last["error"].startswith("interrupted")


async def test_harness_never_gets_the_servers_stdin_or_stdout(client: AidpClient) -> None:
    await new(client, "fds", ["sh", "-c", 'readlink /proc/$$/fd/0; readlink /proc/$$/fd/1; cat; echo "read: $?"'])
    summary = await client.call("aidp/wsRun", {"slugs": ["fds"]})
    assert summary["completed"] == 1
    stdin, stdout, read = (await client.call("aidp/wsLog", {"slug": "fds"}))["text"].splitlines()
    assert stdin == "/dev/null"
    assert stdout == summary["results"][0]["logPath"]
    assert read == "read: 0"


async def test_output_is_utf8_with_replacement(client: AidpClient) -> None:
    await new(client, "bytes", ["sh", "-c", r"printf 'caf\303\251 \377 end\n'"])
    await client.call("aidp/wsRun", {"slugs": ["bytes"]})
    live = "".join(n["text"] for n in client.of(WS_OUTPUT) if n["slug"] == "bytes")
    assert live == "café \ufffd end\n"
    assert (await client.call("aidp/wsLog", {"slug": "bytes"}))["text"] == live


async def test_times_are_iso_utc(client: AidpClient) -> None:
    stamp = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
    ws = await new(client, "clock")
    summary = await client.call("aidp/wsRun", {"slugs": ["clock"]})
    result = summary["results"][0]
    for value in (ws["createdAt"], ws["updatedAt"], result["startedAt"], result["finishedAt"]):
        assert stamp.match(value), value
    assert result["startedAt"] <= result["finishedAt"]
    assert result["durationS"] >= 0


async def test_ws_cancel_without_arguments_cancels_every_run_of_the_server(client: AidpClient, markers: Path) -> None:
    gate = markers / "never"
    for slug in ("r1", "r2"):
        await new(client, slug, gated(gate))
    first = client.start_call("aidp/wsRun", {"slugs": ["r1"]})
    second = client.start_call("aidp/wsRun", {"slugs": ["r2"]})
    await wait_until(lambda: all("running" in sequence(client, s) for s in ("r1", "r2")), what="both running")
    assert sorted((await client.call("aidp/wsCancel", {}))["cancelled"]) == ["r1", "r2"]
    for run in (first, second):
        assert (await run)["cancelled"] == 1


async def test_run_all_leaves_out_what_another_run_has(client: AidpClient, markers: Path) -> None:
    gate = markers / "gate"
    await new(client, "held", gated(gate))
    await new(client, "free")
    held = client.start_call("aidp/wsRun", {"slugs": ["held"]})
    await wait_until(lambda: "running" in sequence(client, "held"), what="held running")
    summary = await client.call("aidp/wsRunAll", {})
    assert [(r["slug"], r["status"]) for r in summary["results"]] == [("free", "completed")]
    assert not held.done()
    gate.touch()
    assert (await held)["completed"] == 1
    assert sequence(client, "held") == ["queued", "running", "completed"]
