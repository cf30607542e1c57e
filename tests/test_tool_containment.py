"""The git aidp runs for its own work runs the repository's hooks, which are the user's programs
and may never end. Whatever ends aidp's git (Ctrl-C, `$/cancelRequest`, a client gone, aidp
SIGKILLed and the next command recovering) ends them too. Facts recorded by the hooks, never timing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import events, spawn_cli, workstreams
from conftest import write_config
from lsprotocol import types as lsp
from pygls.exceptions import JsonRpcException
from server_helpers import initialize_params, lsp_session, server_command
from support import cli, git, git_hook, make_repo, pid_alive, wait_until, wait_until_sync

pytestmark = pytest.mark.timeout(150)

# What the hook leaves running: itself; itself ignoring SIGTERM; a process that left its group
# (found by the environment marker aidp gave its git).
HOOK_BODIES = {
    "plain": "echo $$ >> {pids}; exec sleep 60",
    "stubborn": "trap '' TERM; echo $$ >> {pids}; while :; do sleep 0.1; done",
    "setsid": "setsid sh -c 'echo $$ >> {pids}; exec sleep 60' & wait",
}


@pytest.fixture(autouse=True)
def _no_hook_outlives_its_test(tmp_path: Path) -> Iterator[None]:
    """A failing test must not leave its hook looping for ever."""
    yield
    pids = tmp_path / "pids"
    for pid in (int(line) for line in pids.read_text().split()) if pids.exists() else ():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def hook_pid(pids: Path) -> int:
    """The pid the hook wrote, once written whole (`echo $$ >> f` may be seen half done)."""
    wait_until_sync(lambda: pids.exists() and pids.read_text().endswith("\n"), what="the git hook's pid")
    (pid,) = (int(line) for line in pids.read_text().split())
    return pid


def operations_held(repo: Path) -> int:
    with closing(sqlite3.connect(repo / ".aidp" / "state.db")) as db:
        return int(db.execute("SELECT count(*) FROM operations").fetchone()[0])


@pytest.mark.parametrize("how", list(HOOK_BODIES))
def test_the_git_hook_of_a_killed_ws_new_is_ended_by_the_next_command(tmp_path: Path, how: str) -> None:
    repo = make_repo(tmp_path)
    pids = tmp_path / "pids"
    git_hook(repo, "post-checkout", HOOK_BODIES[how].format(pids=pids))
    owner = spawn_cli(repo, "ws", "new", "made", "a task")
    pid = hook_pid(pids)
    owner.kill()
    owner.wait(30)
    assert pid_alive(pid)  # its aidp died, git and its hook did not

    listed = cli(repo, "ws", "list")
    assert listed.returncode == 0, listed.stderr
    assert not pid_alive(pid)
    assert f"ended what git left running for the aidp process (pid {owner.pid}) that is gone" in listed.stderr
    assert operations_held(repo) == 0
    again = cli(repo, "ws", "list")
    assert "ended what git left" not in again.stderr  # said once


def test_ctrl_c_of_ws_new_ends_its_git_hook(tmp_path: Path) -> None:
    """git runs in its own process group, so a terminal's Ctrl-C reaches only aidp: aidp ends it."""
    repo = make_repo(tmp_path)
    pids = tmp_path / "pids"
    git_hook(repo, "post-checkout", "trap '' INT; " + HOOK_BODIES["stubborn"].format(pids=pids))
    owner = spawn_cli(repo, "ws", "new", "made", "a task")
    pid = hook_pid(pids)
    owner.send_signal(signal.SIGINT)
    _, err = owner.communicate(timeout=60)
    assert owner.returncode != 0 and "interrupted" in err
    assert not pid_alive(pid)
    assert operations_held(repo) == 0


def test_the_git_hook_of_a_killed_run_s_auto_commit_is_ended_by_the_next_command(tmp_path: Path) -> None:
    """A run's own git (`[harness] commit`) runs `post-commit` while the run holds its workstream:
    recovering the run ends that hook too, and records the run as its aidp left it."""
    repo = make_repo(tmp_path)
    pids = tmp_path / "pids"
    write_config(repo, '[harness]\ncommand = ["sh", "-c", "echo work > work.txt"]\ncommit = "always"\n')
    assert cli(repo, "ws", "new", "made", "a task").returncode == 0
    git_hook(repo, "post-commit", HOOK_BODIES["stubborn"].format(pids=pids))
    owner = spawn_cli(repo, "ws", "run", "made")
    pid = hook_pid(pids)
    owner.kill()
    owner.wait(30)
    assert pid_alive(pid)

    listed = cli(repo, "ws", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert not pid_alive(pid)  # it ignored SIGTERM: SIGKILL ended it
    assert f"ended what git left running for the aidp process (pid {owner.pid})" in listed.stderr
    assert any(f"aidp process (pid {owner.pid})" in e for e in events(repo, "made"))


def test_ws_cancel_reaches_a_workstream_held_by_its_auto_commit_hook_while_others_go_on(tmp_path: Path) -> None:
    """`[harness] commit` for two workstreams; the `post-commit` hook of one never ends. The other
    completes; `ws cancel` of the held one ends git and its hook, and the run ends."""
    repo = make_repo(tmp_path)
    pids = tmp_path / "pids"
    write_config(repo, '[harness]\ncommand = ["sh", "-c", "echo work > work.txt"]\ncommit = "always"\n')
    for slug in ("held", "quick"):
        assert cli(repo, "ws", "new", slug, "a task").returncode == 0
    git_hook(
        repo,
        "post-commit",
        '[ "$(git rev-parse --abbrev-ref HEAD)" = aidp/held ] || exit 0\n' + HOOK_BODIES["stubborn"].format(pids=pids),
    )
    owner = spawn_cli(repo, "ws", "run", "held", "quick", "--json")
    pid = hook_pid(pids)
    assert cli(repo, "ws", "cancel", "held").returncode == 0
    out, err = owner.communicate(timeout=60)
    results = {r["slug"]: r for r in json.loads(out)["results"]}
    assert results["quick"]["status"] == "completed", err
    assert results["held"]["status"] == "cancelled" and "during its auto-commit" in results["held"]["error"]
    assert not pid_alive(pid)


async def test_cancelling_wsnew_ends_its_git_hook(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    pids = tmp_path / "pids"
    git_hook(repo, "post-checkout", HOOK_BODIES["setsid"].format(pids=pids))
    async with lsp_session(server_command(repo), tmp_path, initialize_params()) as client:
        made = client.start_call("aidp/wsNew", {"slug": "made", "task": "a task"}, msg_id="the-new")
        await wait_until(lambda: pids.exists() and pids.read_text().endswith("\n"), what="the git hook's pid")
        pid = int(pids.read_text())
        client.protocol.notify("$/cancelRequest", lsp.CancelParams(id="the-new"))
        with pytest.raises(JsonRpcException):
            await asyncio.wait_for(made, 60)
        assert not pid_alive(pid)
        assert operations_held(repo) == 0
        assert "made" not in await client.workstreams()


async def left_mid_request(repo: Path, method: str, params: dict[str, Any], pids: Path) -> int:
    """A server's client sends `method` and goes away (closes its stdin) once the git hook the
    request waits on has started; the server must exit 0. The hook's pid."""
    async with lsp_session(server_command(repo), repo.parent, initialize_params()) as client:
        client.start_call(method, params)
        await wait_until(lambda: pids.exists() and pids.read_text().endswith("\n"), what="the git hook's pid")
        server = client.server
        assert server.stdin is not None
        server.stdin.close()
        assert await asyncio.wait_for(server.wait(), 90) == 0
    return int(pids.read_text())


async def test_a_server_whose_client_went_away_ends_the_git_hook_of_its_wsnew(tmp_path: Path) -> None:
    """The server lets a request already read finish for a while after its client went away, then
    ends the hook it waits on: a hook that never ends does not keep the request (or the server)
    alive, and the creation releases its slug."""
    repo = make_repo(tmp_path)
    pids = tmp_path / "pids"
    git_hook(repo, "post-checkout", HOOK_BODIES["stubborn"].format(pids=pids))
    pid = await left_mid_request(repo, "aidp/wsNew", {"slug": "made", "task": "a task"}, pids)
    assert not pid_alive(pid)
    assert operations_held(repo) == 0


LAND_HOOK = '[ "$1" = committed ] || exit 0\ngrep -q " refs/heads/main$" || exit 0\n'  # once main has moved


def landable(repo: Path) -> None:
    """A workstream `feat` whose run committed feat.txt."""
    commit = "echo x > feat.txt && git add feat.txt && git commit -qm feat"
    assert cli(repo, "ws", "new", "feat", "a task", "--command", f"sh -c '{commit}'").returncode == 0
    assert cli(repo, "ws", "run", "feat").returncode == 0


def test_a_land_a_git_hook_refuses_says_so_and_changes_nothing(tmp_path: Path) -> None:
    """A `reference-transaction` hook that refuses `main`'s move: the land fails saying git
    refused (with the hook's words), not that someone moved `main`; nothing changed."""
    repo = make_repo(tmp_path)
    landable(repo)
    before = git(repo, "rev-parse", "main")
    git_hook(repo, "reference-transaction", '[ "$1" = prepared ] || exit 0\necho "main is frozen" >&2\nexit 1')
    landed = cli(repo, "ws", "land", "feat")
    assert landed.returncode != 0
    assert "git refused to move main" in landed.stderr and "main is frozen" in landed.stderr, landed.stderr
    assert "moved meanwhile" not in landed.stderr
    assert git(repo, "rev-parse", "main") == before and git(repo, "status", "--porcelain") == ""
    assert workstreams(repo)["feat"]["status"] == "completed"


def test_ctrl_c_mid_land_ends_the_hook_and_completes_the_land(tmp_path: Path) -> None:
    """Ctrl-C while a `reference-transaction` hook (ignoring SIGTERM) holds git after `main` moved:
    the hook is ended, not git, so the checkout of `main` follows and the land is recorded before
    the command ends, interrupted."""
    repo = make_repo(tmp_path)
    pids = tmp_path / "pids"
    landable(repo)
    git_hook(repo, "reference-transaction", LAND_HOOK + HOOK_BODIES["stubborn"].format(pids=pids))
    owner = spawn_cli(repo, "ws", "land", "feat")
    pid = hook_pid(pids)
    owner.send_signal(signal.SIGINT)
    _, err = owner.communicate(timeout=60)
    assert owner.returncode != 0 and "interrupted" in err
    assert not pid_alive(pid)
    assert git(repo, "status", "--porcelain") == "" and (repo / "feat.txt").read_text() == "x\n"
    assert workstreams(repo)["feat"]["status"] == "landed"


async def test_a_server_whose_client_went_away_mid_land_ends_the_hook_and_completes_the_land(
    tmp_path: Path,
) -> None:
    """A land waits on a `reference-transaction` hook that never ends, after `main` has moved. The
    client goes away: the server ends the hook, not git, so the land completes (the checkout of
    `main` follows, the workstream is `landed`) rather than leaving `main` moved under a stale
    checkout; then it exits."""
    repo = make_repo(tmp_path)
    pids = tmp_path / "pids"
    landable(repo)
    git_hook(repo, "reference-transaction", LAND_HOOK + HOOK_BODIES["stubborn"].format(pids=pids))
    pid = await left_mid_request(repo, "aidp/wsLand", {"slugs": ["feat"]}, pids)
    assert not pid_alive(pid)
    assert git(repo, "status", "--porcelain") == "" and (repo / "feat.txt").read_text() == "x\n"
    assert workstreams(repo)["feat"]["status"] == "landed"
