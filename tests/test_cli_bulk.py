"""Patterns and bulk work through the real CLI (issue 12, items 3 and 4): shell-style patterns
wherever slugs are accepted, `cancel --all`, `ws new --from FILE` (all or nothing), `--json`, and
the small things: a closed pipe, long tasks."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from cli_helpers import gated, harness, new_ws, spawn_cli, wait_for_status, workstreams
from support import PYTHON, child_env, cli, make_repo

OK = "print('ok')\n"


def test_patterns_name_workstreams_and_a_pattern_matching_nothing_is_an_error(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    command = harness(tmp_path, "ok", OK)
    for slug in ("issue-1", "issue-2", "other"):
        new_ws(repo, slug, command)
    ran = cli(repo, "ws", "run", "issue-*", "--json")
    assert ran.returncode == 0, ran.stderr
    assert [r["slug"] for r in json.loads(ran.stdout)["results"]] == ["issue-1", "issue-2"]
    assert workstreams(repo)["other"]["status"] == "active"

    status = cli(repo, "ws", "status", "issue-?", "--json")
    assert [json.loads(line)["slug"] for line in status.stdout.splitlines()] == ["issue-1", "issue-2"]
    (repo / ".worktrees" / "other" / "wip.txt").write_text("not committed yet\n")
    row = next(line for line in cli(repo, "ws", "list").stdout.splitlines() if line.startswith("other "))
    assert "uncommitted" in row and "active" in row  # the marker a user decides on
    diff = cli(repo, "ws", "diff", "other", "--json")  # --json wherever a command prints data
    assert json.loads(diff.stdout)["slug"] == "other"
    assert json.loads(cli(repo, "ws", "set", "other", "--priority", "high", "--json").stdout)["priority"] > 0
    paused = cli(repo, "ws", "pause", "oth*", "issue-[2]")
    assert paused.stdout.splitlines() == ["other paused", "issue-2 paused"]

    none = cli(repo, "ws", "run", "nope-*")
    assert none.returncode == 2
    assert "no workstream matches 'nope-*'" in none.stderr

    (repo / "issue-1.txt").write_text("a file the shell would have matched\n")
    expanded = cli(repo, "ws", "run", "issue-1.txt")  # what `aidp ws run issue-*` becomes in a shell
    assert expanded.returncode == 2
    assert "'issue-1.txt' is a file here, not a slug" in expanded.stderr
    assert "quote the pattern" in expanded.stderr

    removed = cli(repo, "ws", "rm", "issue-*", "--delete-branch")
    assert removed.returncode == 0, removed.stderr
    assert set(workstreams(repo)) == {"other"}


def test_cancel_all_cancels_whatever_runs(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    assert cli(repo, "ws", "cancel", "--all").stdout == "nothing is queued or running\n"
    assert cli(repo, "ws", "cancel").returncode == 2
    new_ws(repo, "forever", harness(tmp_path, "gated", gated(tmp_path / "never", "started", "never")))
    runner = spawn_cli(repo, "ws", "run", "forever")
    wait_for_status(repo, "forever", "running")
    cancelled = cli(repo, "ws", "cancel", "--all")
    assert cancelled.returncode == 0, cancelled.stderr
    assert "forever cancelled" in cancelled.stdout
    assert runner.wait(timeout=60) == 1


def test_new_from_a_file_of_lines_and_from_toml(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    lines = tmp_path / "plan.txt"
    lines.write_text("# two workstreams\nfix-a: Fix the first thing\n\nfix-b: Fix: the second thing\n")
    both = cli(repo, "ws", "new", "extra", "--from", str(lines))
    assert both.returncode == 2 and "usage: aidp ws new" in both.stderr and "give nothing else" in both.stderr
    made = cli(repo, "ws", "new", "--from", str(lines))
    assert made.returncode == 0, made.stderr
    listed = workstreams(repo)
    assert listed["fix-b"]["task"] == "Fix: the second thing"

    plan = tmp_path / "plan.toml"
    plan.write_text(
        '[later]\ntask = "After the first"\nafter = ["first"]\ncommand = "echo hi"\n'
        '[first]\ntask = "First"\npriority = "high"\n'
    )
    made = cli(repo, "ws", "new", "--from", str(plan))
    assert made.returncode == 0, made.stderr
    listed = workstreams(repo)
    assert listed["later"]["after"] == ["first"]
    assert listed["later"]["command"] == ["echo", "hi"]
    assert listed["first"]["priority"] > 0


def test_new_from_a_file_is_all_or_nothing(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    bad_line = tmp_path / "bad.txt"
    bad_line.write_text("good-one: fine\nBad Slug: not fine\n")
    refused = cli(repo, "ws", "new", "--from", str(bad_line))
    assert refused.returncode == 2
    assert "bad.txt:2" in refused.stderr
    unknown_dep = tmp_path / "dep.toml"
    unknown_dep.write_text('[a]\ntask = "A"\nafter = ["ghost"]\n')
    refused = cli(repo, "ws", "new", "--from", str(unknown_dep))
    assert "a runs after ghost, which is no workstream" in refused.stderr
    late = tmp_path / "late.toml"  # the second is refused by the engine once the first exists
    late.write_text('[made-first]\ntask = "fine"\n[then-bad]\ntask = "nul \\u0000 inside"\n')
    refused = cli(repo, "ws", "new", "--from", str(late))
    assert refused.returncode == 2
    assert "removed again: made-first" in refused.stderr
    assert workstreams(repo) == {}
    assert not (repo / ".worktrees" / "made-first").exists()


def test_long_tasks_and_a_closed_pipe(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    task = "Refactor the parser. " + "word " * 23_000  # about 115 KB
    (tmp_path / "task.txt").write_text(task)
    assert cli(repo, "ws", "new", "long", "--task-file", str(tmp_path / "task.txt")).returncode == 0
    listed = cli(repo, "ws", "list", env={"COLUMNS": "140"})
    assert all(len(line) <= 140 for line in listed.stdout.splitlines()), listed.stdout
    assert "Refactor the parser." in listed.stdout

    status = cli(repo, "ws", "status", "long", env={"COLUMNS": "100"})
    task_lines = [line for line in status.stdout.splitlines() if line.startswith(("task:", "            "))]
    assert len(task_lines) > 100 and all(len(line) <= 100 for line in task_lines)
    assert " ".join(line[12:] for line in task_lines).split() == task.split()  # the whole task, wrapped

    for argv in (["ws", "status", "long"], ["ws", "list"]):  # `| head -1`: the reader leaves early
        proc = subprocess.Popen(
            [PYTHON, "-m", "aidp", *argv], cwd=repo, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.readline()
        proc.stdout.close()
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=60) in (0, 141)
        assert "Traceback" not in err and "BrokenPipe" not in err, err
