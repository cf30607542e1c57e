"""Ready worktrees and hooks over the wire: the real server over real stdio (pytest-lsp), a real
repository, a real setup command and hook."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import toml_list, write_config, write_script
from server_helpers import AidpClient, initialize_params, lsp_session, server_command
from support import PYTHON, wait_until

pytestmark = pytest.mark.timeout(180)

INVALID_PARAMS = -32602


@pytest.fixture
async def client(repo: Path, tmp_path: Path) -> AsyncIterator[AidpClient]:
    """A server whose worktrees copy `.env`, whose setup fails until `network-is-up` exists, and
    whose on_end hook records its arguments."""
    flag, hooked = tmp_path / "network-is-up", tmp_path / "hooked.jsonl"
    setup = write_script(
        tmp_path,
        "setup.py",
        f"""
        import pathlib, sys
        if not pathlib.Path({str(flag)!r}).exists():
            print("npm ERR! network unreachable")
            sys.exit(7)
        """,
    )
    hook = write_script(
        tmp_path,
        "hook.py",
        f"""
        import json, sys
        open({str(hooked)!r}, "a").write(json.dumps(sys.argv[1:]) + "\\n")
        """,
    )
    (repo / ".env").write_text("TOKEN=abc\n")
    write_config(
        repo,
        f"""
        [harness]
        command = {toml_list([PYTHON, "-c", "import pathlib; print(pathlib.Path('.env').read_text())"])}
        [worktree]
        copy = [".env"]
        setup = {toml_list([PYTHON, str(setup)])}
        [hooks]
        on_end = {toml_list([PYTHON, str(hook), "{slug}", "{status}", "{exit_code}"])}
        """,
    )
    async with lsp_session(server_command(repo), tmp_path, initialize_params()) as session:
        yield session


async def test_setup_state_on_the_wire_and_ws_setup_redoes_it(client: AidpClient, repo: Path, tmp_path: Path) -> None:
    ws = await client.call("aidp/wsNew", {"slug": "web", "task": "build it"})
    setup = ws["setup"]
    assert setup["status"] == "failed" and setup["copied"] == [".env"]
    assert setup["error"].splitlines()[0] == "exit code 7" and "npm ERR!" in setup["error"]
    assert Path(setup["logPath"]).is_file() and setup["command"][0] == PYTHON
    assert (await client.workstreams())["web"]["setup"]["status"] == "failed"

    err = await client.fails("aidp/wsRun", {"slugs": ["web"]})
    assert err.code == INVALID_PARAMS, err
    assert "web: its setup failed (exit code 7); fix it, then redo it: 'aidp ws setup web'" in err.message
    summary = await client.call("aidp/wsRunAll", {})
    (result,) = summary["results"]
    assert result["status"] == "blocked" and "its setup failed" in result["error"]

    (tmp_path / "network-is-up").write_text("")
    ws = await client.call("aidp/wsSetup", {"slug": "web"})
    assert ws["setup"]["status"] == "ok" and ws["setup"]["error"] is None
    summary = await client.call("aidp/wsRun", {"slugs": ["web"]})
    assert summary["completed"] == 1

    hooked = tmp_path / "hooked.jsonl"
    await wait_until(lambda: hooked.exists() and len(hooked.read_text().splitlines()) == 2, what="both hooks")
    calls = [json.loads(line) for line in hooked.read_text().splitlines()]
    assert sorted(calls) == [["web", "blocked", ""], ["web", "completed", "0"]]  # each hook runs on its own

    err = await client.fails("aidp/wsSetup", {"slug": "ghost"})
    assert err.code == INVALID_PARAMS and err.data == {"unknown": ["ghost"]}, err
    err = await client.fails("aidp/wsSetup", {"slug": "Bad Slug"})
    assert err.code == INVALID_PARAMS and "$.slug" in err.message, err
