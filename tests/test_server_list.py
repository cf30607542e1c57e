"""`aidp/wsList` from the server's list snapshot (aidp.server.snapshot): exact after every kind of
change, whoever made it, through the real server over stdio; reused while nothing changed (the
server's log says when it computes a list and when it answers one again); and, in process with
the real engine, the background regime of many worktrees: a change by hand is found by a check
in the background and announced, while aidp's own changes stay exact."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from server_helpers import WS_LIST_CHANGED, AidpClient, initialize_params, lsp_session, server_command
from support import cli, git, wait_until

from aidp.engine import Engine, dirty
from aidp.server.snapshot import ListSnapshot

pytestmark = pytest.mark.timeout(150)

COMPUTED = "wsList: computed"
REUSED = "wsList: the snapshot of"


@pytest.fixture
async def client(repo: Path, tmp_path: Path) -> AsyncIterator[AidpClient]:
    async with lsp_session(server_command(repo), tmp_path, initialize_params()) as session:
        for slug in ("a", "b"):
            await session.call("aidp/wsNew", {"slug": slug, "task": f"tâche ✓ {slug}", "command": ["true"]})
        yield session


def worktree(repo: Path, slug: str) -> Path:
    return repo / ".worktrees" / slug


def commit(cwd: Path, name: str) -> None:
    (cwd / name).write_text(f"{name}\n")
    git(cwd, "add", name)
    git(cwd, "commit", "-q", "-m", f"add {name}")


async def test_the_list_is_exact_after_each_kind_of_change(client: AidpClient, repo: Path) -> None:
    """Each change is followed at once by a list, with no wait: it must already show it."""
    listed = await client.workstreams()
    assert listed["a"]["task"] == "tâche ✓ a"  # sent as UTF-8: its framing counts bytes
    assert [listed[s]["changes"]["ahead"] for s in "ab"] == [0, 0]
    assert [listed[s]["changes"]["dirty"] for s in "ab"] == [False, False]

    commit(worktree(repo, "a"), "work.txt")  # a commit in a worktree
    assert (await client.workstreams())["a"]["changes"]["ahead"] == 1

    (worktree(repo, "b") / "README.md").write_text("edited by hand\n")  # a file edited there
    listed = await client.workstreams()
    assert listed["b"]["changes"]["dirty"] is True and listed["a"]["changes"]["dirty"] is False

    commit(repo, "base.txt")  # the base branch moved
    assert [(await client.workstreams())[s]["changes"]["behind"] for s in "ab"] == [1, 1]

    assert (await client.call("aidp/wsRun", {"slugs": ["a"]}))["completed"] == 1  # a run
    assert (await client.workstreams())["a"]["status"] == "completed"

    changed = len(client.of(WS_LIST_CHANGED))
    assert cli(repo, "ws", "set", "b", "--priority", "high").returncode == 0  # a CLI beside the server
    assert (await client.workstreams())["b"]["priority"] == 10
    await wait_until(lambda: len(client.of(WS_LIST_CHANGED)) > changed, what="wsListChanged after the CLI's set")

    assert cli(repo, "ws", "rm", "b", "--force").returncode == 0  # removed by another process
    assert list(await client.workstreams()) == ["a"]


async def test_the_snapshot_is_answered_again_while_nothing_changed(
    client: AidpClient, repo: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Right after a change the inputs are too recent to trust (file times tick coarsely, see
    aidp.engine.listing), so lists are computed; once they are old enough the snapshot is
    answered again until something changes."""
    log: list[str] = []

    def lines(prefix: str) -> list[str]:
        log.extend(capfd.readouterr().err.splitlines())
        return [line for line in log if prefix in line]

    await client.workstreams()
    while not lines(REUSED):
        await client.workstreams()
    computed = len(lines(COMPUTED))
    for _ in range(3):
        assert (await client.workstreams())["a"]["changes"]["dirty"] is False
    assert len(lines(COMPUTED)) == computed and len(lines(REUSED)) == 1

    (worktree(repo, "a") / "README.md").write_text("edited by hand\n")
    assert (await client.workstreams())["a"]["changes"]["dirty"] is True
    assert len(lines(COMPUTED)) == computed + 1
    assert "git or a worktree changed" in lines(COMPUTED)[-1]

    deep = worktree(repo, "b") / "deep" / "er"
    deep.mkdir(parents=True)  # empty: git shows nothing
    while len(lines(REUSED)) < 2:
        await client.workstreams()
    (deep / "new.txt").write_text("new\n")  # below the top: only its folder's stamp changes
    assert (await client.workstreams())["b"]["changes"]["dirty"] is True


async def test_many_worktrees_are_checked_in_the_background(engine: Engine, repo: Path) -> None:
    """With checking the worktrees too dear for a request (`cheap_s=-1`: every check is), an edit
    by hand shows only once a background check found it and said so (`changed`); a status, or a
    change by another aidp process, shows on the very next list."""
    await engine.create("a", "task of a", command=["true"])
    announced: list[None] = []
    snapshot = ListSnapshot(engine, lambda: announced.append(None), cheap_s=-1.0, recheck_s=0.0)

    async def listed() -> dict[str, Any]:
        return {ws["slug"]: ws for ws in json.loads((await snapshot.answer()).body)["workstreams"]}

    try:
        assert (await listed())["a"]["changes"]["dirty"] is False
        (worktree(repo, "a") / "README.md").write_text("edited by hand\n")
        assert (await listed())["a"]["changes"]["dirty"] is False  # the snapshot, as it was
        await wait_until(lambda: bool(announced), what="the background check announced the edit")
        assert (await listed())["a"]["changes"]["dirty"] is True
        assert snapshot.computed == 2 and snapshot.reused == 2

        await engine.set_paused("a", True)
        assert (await listed())["a"]["status"] == "paused"
        assert cli(repo, "ws", "set", "a", "--priority", "low").returncode == 0
        assert (await listed())["a"]["priority"] == -10
    finally:
        await snapshot.close()


async def test_a_worktree_only_git_can_check_keeps_every_list_exact(engine: Engine, repo: Path) -> None:
    """A worktree too big to walk (most real checkouts) gives the list no fingerprint once a list
    found it so: each list is computed, exact at once, never deferred to a background check (as
    what the last list cost, a whole list with git, would have it)."""
    await engine.create("a", "task of a", command=["true"])
    many = worktree(repo, "a") / "many"
    many.mkdir()
    for i in range(dirty.WALK_MAX + 1):
        (many / f"{i}.txt").write_text(f"{i}\n")
    git(worktree(repo, "a"), "add", "many")
    git(worktree(repo, "a"), "commit", "-q", "-m", "many files")
    snapshot = ListSnapshot(engine, lambda: None)

    async def listed() -> dict[str, Any]:
        return {ws["slug"]: ws for ws in json.loads((await snapshot.answer()).body)["workstreams"]}

    try:
        assert (await listed())["a"]["changes"]["dirty"] is False
        await asyncio.sleep(dirty.RACY_NS / 1e9)  # past the racy window: a fingerprint could be trusted now
        for _ in range(2):  # the first walk finds the worktree too big (dirty.json says so from then on)
            assert (await listed())["a"]["changes"]["dirty"] is False
        (many / "0.txt").write_text("edited by hand\n")
        assert (await listed())["a"]["changes"]["dirty"] is True
        commit(worktree(repo, "a"), "more.txt")
        assert (await listed())["a"]["changes"]["ahead"] == 2
        assert snapshot.reused == 0
    finally:
        await snapshot.close()
