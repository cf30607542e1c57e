"""Ready worktrees ([worktree] copy, setup, dir), hooks ([hooks] on_end, on_run_end) and --notify,
through the real CLI in real repositories: every check runs `python -m aidp` as a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import Lines, events, spawn_cli, workstreams
from support import PYTHON, cli, git, make_repo, pid_alive, wait_until_sync

# A harness that records its worktree's files, so a test sees what the setup left there.
RECORD_ARGV = """\
import json, os, sys
with open(sys.argv[1], "a") as f:
    env = {k: v for k, v in os.environ.items() if k.startswith("AIDP_")}
    f.write(json.dumps({"argv": sys.argv[2:], "env": env, "cwd": os.getcwd()}) + "\\n")
"""


def configure(repo: Path, toml: str) -> None:
    (repo / ".aidp").mkdir(exist_ok=True)
    (repo / ".aidp" / "config.toml").write_text(toml)


def script(tmp_path: Path, name: str, code: str) -> str:
    path = tmp_path / f"{name}.py"
    path.write_text(code)
    return str(path)


def records(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def ignored_repo(tmp_path: Path) -> Path:
    """A repository whose `.env` and `config/local.*` are git-ignored and present in the checkout."""
    repo = make_repo(tmp_path)
    (repo / ".gitignore").write_text(".env\nconfig/local.*\n")
    (repo / "config").mkdir()
    (repo / "config" / "app.toml").write_text("tracked = true\n")
    git(repo, "add", ".gitignore", "config/app.toml")
    git(repo, "commit", "-q", "-m", "ignore local files")
    (repo / ".env").write_text("SECRET=42\n")
    (repo / "config" / "local.toml").write_text("local = 1\n")
    (repo / "config" / "local.json").write_text("{}\n")
    return repo


def test_copy_and_setup_make_a_new_worktree_ready(tmp_path: Path) -> None:
    repo = ignored_repo(tmp_path)
    setup = script(
        tmp_path, "setup", "import os, pathlib\npathlib.Path('installed').write_text(os.environ['AIDP_SLUG'])\n"
    )
    configure(
        repo,
        f'[harness]\ncommand = ["{PYTHON}", "-c", "pass"]\n'
        f'[worktree]\ncopy = [".env", "config/local.*", "missing.*"]\nsetup = ["{PYTHON}", "{setup}"]\n',
    )
    out = cli(repo, "ws", "new", "ready", "a task")
    assert out.returncode == 0, out.stderr
    assert "copied:     .env, config/local.json, config/local.toml" in out.stdout
    assert "setup:      ok" in out.stdout
    worktree = repo / ".worktrees" / "ready"
    assert (worktree / ".env").read_text() == "SECRET=42\n"  # git-ignored, so only the copy brought it
    assert (worktree / "config" / "local.toml").read_text() == "local = 1\n"
    assert (worktree / "installed").read_text() == "ready"  # the setup ran in the worktree
    state = workstreams(repo)["ready"]["setup"]
    assert state["status"] == "ok" and state["copied"] == [".env", "config/local.json", "config/local.toml"]
    assert Path(state["logPath"]).is_file() and state["error"] is None
    said = events(repo, "ready")
    assert any("copied from the main checkout: .env, config/local.json, config/local.toml" in e for e in said)
    assert any("setup ok" in e for e in said)
    status = cli(repo, "ws", "status", "ready")
    assert "setup:      ok" in status.stdout
    assert cli(repo, "ws", "run", "ready").returncode == 0


def test_a_failed_setup_refuses_the_run_until_it_is_redone(tmp_path: Path) -> None:
    repo = ignored_repo(tmp_path)
    flag = tmp_path / "network-is-up"
    setup = script(
        tmp_path,
        "setup",
        f"import pathlib, sys\nprint('installing')\nif not pathlib.Path({str(flag)!r}).exists():\n"
        "    print('npm ERR! network unreachable')\n    sys.exit(7)\n",
    )
    record = tmp_path / "runs.jsonl"
    agent = script(tmp_path, "agent", RECORD_ARGV)
    configure(
        repo,
        f'[harness]\ncommand = ["{PYTHON}", "{agent}", "{record}", "{{slug}}"]\n'
        f'[worktree]\nsetup = ["{PYTHON}", "{setup}"]\n',
    )
    out = cli(repo, "ws", "new", "web", "a task")
    assert out.returncode == 0, out.stderr
    assert "setup:      failed" in out.stdout and "exit code 7" in out.stdout
    assert "to redo it: aidp ws setup web" in out.stdout
    state = workstreams(repo)["web"]["setup"]
    assert state["status"] == "failed"
    assert state["error"].splitlines()[0] == "exit code 7" and "npm ERR! network unreachable" in state["error"]
    assert "npm ERR!" in Path(state["logPath"]).read_text()

    refused = cli(repo, "ws", "run", "web")
    assert refused.returncode == 1
    assert "web: its setup failed (exit code 7); fix it, then redo it: 'aidp ws setup web'" in refused.stderr
    blocked = cli(repo, "ws", "run-all", "--json")
    assert blocked.returncode == 1
    (result,) = json.loads(blocked.stdout)["results"]
    assert result["status"] == "blocked" and "its setup failed (exit code 7)" in result["error"]
    assert not record.exists()  # the harness never ran

    flag.write_text("")
    redo = cli(repo, "ws", "setup", "web")
    assert redo.returncode == 0, redo.stderr
    assert "setup:      ok" in redo.stdout
    assert workstreams(repo)["web"]["setup"]["status"] == "ok"
    assert cli(repo, "ws", "run", "web").returncode == 0
    assert [r["argv"] for r in records(record)] == [["web"]]


def test_ws_setup_says_what_is_wrong(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    configure(repo, f'[harness]\ncommand = ["{PYTHON}", "-c", "pass"]\n')
    assert cli(repo, "ws", "new", "plain", "a task").returncode == 0
    assert "setup" not in workstreams(repo)["plain"] or workstreams(repo)["plain"]["setup"] is None
    out = cli(repo, "ws", "setup", "plain")
    assert out.returncode == 2 and "nothing to set up: configure [worktree] copy" in out.stderr
    out = cli(repo, "ws", "setup", "nope")
    assert out.returncode == 2 and "nope" in out.stderr


def test_copy_patterns_that_escape_the_repository_are_refused(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    for pattern in ("../secrets/*", "/etc/passwd", "config/../../x"):
        configure(repo, f'[worktree]\ncopy = ["{pattern}"]\n')
        out = cli(repo, "ws", "new", "bad", "a task")
        assert out.returncode == 2, out.stdout
        assert f"[worktree] copy pattern {pattern!r} must be relative to the repository root" in out.stderr
        assert not (repo / ".worktrees" / "bad").exists()


def test_worktrees_outside_the_repository(tmp_path: Path) -> None:
    repo = ignored_repo(tmp_path)
    agent = script(tmp_path, "agent", "import pathlib\npathlib.Path('work.txt').write_text('done')\n")
    base = f'[harness]\ncommand = ["{PYTHON}", "{agent}"]\ncommit = "on-success"\n'
    configure(repo, base)
    assert cli(repo, "ws", "new", "before", "a task").returncode == 0
    configure(repo, base + '[worktree]\ndir = "../elsewhere"\ncopy = [".env"]\n')
    out = cli(repo, "ws", "new", "outside", "a task")
    assert out.returncode == 0, out.stderr
    outside = (tmp_path / "elsewhere" / "outside").resolve()
    found = workstreams(repo)
    assert Path(found["outside"]["path"]) == outside
    assert Path(found["before"]["path"]) == repo.resolve() / ".worktrees" / "before"  # kept where it was made
    assert (outside / ".env").read_text() == "SECRET=42\n"
    assert git(repo, "status", "--short") == ""  # nothing of aidp's shows in the user's checkout
    run = cli(repo, "ws", "run", "outside", "before")
    assert run.returncode == 0, run.stdout + run.stderr
    assert (outside / "work.txt").read_text() == "done"
    land = cli(repo, "ws", "land", "outside")
    assert land.returncode == 0, land.stderr
    assert "work.txt" in git(repo, "ls-tree", "--name-only", "main")
    rm = cli(repo, "ws", "rm", "outside", "--delete-branch", "--force")
    assert rm.returncode == 0, rm.stderr
    assert not outside.exists()
    assert set(workstreams(repo)) == {"before"}


def test_a_worktrees_dir_inside_the_repository_is_excluded_from_git_status(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    configure(repo, '[worktree]\ndir = "work/trees"\n')
    assert cli(repo, "ws", "new", "inside", "a task").returncode == 0
    assert (repo / "work" / "trees" / "inside" / ".git").exists()
    assert git(repo, "status", "--short", "--untracked-files=all") == ""
    configure(repo, '[worktree]\ndir = ".git/trees"\n')
    out = cli(repo, "ws", "new", "in-git", "a task")
    assert out.returncode == 2 and "worktrees cannot go in the repository root, .git or .aidp" in out.stderr


HOOK = """\
import json, os, sys
with open(sys.argv[1], "a") as f:
    env = {k: v for k, v in os.environ.items() if k.startswith("AIDP_")}
    f.write(json.dumps({"argv": sys.argv[2:], "env": env, "cwd": os.getcwd()}) + "\\n")
"""


def test_hooks_get_the_result_in_placeholders_and_the_environment(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    hook = script(tmp_path, "hook", HOOK)
    ended, run_ended = tmp_path / "ended.jsonl", tmp_path / "run-ended.jsonl"
    agent = script(
        tmp_path, "agent", "import sys\nprint('working on', sys.argv[1])\nsys.exit(3 if sys.argv[1] == 'bad' else 0)\n"
    )
    configure(
        repo,
        f'[harness]\ncommand = ["{PYTHON}", "{agent}", "{{slug}}"]\n'
        f'[hooks]\non_end = ["{PYTHON}", "{hook}", "{ended}", "{{slug}}", "{{status}}", "{{exit_code}}", '
        '"{run_id}", "{log}", "{duration}", "literal {braces}"]\n'
        f'on_run_end = ["{PYTHON}", "{hook}", "{run_ended}", "{{run_id}}", "{{total}}", "{{completed}}", '
        '"{failed}", "{ok}"]\n',
    )
    for slug in ("good", "bad"):
        assert cli(repo, "ws", "new", slug, "a task").returncode == 0
    out = cli(repo, "ws", "run", "good", "bad", "--json")
    assert out.returncode == 1
    summary = json.loads(out.stdout)
    run_id = summary["runId"]
    by_slug = {r["argv"][0]: r for r in records(ended)}
    assert set(by_slug) == {"good", "bad"}
    for slug, status, code in (("good", "completed", "0"), ("bad", "failed", "3")):
        argv, env = by_slug[slug]["argv"], by_slug[slug]["env"]
        result = next(r for r in summary["results"] if r["slug"] == slug)
        assert argv[:4] == [slug, status, code, run_id]
        assert argv[4] == result["logPath"] and f"working on {slug}" in Path(argv[4]).read_text()
        assert float(argv[5]) == result["durationS"]
        assert argv[6] == "literal {braces}"
        assert env["AIDP_SLUG"] == slug and env["AIDP_STATUS"] == status and env["AIDP_EXIT_CODE"] == code
        assert env["AIDP_RUN_ID"] == run_id and env["AIDP_LOG"] == result["logPath"] and env["AIDP_HOOK"] == "on_end"
        assert Path(by_slug[slug]["cwd"]) == repo.resolve()
    (run_record,) = records(run_ended)
    assert run_record["argv"] == [run_id, "2", "1", "1", "false"]
    assert run_record["env"]["AIDP_TOTAL"] == "2" and run_record["env"]["AIDP_HOOK"] == "on_run_end"
    assert {ws["slug"]: ws["status"] for ws in workstreams(repo).values()} == {"good": "completed", "bad": "failed"}


def test_a_failing_hook_is_said_and_changes_no_status(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    configure(
        repo,
        f'[harness]\ncommand = ["{PYTHON}", "-c", "pass"]\n'
        f'[hooks]\non_end = ["{PYTHON}", "-c", "import sys; print(\'hook broke\'); sys.exit(5)"]\n'
        'on_run_end = ["no-such-hook-program-aidp"]\n',
    )
    assert cli(repo, "ws", "new", "calm", "a task").returncode == 0
    out = cli(repo, "ws", "run", "calm")
    assert out.returncode == 0, out.stderr  # the run completed; the hook's failure changes nothing
    assert "hook on_end failed: exit code 5" in out.stderr
    assert "hook on_run_end failed: cannot start 'no-such-hook-program-aidp': no such program" in out.stderr
    assert workstreams(repo)["calm"]["status"] == "completed"
    said = events(repo, "calm")
    done = next(i for i, e in enumerate(said) if "completed" in e.split()[1])
    failed = next(i for i, e in enumerate(said) if "hook on_end failed: exit code 5" in e)
    assert done < failed  # recorded first; the hook ran after


def test_a_hanging_hook_is_killed_after_its_timeout(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    pids = tmp_path / "hook-pids"
    hang = script(
        tmp_path,
        "hang",
        "import os, signal, subprocess, sys, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\ntime.sleep(600)\n",
    )
    configure(
        repo,
        f'[harness]\ncommand = ["{PYTHON}", "-c", "pass"]\ngrace_s = 0.2\n'
        f'[hooks]\non_end = ["{PYTHON}", "{hang}"]\ntimeout_s = 4\n',
    )
    assert cli(repo, "ws", "new", "slow-word", "a task").returncode == 0
    out = cli(repo, "ws", "run", "slow-word")
    assert out.returncode == 0, out.stderr
    assert "hook on_end failed: timed out after 4 s (ended)" in out.stderr
    assert workstreams(repo)["slow-word"]["status"] == "completed"
    hook_pid, child_pid = (int(p) for p in pids.read_text().split())
    assert not pid_alive(hook_pid) and not pid_alive(child_pid)  # nothing of it is left running
    assert any("hook on_end failed: timed out" in e for e in events(repo, "slow-word"))


def fake_notify_send(tmp_path: Path) -> tuple[Path, Path]:
    """A `notify-send` on PATH that records its argv: (the bin folder, the record)."""
    bin_dir, record = tmp_path / "bin", tmp_path / "notified.jsonl"
    bin_dir.mkdir()
    fake = bin_dir / "notify-send"
    fake.write_text(
        f"#!{PYTHON}\nimport json, sys\nopen({str(record)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    fake.chmod(0o755)
    return bin_dir, record


def test_notify_sends_a_desktop_notification_when_the_run_ends(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    configure(
        repo, f'[harness]\ncommand = ["{PYTHON}", "-c", "import sys; sys.exit(sys.argv[1] == \'bad\')", "{{slug}}"]\n'
    )
    for slug in ("good", "bad"):
        assert cli(repo, "ws", "new", slug, "a task").returncode == 0
    bin_dir, record = fake_notify_send(tmp_path)
    path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    out = cli(repo, "ws", "run-all", "--notify", env={"PATH": path})
    assert out.returncode == 1
    (argv,) = records(record)
    assert argv == [
        "--app-name=aidp",
        "--urgency=critical",
        "aidp: run ended with failures",
        "1 completed, 1 failed of 2\nnot completed: bad",
    ]
    assert cli(repo, "ws", "run", "good", env={"PATH": path}).returncode == 0
    assert len(records(record)) == 1  # only with --notify


def test_notify_says_when_notify_send_is_missing(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    configure(repo, f'[harness]\ncommand = ["{PYTHON}", "-c", "pass"]\n')
    assert cli(repo, "ws", "new", "quiet", "a task").returncode == 0
    bin_dir = tmp_path / "only-git"
    bin_dir.mkdir()
    git_path = shutil.which("git")
    assert git_path is not None
    (bin_dir / "git").symlink_to(git_path)
    out = cli(repo, "ws", "run", "quiet", "--notify", env={"PATH": str(bin_dir)})
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("no desktop notification: notify-send was not found on PATH") == 1


def test_ctrl_c_during_setup_ends_it_and_records_it_failed(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    started = tmp_path / "setup-pid"
    setup = script(
        tmp_path,
        "setup",
        f"import os, time\nopen({str(started)!r}, 'w').write(str(os.getpid()))\ntime.sleep(600)\n",
    )
    configure(repo, f'[worktree]\nsetup = ["{PYTHON}", "{setup}"]\n')
    proc = spawn_cli(repo, "ws", "new", "slow", "a task")
    wait_until_sync(lambda: started.exists() and started.read_text() != "", what="the setup to start")
    assert workstreams(repo)["slow"]["setup"]["status"] == "running"
    refused = cli(repo, "ws", "run", "slow")
    assert refused.returncode == 1 and "slow: its setup is still running" in refused.stderr
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert not pid_alive(int(started.read_text()))
    state = workstreams(repo)["slow"]["setup"]
    assert state["status"] == "failed" and state["error"] == "cancelled (aidp was stopped)"


def test_removing_a_worktree_loses_no_copied_file_it_changed(tmp_path: Path) -> None:
    repo = ignored_repo(tmp_path)
    configure(repo, '[worktree]\ncopy = [".env"]\n')
    for slug in ("as-copied", "edited"):
        assert cli(repo, "ws", "new", slug, "a task").returncode == 0
    rm = cli(repo, "ws", "rm", "as-copied")
    assert rm.returncode == 0, rm.stderr  # the .env is the main checkout's: nothing is lost
    (repo / ".worktrees" / "edited" / ".env").write_text("SECRET=changed\n")
    refused = cli(repo, "ws", "rm", "edited")
    assert refused.returncode == 1 and "ignored files that would be deleted:\n.env" in refused.stderr
    assert (repo / ".worktrees" / "edited" / ".env").read_text() == "SECRET=changed\n"


def test_the_repl_notifies_a_run_started_with_notify(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    configure(repo, f'[harness]\ncommand = ["{PYTHON}", "-c", "pass"]\n')
    assert cli(repo, "ws", "new", "bell", "a task").returncode == 0
    bin_dir, record = fake_notify_send(tmp_path)
    path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    repl = spawn_cli(repo, "repl", env={"PATH": path}, stdin=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert repl.stdin is not None
    out = Lines(repl)
    repl.stdin.write("/ws run bell --notify\n")
    repl.stdin.flush()
    out.expect(r"^1 completed, 0 failed")
    wait_until_sync(lambda: len(records(record)) == 1, what="the notification")
    assert records(record) == [["--app-name=aidp", "--urgency=normal", "aidp: run completed", "1 completed of 1"]]
    repl.stdin.write("/ws run bell\n")
    repl.stdin.flush()
    out.expect(r"^1 completed, 0 failed")
    repl.stdin.close()
    assert repl.wait(timeout=60) == 0
    assert len(records(record)) == 1  # only the run started with --notify


def test_bad_worktree_and_hooks_settings_name_the_field(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    for toml, said in (
        ('[hooks]\non_end = "notify-send done"\n', "Expected `array | null`, got `str` - at `$.hooks.on_end`"),
        ("[hooks]\ntimeout_s = 0\n", "at `$.hooks.timeout_s`"),
        ("[worktree]\nsetup = []\n", "at `$.worktree.setup`"),
        ('[worktree]\ncopy = [""]\n', "at `$.worktree.copy[0]`"),
        ("[worktree]\nsetup_timeout = 5\n", "unknown field `setup_timeout`"),
    ):
        configure(repo, toml)
        out = cli(repo, "ws", "new", "bad", "a task")
        assert out.returncode == 2 and said in out.stderr, (toml, out.stderr)
        assert not (repo / ".worktrees" / "bad").exists()


@pytest.mark.parametrize("hidden", [False, True], ids=["plain", "env-i-without-cgroup"])
def test_a_setup_whose_aidp_died_is_ended_and_recorded_failed(tmp_path: Path, hidden: bool) -> None:
    """The setup ignores SIGTERM. `hidden`: it also drops its environment (no marker) where aidp
    makes no cgroup, so only its recorded pid and start time lead to it."""
    repo = make_repo(tmp_path)
    started = tmp_path / "setup-pid"
    setup = script(
        tmp_path,
        "setup",
        "import os, signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"open({str(started)!r}, 'w').write(str(os.getpid()))\ntime.sleep(600)\n",
    )
    argv = ["env", "-i", PYTHON, setup] if hidden else [PYTHON, setup]
    configure(repo, f"[worktree]\nsetup = {json.dumps(argv)}\n")
    proc = spawn_cli(repo, "ws", "new", "orphan", "a task", env={"AIDP_CGROUPS": "0"} if hidden else None)
    wait_until_sync(lambda: started.exists() and started.read_text() != "", what="the setup to start")
    setup_pid = int(started.read_text())
    try:
        running = workstreams(repo)["orphan"]["setup"]  # recorded before it ran: it wrote its pid since
        assert running["status"] == "running" and running["pid"] == setup_pid and running["pidStart"] > 0
        proc.kill()  # SIGKILL: aidp ends nothing itself
        proc.communicate(timeout=60)
        assert pid_alive(setup_pid)
        state = workstreams(repo)["orphan"]["setup"]  # any aidp command corrects what the dead one left
        assert state["status"] == "failed" and "interrupted: the aidp process" in state["error"]
        assert state["pid"] is None
        wait_until_sync(lambda: not pid_alive(setup_pid), what="the orphaned setup to be ended")
    finally:
        if pid_alive(setup_pid):
            os.kill(setup_pid, signal.SIGKILL)
    refused = cli(repo, "ws", "run", "orphan")
    assert refused.returncode == 1 and "orphan: its setup failed (interrupted" in refused.stderr
