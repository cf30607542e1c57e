"""Start-up (issue 13, goal 2): `aidp serve` answers `initialize` with only its start-up modules
loaded (no asyncio, pygls, lsprotocol or executor), then opens the repository; requests sent right after
the answer wait for it. `aidp ws list` imports no UI or server library."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from server_helpers import frame, raw_session, server_command
from support import PYTHON, child_env, cli, make_repo

import aidp

# Loaded by the server after it answers `initialize`, or by the commands that need them.
HEAVY = (
    "asyncio",
    "pygls",
    "lsprotocol",
    "cattrs",
    "rich",
    "prompt_toolkit",
    "aidp.engine.engine",
    "aidp.engine.executor",
)


def loaded_heavy(code: str) -> list[str]:
    """The HEAVY modules a fresh interpreter holds after running `code`."""
    probe = f"{code}\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([PYTHON, "-c", probe], capture_output=True, text=True, check=True).stdout
    return [name for name in out.split() if name.startswith(HEAVY)]


def test_what_initialize_needs_imports_no_asyncio_pygls_or_engine() -> None:
    assert loaded_heavy("import aidp.cli.main, aidp.server.lifecycle") == []
    assert loaded_heavy("import aidp.server.app") != []  # the probe sees them when they are there


async def test_initialize_answers_at_once_and_requests_after_it_wait_for_the_repository(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    assert cli(repo, "ws", "new", "first", "a task").returncode == 0
    async with raw_session(server_command(None), repo) as raw:
        answer = await raw.result("initialize", {"processId": None, "rootUri": repo.as_uri(), "capabilities": {}})
        assert answer == {"capabilities": {}, "serverInfo": {"name": "aidp", "version": aidp.__version__}}
        raw.notify("initialized", {})
        listed = await raw.result("aidp/wsList", {})  # sent before the repository is open: it waits
        assert [ws["slug"] for ws in listed["workstreams"]] == ["first"]
        refused = await raw.request("initialize", {"processId": None, "capabilities": {}})
        assert refused["error"]["code"] == -32600


async def test_initialize_with_params_of_the_wrong_shape_is_refused_and_a_good_one_still_works(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    async with raw_session(server_command(repo), repo) as raw:
        bad = await raw.request("initialize", {"processId": "not a number", "capabilities": {}})
        assert bad["error"]["code"] == -32602 and "processId" in bad["error"]["message"]
        await raw.initialize(repo.as_uri())
        assert (await raw.result("aidp/wsList", {}))["workstreams"] == []


def test_ws_list_imports_no_ui_or_server_library(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    assert cli(repo, "ws", "new", "first", "a task").returncode == 0
    out = subprocess.run(
        [PYTHON, "-X", "importtime", "-m", "aidp", "ws", "list"],
        cwd=repo,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.splitlines()[1].split()[:2] == ["first", "active"]
    imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time")}
    assert "aidp.engine.engine" in imported  # the list needs the engine
    assert not {name for name in imported if name.startswith(("pygls", "lsprotocol", "rich", "prompt_toolkit"))}


async def test_requests_sent_with_initialize_in_one_write_are_all_answered(tmp_path: Path) -> None:
    """The first message is read before the event loop exists: what came with it in the same
    read is handed on, not lost."""
    repo = make_repo(tmp_path)
    assert cli(repo, "ws", "new", "first", "a task").returncode == 0
    async with raw_session(server_command(repo), repo) as raw:
        messages = [
            {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"processId": None, "capabilities": {}}},
            {"jsonrpc": "2.0", "method": "initialized", "params": {}},
            {"jsonrpc": "2.0", "id": 2, "method": "aidp/wsList", "params": {}},
            {"jsonrpc": "2.0", "id": 3, "method": "aidp/wsNew", "params": {"slug": "second", "task": "another"}},
        ]
        raw.send_raw(b"".join(frame(json.dumps(message).encode()) for message in messages))
        assert (await raw.response(1))["result"]["serverInfo"]["name"] == "aidp"
        assert [ws["slug"] for ws in (await raw.response(2))["result"]["workstreams"]] == ["first"]
        assert (await raw.response(3))["result"]["slug"] == "second"
