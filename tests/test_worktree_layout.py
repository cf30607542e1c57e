"""A new workstream's worktree is registered directly in git's layout (`gitrepo._register`, issue 13:
`git worktree add` slows down as worktrees accumulate). git must treat it exactly like one
`git worktree add` made: listed, locked, removed, pruned, protected against a second checkout of
its branch, its hook run; and where git would copy something from the main worktree (a sparse
checkout), git makes it."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from cli_helpers import new_ws, workstreams
from support import PYTHON, cli, git, make_repo


def porcelain(repo: Path) -> dict[str, dict[str, str]]:
    """`git worktree list --porcelain` by path: each worktree's fields."""
    listed: dict[str, dict[str, str]] = {}
    for block in git(repo, "worktree", "list", "--porcelain").strip().split("\n\n"):
        fields = dict(line.partition(" ")[::2] for line in block.splitlines())
        listed[fields["worktree"]] = fields
    return listed


def failing_git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False)
    assert out.returncode != 0, f"git {' '.join(args)} succeeded"
    return out.stderr


def test_git_lists_locks_protects_prunes_and_removes_the_worktree(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    (repo / "src").mkdir()
    (repo / "src" / "app.py").write_text("print('hi')\n")
    git(repo, "add", "src")
    git(repo, "commit", "-q", "-m", "app")
    new_ws(repo, "fast", "true")
    worktree = repo / ".worktrees" / "fast"
    head = git(repo, "rev-parse", "HEAD").strip()

    fields = porcelain(repo)[str(worktree)]
    assert fields["branch"] == "refs/heads/aidp/fast" and fields["HEAD"] == head
    assert "locked" not in fields  # no longer "initializing"
    assert (worktree / "src" / "app.py").read_text() == "print('hi')\n"
    assert git(worktree, "status", "--porcelain") == ""
    assert git(worktree, "rev-parse", "--abbrev-ref", "HEAD").strip() == "aidp/fast"
    assert git(worktree, "rev-parse", "--git-common-dir").strip() == str(repo / ".git")

    # The branch is checked out once: git refuses it to a second worktree and to the main one.
    assert "aidp/fast" in failing_git(repo, "worktree", "add", str(tmp_path / "twice"), "aidp/fast")
    assert "aidp/fast" in failing_git(repo, "checkout", "aidp/fast")
    assert "aidp/fast" in failing_git(repo, "branch", "-D", "aidp/fast")

    git(repo, "worktree", "prune")
    assert str(worktree) in porcelain(repo)
    git(repo, "worktree", "lock", "--reason", "kept", str(worktree))
    assert porcelain(repo)[str(worktree)]["locked"] == "kept"
    git(repo, "worktree", "unlock", str(worktree))

    (worktree / "src" / "app.py").write_text("changed\n")
    git(worktree, "commit", "-q", "-am", "work")
    assert git(repo, "log", "-1", "--format=%s", "aidp/fast").strip() == "work"
    git(repo, "worktree", "remove", str(worktree))
    assert not worktree.exists() and str(worktree) not in porcelain(repo)

    new_ws(repo, "gone", "true")
    subprocess.run(["rm", "-rf", str(repo / ".worktrees" / "gone")], check=True)
    git(repo, "worktree", "prune")
    assert str(repo / ".worktrees" / "gone") not in porcelain(repo)
    assert not list((repo / ".git" / "worktrees").glob("gone*"))


def test_a_taken_admin_id_is_numbered_like_gits(tmp_path: Path) -> None:
    """A worktree named like the slug elsewhere holds the id `<slug>`: the new one gets `<slug>1`."""
    repo = make_repo(tmp_path)
    git(repo, "worktree", "add", "-q", "-b", "elsewhere", str(tmp_path / "same"))
    new_ws(repo, "same", "true")
    worktree = repo / ".worktrees" / "same"
    assert (worktree / ".git").read_text() == f"gitdir: {repo / '.git' / 'worktrees' / 'same1'}\n"
    assert porcelain(repo)[str(worktree)]["branch"] == "refs/heads/aidp/same"
    assert porcelain(repo)[str(tmp_path / "same")]["branch"] == "refs/heads/elsewhere"


def test_the_post_checkout_hook_runs_as_after_git_worktree_add(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    seen = tmp_path / "seen"
    hook = repo / ".git" / "hooks" / "post-checkout"
    hook.write_text(f'#!/bin/sh\necho "$PWD $*" >> {shlex.quote(str(seen))}\n')
    hook.chmod(0o755)
    git(repo, "worktree", "add", "-q", "-b", "by-git", str(repo / ".worktrees" / "by-git"))
    new_ws(repo, "hooked", "true")
    head = git(repo, "rev-parse", "HEAD").strip()
    by_git, by_aidp = seen.read_text().splitlines()
    assert by_git == f"{repo / '.worktrees' / 'by-git'} {'0' * 40} {head} 1"
    assert by_aidp == f"{repo / '.worktrees' / 'hooked'} {'0' * 40} {head} 1"


def test_a_failed_checkout_leaves_nothing_behind(tmp_path: Path) -> None:
    """A required filter that fails makes the checkout fail: no folder, registration or branch
    remains, and the slug can be created once the filter works."""
    repo = make_repo(tmp_path)
    (repo / ".gitattributes").write_text("*.txt filter=broken\n")
    (repo / "data.txt").write_text("payload\n")
    git(repo, "add", ".gitattributes", "data.txt")
    git(repo, "commit", "-q", "-m", "filtered")
    git(repo, "config", "filter.broken.smudge", "false")
    git(repo, "config", "filter.broken.required", "true")

    failed = cli(repo, "ws", "new", "filtered", "task", "--command", "true")
    assert failed.returncode != 0
    assert "data.txt" in failed.stderr
    assert not (repo / ".worktrees" / "filtered").exists()
    assert not list((repo / ".git" / "worktrees").glob("filtered*"))
    assert git(repo, "branch", "--list", "aidp/*") == ""
    assert workstreams(repo) == {}

    git(repo, "config", "filter.broken.smudge", "cat")
    new_ws(repo, "filtered", "true")
    assert (repo / ".worktrees" / "filtered" / "data.txt").read_text() == "payload\n"


def test_a_stale_registration_of_the_path_is_pruned_and_a_locked_one_refused(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    worktree = repo / ".worktrees" / "again"
    git(repo, "worktree", "add", "-q", "--detach", str(worktree))
    subprocess.run(["rm", "-rf", str(worktree)], check=True)
    new_ws(repo, "again", "true")  # a new branch, over a registration whose folder is gone
    assert porcelain(repo)[str(worktree)]["branch"] == "refs/heads/aidp/again"
    assert [p.name for p in (repo / ".git" / "worktrees").iterdir()] == ["again"]

    locked = repo / ".worktrees" / "held"
    git(repo, "worktree", "add", "-q", "--detach", "--lock", str(locked))
    subprocess.run(["rm", "-rf", str(locked)], check=True)
    refused = cli(repo, "ws", "new", "held", "task", "--command", "true")
    assert refused.returncode != 0
    assert f"{locked} is a missing but locked worktree" in refused.stderr
    assert git(repo, "branch", "--list", "aidp/held") == ""


def test_a_sparse_checkout_is_copied_by_git(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    for name in ("kept", "skipped"):
        (repo / name).mkdir()
        (repo / name / "file.txt").write_text(f"{name}\n")
    git(repo, "add", "kept", "skipped")
    git(repo, "commit", "-q", "-m", "two folders")
    git(repo, "sparse-checkout", "set", "kept")
    new_ws(repo, "sparse", "true")
    worktree = repo / ".worktrees" / "sparse"
    assert (worktree / "kept" / "file.txt").exists()
    assert not (worktree / "skipped").exists()
    assert git(worktree, "status", "--porcelain") == ""


def test_a_workstream_runs_commits_and_lands_from_its_worktree(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    code = "import pathlib; pathlib.Path('made.txt').write_text('by the harness\\n')"
    new_ws(repo, "lands", f"{shlex.quote(PYTHON)} -c {shlex.quote(code)}")
    run = cli(repo, "ws", "run", "lands")
    assert run.returncode == 0, run.stdout + run.stderr
    git(repo / ".worktrees" / "lands", "add", "made.txt")
    git(repo / ".worktrees" / "lands", "commit", "-q", "-m", "made")
    landed = cli(repo, "ws", "land", "lands")
    assert landed.returncode == 0, landed.stdout + landed.stderr
    assert git(repo, "show", "main:made.txt") == "by the harness\n"
