"""`aidp repl` driven through a pipe, and `aidp demo`."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from cli_helpers import Lines, gated, harness, new_ws, spawn_cli, workstreams
from support import cli, make_repo


def test_repl_prompt_stays_usable_while_a_run_goes_on(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    gate = tmp_path / "gate"
    new_ws(repo, "x", harness(tmp_path, "gated", gated(gate, "waiting", "done")))
    repl = spawn_cli(repo, "repl", stdin=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert repl.stdin is not None
    out = Lines(repl)

    repl.stdin.write("/ws run x\n")
    repl.stdin.flush()
    out.expect(r"\] x running$")
    repl.stdin.write("/ws list\n")
    repl.stdin.flush()
    out.expect(r"^SLUG\s+STATUS")
    assert re.match(r"^x\s+running\s+aidp/x", out.expect(r"^x\s"))  # answered while x still runs

    gate.touch()  # only now may the harness end
    out.expect(r"\] x completed \(exit 0")
    out.expect(r"^- x\s+completed")
    out.expect(r"^1 completed, 0 failed")

    for line, answer in (
        ("/ws bogus", r"aidp: error: argument WS_COMMAND: invalid choice"),
        ("/ws run nope", r"aidp: error: unknown workstream: nope"),
        ("/ws status x", r"^status:\s+completed"),
        ("/frobnicate", r"unknown command '/frobnicate'"),
        ("/help", r"^/quit"),
    ):
        repl.stdin.write(line + "\n")
        repl.stdin.flush()
        out.expect(answer)
    repl.stdin.write("/quit\n")
    repl.stdin.flush()
    assert repl.wait(timeout=60) == 0


def test_repl_eof_cancels_running_runs(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    new_ws(repo, "forever", harness(tmp_path, "forever", "import time\ntime.sleep(60)\n"))
    repl = spawn_cli(repo, "repl", stdin=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert repl.stdin is not None
    out = Lines(repl)
    repl.stdin.write("/ws run forever --max-concurrent 1\n")
    repl.stdin.flush()
    out.expect(r"\] forever running$")
    repl.stdin.close()  # Ctrl-D
    out.expect(r"\] forever cancelled")
    out.expect(r"^- forever\s+cancelled")
    assert repl.wait(timeout=60) == 0
    assert workstreams(repo)["forever"]["status"] == "cancelled"


def test_demo_runs_in_parallel_commits_on_each_branch_and_cleans_up(tmp_path: Path) -> None:
    demo = cli(tmp_path, "demo", timeout=120)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert re.search(r"^speed-up: \d+\.\dx \(sum of durations [\d.]+ s, wall [\d.]+ s\)$", demo.stdout, re.M)
    assert len(re.findall(r"^- [a-z-]+ +completed", demo.stdout, re.M)) == 5
    for slug in ("fix-login", "add-search", "dark-mode", "upgrade-deps", "write-docs"):
        assert re.search(rf"^\$ git log --oneline -1 aidp/{slug}\n[0-9a-f]+ {slug}: ", demo.stdout, re.M)
    root = re.search(r"^demo repository: (.+)$", demo.stdout, re.M)
    assert root is not None
    assert not Path(root.group(1)).exists()
