"""`aidp serve` when things end early: `$/cancelRequest` of a run, the client closing stdin mid-run,
`shutdown`/`exit` mid-run, and a client that stops reading during an output flood. Each harness
spawns a grandchild in its own process group; afterwards no process of it may be left."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import processes_marked, toml_list, write_config
from lsprotocol import types as lsp
from pygls.exceptions import JsonRpcException
from server_helpers import (
    WS_OUTPUT,
    WS_STATUS,
    descendants,
    initialize_params,
    lsp_session,
    raw_session,
    server_command,
    stop_process,
    stored_workstreams,
)
from support import PYTHON, cli, group_members, pid_alive, wait_until

pytestmark = pytest.mark.timeout(150)

FLOOD_BYTES = 50_000_000
MARKER = re.compile(r"\n?\[aidp: (\d+) bytes of output skipped; the log file has them all\]\n?")


def with_grandchild(markers: Path) -> list[str]:
    """Record the harness's pid (= its process group) and a grandchild's pid, then wait forever."""
    return [
        "sh",
        "-c",
        f'echo $$ > "{markers}/pgid-$AIDP_SLUG"; sleep 300 & echo $! > "{markers}/gc-$AIDP_SLUG"; wait',
    ]


@pytest.fixture
def configured(repo: Path, markers: Path) -> Path:
    write_config(repo, f"[harness]\ngrace_s = 0.5\ncommand = {toml_list(with_grandchild(markers))}\n")
    return repo


def state_as_dict(state: dict[str, Any]) -> dict[str, str]:
    return {slug: ws.status.value for slug, ws in state.items()}


def read_pid(path: Path) -> int:
    return int(path.read_text().strip())


async def started(markers: Path, slug: str) -> tuple[int, int]:
    """(pgid, grandchild pid) once the harness has written both."""
    gc, pg = markers / f"gc-{slug}", markers / f"pgid-{slug}"
    await wait_until(lambda: gc.exists() and gc.read_text().strip() != "" and pg.exists(), what=f"{slug} started")
    return read_pid(pg), read_pid(gc)


def assert_gone(pgid: int, grandchild: int) -> None:
    assert not pid_alive(grandchild), f"grandchild {grandchild} still alive"
    assert group_members(pgid) == [], f"process group {pgid} still has {group_members(pgid)}"


@pytest.mark.parametrize("method", ["aidp/wsRun", "aidp/wsRunAll"])
async def test_cancel_request_cancels_the_run_and_its_grandchildren(
    configured: Path, markers: Path, method: str
) -> None:
    slugs = ["first", "second", "third"]
    async with lsp_session(server_command(configured), markers, initialize_params()) as client:
        for slug in slugs:
            await client.call("aidp/wsNew", {"slug": slug, "task": "wait"})
        params: dict[str, Any] = {"maxConcurrent": 2}
        if method == "aidp/wsRun":
            params["slugs"] = slugs
        run = client.start_call(method, params, msg_id="the-run")
        await wait_until(lambda: sum(n["status"] == "running" for n in client.statuses()) == 2, what="two running")
        running = [s for s in slugs if "running" in [n["status"] for n in client.statuses(s)]]
        (waiting,) = set(slugs) - set(running)
        groups = [await started(markers, slug) for slug in running]
        server_children = descendants(client.server.pid)
        assert {gc for _, gc in groups} <= set(server_children)

        client.protocol.notify("$/cancelRequest", lsp.CancelParams(id="the-run"))
        with pytest.raises(JsonRpcException) as caught:
            await run
        assert caught.value.code == -32800

        for pgid, gc in groups:
            assert_gone(pgid, gc)
        assert [pid for pid in server_children if pid_alive(pid)] == []
        assert descendants(client.server.pid) == []
        listed = await client.workstreams()
        assert {s: ws["status"] for s, ws in listed.items()} == dict.fromkeys(slugs, "cancelled")
        # The queued one never started: no `running`, no process, but a final `cancelled`.
        assert [n["status"] for n in client.statuses(waiting)] == ["queued", "cancelled"]
        assert not (markers / f"gc-{waiting}").exists()
        for slug in running:
            assert [n["status"] for n in client.statuses(slug)] == ["queued", "running", "cancelled"]
        # The server goes on serving: a new run works.
        write_config(configured, "[harness]\ncommand = ['true']\n")
        summary = await client.call("aidp/wsRun", {"slugs": [waiting]})
        assert summary["completed"] == 1


async def test_cancel_request_of_a_finished_or_unknown_request_is_harmless(configured: Path, markers: Path) -> None:
    write_config(configured, "[harness]\ncommand = ['true']\n")
    async with lsp_session(server_command(configured), markers, initialize_params()) as client:
        await client.call("aidp/wsNew", {"slug": "quick", "task": "t"})
        summary = await client.call("aidp/wsRun", {"slugs": ["quick"]})
        client.protocol.notify("$/cancelRequest", lsp.CancelParams(id="no-such-request"))
        client.protocol.notify("$/cancelRequest", lsp.CancelParams(id=summary["runId"]))
        assert (await client.workstreams())["quick"]["status"] == "completed"


async def test_ws_cancel_ends_grandchildren_too(configured: Path, markers: Path) -> None:
    async with lsp_session(server_command(configured), markers, initialize_params()) as client:
        await client.call("aidp/wsNew", {"slug": "victim", "task": "t"})
        run = client.start_call("aidp/wsRun", {"slugs": ["victim"]})
        pgid, gc = await started(markers, "victim")
        assert await client.call("aidp/wsCancel", {"slugs": ["victim"]}) == {"cancelled": ["victim"]}
        summary = await run
        assert summary["results"][0]["status"] == "cancelled"
        assert_gone(pgid, gc)


async def test_eof_on_stdin_cancels_runs_and_exits(configured: Path, markers: Path) -> None:
    async with raw_session(server_command(configured), markers) as raw:
        await raw.initialize()
        for slug in ("left", "right"):
            await raw.result("aidp/wsNew", {"slug": slug, "task": "t"})
        run_id = raw.request_nowait("aidp/wsRun", {"slugs": ["left", "right"]})
        groups = [await started(markers, "left"), await started(markers, "right")]
        await wait_until(lambda: sum(n["status"] == "running" for n in raw.of(WS_STATUS)) == 2, what="both running")
        children = descendants(raw.proc.pid)

        assert await raw.close(timeout=60) == 0  # EOF, then the process exits by itself
        for pgid, gc in groups:
            assert_gone(pgid, gc)
        assert [pid for pid in children if pid_alive(pid)] == []
        assert processes_marked(str(configured)) == []
        # Recorded before exiting: a fresh look at the database (no engine, so no recovery) says so.
        state = stored_workstreams(configured)
        assert {s: ws.status.value for s, ws in state.items()} == {"left": "cancelled", "right": "cancelled"}
        listed = cli(configured, "ws", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert {ws["slug"]: ws["status"] for ws in json.loads(listed.stdout)} == state_as_dict(state)
        # Whatever was answered on the way out, the run was not reported completed.
        if run_id in raw.responses:
            response = raw.responses[run_id]
            assert "error" in response or response["result"]["cancelled"] == 2


async def test_shutdown_during_a_run_cancels_it_then_exit_is_clean(configured: Path, markers: Path) -> None:
    async with lsp_session(server_command(configured), markers, initialize_params()) as client:
        await client.call("aidp/wsNew", {"slug": "long", "task": "t"})
        await client.call("aidp/wsNew", {"slug": "waiting", "task": "t"})
        run = client.start_call("aidp/wsRun", {"slugs": ["long", "waiting"], "maxConcurrent": 1})
        pgid, gc = await started(markers, "long")
        await wait_until(lambda: any(n["status"] == "running" for n in client.statuses("long")), what="long running")
        children = descendants(client.server.pid)

        assert await client.call(lsp.SHUTDOWN, None) is None
        # By the time shutdown is answered, every run is ended and recorded.
        assert_gone(pgid, gc)
        state = stored_workstreams(configured)
        assert {s: ws.status.value for s, ws in state.items()} == {"long": "cancelled", "waiting": "cancelled"}
        assert [n["status"] for n in client.statuses("long")][-1] == "cancelled"
        assert [n["status"] for n in client.statuses("waiting")] == ["queued", "cancelled"]
        outcome: Any
        try:
            outcome = await run
        except JsonRpcException as exc:
            outcome = exc
        if isinstance(outcome, JsonRpcException):
            assert outcome.code == -32800
        else:
            assert outcome["cancelled"] == 2

        client.exit(None)
        await stop_process(client.server, timeout=60)
        assert client.server.returncode == 0
        assert [pid for pid in children if pid_alive(pid)] == []
        assert processes_marked(str(configured)) == []


async def test_exit_without_shutdown_during_a_run_cancels_it(configured: Path, markers: Path) -> None:
    async with raw_session(server_command(configured), markers) as raw:
        await raw.initialize()
        await raw.result("aidp/wsNew", {"slug": "abrupt", "task": "t"})
        raw.request_nowait("aidp/wsRun", {"slugs": ["abrupt"]})
        pgid, gc = await started(markers, "abrupt")
        raw.notify("exit")
        await stop_process(raw.proc, timeout=60)
        assert raw.proc.returncode == 1  # LSP: exit without shutdown
        assert_gone(pgid, gc)
        assert stored_workstreams(configured)["abrupt"].status.value == "cancelled"


async def test_output_flood_to_a_client_that_does_not_read(repo: Path, markers: Path) -> None:
    done = markers / "flood-done"
    flood = ["sh", "-c", f"head -c {FLOOD_BYTES} /dev/zero | tr '\\0' a; touch {done}"]
    write_config(repo, f"[harness]\ngrace_s = 0.5\ncommand = {toml_list(flood)}\n")
    async with raw_session(server_command(repo), markers) as raw:
        await raw.initialize()
        await raw.result("aidp/wsNew", {"slug": "flood", "task": "t"})
        raw.reading.clear()  # from now on the client reads nothing
        run_id = raw.request_nowait("aidp/wsRun", {"slugs": ["flood"]})
        await wait_until(lambda: done.exists(), timeout=120, what="the harness wrote everything")
        logs = repo / ".aidp" / "logs" / "flood"
        await wait_until(
            lambda: any(p.stat().st_size == FLOOD_BYTES for p in logs.glob("*.log")), what="the log file complete"
        )
        assert raw.proc.returncode is None
        unread = len(raw.notes)

        raw.reading.set()
        response = await raw.response(run_id, timeout=120)
        summary = response["result"]
        assert summary["completed"] == 1, summary
        assert raw.proc.returncode is None
        assert (await raw.result("aidp/wsList", {}))["workstreams"][0]["status"] == "completed"

        texts = [n["text"] for n in raw.of(WS_OUTPUT) if n["slug"] == "flood"]
        assert max(len(t.encode()) for t in texts) <= 64 * 1024 + 200  # a chunk, maybe after a skip marker
        total = sum(len(t) for t in texts)
        assert total < FLOOD_BYTES // 10, f"{total} bytes of live output for a {FLOOD_BYTES} byte flood"
        joined = "".join(texts)
        assert "bytes of output skipped; the log file has them all]" in joined
        delivered = MARKER.sub("", joined)
        assert set(delivered) <= {"a"}  # nothing but the harness's bytes and the markers
        assert len(delivered) + sum(int(n) for n in MARKER.findall(joined)) == FLOOD_BYTES
        assert len(raw.notes) > unread
        log_path = Path(summary["results"][0]["logPath"])
        assert log_path.stat().st_size == FLOOD_BYTES
        log = await raw.result("aidp/wsLog", {"slug": "flood", "tailBytes": 10})
        assert log["text"] == "a" * 10


async def test_live_output_accounts_for_every_byte_when_the_client_falls_behind(repo: Path, markers: Path) -> None:
    """Output at a pace the live view could follow, to a client that reads nothing until the end:
    the server must skip (its memory is bounded), and what it delivers plus what its markers say
    it skipped is exactly what the harness wrote."""
    total = 64 * 48 * 1024
    trickle = [
        PYTHON,
        "-c",
        "import os, time\nfor _ in range(64):\n    os.write(1, b'b' * 48 * 1024)\n    time.sleep(0.03)\n"
        f"open({str(markers / 'trickle-done')!r}, 'w').close()\n",
    ]
    write_config(repo, f"[harness]\ncommand = {toml_list(trickle)}\n")
    async with raw_session(server_command(repo), markers) as raw:
        await raw.initialize()
        await raw.result("aidp/wsNew", {"slug": "trickle", "task": "t"})
        raw.reading.clear()
        run_id = raw.request_nowait("aidp/wsRun", {"slugs": ["trickle"]})
        await wait_until((markers / "trickle-done").exists, timeout=120, what="the harness wrote everything")
        raw.reading.set()
        summary = (await raw.response(run_id, timeout=120))["result"]
        assert summary["completed"] == 1
        joined = "".join(n["text"] for n in raw.of(WS_OUTPUT))
        skipped = sum(int(n) for n in MARKER.findall(joined))
        delivered = MARKER.sub("", joined)
        assert set(delivered) <= {"b"}
        assert skipped > 0
        assert len(delivered) + skipped == total, (len(delivered), skipped, total)


async def test_no_status_change_is_lost_under_an_output_flood(repo: Path, markers: Path) -> None:
    """Output may be skipped; status notifications never are."""
    flood = ["sh", "-c", "head -c 5000000 /dev/zero | tr '\\0' b"]
    write_config(repo, f"[harness]\nmax_concurrent = 2\ncommand = {toml_list(flood)}\n")
    async with lsp_session(server_command(repo), markers, initialize_params(progress=True)) as client:
        slugs = [f"f{i}" for i in range(4)]
        for slug in slugs:
            await client.call("aidp/wsNew", {"slug": slug, "task": "t"})
        summary = await client.call("aidp/wsRun", {"slugs": slugs}, timeout=120)
        assert summary["completed"] == 4
        for slug in slugs:
            assert [n["status"] for n in client.statuses(slug)] == ["queued", "running", "completed"]


async def test_cancel_request_while_the_progress_token_is_pending(configured: Path, markers: Path) -> None:
    """The client has not yet accepted the run's progress token when it cancels the run."""
    async with raw_session(server_command(configured), markers) as raw:
        await raw.initialize(progress=True)
        await raw.result("aidp/wsNew", {"slug": "early", "task": "t"})
        raw.answering.clear()
        run = raw.request_nowait("aidp/wsRun", {"slugs": ["early"]})
        pgid, gc = await started(markers, "early")
        await wait_until(lambda: len(raw.server_requests) == 1, what="the progress token request")
        raw.notify("$/cancelRequest", {"id": run})
        response = await raw.response(run)
        assert response["error"]["code"] == -32800, response
        await wait_until(lambda: not pid_alive(gc), what="the grandchild gone")
        assert_gone(pgid, gc)
        statuses = [n["status"] for n in raw.of(WS_STATUS) if n["slug"] == "early"]
        assert statuses == ["queued", "running", "cancelled"]
        assert (await raw.result("aidp/wsList", {}))["workstreams"][0]["status"] == "cancelled"
        raw.answering.set()


async def test_a_run_requested_after_shutdown_is_refused(configured: Path, markers: Path) -> None:
    async with raw_session(server_command(configured), markers) as raw:
        await raw.initialize()
        for slug in ("long", "late"):
            await raw.result("aidp/wsNew", {"slug": slug, "task": "t"})
        raw.request_nowait("aidp/wsRun", {"slugs": ["long"]})
        pgid, gc = await started(markers, "long")
        shutdown = raw.request_nowait("shutdown")
        late = raw.request_nowait("aidp/wsRun", {"slugs": ["late"]})  # read while shutdown is under way
        assert (await raw.response(shutdown)) == {"jsonrpc": "2.0", "id": shutdown, "result": None}
        response = await raw.response(late)
        assert response["error"]["code"] == -32803, response
        assert "shutting down" in response["error"]["message"]
        assert [n for n in raw.of(WS_STATUS) if n["slug"] == "late"] == []
        assert_gone(pgid, gc)
        raw.notify("exit")
        await stop_process(raw.proc, timeout=60)
        assert raw.proc.returncode == 0
        assert state_as_dict(stored_workstreams(configured)) == {"long": "cancelled", "late": "active"}
