"""`aidp/wsList` from the server's list snapshot (aidp.server.snapshot): exact after every kind of
change, whoever made it, through the real server over stdio; reused while nothing changed (the
server's log says when it computes a list and when it answers one again); and, in process with
the real engine, the background regime of many worktrees: a change by hand is found by a check
in the background and announced, while aidp's own changes stay exact."""

from __future__ import annotations

import asyncio
import json
import marshal
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from server_helpers import WS_LIST_CHANGED, AidpClient, initialize_params, lsp_session, server_command
from support import cli, git, wait_until, wait_until_sync

from aidp.engine import Engine, dirty, listing
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


async def test_many_worktrees_are_checked_in_the_background(
    engine: Engine, repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With checking the worktrees too dear for a request (`cheap_s=-1`: every check is), an edit
    by hand shows only once a background check found it and said so (`changed`); a status, or a
    change by another aidp process, shows on the very next list. The check runs in a process of
    its own (see below), which did not fail."""
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
    assert "in a thread from now on" not in caplog.text


async def test_a_background_check_outrun_by_a_newer_list_announces_nothing_it_answered(
    engine: Engine, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request can compute a newer list while a background check of the older one runs (slowly,
    at idle priority): the check's finding is announced only if the list differs from that newer
    one, which its client already has. Here the change the check finds is the pause the newer list
    shows: no announcement, where comparing with the older list would send one."""
    await engine.create("a", "task of a", command=["true"])
    announced: list[None] = []
    snapshot = ListSnapshot(engine, lambda: announced.append(None), cheap_s=-1.0, recheck_s=0.0)
    checking, release = asyncio.Event(), asyncio.Event()

    async def slow_check(*_: object) -> tuple[bool, float]:
        checking.set()
        await release.wait()
        return False, 0.0  # "changed"

    monkeypatch.setattr("aidp.server.snapshot._check_aside", slow_check)
    try:
        await snapshot.answer()  # the first list
        await snapshot.answer()  # answered from it: its background check starts
        await wait_until(checking.is_set, what="the background check running")
        await engine.set_paused("a", True)
        assert json.loads((await snapshot.answer()).body)["workstreams"][0]["status"] == "paused"  # a newer list
        check = snapshot._checking
        assert check is not None
        release.set()
        await check
        assert announced == []
        assert json.loads((await snapshot.answer()).body)["workstreams"][0]["status"] == "paused"
    finally:
        await snapshot.close()


@pytest.mark.parametrize("python", ["/nonexistent/python", "/bin/false"], ids=["cannot-start", "fails"])
async def test_a_background_check_whose_process_fails_is_made_in_a_thread(
    engine: Engine, repo: Path, python: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The background check's own process (see the next tests) not starting, or not answering,
    costs nothing but the GIL: the same check is made in a thread, from then on, and the log says
    why, once."""
    await engine.create("a", "task of a", command=["true"])
    monkeypatch.setattr(sys, "executable", python)
    announced: list[None] = []
    snapshot = ListSnapshot(engine, lambda: announced.append(None), cheap_s=-1.0, recheck_s=0.0)
    readme = worktree(repo, "a") / "README.md"
    original = readme.read_text()

    async def dirty_once_announced(times: int) -> bool:
        deadline = time.monotonic() + 30
        while len(announced) < times and time.monotonic() < deadline:  # checks run while clients ask
            await snapshot.answer()
            await asyncio.sleep(0.02)
        return bool(json.loads((await snapshot.answer()).body)["workstreams"][0]["changes"]["dirty"])

    try:
        assert await dirty_once_announced(0) is False
        readme.write_text("edited by hand\n")
        assert await dirty_once_announced(1) is True
        readme.write_text(original)
        assert await dirty_once_announced(2) is False
    finally:
        await snapshot.close()
    assert caplog.text.count("background checks of the list run in a thread from now on") == 1


def check_aside(fp: listing.Fingerprint, parent: int | None = None) -> subprocess.CompletedProcess[bytes]:
    """`python -m aidp.engine.listing`, as the server runs it for its background check."""
    return subprocess.run(
        [sys.executable, "-m", "aidp.engine.listing", str(os.getpid() if parent is None else parent)],
        input=marshal.dumps(fp.as_data()),
        capture_output=True,
        timeout=60,
        check=False,
    )


def test_the_check_aside_answers_by_its_exit_status(repo: Path) -> None:
    """0 while the fingerprint holds (and the CPU it spent), 1 once an input changed, 2 for what
    it cannot check or a parent that is not the one it was told."""
    time.sleep(dirty.RACY_NS / 1e9)  # the repository's files older than the racy window: trusted
    fp = listing.take(str(repo), str(repo / ".aidp"), str(repo / ".worktrees"))
    assert fp.trusted
    holds = check_aside(fp)
    assert (holds.returncode, holds.stderr) == (0, b"")
    assert 0 <= float(holds.stdout) < 60
    assert check_aside(fp, parent=os.getppid()).returncode == 2
    assert check_aside(listing.Fingerprint(fp.taken_ns, True, fp.common, (("x", (1, 2)),))).returncode == 2  # type: ignore[arg-type]
    git(repo, "branch", "other")  # a loose ref: a new entry in refs/heads
    assert check_aside(fp).returncode == 1


def test_the_check_aside_runs_at_idle_priority_and_ends_with_its_parent() -> None:
    """A server killed during its background check leaves no check behind: the kernel ends it
    (PR_SET_PDEATHSIG), even while its input is still open elsewhere (here: in this test, so that
    no end of input ends it instead). And it only takes a core nobody else wants (SCHED_IDLE)."""
    read_end, write_end = os.pipe()
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-m', 'aidp.engine.listing', str(os.getpid())],"
            " stdin=int(sys.argv[1]))\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(600)\n",
            str(read_end),
        ],
        stdout=subprocess.PIPE,
        pass_fds=(read_end,),
    )
    os.close(read_end)
    try:
        assert parent.stdout is not None
        stat_path = Path(f"/proc/{int(parent.stdout.readline())}/stat")

        def fields() -> list[str]:
            try:
                return stat_path.read_text().rpartition(")")[2].split()
            except (FileNotFoundError, ProcessLookupError):
                return ["gone"]

        wait_until_sync(lambda: fields()[38:39] == [str(os.SCHED_IDLE)], what="the check at idle priority")
        parent.kill()
        parent.wait()
        wait_until_sync(lambda: fields()[0] in ("gone", "Z"), what="the check ended with its parent")
    finally:
        parent.kill()
        parent.wait()
        os.close(write_end)


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
