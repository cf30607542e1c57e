"""Scheduling through the CLI (issue 10): priorities and dependencies set with `ws new`/`ws set`,
dependencies pulled into a run (or refused with --no-deps), blocked dependents, --halt, retries,
the repository's bound, and how `ws list`, `ws status`, the plain lines and the live view show them.

Every workstream runs one constant `sh -c` script from `.aidp/config.toml` (its slug is `$1`,
never part of the script). What it does is steered by marker files, and it stamps its own start
and end, so the tests assert order from the children's own stamps, never from timing:
`<slug>.fail` makes it fail (exit 3), `<slug>.flaky` makes only the next attempt fail,
`<slug>.limited` makes only the next attempt hit a rate limit (exit 75), `<slug>.write` makes it
write `<slug>.txt` in its worktree, and while `<slug>.hold` exists it waits."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

from cli_helpers import Lines, Terminal, spawn_cli, wait_for_status, workstreams
from conftest import toml_list, write_config
from support import CGROUPS, PYTHON, cancel_b_harness, cgroup_env, cli, git, make_repo, wait_until_sync

SCRIPT = """\
d="$STAMPS"
date +%s.%N > "$d/$1.start"
echo "working on $1"
if [ -e "$d/$1.write" ]; then echo "$1 was here" > "$1.txt"; fi
if [ -e "$d/$1.fail" ]; then echo "broken $1"; exit 3; fi
if [ -e "$d/$1.flaky" ]; then rm "$d/$1.flaky"; echo "flaky $1"; exit 3; fi
if [ -e "$d/$1.limited" ]; then rm "$d/$1.limited"; echo "429 $1"; exit 75; fi
while [ -e "$d/$1.hold" ]; do sleep 0.05; done
date +%s.%N > "$d/$1.end"
"""


def scheduled_repo(tmp_path: Path, *slugs: str, config: str = "") -> tuple[Path, Path]:
    """A repository whose workstreams `slugs` (created with no options) all run SCRIPT; returns
    it and the folder of marker and stamp files. `config`: more TOML (after the [harness] table)."""
    repo, stamps = make_repo(tmp_path), tmp_path / "stamps"
    stamps.mkdir()
    for slug in slugs:
        new = cli(repo, "ws", "new", slug, f"task {slug}")
        assert new.returncode == 0, new.stderr
    command = json.dumps(["sh", "-c", SCRIPT, "sh", "{slug}"])
    (repo / ".aidp" / "config.toml").write_text(
        f"[harness]\ncommand = {command}\nenv = {{ STAMPS = {json.dumps(str(stamps))} }}\n{config}"
    )
    return repo, stamps


def stamp(stamps: Path, slug: str, which: str) -> float:
    return float((stamps / f"{slug}.{which}").read_text())


def ran(stamps: Path, slug: str) -> bool:
    return (stamps / f"{slug}.start").exists()


def run_json(repo: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    """`ws run ... --json`: exit code, the summary, and stderr (where notes go in --json mode)."""
    result = cli(repo, "ws", *args, "--json")
    return result.returncode, json.loads(result.stdout), result.stderr


def test_new_and_set_priority_and_dependencies(tmp_path: Path) -> None:
    repo, _ = scheduled_repo(tmp_path, "a")
    made = cli(repo, "ws", "new", "b", "task b", "--priority", "high", "--after", "a")
    assert made.returncode == 0, made.stderr
    assert "b: priority high · after a" in made.stdout
    assert cli(repo, "ws", "new", "c", "task c", "--priority", "-5", "--after", "a,b").returncode == 0
    listed = workstreams(repo)
    assert (listed["a"]["priority"], listed["a"]["after"]) == (0, [])
    assert (listed["b"]["priority"], listed["b"]["after"]) == (10, ["a"])
    assert (listed["c"]["priority"], listed["c"]["after"]) == (-5, ["a", "b"])

    # A cycle is refused naming it, an unknown slug naming it; nothing is stored either way.
    cycle = cli(repo, "ws", "set", "a", "--after", "c", "--priority", "low")
    assert cycle.returncode == 2
    named = re.search(r"cycle: ([a-c](?: -> [a-c])+); nothing was changed", cycle.stderr)
    assert named is not None, cycle.stderr
    assert {"a", "c"} <= set(named.group(1).split(" -> "))
    unknown = cli(repo, "ws", "set", "a", "--after", "nope")
    assert unknown.returncode == 2
    assert "unknown workstream: nope" in unknown.stderr
    unknown_new = cli(repo, "ws", "new", "d", "task d", "--after", "ghost")
    assert unknown_new.returncode == 2
    assert "ghost" in unknown_new.stderr
    assert workstreams(repo) == listed  # the same records: no priority, dependency or workstream changed

    # Bad values are refused where they enter, with the usage line.
    for args in (
        ("new", "e", "task", "--priority", "urgent"),
        ("new", "e", "task", "--priority", "101"),
        ("new", "e", "task", "--after", "a,,b"),
        ("new", "e", "task", "--after", "Bad"),
        ("set", "a", "--after", "b", "--no-after"),
    ):
        refused = cli(repo, "ws", *args)
        assert refused.returncode == 2, args
        assert "usage: aidp ws" in refused.stderr, args
    assert "e" not in workstreams(repo)
    nothing = cli(repo, "ws", "set", "a")
    assert nothing.returncode == 2
    assert "nothing to set" in nothing.stderr

    dropped = cli(repo, "ws", "set", "c", "--no-after")
    assert dropped.returncode == 0, dropped.stderr
    assert dropped.stdout.strip() == "c: priority -5 · no dependencies"
    raised = cli(repo, "ws", "set", "c", "--priority", "high", "--after", "b")
    assert raised.stdout.strip() == "c: priority high · after b"
    assert (workstreams(repo)["c"]["priority"], workstreams(repo)["c"]["after"]) == (10, ["b"])

    table = cli(repo, "ws", "list").stdout.splitlines()
    columns = ["SLUG", "STATUS", "BRANCH", "PRIORITY", "AFTER", "CHANGES", "LAST", "RUN", "EXPECTED", "TASK"]
    assert table[0].split() == columns
    rows = {line.split()[0]: line.split() for line in table[1:]}
    assert rows["a"][3:5] == ["normal", "-"]
    assert rows["c"][3:5] == ["high", "b"]
    status = cli(repo, "ws", "status", "c").stdout
    assert re.search(r"^priority:\s+high$", status, re.M)
    assert re.search(r"^after:\s+b$", status, re.M)
    assert re.search(r"^expected:\s+unknown", status, re.M)


def test_run_pulls_in_dependencies_says_so_and_shows_the_wait(tmp_path: Path) -> None:
    repo, stamps = scheduled_repo(tmp_path, "a", "other")
    assert cli(repo, "ws", "new", "c", "task c", "--after", "a").returncode == 0

    refused = cli(repo, "ws", "run", "c", "--no-deps")
    assert refused.returncode == 1
    assert "not done yet, and named as dependencies: a" in refused.stderr
    assert not ran(stamps, "a") and not ran(stamps, "c")

    (stamps / "a.hold").touch()
    runner = spawn_cli(repo, "ws", "run", "c")
    wait_for_status(repo, "a", "running")
    wait_until_sync(lambda: workstreams(repo)["c"]["currentRun"]["waiting"] is not None, what="c's wait recorded")
    table = cli(repo, "ws", "list").stdout.splitlines()
    c_row = next(i for i, line in enumerate(table) if line.startswith("c "))
    assert re.match(r"^c\s+queued\s", table[c_row])
    assert table[c_row + 1].strip() == "↳ waiting for a"  # under its row
    status = cli(repo, "ws", "status", "c").stdout
    assert re.search(r"^run:\s+queued in run \S+, attempt 1/1$", status, re.M)
    assert "  waiting: waiting for a" in status
    (stamps / "a.hold").unlink()
    out, err = runner.communicate(timeout=60)
    assert runner.returncode == 0, out + err
    assert "aidp: also running a: dependencies of c" in err
    assert re.search(r"\] c queued: waiting for a$", out, re.M)
    assert stamp(stamps, "a", "end") <= stamp(stamps, "c", "start")
    assert not ran(stamps, "other")

    # Once a is done, running c again pulls in nothing.
    code, summary, err = run_json(repo, "run", "c")
    assert code == 0
    assert summary["pulledIn"] == []
    assert "also running" not in err
    listed = workstreams(repo)
    assert listed["c"]["expectedS"] is not None  # it has recorded history now
    assert re.search(r"^c\s.*\s~[\d.]+ s\s+task c$", cli(repo, "ws", "list").stdout, re.M)


def test_blocked_dependents_are_counted_shown_and_run_later(tmp_path: Path) -> None:
    repo, stamps = scheduled_repo(tmp_path, "a")
    assert cli(repo, "ws", "new", "b", "task b", "--after", "a").returncode == 0
    assert cli(repo, "ws", "new", "c", "task c", "--after", "b").returncode == 0
    (stamps / "a.fail").touch()

    result = cli(repo, "ws", "run", "c")
    assert result.returncode == 1
    assert "aidp: also running a, b: dependencies of c" in result.stderr
    assert "0 completed, 1 failed, 0 errored, 0 cancelled, 2 blocked of 3" in result.stdout
    assert re.search(r"^- b\s+blocked$", result.stdout, re.M)
    assert "- b: blocked: its dependency a failed" in result.stdout
    assert "- c: blocked: its dependency b blocked" in result.stdout
    assert re.search(r"\] b blocked: its dependency a failed$", result.stdout, re.M)
    assert not ran(stamps, "b") and not ran(stamps, "c")

    table = cli(repo, "ws", "list").stdout.splitlines()
    b_row = next(i for i, line in enumerate(table) if line.startswith("b "))
    assert re.match(r"^b\s+blocked\s", table[b_row])
    assert table[b_row + 1].strip() == "↳ blocked: its dependency a failed"
    status = cli(repo, "ws", "status", "b").stdout
    assert re.search(r"^last run:\s+blocked$", status, re.M)
    assert "  reason: blocked: its dependency a failed" in status

    (stamps / "a.fail").unlink()  # a fixed: a later run runs its dependents, in order
    code, summary, _ = run_json(repo, "run", "c")
    assert code == 0
    assert (summary["completed"], summary["blocked"], summary["pulledIn"]) == (3, 0, ["a", "b"])
    assert stamp(stamps, "a", "end") <= stamp(stamps, "b", "start")
    assert stamp(stamps, "b", "end") <= stamp(stamps, "c", "start")


def test_halt_now_cancels_what_runs_and_starts_nothing_more(tmp_path: Path) -> None:
    repo, stamps = scheduled_repo(tmp_path, "bad", "long", "later")
    assert cli(repo, "ws", "set", "later", "--priority", "low").returncode == 0
    (stamps / "bad.fail").touch()
    (stamps / "long.hold").touch()  # never released: only the halt ends it
    code, summary, err = run_json(repo, "run", "bad", "long", "later", "--max-concurrent", "2", "--halt", "now")
    assert code == 1
    results = {r["slug"]: r for r in summary["results"]}
    assert results["bad"]["status"] == "failed"
    assert results["long"]["status"] == "cancelled"
    assert results["long"]["error"] == "cancelled: halted after bad failed (--halt now)"
    assert results["later"]["status"] == "cancelled"
    assert results["later"]["error"] == "not started: halted after bad failed (--halt now)"
    assert ran(stamps, "long") and not (stamps / "long.end").exists()
    assert not ran(stamps, "later")
    assert "aidp: halted after bad failed (--halt now)" in err


def test_halt_soon_lets_running_ones_finish(tmp_path: Path) -> None:
    repo, stamps = scheduled_repo(tmp_path, "bad", "long", "later")
    assert cli(repo, "ws", "set", "later", "--priority", "low").returncode == 0
    (stamps / "bad.fail").touch()
    (stamps / "long.hold").touch()
    runner = spawn_cli(repo, "ws", "run", "bad", "long", "later", "--max-concurrent", "2", "--halt", "soon")
    out = Lines(runner)
    out.expect(r"\] bad failed \(exit 3")
    out.expect(r"\] later cancelled: not started: halted after bad failed \(--halt soon\)$")
    (stamps / "long.hold").unlink()  # only now may it finish: it was running when bad failed
    out.expect(r"\] long completed \(exit 0")
    out.expect(r"^1 completed, 1 failed, 0 errored, 1 cancelled of 3")  # after every note of the run
    assert runner.wait(timeout=60) == 1
    assert any(re.search(r"\] aidp: halted after bad failed \(--halt soon\)$", line) for line in out.seen)
    assert (stamps / "long.end").exists()
    assert not ran(stamps, "later")
    listed = workstreams(repo)
    assert [listed[s]["status"] for s in ("bad", "long", "later")] == ["failed", "completed", "cancelled"]


def test_retried_workstream_shows_its_attempt(tmp_path: Path) -> None:
    repo, stamps = scheduled_repo(tmp_path, "x", config="retries = 1\nretry_backoff_s = 0.1\n")
    (stamps / "x.flaky").touch()
    (stamps / "x.hold").touch()
    runner = spawn_cli(repo, "ws", "run", "x")
    out = Lines(runner)
    line = out.expect(r"\] x queued \(exit 3")
    assert re.search(
        r"x queued \(exit 3, [\d.]+ s\): exit code 3; attempt 2/2 after a [\d.]+ s back-off \(retry\)$", line
    )
    out.expect(r"\] x running \(attempt 2/2\)$")
    table = cli(repo, "ws", "list").stdout.splitlines()
    x_row = next(i for i, line in enumerate(table) if line.startswith("x "))
    assert table[x_row + 1].strip() == "↳ attempt 2/2"
    assert re.search(r"^run:\s+running in run \S+ since \S+, attempt 2/2$", cli(repo, "ws", "status", "x").stdout, re.M)
    (stamps / "x.hold").unlink()
    out.expect(r"^- x\s+completed\s+\(exit 0, [\d.]+ s, attempt 2\)$")
    assert runner.wait(timeout=60) == 0


def test_a_rate_limit_is_said_once_in_the_plain_lines_and_on_stderr_with_json(tmp_path: Path) -> None:
    repo, stamps = scheduled_repo(tmp_path, "x", "y", config="rate_limit_exit = [75]\nretry_backoff_s = 0.1\n")
    (stamps / "x.limited").touch()
    result = cli(repo, "ws", "run", "x", "y", "--max-concurrent", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    notes = re.findall(r"^\[\d\d:\d\d:\d\d\] aidp: (.*)$", result.stdout, re.M)
    assert notes == ["rate limited (x): concurrency 2 -> 1"]
    assert re.search(
        r"\] x queued \(exit 75, [\d.]+ s\): exit code 75; attempt 2/2 after a [\d.]+ s back-off \(rate limit\)$",
        result.stdout,
        re.M,
    )
    assert re.search(r"^- x\s+completed\s+\(exit 0, [\d.]+ s, attempt 2\)$", result.stdout, re.M)

    (stamps / "y.limited").touch()
    code, summary, err = run_json(repo, "run", "y")
    assert code == 0
    assert summary["results"][0]["attempt"] == 2
    assert "aidp: rate limited (y): concurrency 3 -> 1" in err


def test_max_concurrent_above_the_repository_bound_is_lowered_and_said(tmp_path: Path) -> None:
    slugs = ("w1", "w2", "w3", "w4")
    repo, stamps = scheduled_repo(tmp_path, *slugs, config="[scheduler]\nmax_concurrent = 2\n")
    code, summary, err = run_json(repo, "run", *slugs, "--max-concurrent", "5")
    assert code == 0
    assert "aidp: --max-concurrent 5 lowered to the repository's bound 2" in err
    assert summary["concurrency"] == 2
    spans = [(stamp(stamps, s, "start"), stamp(stamps, s, "end")) for s in slugs]
    for start, _ in spans:  # at no child's start were more than two children between their own stamps
        assert sum(1 for s, e in spans if s <= start < e) <= 2


def test_live_view_shows_progress_waits_and_blocked_rows(tmp_path: Path) -> None:
    repo, stamps = scheduled_repo(tmp_path, "first", "broken")
    assert cli(repo, "ws", "new", "second", "task second", "--after", "first").returncode == 0
    assert cli(repo, "ws", "new", "stuck", "task stuck", "--after", "broken").returncode == 0
    (stamps / "broken.fail").touch()
    warm = cli(repo, "ws", "run", "first", "second")  # recorded history: the next run has an ETA
    assert warm.returncode == 0, warm.stdout + warm.stderr

    (stamps / "first.hold").touch()
    term = Terminal(repo, "ws", "run", "first", "second", "stuck", columns=120)

    def all_shown() -> bool:
        screen = term.display()
        return (
            re.search(r"⏳ first\s+running", screen) is not None
            and re.search(r"🕒 second\s+queued\s+waiting for first", screen) is not None
            and re.search(r"⛔ stuck\s+blocked\s+its dependency broken failed", screen) is not None
            and re.search(r"\d/4 done · 1 running · .*elapsed [\d.]+ s · ETA [\d.]+ s · concurrency 3", screen)
            is not None
        )

    assert term.read(until=all_shown)
    (stamps / "first.hold").unlink()  # everything was on screen: let it finish
    assert term.close() == 1
    text = "\n".join(term.lines())
    headers = [line for line in term.lines() if re.match(r"\d/4 done", line)]
    assert re.match(r"4/4 done · 2 completed · 1 failed · 1 blocked · elapsed [\d.]+ s$", headers[-1])  # no ETA now
    assert re.search(r"^forecast [\d.]+ s, took [\d.]+ s", text, re.M)
    assert "2 completed, 1 failed, 0 errored, 0 cancelled, 1 blocked of 4" in text
    assert stamp(stamps, "first", "end") <= stamp(stamps, "second", "start")


def test_repl_sets_schedules_and_says_what_a_run_pulled_in(tmp_path: Path) -> None:
    repo, stamps = scheduled_repo(tmp_path, "a", "b")
    repl = spawn_cli(repo, "repl", stdin=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert repl.stdin is not None
    out = Lines(repl)
    for line, answer in (
        ("/ws set b --after a --priority high", r"^b: priority high · after a$"),
        ("/ws set b --after b", r"aidp: error: .*cycle: b -> b"),
        ("/ws run b", r"^aidp: also running a: dependencies of b$"),
        ("", r"^2 completed, 0 failed"),
        ("/help", r"^/ws set <slug>"),
    ):
        repl.stdin.write(line + "\n")
        repl.stdin.flush()
        out.expect(answer)
    repl.stdin.close()
    assert repl.wait(timeout=60) == 0
    assert stamp(stamps, "a", "end") <= stamp(stamps, "b", "start")


def test_base_from_deps_starts_a_dependent_from_its_dependency_s_work(tmp_path: Path) -> None:
    repo, stamps = scheduled_repo(tmp_path, "a", config='commit = "on-success"\n')
    for slug in ("b", "c", "d"):
        assert cli(repo, "ws", "new", slug, f"task {slug}", "--after", "a").returncode == 0
    (stamps / "a.write").touch()

    code, summary, _ = run_json(repo, "run", "b", "--base-from-deps")
    assert code == 0
    assert summary["pulledIn"] == ["a"]
    assert "a.txt" in git(repo, "ls-tree", "--name-only", "aidp/b").split()
    assert re.search(r"started from aidp/a at [0-9a-f]{12}", cli(repo, "ws", "status", "b").stdout)

    assert cli(repo, "ws", "run", "c").returncode == 0  # the default: [scheduler] base_from_deps = false
    assert "a.txt" not in git(repo, "ls-tree", "--name-only", "aidp/c").split()

    config = repo / ".aidp" / "config.toml"
    config.write_text(config.read_text() + "[scheduler]\nbase_from_deps = true\n")
    assert cli(repo, "ws", "run", "d", "--no-base-from-deps").returncode == 0
    assert "a.txt" not in git(repo, "ls-tree", "--name-only", "aidp/d").split()


def test_a_cancel_from_another_process_as_an_attempt_fails_is_never_retried(tmp_path: Path) -> None:
    """The race of a retry against a cancel: the harness's first attempt has another aidp process
    record a cancel of its workstream and fails the moment it is recorded ("cancelling x"), so the
    failure (a retry, with no back-off) comes before this run's ticker reads the request. The
    cancel wins, as during a back-off: no second attempt ever starts (the harness counts its own
    starts) and the workstream ends `cancelled` before attempt 2, its start record having read the
    request. (The run used to retry until its retries were spent and end `failed`, the cancel
    lost.)"""
    repo, starts = make_repo(tmp_path), tmp_path / "starts"
    script = tmp_path / "cancel_then_fail.py"
    script.write_text(
        "import pathlib, subprocess, sys\n"
        f"starts = pathlib.Path({str(starts)!r})\n"
        "with starts.open('a') as f:\n"
        "    f.write('start\\n')\n"
        "if starts.read_text() == 'start\\n':\n"
        "    cancel = [sys.executable, '-m', 'aidp', 'ws', 'cancel', 'x']\n"
        f"    asking = subprocess.Popen(cancel, cwd={str(repo)!r}, stdout=subprocess.PIPE, text=True)\n"
        "    said = asking.stdout.readline()\n"
        "    with starts.open('a') as f:\n"
        "        f.write(said)\n"
        "raise SystemExit(3)\n"
    )
    write_config(repo, f"[harness]\ncommand = {toml_list([PYTHON, str(script)])}\nretries = 3\nretry_backoff_s = 0\n")
    assert cli(repo, "ws", "new", "x", "fails once its cancel is asked").returncode == 0
    summary = json.loads(cli(repo, "ws", "run", "x", "--json").stdout)
    assert starts.read_text() == "start\ncancelling x\n"
    (result,) = summary["results"]
    assert (result["status"], result["attempt"], result["error"]) == ("cancelled", 2, "cancelled before attempt 2")
    assert workstreams(repo)["x"]["status"] == "cancelled"


@CGROUPS
def test_a_queued_workstream_cancelled_from_another_process_as_its_slot_frees_never_starts(
    tmp_path: Path, cgroups: str
) -> None:
    """The race of a start against a cancel: with one slot, `a` has another aidp process record a
    cancel of the queued `b` and ends the moment it is recorded, so `b`'s slot frees before this
    run's ticker reads the request. Its start record reads the request in the same transaction:
    `b` never starts (its harness would stamp it) and ends `cancelled` before it started."""
    repo, stamps = make_repo(tmp_path), tmp_path / "stamps"
    stamps.mkdir()
    write_config(repo, f"[harness]\ncommand = {toml_list(cancel_b_harness(tmp_path, repo, stamps))}\n")
    for slug in ("a", "b"):
        assert cli(repo, "ws", "new", slug, "one slot").returncode == 0
    run = cli(repo, "ws", "run", "a", "b", "--max-concurrent", "1", "--json", env=cgroup_env(cgroups))
    summary = json.loads(run.stdout)
    assert (stamps / "asked").read_text() == "cancelling b\n"
    assert sorted(p.name for p in stamps.iterdir()) == ["a", "asked"]
    by_slug = {r["slug"]: r for r in summary["results"]}
    assert by_slug["a"]["status"] == "completed"
    assert (by_slug["b"]["status"], by_slug["b"]["error"]) == ("cancelled", "cancelled before it started")
    assert workstreams(repo)["b"]["status"] == "cancelled"
