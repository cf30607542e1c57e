"""Issue 9, what the lead built around review and landing: the base branch and commit recorded at
creation, `[harness] commit` (auto-commit of what an agent left), and the `landed` resting status
(skipped by run-all, never called unmerged by `ws rm`). Real repositories, the real CLI."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from cli_helpers import new_ws, workstreams
from conftest import write_config
from support import cli, git, make_repo

from aidp.engine.store import Store

AGENT = "echo change >> README.md; echo new > added.txt; mkdir -p .aidp .worktrees; echo x > .aidp/junk; " + (
    "echo x > .worktrees/junk; exit {code}"
)


def agent(code: int) -> str:
    """A harness that edits a tracked file, adds one, and litters aidp's own folder names."""
    return shlex.join(["sh", "-c", AGENT.format(code=code)])


def test_base_branch_and_commit_are_recorded_at_creation(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    head = git(repo, "rev-parse", "HEAD").strip()
    new_ws(repo, "x", "true")
    ws = workstreams(repo)["x"]
    assert (ws["baseBranch"], ws["baseCommit"]) == ("main", head)
    status = cli(repo, "ws", "status", "x")
    assert f"(from main at {head[:12]})" in status.stdout


@pytest.mark.parametrize(
    ("policy", "code", "committed"),
    [("on-success", 0, True), ("on-success", 1, False), ("always", 1, True), ("never", 0, False)],
)
def test_auto_commit_commits_exactly_the_agents_changes(
    tmp_path: Path, policy: str, code: int, committed: bool
) -> None:
    repo = make_repo(tmp_path)
    write_config(repo, f'[harness]\ncommit = "{policy}"\n')
    new_ws(repo, "agent", agent(code), task="Update the readme\nwith more detail")
    worktree = repo / ".worktrees" / "agent"
    before = git(worktree, "rev-parse", "HEAD").strip()
    cli(repo, "ws", "run", "agent")
    after = git(worktree, "rev-parse", "HEAD").strip()
    dirty = git(worktree, "status", "--porcelain").strip()
    if not committed:
        assert after == before
        assert dirty  # the work stays in the worktree, untouched
        return
    assert git(worktree, "rev-parse", "HEAD~1").strip() == before
    assert git(worktree, "log", "-1", "--format=%s").strip() == "agent: Update the readme"
    files = git(worktree, "show", "--name-only", "--format=", "HEAD").split()
    assert sorted(files) == ["README.md", "added.txt"]  # never .aidp/ or .worktrees/
    assert dirty == ""
    events = cli(repo, "ws", "status", "agent").stdout
    assert f"auto-committed {after[:12]}" in events


def test_auto_commit_is_a_config_value_checked_where_it_enters(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    new_ws(repo, "x", "true")
    write_config(repo, '[harness]\ncommit = "sometimes"\n')
    refused = cli(repo, "ws", "run", "x")
    assert refused.returncode == 2
    assert "commit" in refused.stderr


def test_a_landed_workstream_rests_skipped_by_run_all_and_is_not_unmerged(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    new_ws(repo, "done", shlex.join(["sh", "-c", "echo work > work.txt && git add work.txt && git commit -qm work"]))
    new_ws(repo, "other", "true")
    assert cli(repo, "ws", "run", "done").returncode == 0
    # Landed by squash: the branch's own commit is not an ancestor of main.
    git(repo, "merge", "--squash", "aidp/done")
    git(repo, "commit", "-qm", "squashed done")
    store = Store(repo / ".aidp" / "state.db")
    try:
        store.mark_landed("done", git(repo, "rev-parse", "HEAD").strip(), "landed into main")
    finally:
        store.close()
    assert workstreams(repo)["done"]["status"] == "landed"

    run_all = cli(repo, "ws", "run-all", "--json")
    assert [r["slug"] for r in json.loads(run_all.stdout)["results"]] == ["other"]
    removed = cli(repo, "ws", "rm", "done", "--delete-branch")
    assert removed.returncode == 0, removed.stderr
    assert "deleted branch aidp/done" in removed.stdout
