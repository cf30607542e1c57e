"""The CLI's workstream management and its errors, end to end through `python -m aidp`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from cli_helpers import harness, new_ws, workstreams
from support import PYTHON, child_env, cli, git, make_repo

OK = "print('ok')"


def test_new_list_status_pause_resume(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    command = harness(tmp_path, "ok", OK)
    sub = repo / "src" / "deep"
    sub.mkdir(parents=True)

    created = cli(sub, "ws", "new", "fix-login", "Fix", "the", "login", "--command", command)
    assert created.returncode == 0, created.stderr
    assert "aidp/fix-login" in created.stdout
    worktree = repo / ".worktrees" / "fix-login"
    assert git(worktree, "rev-parse", "--abbrev-ref", "HEAD").strip() == "aidp/fix-login"

    listed = cli(repo, "ws", "list")
    assert listed.returncode == 0
    header, row = listed.stdout.splitlines()
    columns = ["SLUG", "STATUS", "BRANCH", "PRIORITY", "AFTER", "CHANGES", "LAST", "RUN", "EXPECTED", "TASK"]
    assert header.split() == columns
    assert row.split()[:3] == ["fix-login", "active", "aidp/fix-login"]
    assert row.endswith("Fix the login")
    ws = workstreams(repo)["fix-login"]
    assert ws["task"] == "Fix the login"
    assert ws["command"][-1] == "{slug}"

    status = cli(worktree, "ws", "status", "fix-login")  # also from inside a worktree
    assert status.returncode == 0, status.stderr
    assert "branch:     aidp/fix-login" in status.stdout
    assert "created" in status.stdout
    assert status.stdout.rstrip().endswith("git status --short:\n  (clean)")
    (worktree / "new.txt").write_text("x")
    assert "?? new.txt" in cli(repo, "ws", "status", "fix-login").stdout

    assert cli(repo, "ws", "pause", "fix-login").stdout.strip() == "fix-login paused"
    assert workstreams(repo)["fix-login"]["status"] == "paused"
    refused = cli(repo, "ws", "run", "fix-login")
    assert refused.returncode == 1
    assert "paused" in refused.stderr
    assert cli(repo, "ws", "resume", "fix-login").stdout.strip() == "fix-login active"


def test_new_reuses_an_existing_branch(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    git(repo, "branch", "aidp/old-work")
    git(repo, "commit", "-q", "--allow-empty", "-m", "later on main")
    new_ws(repo, "old-work", "true")
    worktree = repo / ".worktrees" / "old-work"
    assert git(worktree, "rev-parse", "HEAD") == git(repo, "rev-parse", "main~1")


def test_new_from_a_base_branch(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    git(repo, "checkout", "-q", "-b", "feature")
    git(repo, "commit", "-q", "--allow-empty", "-m", "feature work")
    git(repo, "checkout", "-q", "main")
    assert cli(repo, "ws", "new", "on-feature", "task", "--base-branch", "feature").returncode == 0
    assert git(repo / ".worktrees" / "on-feature", "log", "-1", "--format=%s").strip() == "feature work"
    missing = cli(repo, "ws", "new", "on-nothing", "task", "--base-branch", "nope")
    assert missing.returncode == 2  # an input error
    assert "does not exist" in missing.stderr


def test_rm_refuses_uncommitted_work_unless_forced(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    new_ws(repo, "dirty", "true")
    worktree = repo / ".worktrees" / "dirty"
    (worktree / "README.md").write_text("changed\n")

    refused = cli(repo, "ws", "rm", "dirty")
    assert refused.returncode == 1
    assert "uncommitted changes" in refused.stderr
    assert "--force" in refused.stderr
    assert worktree.exists()
    assert "dirty" in workstreams(repo)

    forced = cli(repo, "ws", "rm", "dirty", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "discarded: the worktree" in forced.stdout
    assert f"removed worktree {worktree}" in forced.stdout
    assert "kept branch aidp/dirty" in forced.stdout
    assert not worktree.exists()
    assert workstreams(repo) == {}
    assert git(repo, "branch", "--list", "aidp/dirty").strip()


def test_rm_delete_branch_refuses_unmerged_commits(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    new_ws(repo, "work", "true")
    worktree = repo / ".worktrees" / "work"
    (worktree / "done.txt").write_text("done\n")
    git(worktree, "add", "done.txt")
    git(worktree, "commit", "-q", "-m", "work done")

    refused = cli(repo, "ws", "rm", "work", "--delete-branch")
    assert refused.returncode == 1
    assert "1 commit(s) not merged" in refused.stderr
    assert git(repo, "branch", "--list", "aidp/work").strip()

    kept = cli(repo, "ws", "rm", "work")  # without --delete-branch the commit stays on its branch
    assert kept.returncode == 0, kept.stderr
    assert "kept branch aidp/work" in kept.stdout

    new_ws(repo, "work", "true")  # reuses the branch with its commit
    forced = cli(repo, "ws", "rm", "work", "--delete-branch", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "discarded: branch aidp/work has 1 commit(s)" in forced.stdout
    assert "deleted branch aidp/work" in forced.stdout
    assert not git(repo, "branch", "--list", "aidp/work").strip()


def test_outside_a_git_repository(tmp_path: Path) -> None:
    result = cli(tmp_path, "ws", "list")
    assert result.returncode == 2
    assert result.stderr.startswith("aidp: error: not inside a git repository")
    assert "Traceback" not in result.stderr


def test_in_a_directory_removed_under_the_shell(tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    script = 'cd "$1" && rmdir "$1" && exec "$2" -m aidp ws list'
    result = subprocess.run(
        ["sh", "-c", script, "sh", str(gone), PYTHON], env=child_env(), capture_output=True, text=True, check=False
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr == "aidp: error: the current directory no longer exists (removed?): cd into the repository\n"


def test_bad_slugs_are_usage_errors(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    for args in (
        ("ws", "new", "Bad_Slug", "task"),
        ("ws", "new", "../escape", "task"),
        ("ws", "status", "x-"),
        ("ws", "run", "UPPER"),
        ("ws", "cancel", "a--b"),
        ("ws", "logs", "a" * 65),
    ):
        result = cli(repo, *args)
        assert result.returncode == 2, args
        assert "aidp: error:" in result.stderr, args
        assert "slug" in result.stderr, args
    assert not (repo / ".worktrees").exists() or not any((repo / ".worktrees").iterdir())


def test_unknown_slug_runs_nothing(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    new_ws(repo, "known", harness(tmp_path, "ok", OK))
    result = cli(repo, "ws", "run", "known", "unknown")
    assert result.returncode == 2
    assert "unknown workstream: unknown" in result.stderr
    assert workstreams(repo)["known"]["status"] == "active"
    assert workstreams(repo)["known"]["lastResult"] is None
    for args in (("ws", "status", "nope"), ("ws", "cancel", "nope"), ("ws", "rm", "nope"), ("ws", "pause", "nope")):
        assert cli(repo, *args).returncode == 2, args


def test_duplicate_workstream_is_an_input_error(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    new_ws(repo, "twice", "true")
    again = cli(repo, "ws", "new", "twice", "task")
    assert again.returncode == 2
    assert "already exists" in again.stderr


def test_bad_config_names_the_field(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    new_ws(repo, "x", "true")
    (repo / ".aidp" / "config.toml").write_text("[harness]\nmax_concurrent = 0\n")
    result = cli(repo, "ws", "run", "x")
    assert result.returncode == 2
    assert "max_concurrent" in result.stderr
    assert "Traceback" not in result.stderr
    (repo / ".aidp" / "config.toml").write_text("[harness]\ncomand = ['x']\n")
    result = cli(repo, "ws", "run-all")
    assert result.returncode == 2
    assert "comand" in result.stderr
    assert workstreams(repo)["x"]["lastResult"] is None


def test_missing_program_is_an_error_that_says_what_to_fix(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    new_ws(repo, "ghost", "no-such-program-aidp --flag")
    result = cli(repo, "ws", "run", "ghost", "--json")
    assert result.returncode == 1
    summary = json.loads(result.stdout)
    assert summary["errored"] == 1
    error = summary["results"][0]["error"]
    assert "no-such-program-aidp" in error
    assert "--command" in error
    assert workstreams(repo)["ghost"]["status"] == "error"


def test_no_command_configured_is_an_error(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    assert cli(repo, "ws", "new", "bare", "task").returncode == 0
    result = cli(repo, "ws", "run", "bare")
    assert result.returncode == 1
    assert "- bare  error" in result.stdout
    assert "config.toml" in result.stdout


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    for args in (
        (),
        ("ws",),
        ("bogus",),
        ("ws", "list", "--bogus"),
        ("ws", "new", "only-slug"),
        ("ws", "run"),
        ("ws", "run", "x", "--max-concurrent", "many"),
        ("ws", "run", "x", "--timeout", "soon"),
        ("ws", "new", "q", "task", "--command", "'unclosed"),
    ):
        result = cli(repo, *args)
        assert result.returncode == 2, args
        assert "usage: aidp" in result.stderr, args
        assert "aidp: error:" in result.stderr, args
    out_of_range = cli(repo, "ws", "run-all", "--max-concurrent", "0")
    assert out_of_range.returncode == 2
    assert "max_concurrent" in out_of_range.stderr


def test_help_and_version(tmp_path: Path) -> None:
    helped = cli(tmp_path, "--help")
    assert helped.returncode == 0
    assert "exit codes:" in helped.stdout
    for command in ("ws", "repl", "demo", "serve"):
        assert command in helped.stdout
    version = cli(tmp_path, "--version")
    assert version.returncode == 0
    assert version.stdout.startswith("aidp ")
    assert cli(tmp_path, "serve", "--help").returncode == 0
