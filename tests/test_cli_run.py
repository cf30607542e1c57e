"""Runs through the CLI: JSON results and exit codes, the plain-lines view, logs, cancel from
another process, and Ctrl-C. Harnesses are real processes; waits are on facts, not on timing."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

from cli_helpers import Lines, Terminal, events, gated, harness, new_ws, spawn_cli, wait_for_status, workstreams
from support import cli, make_repo, pid_alive, wait_until_sync

OK = "import sys\nprint('working on', sys.argv[1])\n"
FAIL = "print('something broke')\nraise SystemExit(3)\n"
SLOW = "import sys, time\nprint('started', flush=True)\ntime.sleep(60)\n"


def test_run_json_exit_codes(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    new_ws(repo, "good", harness(tmp_path, "ok", OK))
    new_ws(repo, "bad", harness(tmp_path, "fail", FAIL))

    ok = cli(repo, "ws", "run", "good", "--json")
    assert ok.returncode == 0, ok.stderr
    summary = json.loads(ok.stdout)  # nothing else on stdout
    assert (summary["total"], summary["completed"]) == (1, 1)
    assert summary["results"][0]["exitCode"] == 0
    assert Path(summary["results"][0]["logPath"]).read_text() == "working on good\n"

    mixed = cli(repo, "ws", "run", "good", "bad", "--json", "--max-concurrent", "1")
    assert mixed.returncode == 1
    summary = json.loads(mixed.stdout)
    assert [r["slug"] for r in summary["results"]] == ["good", "bad"]
    assert (summary["completed"], summary["failed"]) == (1, 1)
    assert summary["results"][1]["exitCode"] == 3
    assert "something broke" in summary["results"][1]["error"]

    listed = workstreams(repo)
    assert listed["good"]["status"] == "completed"
    assert listed["bad"]["lastResult"]["exitCode"] == 3


def test_run_passes_mode_steps_and_task(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    new_ws(repo, "echo", "echo {slug} {mode} {steps} {task}", task="the task")
    result = cli(repo, "ws", "run", "echo", "--mode", "plan", "--steps", "a,b", "--timeout", "30", "--json")
    assert result.returncode == 0, result.stderr
    log = Path(json.loads(result.stdout)["results"][0]["logPath"]).read_text()
    assert log == "echo plan a,b the task\n"


def test_plain_lines_when_stdout_is_not_a_terminal(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    new_ws(repo, "good", harness(tmp_path, "ok", OK))
    new_ws(repo, "bad", harness(tmp_path, "fail", FAIL))
    result = cli(repo, "ws", "run", "good", "bad")
    assert result.returncode == 1
    assert "\x1b[" not in result.stdout  # no cursor movement into a pipe
    lines = result.stdout.splitlines()
    events = [line.split("] ", 1)[1] for line in lines if re.match(r"^\[\d\d:\d\d:\d\d\] ", line)]
    for slug in ("good", "bad"):
        mine = [e for e in events if e.split()[0] == slug]
        assert [e.split()[1] for e in mine] == ["queued", "running", "completed" if slug == "good" else "failed"]
    assert any(line.startswith("- good ") for line in lines)  # no emoji into a pipe
    assert any(line.startswith("- bad ") for line in lines)
    assert "1 completed, 1 failed, 0 errored, 0 cancelled of 2" in result.stdout
    assert "- bad: exit code 3" in result.stdout
    assert "    something broke" in result.stdout


def test_live_view_on_a_terminal(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    gate = tmp_path / "gate"
    new_ws(repo, "shown", harness(tmp_path, "gated", gated(gate, "busy busy", "done")))
    term = Terminal(repo, "ws", "run", "shown")
    assert term.read(until=lambda: bool(re.search(r"⏳ shown\s+running\s+[\d.]+ s\s+busy busy", term.display())))
    gate.touch()  # the row showed the last output line while running: let it finish
    assert term.close() == 0
    text = "\n".join(term.lines())
    assert sum("shown" in line for line in term.lines()) == 2, text  # redrawn in place: the last frame, the summary
    assert re.search(r"^✅ shown\s+completed\s+[\d.]+ s  done$", text, re.M)  # the last frame
    assert "✅ shown  completed  (exit 0" in text  # the summary
    assert not re.search(r"^\[\d\d:\d\d:\d\d\]", text, re.M)  # not the plain lines


def test_run_all_skips_paused_and_completed(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    command = harness(tmp_path, "ok", OK)
    for slug in ("one", "two", "held"):
        new_ws(repo, slug, command)
    assert cli(repo, "ws", "pause", "held").returncode == 0
    first = cli(repo, "ws", "run-all", "--json")
    assert first.returncode == 0, first.stderr
    assert sorted(r["slug"] for r in json.loads(first.stdout)["results"]) == ["one", "two"]
    again = cli(repo, "ws", "run-all")
    assert again.returncode == 0
    assert "nothing to run" in again.stdout


def test_logs_and_follow(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    gate = tmp_path / "gate"
    new_ws(repo, "chatty", harness(tmp_path, "chatty", gated(gate, "first line", "last line")))
    assert "has not run yet" in cli(repo, "ws", "logs", "chatty").stderr

    runner = spawn_cli(repo, "ws", "run", "chatty")
    wait_for_status(repo, "chatty", "running")
    follower = spawn_cli(repo, "ws", "logs", "chatty", "-f")
    Lines(follower).expect("^first line$")  # followed while the workstream is still running
    assert follower.poll() is None
    gate.touch()
    assert follower.wait(timeout=60) == 0
    assert runner.wait(timeout=60) == 0

    logs = cli(repo, "ws", "logs", "chatty")
    assert logs.returncode == 0
    assert logs.stdout == "first line\nlast line\n"
    assert cli(repo, "ws", "logs", "chatty", "-f").stdout == logs.stdout  # not running: prints and exits


def test_logs_prints_the_whole_log_however_large(tmp_path: Path) -> None:
    """3 MB of numbered lines: `ws logs` gives every one of them, not a tail."""
    repo = make_repo(tmp_path)
    new_ws(repo, "big", "sh -c 'seq 1 400000'")
    assert cli(repo, "ws", "run", "big").returncode == 0
    logs = subprocess.run(
        [sys.executable, "-m", "aidp", "ws", "logs", "big"], cwd=repo, capture_output=True, check=True, timeout=60
    )
    assert logs.stdout == "".join(f"{i}\n" for i in range(1, 400001)).encode()


def test_cancel_from_a_second_process(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    new_ws(repo, "slow", harness(tmp_path, "slow", SLOW))
    new_ws(repo, "quick", harness(tmp_path, "ok", OK))
    runner = spawn_cli(repo, "ws", "run", "slow", "--json")
    wait_for_status(repo, "slow", "running")

    busy = cli(repo, "ws", "rm", "slow", "--force")
    assert busy.returncode == 1
    assert "running" in busy.stderr
    assert cli(repo, "ws", "run", "slow").returncode == 1  # already claimed by the runner

    cancelled = cli(repo, "ws", "cancel", "slow", "quick")
    assert cancelled.returncode == 0, cancelled.stderr
    assert "quick is not running" in cancelled.stdout
    assert cancelled.stdout.splitlines()[-1] == "slow cancelled"

    out, _ = runner.communicate(timeout=60)
    assert runner.returncode == 1
    summary = json.loads(out)
    assert summary["cancelled"] == 1
    assert summary["results"][0]["status"] == "cancelled"
    assert workstreams(repo)["slow"]["status"] == "cancelled"


def test_ctrl_c_cancels_cleanly(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    pid_file = tmp_path / "grandchild.pid"
    code = (
        "import pathlib, subprocess, time\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        f"pathlib.Path({str(pid_file)!r}).write_text(str(child.pid))\n"
        "print('spawned', child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    new_ws(repo, "stuck", harness(tmp_path, "stuck", code))
    runner = spawn_cli(repo, "ws", "run", "stuck")
    wait_until_sync(lambda: pid_file.exists() and pid_file.read_text().strip() != "", what="the grandchild's pid")
    grandchild = int(pid_file.read_text())
    assert pid_alive(grandchild)

    runner.send_signal(signal.SIGINT)
    out, err = runner.communicate(timeout=60)
    assert runner.returncode == 1
    assert "cancelling" in err
    assert "Traceback" not in err
    assert "- stuck  cancelled" in out
    assert "0 completed, 0 failed, 0 errored, 1 cancelled of 1" in out
    assert workstreams(repo)["stuck"]["status"] == "cancelled"
    wait_until_sync(lambda: not pid_alive(grandchild), timeout=10, what="the grandchild to be gone")


def test_second_ctrl_c_kills_without_waiting_out_the_grace_period(tmp_path: Path) -> None:
    """The harness shrugs off SIGTERM and the grace period is ten minutes: only the second Ctrl-C
    (SIGKILL now) lets the CLI finish within the test's bound, with the summary and status recorded."""
    repo = make_repo(tmp_path)
    (repo / ".aidp").mkdir(exist_ok=True)
    (repo / ".aidp" / "config.toml").write_text("[harness]\ngrace_s = 600\n")
    started, termed = tmp_path / "started", tmp_path / "termed"
    code = (
        "import pathlib, signal, time\n"
        f"signal.signal(signal.SIGTERM, lambda *_: pathlib.Path({str(termed)!r}).touch())\n"
        f"pathlib.Path({str(started)!r}).touch()\n"
        "while True: time.sleep(0.05)\n"
    )
    new_ws(repo, "stubborn", harness(tmp_path, "stubborn", code))
    runner = spawn_cli(repo, "ws", "run", "stubborn")
    wait_until_sync(started.exists, what="the harness to start")
    runner.send_signal(signal.SIGINT)
    wait_until_sync(termed.exists, what="the harness to get SIGTERM from the first Ctrl-C")
    runner.send_signal(signal.SIGINT)
    try:
        out, err = runner.communicate(timeout=60)
    finally:
        runner.kill()  # only does something when the bound was missed
    assert runner.returncode == 1
    assert "killing" in err and "Traceback" not in err
    assert "0 completed, 0 failed, 0 errored, 1 cancelled of 1" in out
    assert workstreams(repo)["stubborn"]["status"] == "cancelled"


def test_a_missing_program_ends_error_without_ever_showing_running(tmp_path: Path) -> None:
    """A typo in the harness command: the run says what to fix, and the workstream's events go
    from `queued` to `error` (its start is recorded before the spawn, so the program is looked
    for before that record)."""
    repo = make_repo(tmp_path)
    new_ws(repo, "typo", "aidp-no-such-program-xyz {slug}")
    result = cli(repo, "ws", "run", "typo")
    assert result.returncode == 1
    assert "cannot start 'aidp-no-such-program-xyz': no such program" in result.stdout + result.stderr
    assert [line.split()[1] for line in events(repo, "typo")] == ["active", "queued", "error"]
