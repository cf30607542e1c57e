"""`aidp serve` against what arrives on the wire: broken framing, bodies that are no JSON-RPC
message, requests after `shutdown`, a second `initialize`, thousands of pipelined requests, and
stop signals. Each test drives a real server process over real stdio with raw bytes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import processes_marked, toml_list, write_config
from server_helpers import (
    WS_STATUS,
    RawClient,
    frame,
    raw_session,
    server_command,
    stop_process,
    stored_workstreams,
)
from support import cli, make_repo, wait_until

pytestmark = pytest.mark.timeout(150)

EXIT_TIMEOUT_S = 60.0


@pytest.fixture
def sleeper(repo: Path) -> Path:
    """A repository whose harness sleeps until it is cancelled."""
    write_config(repo, f"[harness]\ngrace_s = 0.5\ncommand = {toml_list(['sleep', '300'])}\n")
    return repo


def request_body(msg_id: int | str, method: str, params: Any = None) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params}).encode()


async def start_sleeping_run(raw: RawClient, repo: Path, slug: str = "sleepy") -> int:
    """Initialize, create `slug` and start its run: the request id, once its harness is running."""
    await raw.initialize()
    await raw.result("aidp/wsNew", {"slug": slug, "task": "sleep"})
    run = raw.request_nowait("aidp/wsRun", {"slugs": [slug]})
    await wait_until(lambda: any(n["status"] == "running" for n in raw.of(WS_STATUS)), what=f"{slug} running")
    await wait_until(lambda: processes_marked(str(repo)) != [], what="the harness process")
    return run


def assert_cancelled_and_gone(repo: Path, slug: str = "sleepy") -> None:
    """No harness process left, and the database says `cancelled` both as the server left it (read
    without an engine, which would correct leftovers) and as `aidp ws list --json` reports it."""
    assert processes_marked(str(repo)) == []
    assert stored_workstreams(repo)[slug].status.value == "cancelled"
    listed = cli(repo, "ws", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert {ws["slug"]: ws["status"] for ws in json.loads(listed.stdout)} == {slug: "cancelled"}


# -- 11: broken framing ends the connection in order ----------------------------------------------

LIST = request_body(99, "aidp/wsList", {})
BROKEN_FRAMES = {
    "too-short": f"Content-Length: {len(LIST) - 5}\r\n\r\n".encode() + LIST,
    "too-long": f"Content-Length: {len(LIST) + 40}\r\n\r\n".encode() + LIST,
    "too-long-then-the-next": f"Content-Length: {len(LIST) + 10}\r\n\r\n".encode()
    + LIST
    + frame(request_body(100, "aidp/wsList", {})),
    "negative": b"Content-Length: -5\r\n\r\n" + LIST,
    "non-numeric": b"Content-Length: five\r\n\r\n" + LIST,
    "no-header": LIST,
}


@pytest.mark.parametrize("kind", sorted(BROKEN_FRAMES))
async def test_broken_framing_cancels_runs_and_exits(sleeper: Path, markers: Path, kind: str) -> None:
    async with raw_session(server_command(sleeper), markers) as raw:
        await start_sleeping_run(raw, sleeper)
        listed = raw.request_nowait("aidp/wsList", {})  # read before the broken frame: still answered
        raw.send_raw(BROKEN_FRAMES[kind])
        await stop_process(raw.proc, timeout=EXIT_TIMEOUT_S)
        assert raw.proc.returncode == 1, "the server did not end the connection by itself"
        await wait_until(lambda: raw.eof, what="the server's stdout closed")
        assert "result" in raw.responses[listed]
        assert 99 not in raw.responses and 100 not in raw.responses
        assert raw.of(WS_STATUS)[-1]["status"] == "cancelled"
    assert_cancelled_and_gone(sleeper)


async def test_a_body_that_arrives_in_pieces_is_read_whole(repo: Path, markers: Path) -> None:
    """Header and body in separate writes (as vscode-jsonrpc writes them), a body cut right after
    an inner `}`, and a body larger than a pipe holds: all framed right, so all answered."""
    small = request_body(1, "aidp/wsPause", {"slug": {"inner": {}}, "more": 1})
    cut = small.index(b"{}}") + 3
    large = request_body(2, "aidp/wsList", {"padding": "x" * 3_000_000})
    async with raw_session(server_command(repo), markers) as raw:
        await raw.initialize()
        assert raw.proc.stdin is not None
        for piece in (frame(small)[: -len(small)], small[:cut], small[cut:]):
            raw.send_raw(piece)
            await raw.proc.stdin.drain()
            await asyncio.sleep(0.05)  # let each piece arrive on its own
        assert (await raw.response(1))["error"]["code"] == -32602
        raw.send_raw(frame(large))
        assert (await raw.response(2))["error"]["code"] == -32602
        assert raw.proc.returncode is None


async def test_blank_lines_between_messages_are_tolerated(repo: Path, markers: Path) -> None:
    async with raw_session(server_command(repo), markers) as raw:
        await raw.initialize()
        raw.send_raw(b"\r\n" + frame(request_body(7, "aidp/wsList", {})) + b"\n\r\n")
        assert "result" in await raw.response(7)
        assert (await raw.result("aidp/wsList", {})) == {"workstreams": []}


# -- 12: every request gets an answer ---------------------------------------------------------------


def nested(depth: int) -> Any:
    value: Any = "deep"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("depth", [500, 1000, 100_000])
async def test_deeply_nested_params_are_answered(repo: Path, markers: Path, depth: int) -> None:
    body = b'{"jsonrpc": "2.0", "id": "deep", "method": "aidp/wsPause", "params": {"slug": '
    body += b"[" * depth + b'"x"' + b"]" * depth + b"}}"
    async with raw_session(server_command(repo), markers) as raw:
        await raw.initialize()
        raw.send_raw(frame(body))
        response = await raw.response("deep")
        assert response["error"]["code"] == -32602, response
        # The same as a notification: nobody to answer, and the server goes on.
        raw.send_raw(frame(body.replace(b'"id": "deep", ', b"")))
        assert (await raw.result("aidp/wsList", {})) == {"workstreams": []}
        assert raw.proc.returncode is None


async def test_deeply_nested_value_in_an_lsp_request(repo: Path, markers: Path) -> None:
    async with raw_session(server_command(repo), markers) as raw:
        await raw.initialize()
        raw.send(
            {
                "jsonrpc": "2.0",
                "id": "opts",
                "method": "workspace/executeCommand",
                "params": {"command": "x", "arguments": nested(900)},
            }
        )
        response = await raw.response("opts")
        assert "error" in response
        assert (await raw.result("aidp/wsList", {})) == {"workstreams": []}


async def test_undecodable_bodies_get_the_json_rpc_error(repo: Path, markers: Path) -> None:
    """JSON-RPC 2.0, section 5.1: -32700 for what is not JSON (id null: nobody can read it),
    -32600 for JSON that is no request (with its id when it has one)."""
    async with raw_session(server_command(repo), markers) as raw:
        await raw.initialize()
        bad_utf8 = b'{"jsonrpc": "2.0", "id": 5, "method": "aidp/wsList", "params": {"x": "\xff\xfe"}}'
        cases = [
            (bad_utf8, None, -32700),
            (b'{"jsonrpc": "2.0", "id": 6, "method": ', None, -32700),
            (b"[1, 2]", None, -32600),
            (b'{"id": 8, "method": "aidp/wsList"}', 8, -32600),
            (b'{"jsonrpc": "2.0", "id": 9, "method": 42}', 9, -32600),
            (b'{"jsonrpc": "2.0", "id": [10], "method": "aidp/wsList"}', None, -32600),
        ]
        for body, answered_id, code in cases:
            raw.send_raw(frame(body))
            response = await raw.response(answered_id)
            assert response["jsonrpc"] == "2.0" and "id" in response, response
            assert response["error"]["code"] == code, (body, response)
        assert (await raw.result("aidp/wsList", {})) == {"workstreams": []}


async def test_requests_after_the_shutdown_reply_are_refused(repo: Path, markers: Path) -> None:
    async with raw_session(server_command(repo), markers) as raw:
        await raw.initialize()
        assert (await raw.request("shutdown"))["result"] is None
        for method, params in (("aidp/wsList", {}), ("aidp/wsRunAll", {}), ("shutdown", None), ("no/such", {})):
            response = await raw.request(method, params)
            assert response["error"]["code"] == -32803, (method, response)
            assert "shut down" in response["error"]["message"]
        raw.notify("exit")
        await stop_process(raw.proc, timeout=EXIT_TIMEOUT_S)
        assert raw.proc.returncode == 0


# -- 13: pipelined requests are bounded, not dropped ------------------------------------------------

PIPELINED = 10_000
RSS_GROWTH_MAX = 20 * 1024 * 1024


async def test_pipelined_requests_are_all_answered_in_bounded_memory(repo: Path, markers: Path) -> None:
    async with raw_session(server_command(repo), markers) as raw:
        await raw.initialize()
        for i in range(5):
            await raw.result("aidp/wsNew", {"slug": f"ws-{i}", "task": "a task long enough to weigh something " * 4})
        server = psutil.Process(raw.proc.pid)
        baseline = server.memory_info().rss
        peak = baseline
        ids = [raw.request_nowait("aidp/wsList", {}) for _ in range(PIPELINED)]

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, server.memory_info().rss)
                await asyncio.sleep(0.01)

        sampler = asyncio.create_task(sample())
        try:
            await wait_until(lambda: all(i in raw.responses for i in ids), timeout=120, what="every answer")
        finally:
            sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        assert all(len(raw.responses.pop(i)["result"]["workstreams"]) == 5 for i in ids)
        assert peak - baseline < RSS_GROWTH_MAX, f"grew {(peak - baseline) >> 20} MiB from {baseline >> 20} MiB"


# -- 14: one server, one repository -------------------------------------------------------------------


async def test_a_second_initialize_is_refused_and_the_run_goes_on(tmp_path: Path, markers: Path) -> None:
    for name in ("first", "other"):
        (tmp_path / name).mkdir()
    first, other = make_repo(tmp_path / "first"), make_repo(tmp_path / "other")
    write_config(first, f"[harness]\ngrace_s = 0.5\ncommand = {toml_list(['sleep', '300'])}\n")
    async with raw_session(server_command(None), markers) as raw:
        await raw.initialize(root_uri=first.as_uri())
        await raw.result("aidp/wsNew", {"slug": "sleepy", "task": "sleep"})
        run = raw.request_nowait("aidp/wsRun", {"slugs": ["sleepy"]})
        await wait_until(lambda: processes_marked(str(first)) != [], what="the harness process")

        again = await raw.request("initialize", {"processId": None, "rootUri": other.as_uri(), "capabilities": {}})
        assert again["error"]["code"] == -32600, again
        assert "already initialized" in again["error"]["message"]

        listed = await raw.result("aidp/wsList", {})
        assert [(ws["slug"], ws["status"], ws["path"]) for ws in listed["workstreams"]] == [
            ("sleepy", "running", str(first / ".worktrees" / "sleepy"))
        ]
        assert await raw.result("aidp/wsCancel", {"slugs": ["sleepy"]}) == {"cancelled": ["sleepy"]}
        summary = (await raw.response(run))["result"]
        assert summary["cancelled"] == 1
    assert not (other / ".aidp").exists()


# -- 5: stop signals end like the end of input ----------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
async def test_a_stop_signal_cancels_every_run_then_exits(sleeper: Path, markers: Path, signum: int) -> None:
    async with raw_session(server_command(sleeper), markers) as raw:
        await start_sleeping_run(raw, sleeper)
        raw.proc.send_signal(signum)
        await stop_process(raw.proc, timeout=EXIT_TIMEOUT_S)
        assert raw.proc.returncode == 128 + signum
        assert raw.of(WS_STATUS)[-1]["status"] == "cancelled"
    assert_cancelled_and_gone(sleeper)
