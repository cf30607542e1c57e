"""Git shapes, half-done operations and races between processes (issue 8, items 7, 8, 15, 16, 18),
end to end through the CLI and the JSON-RPC server, in real repositories.

Races are made deterministic with a real git hook (`GitGate`): it holds one process inside git
while the test runs another, so the window is open for as long as the test needs, never by sleeping.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import subprocess
from pathlib import Path

from cli_helpers import harness, new_ws, spawn_cli, workstreams
from server_helpers import initialize_params, lsp_session, server_command
from support import cli, git, make_repo, wait_until, wait_until_sync

TOUCH = "import pathlib, sys\npathlib.Path(sys.argv[2]).touch()\n"


class GitGate:
    """A `core.fsmonitor` hook that, once armed, holds every git command reading a worktree
    (status, checkout, worktree remove) of the repository until the gate is opened."""

    def __init__(self, repo: Path, tmp_path: Path) -> None:
        folder = tmp_path / "gate"
        folder.mkdir()
        self.armed, self.entered, self.opened = folder / "armed", folder / "entered", folder / "opened"
        armed, entered, opened = (shlex.quote(str(p)) for p in (self.armed, self.entered, self.opened))
        hook = folder / "fsmonitor-hook"
        hook.write_text(
            f"#!/bin/sh\nif [ -e {armed} ] && [ ! -e {opened} ]; then\n  touch {entered}\n"
            f"  while [ ! -e {opened} ]; do sleep 0.05; done\nfi\nexit 1\n"
        )
        hook.chmod(0o755)
        git(repo, "config", "core.fsmonitor", str(hook))

    def arm(self) -> None:
        self.armed.touch()

    def wait_entered(self) -> None:
        wait_until_sync(self.entered.exists, what="a git command held at the gate")

    def open(self) -> None:
        self.opened.touch()


def library_repo(tmp_path: Path) -> Path:
    """A second repository, to add as a submodule."""
    (tmp_path / "library").mkdir()
    return make_repo(tmp_path / "library")


def touching(tmp_path: Path, marker: Path) -> str:
    """A harness that leaves `marker` behind: proof that it ran."""
    return harness(tmp_path, "touch", TOUCH) + " " + shlex.quote(str(marker))


# -- 7: removal against a run from another process ------------------------------------------------


def test_rm_holds_the_workstream_so_a_run_from_another_process_is_refused(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    ran = tmp_path / "ran"
    new_ws(repo, "race", touching(tmp_path, ran))
    gate = GitGate(repo, tmp_path)
    gate.arm()
    rm = spawn_cli(repo, "ws", "rm", "race")
    try:
        gate.wait_entered()  # rm is inside git, between its checks and the removal
        run = cli(repo, "ws", "run", "race")
        assert run.returncode == 1, run.stdout + run.stderr
        assert "cannot run: being removed: race" in run.stderr
        assert not ran.exists()
    finally:
        gate.open()
        out, err = rm.communicate(timeout=60)
    assert rm.returncode == 0, err
    assert f"removed worktree {repo / '.worktrees' / 'race'}" in out
    assert workstreams(repo) == {}


def test_a_removal_left_by_a_killed_process_is_released_without_a_run_status(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    ran = tmp_path / "ran"
    new_ws(repo, "killed", touching(tmp_path, ran))
    gate = GitGate(repo, tmp_path)
    gate.arm()
    rm = spawn_cli(repo, "ws", "rm", "killed")
    try:
        gate.wait_entered()
        os.kill(rm.pid, signal.SIGKILL)
        rm.wait(timeout=60)
    finally:
        gate.open()

    status = cli(repo, "ws", "status", "killed")
    assert status.returncode == 0, status.stderr
    assert f"interrupted: the aidp process (pid {rm.pid}) doing 'ws rm' is gone" in status.stdout
    assert "status:     active" in status.stdout
    assert "last run" not in status.stdout  # nothing ran, so no run status was made up
    run = cli(repo, "ws", "run", "killed")
    assert run.returncode == 0, run.stdout + run.stderr
    assert ran.exists()


def test_a_refused_rm_releases_the_workstream(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    ran = tmp_path / "ran"
    new_ws(repo, "kept", touching(tmp_path, ran))
    (repo / ".worktrees" / "kept" / "README.md").write_text("changed\n")
    assert cli(repo, "ws", "rm", "kept").returncode == 1
    run = cli(repo, "ws", "run", "kept")
    assert run.returncode == 0, run.stdout + run.stderr
    assert ran.exists()


# -- 8: git and the records out of step after a crash -----------------------------------------------


def test_a_leftover_worktree_is_reported_and_adopted(tmp_path: Path) -> None:
    """What a crash inside `ws new` (after git, before the record) or `ws rm` (after the record's
    check, with the worktree still there) leaves: a worktree and branch aidp has no record of."""
    repo = make_repo(tmp_path)
    new_ws(repo, "known", "true")
    worktree = repo / ".worktrees" / "left"
    git(repo, "worktree", "add", "-q", "-b", "aidp/left", str(worktree))
    (worktree / "work.txt").write_text("half done\n")

    listed = cli(repo, "ws", "list")
    assert listed.returncode == 0, listed.stderr
    assert f"! left: worktree {worktree} (branch aidp/left) is no workstream" in listed.stdout
    assert "'aidp ws new left <task...>' adopts it" in listed.stdout
    status = cli(repo, "ws", "status", "left")
    assert status.returncode == 2
    hint = f"(but {worktree} is a worktree: 'aidp ws new left <task...>' adopts it)"
    assert f"unknown workstream: left {hint}" in status.stderr

    adopted = cli(repo, "ws", "new", "left", "finish", "it", "--command", "true")
    assert adopted.returncode == 0, adopted.stderr
    assert f"adopted the worktree {worktree} on branch aidp/left" in adopted.stdout
    assert (worktree / "work.txt").read_text() == "half done\n"
    assert workstreams(repo)["left"]["task"] == "finish it"
    assert "! left" not in cli(repo, "ws", "list").stdout
    assert cli(repo, "ws", "run", "left").returncode == 0


def test_a_leftover_worktree_on_another_branch_is_not_adopted(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    new_ws(repo, "known", "true")
    worktree = repo / ".worktrees" / "other"
    git(repo, "worktree", "add", "-q", "-b", "someone-else", str(worktree))
    assert "remove it with 'git worktree remove" in cli(repo, "ws", "list").stdout
    refused = cli(repo, "ws", "new", "other", "task")
    assert refused.returncode == 1
    assert "is a worktree on someone-else, not aidp/other" in refused.stderr
    assert list(workstreams(repo)) == ["known"]


def test_a_workstream_whose_worktree_is_gone_is_reported_and_removed(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    new_ws(repo, "gone", "true")
    worktree = repo / ".worktrees" / "gone"
    subprocess.run(["rm", "-rf", str(worktree)], check=True)

    assert workstreams(repo)["gone"]["worktreeMissing"] is True
    listed = cli(repo, "ws", "list").stdout
    assert f"! gone: worktree {worktree} is missing; 'aidp ws rm gone' removes what remains" in listed
    status = cli(repo, "ws", "status", "gone")
    assert status.returncode == 0, status.stderr
    assert "(clean)" not in status.stdout
    assert status.stdout.rstrip().endswith(
        f"(no worktree: {worktree} is missing; 'aidp ws rm gone' removes what remains)"
    )

    removed = cli(repo, "ws", "rm", "gone")
    assert removed.returncode == 0, removed.stderr
    assert f"the worktree {worktree} was already gone" in removed.stdout
    assert "removed worktree" not in removed.stdout
    assert workstreams(repo) == {}
    new_ws(repo, "gone", "true")  # the slug is free again, git's registration too
    assert (worktree / "README.md").exists()


def test_new_over_a_registered_worktree_whose_folder_is_gone(tmp_path: Path) -> None:
    """git still lists a worktree whose folder was deleted, and would refuse to add it again."""
    repo = make_repo(tmp_path)
    worktree = repo / ".worktrees" / "vanished"
    git(repo, "worktree", "add", "-q", "-b", "aidp/vanished", str(worktree))
    subprocess.run(["rm", "-rf", str(worktree)], check=True)
    new_ws(repo, "vanished", "true")
    assert git(worktree, "rev-parse", "--abbrev-ref", "HEAD").strip() == "aidp/vanished"


# -- 15: what removal would lose -------------------------------------------------------------------


def test_rm_lists_ignored_files_and_refuses_unless_forced(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    (repo / ".gitignore").write_text(".env\nbuild/\n")
    git(repo, "add", ".gitignore")
    git(repo, "commit", "-q", "-m", "ignore")
    new_ws(repo, "secrets", "true")
    worktree = repo / ".worktrees" / "secrets"
    (worktree / ".env").write_text("TOKEN=keep-me\n")
    (worktree / "build").mkdir()
    (worktree / "build" / "out.o").write_text("x")

    refused = cli(repo, "ws", "rm", "secrets")
    assert refused.returncode == 1
    assert "ignored files that would be deleted:\n.env\nbuild/\n" in refused.stderr
    assert (worktree / ".env").read_text() == "TOKEN=keep-me\n"

    forced = cli(repo, "ws", "rm", "secrets", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "discarded: the worktree" in forced.stdout and ".env" in forced.stdout
    assert not worktree.exists()


def test_rm_force_removes_a_worktree_with_a_submodule(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    library = library_repo(tmp_path)
    git(repo, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(library), "lib")
    git(repo, "commit", "-q", "-m", "add lib")
    new_ws(repo, "with-lib", "true")
    worktree = repo / ".worktrees" / "with-lib"
    git(worktree, "-c", "protocol.file.allow=always", "submodule", "update", "-q", "--init")
    assert (worktree / "lib" / "README.md").exists()

    refused = cli(repo, "ws", "rm", "with-lib")
    assert refused.returncode == 1
    assert "has checked-out submodules: lib" in refused.stderr
    forced = cli(repo, "ws", "rm", "with-lib", "--force")
    assert forced.returncode == 0, forced.stderr
    assert not worktree.exists()
    assert workstreams(repo) == {}


def test_rm_force_removes_a_locked_worktree(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    new_ws(repo, "locked", "true")
    worktree = repo / ".worktrees" / "locked"
    git(repo, "worktree", "lock", "--reason", "on a removable disk", str(worktree))

    refused = cli(repo, "ws", "rm", "locked")
    assert refused.returncode == 1
    assert "is locked: on a removable disk" in refused.stderr
    forced = cli(repo, "ws", "rm", "locked", "--force")
    assert forced.returncode == 0, forced.stderr
    assert not worktree.exists()
    assert str(worktree) not in git(repo, "worktree", "list")


# -- 16: `.git` as a file ---------------------------------------------------------------------------


def test_a_repository_with_a_separate_git_dir(tmp_path: Path) -> None:
    repo, git_dir = tmp_path / "work", tmp_path / "elsewhere.git"
    git(tmp_path, "init", "-q", "-b", "main", "--separate-git-dir", str(git_dir), str(repo))
    (repo / "README.md").write_text("hello\n")
    git(repo, "add", "README.md")
    git(repo, "commit", "-q", "-m", "initial")
    assert (repo / ".git").is_file()

    new_ws(repo, "sep", "true")
    worktree = repo / ".worktrees" / "sep"
    status = cli(worktree, "ws", "status", "sep")  # from inside the linked worktree too
    assert status.returncode == 0, status.stderr
    assert "(clean)" in status.stdout
    assert cli(worktree, "ws", "run", "sep").returncode == 0
    assert "/.aidp/" in (git_dir / "info" / "exclude").read_text().splitlines()
    assert git(repo, "status", "--porcelain") == ""
    removed = cli(repo, "ws", "rm", "sep")
    assert removed.returncode == 0, removed.stderr
    assert not worktree.exists()


def test_a_submodule_checkout_is_a_repository_of_its_own(tmp_path: Path) -> None:
    outer = make_repo(tmp_path)
    library = library_repo(tmp_path)
    git(outer, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(library), "lib")
    checkout = outer / "lib"

    new_ws(checkout, "inner", "true")
    worktree = checkout / ".worktrees" / "inner"
    assert (worktree / "README.md").exists()
    listed = cli(worktree, "ws", "list")  # a linked worktree of the submodule finds its main tree
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[1].split()[:2] == ["inner", "active"]
    assert git(checkout, "status", "--porcelain") == ""
    assert not (outer / ".aidp").exists()


# -- 18: input errors and concurrent creation -------------------------------------------------------


def test_bad_base_branches_are_usage_errors(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    for base, reason in (("nope", "does not exist"), ("main..HEAD", "names several commits")):
        result = cli(repo, "ws", "new", "based", "task", "--base-branch", base)
        assert result.returncode == 2, (base, result.stderr)
        assert reason in result.stderr and "git worktree add" not in result.stderr
    assert not (repo / ".worktrees" / "based").exists()
    assert git(repo, "branch", "--list", "aidp/*") == ""


def test_concurrent_new_of_one_slug_says_it_already_exists(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    gate = GitGate(repo, tmp_path)
    gate.arm()
    first = spawn_cli(repo, "ws", "new", "twin", "first")
    try:
        gate.wait_entered()  # the first is inside `git worktree add`
        second = cli(repo, "ws", "new", "twin", "second")
        assert second.returncode == 2, second.stderr
        assert "workstream 'twin' already exists: another aidp process is creating it" in second.stderr
    finally:
        gate.open()
        _, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    assert workstreams(repo)["twin"]["task"] == "first"


# -- the same on the wire ---------------------------------------------------------------------------


async def test_wire_reports_a_missing_worktree_and_refuses_a_range_as_base(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    async with lsp_session(server_command(repo), tmp_path, initialize_params()) as client:
        err = await client.fails("aidp/wsNew", {"slug": "ranged", "task": "t", "baseBranch": "main..HEAD"})
        assert err.code == -32602 and "names several commits" in err.message
        ws = await client.call("aidp/wsNew", {"slug": "gone", "task": "t"})
        assert ws["worktreeMissing"] is False
        subprocess.run(["rm", "-rf", ws["path"]], check=True)
        assert (await client.workstreams())["gone"]["worktreeMissing"] is True
        assert await client.call("aidp/wsRemove", {"slug": "gone"}) == {}
        assert await client.workstreams() == {}


async def test_wire_refuses_a_run_while_another_process_removes_it(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    ran = tmp_path / "ran"
    new_ws(repo, "leaving", touching(tmp_path, ran))
    gate = GitGate(repo, tmp_path)
    async with lsp_session(server_command(repo), tmp_path, initialize_params()) as client:
        gate.arm()
        rm = spawn_cli(repo, "ws", "rm", "leaving")
        try:
            await wait_until(gate.entered.exists, what="ws rm held inside git")
            err = await client.fails("aidp/wsRun", {"slugs": ["leaving"]})
            assert err.code == -32002 and "cannot run: being removed: leaving" in err.message
        finally:
            gate.open()
            _, stderr = await asyncio.to_thread(rm.communicate, timeout=60)
        assert rm.returncode == 0, stderr
        assert not ran.exists()
        assert await client.workstreams() == {}
