"""Issue 8, the run loop and escaping processes, through the faces where each defect showed: a run
that goes on after a sibling ended, I/O faults that end one workstream `error` (injected with
tests/faults), harnesses that drop their environment or leave their group, `aidp repl` stopped by
a signal, and recovery that stops every leftover at once. Facts recorded by the children, never
timing."""

from __future__ import annotations

import json
import os
import shlex
import signal
import sqlite3
import subprocess
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import Lines, events, new_ws, spawn_cli, workstreams
from conftest import write_config
from server_helpers import WS_OUTPUT, initialize_params, lsp_session, server_command
from support import CGROUPS, cgroup_env, cli, make_repo, marked, pid_alive, wait_until, wait_until_sync

pytestmark = pytest.mark.timeout(150)

FAULTS = str(Path(__file__).parent / "faults")
TICKER = "sh -c 'i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.1; done'"


def cgroup_mount() -> Path:
    """Where the cgroup v2 hierarchy is mounted (read as aidp reads it, independently of aidp)."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[fields.index("-") + 1] == "cgroup2":
            return Path(fields[4])
    raise AssertionError("no cgroup2 mount")


def results(completed: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    return {r["slug"]: r for r in json.loads(completed.stdout)["results"]}


def written(path: Path) -> bool:
    """A pid file a harness wrote whole (`echo $$ > f` creates it empty first)."""
    return path.exists() and path.read_text().endswith("\n")


def read_pids(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()]


# -- A1: one job's end must not stop the rest of the run ------------------------------------------


def test_cancel_from_another_process_after_a_sibling_ended(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    new_ws(repo, "fast", "true")
    new_ws(repo, "ticker", TICKER)
    run = spawn_cli(repo, "ws", "run", "fast", "ticker")
    lines = Lines(run)
    lines.expect(r"fast completed")

    cancel = cli(repo, "ws", "cancel", "ticker")
    assert cancel.returncode == 0, cancel.stdout + cancel.stderr
    assert "ticker cancelled" in cancel.stdout
    assert run.wait(60) == 1  # a cancelled workstream makes the run's exit code 1
    assert workstreams(repo)["ticker"]["status"] == "cancelled"
    assert workstreams(repo)["fast"]["status"] == "completed"


async def test_live_output_goes_on_after_a_sibling_ended(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    new_ws(repo, "fast", "true")
    new_ws(repo, "ticker", TICKER)
    async with lsp_session(server_command(repo), tmp_path, initialize_params()) as client:
        running = client.start_call("aidp/wsRun", {"slugs": ["fast", "ticker"]})
        await wait_until(lambda: any(s["status"] == "completed" for s in client.statuses("fast")), what="fast ends")
        ended_at = len(client.notes)

        def ticks_after_end() -> list[str]:
            return [p["text"] for m, p in client.notes[ended_at:] if m == WS_OUTPUT and p["slug"] == "ticker"]

        await wait_until(lambda: len(ticks_after_end()) >= 2, what="ticker output after fast ended")
        assert "tick" in "".join(ticks_after_end())
        # Never another workstream's log under this slug (a reused descriptor).
        assert all("tick" not in n["text"] for n in client.of(WS_OUTPUT) if n["slug"] == "fast")
        assert cli(repo, "ws", "cancel", "ticker").returncode == 0
        summary = await running
        assert {r["slug"]: r["status"] for r in summary["results"]} == {"fast": "completed", "ticker": "cancelled"}


# -- A2: an I/O fault ends that workstream `error`, the others go on, nothing stays claimed ---------


async def test_unwritable_log_directory_ends_only_that_workstream(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    new_ws(repo, "broken", "true")
    new_ws(repo, "fine", "true")
    blocker = repo / ".aidp" / "logs" / "broken"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("a file where the log directory should be")

    run = cli(repo, "ws", "run", "broken", "fine", "--max-concurrent", "1", "--json")
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    got = results(run)
    assert got["broken"]["status"] == "error"
    assert "cannot write its log" in got["broken"]["error"]
    assert got["fine"]["status"] == "completed"

    async with lsp_session(server_command(repo), tmp_path, initialize_params()) as client:
        summary = await client.call("aidp/wsRun", {"slugs": ["broken", "fine"], "maxConcurrent": 1})
        assert {r["slug"]: r["status"] for r in summary["results"]} == {"broken": "error", "fine": "completed"}
        listed = await client.workstreams()
        assert {s: w["status"] for s, w in listed.items()} == {"broken": "error", "fine": "completed"}

    blocker.unlink()  # the fault is gone: nothing was left claimed, so the workstream runs again
    assert cli(repo, "ws", "run", "broken").returncode == 0


def test_a_refused_result_write_is_recorded_as_error_and_released(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    new_ws(repo, "flaky", "true")
    new_ws(repo, "fine", "true")
    faulty = {"PYTHONPATH": FAULTS, "AIDP_FAULT_FINISH": "flaky"}
    run = cli(repo, "ws", "run", "flaky", "fine", "--json", env=faulty)
    assert run.returncode == 1, run.stderr
    got = results(run)
    assert got["flaky"]["status"] == "error"
    assert "could not record its result (completed)" in got["flaky"]["error"]
    assert got["fine"]["status"] == "completed"
    assert workstreams(repo)["flaky"]["status"] == "error"
    assert cli(repo, "ws", "run", "flaky").returncode == 0


# One slot: `starter` takes the slot `fine` frees, and `fine`'s end would record its start.
SLOTS = {"apart": ["starter", "fine"], "handed over": ["fine", "starter", "--max-concurrent", "1"]}


@pytest.mark.parametrize("how", list(SLOTS))
def test_a_refused_start_write_ends_error_and_never_runs_the_harness(tmp_path: Path, how: str) -> None:
    repo = make_repo(tmp_path)
    started = tmp_path / "started"
    new_ws(repo, "starter", shlex.join(["sh", "-c", f"echo $$ >> {started}; exec sleep 60"]))
    new_ws(repo, "fine", "true")
    env = {"PYTHONPATH": FAULTS, "AIDP_FAULT_RUNNING": "starter"}
    run = cli(repo, "ws", "run", *SLOTS[how], "--json", env=env)
    assert run.returncode == 1, run.stderr
    got = results(run)
    assert got["starter"]["status"] == "error"
    assert "could not record its start" in got["starter"]["error"]
    assert got["fine"]["status"] == "completed"
    assert not started.exists()  # it waited at the gate for a start that was never recorded
    assert workstreams(repo)["starter"]["status"] == "error"


@CGROUPS
@pytest.mark.parametrize("handed_over", [False, True])
def test_a_harness_never_runs_unrecorded_when_aidp_dies_as_it_starts(
    tmp_path: Path, cgroups: str, handed_over: bool
) -> None:
    """aidp killed after the spawn, before it recorded the start: the harness, which drops its
    environment at once, would have run where no recovery could find it. It ends at the gate
    instead, never having run, and the next list records the workstream cancelled. Handed over
    (one slot, after `first`): aidp killed as `first`'s end would record both; neither is left
    running or in flight."""
    repo = make_repo(tmp_path)
    ran, script = tmp_path / "ran", tmp_path / "harness.sh"
    script.write_text(f"echo $$ > {ran}; sleep 60\n")
    new_ws(repo, "first", "true")
    new_ws(repo, "dier", shlex.join(["env", "-i", "PATH=/usr/bin:/bin", "sh", str(script)]))
    env = {**cgroup_env(cgroups), "PYTHONPATH": FAULTS, "AIDP_FAULT_DIE_RUNNING": "dier"}
    slugs = ["first", "dier", "--max-concurrent", "1"] if handed_over else ["dier"]
    owner = cli(repo, "ws", "run", *slugs, env=env)
    assert owner.returncode == -signal.SIGKILL
    wait_until_sync(lambda: not marked(str(script)), what="the launcher to end at the gate")
    assert not ran.exists()
    listed = workstreams(repo)
    assert listed["dier"]["status"] == "cancelled"
    # Handed over in a cgroup, `first`'s end and `dier`'s start are one transaction, never made:
    # `first` is recorded interrupted. Without one, `dier`'s start is recorded apart, after it.
    assert listed["first"]["status"] in ({"cancelled", "completed"} if handed_over else {"active"})


def test_a_refused_setup_start_write_ends_it_unrun_and_records_it_failed(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    ran = tmp_path / "ran"
    write_config(repo, f"[worktree]\nsetup = {json.dumps(['sh', '-c', f'echo $$ > {ran}'])}\n")
    made = cli(repo, "ws", "new", "prep", "a task", env={"PYTHONPATH": FAULTS, "AIDP_FAULT_SETUP_PID": "prep"})
    assert made.returncode == 0, made.stderr  # the workstream is made; its setup says what went wrong
    assert not ran.exists()  # it waited at the gate for a start that was never recorded
    state = workstreams(repo)["prep"]["setup"]
    assert state["status"] == "failed" and "could not record its start, so it did not run" in state["error"]
    assert state["pid"] is None


@CGROUPS
def test_a_setup_never_runs_unrecorded_when_aidp_dies_as_it_starts(tmp_path: Path, cgroups: str) -> None:
    """As for a harness: a setup that drops its environment at once, its aidp killed before its
    process was recorded, ends at the gate, and the next command records it failed."""
    repo = make_repo(tmp_path)
    ran, script = tmp_path / "ran", tmp_path / "setup.sh"
    script.write_text(f"echo $$ > {ran}; sleep 60\n")
    write_config(repo, f"[worktree]\nsetup = {json.dumps(['env', '-i', 'PATH=/usr/bin:/bin', 'sh', str(script)])}\n")
    env = {**cgroup_env(cgroups), "PYTHONPATH": FAULTS, "AIDP_FAULT_DIE_SETUP_PID": "dier"}
    owner = cli(repo, "ws", "new", "dier", "a task", env=env)
    assert owner.returncode == -signal.SIGKILL
    wait_until_sync(lambda: not marked(str(script)), what="the launcher to end at the gate")
    assert not ran.exists()
    state = workstreams(repo)["dier"]["setup"]
    assert state["status"] == "failed" and "interrupted: the aidp process" in state["error"]


# -- Hooks: recorded before they run, so a dead aidp's hooks are ended like its harnesses ----------

HOOK_BODIES = {
    # what the hook leaves running: in its group; in its group with its environment dropped (found
    # by its recorded pid); out of its group with its environment kept (found by the marker)
    "plain": "echo $$ >> {pids}; exec sleep 60",
    "env-i": "exec env -i PATH=/usr/bin:/bin sh -c 'echo $$ >> {pids}; exec sleep 60'",
    "setsid": "setsid sh -c 'echo $$ >> {pids}; exec sleep 60' & wait",
}


def hooks_recorded(repo: Path) -> int:
    with closing(sqlite3.connect(repo / ".aidp" / "state.db")) as db:
        return int(db.execute("SELECT count(*) FROM hooks").fetchone()[0])


def hook_config(hook: str, argv: list[str]) -> str:
    return f'[harness]\ncommand = ["true"]\n[hooks]\n{hook} = {json.dumps(argv)}\n'


@CGROUPS
@pytest.mark.parametrize("hook", ["on_end", "on_run_end"])
@pytest.mark.parametrize("how", list(HOOK_BODIES))
def test_a_hook_whose_aidp_was_killed_is_ended_by_the_next_command(
    tmp_path: Path, how: str, hook: str, cgroups: str
) -> None:
    repo = make_repo(tmp_path)
    pids = tmp_path / "pids"
    write_config(repo, hook_config(hook, ["sh", "-c", HOOK_BODIES[how].format(pids=pids)]))
    new_ws(repo, "told", "true")
    env = cgroup_env(cgroups)
    owner = spawn_cli(repo, "ws", "run", "told", env=env)
    wait_until_sync(lambda: written(pids), what="the hook's pid")
    owner.kill()
    owner.wait(30)
    (pid,) = read_pids(pids)
    assert pid_alive(pid)  # its aidp died, the hook did not
    assert hooks_recorded(repo) == 1

    listed = cli(repo, "ws", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert not pid_alive(pid)
    assert f"hook {hook} interrupted: the aidp process (pid {owner.pid}) that ran it is gone; it was ended" in (
        listed.stderr
    )
    assert hooks_recorded(repo) == 0
    assert {ws["slug"]: ws["status"] for ws in json.loads(listed.stdout)} == {"told": "completed"}
    if hook == "on_end":
        assert any(f"hook on_end interrupted: the aidp process (pid {owner.pid})" in e for e in events(repo, "told"))
    again = cli(repo, "ws", "list", "--json", env=env)
    assert "interrupted" not in again.stderr  # said once


def test_two_commands_recovering_one_dead_hook_end_it_and_say_so_once(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    pids = tmp_path / "pids"
    write_config(repo, hook_config("on_end", ["sh", "-c", "trap '' TERM; " + HOOK_BODIES["plain"].format(pids=pids)]))
    new_ws(repo, "told", "true")
    owner = spawn_cli(repo, "ws", "run", "told")
    wait_until_sync(lambda: written(pids), what="the hook's pid")
    owner.kill()
    owner.wait(30)
    listers = [spawn_cli(repo, "ws", "list", "--json") for _ in range(2)]
    said = [lister.communicate(timeout=60)[1] for lister in listers]
    assert all(lister.returncode == 0 for lister in listers), said
    assert not pid_alive(read_pids(pids)[0])  # it ignored SIGTERM: SIGKILL ended it
    assert sum("hook on_end interrupted" in e for e in events(repo, "told")) == 1
    assert hooks_recorded(repo) == 0


@CGROUPS
@pytest.mark.parametrize("hook", ["on_end", "on_run_end"])
def test_what_a_hook_leaves_behind_with_setsid_is_ended_when_it_exits(tmp_path: Path, hook: str, cgroups: str) -> None:
    repo = make_repo(tmp_path)
    pids = tmp_path / "pids"
    body = f"setsid sh -c 'echo $$ >> {pids}; exec sleep 60' & while [ ! -s {pids} ]; do sleep 0.05; done"
    write_config(repo, hook_config(hook, ["sh", "-c", body]))
    new_ws(repo, "told", "true")
    run = cli(repo, "ws", "run", "told", env=cgroup_env(cgroups))
    assert run.returncode == 0, run.stderr
    (escapee,) = read_pids(pids)
    assert not pid_alive(escapee), f"the setsid descendant of the {hook} hook outlived it"


async def test_a_server_ends_the_hook_of_a_cli_that_was_killed(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    pids = tmp_path / "pids"
    write_config(repo, hook_config("on_end", ["sh", "-c", HOOK_BODIES["plain"].format(pids=pids)]))
    new_ws(repo, "told", "true")
    async with lsp_session(server_command(repo), tmp_path, initialize_params()) as client:
        owner = spawn_cli(repo, "ws", "run", "told")
        await wait_until(lambda: written(pids), what="the hook's pid")
        owner.kill()
        owner.wait(30)
        (pid,) = read_pids(pids)
        assert pid_alive(pid)
        listed = await client.workstreams()
        assert listed["told"]["status"] == "completed"
        assert not pid_alive(pid)
        assert hooks_recorded(repo) == 0


def test_recovery_runs_no_hook_for_a_dead_process_s_run(tmp_path: Path) -> None:
    """The run and its hooks were the dead process's: the list that records its workstream
    cancelled runs none (nor waits for one)."""
    repo = make_repo(tmp_path)
    told, pids = tmp_path / "told", tmp_path / "pids"
    write_config(repo, f'[hooks]\non_end = ["sh", "-c", "echo $AIDP_SLUG >> {told}"]\n')
    new_ws(repo, "cut", shlex.join(["sh", "-c", f"echo $$ > {pids}; exec sleep 60"]))
    owner = spawn_cli(repo, "ws", "run", "cut")
    wait_until_sync(lambda: written(pids), what="the harness's pid")
    owner.kill()
    owner.wait(30)
    assert workstreams(repo)["cut"]["status"] == "cancelled"
    assert not pid_alive(read_pids(pids)[0])
    new_ws(repo, "fine", "true")
    assert cli(repo, "ws", "run", "fine").returncode == 0
    assert told.read_text() == "fine\n"  # the hook runs for a run that ended in its own process only


def test_a_hook_never_runs_unrecorded(tmp_path: Path) -> None:
    """Its start refused by the database: it ends at the gate, unrun, and says why; killed as it
    would be recorded: it ends at the gate, unrun, and nothing is left to recover."""
    repo = make_repo(tmp_path)
    ran = tmp_path / "ran"
    write_config(repo, hook_config("on_end", ["sh", "-c", f"echo $$ > {ran}"]))
    new_ws(repo, "told", "true")
    refused = cli(repo, "ws", "run", "told", env={"PYTHONPATH": FAULTS, "AIDP_FAULT_HOOK_START": "on_end"})
    assert refused.returncode == 0, refused.stderr  # the run completed; only its hook did not run
    assert "hook on_end failed: could not record its start, so it did not run" in refused.stderr
    assert any("could not record its start, so it did not run" in e for e in events(repo, "told"))
    killed = cli(repo, "ws", "run", "told", env={"PYTHONPATH": FAULTS, "AIDP_FAULT_DIE_HOOK_START": "on_end"})
    assert killed.returncode == -signal.SIGKILL
    wait_until_sync(lambda: not marked(str(ran)), what="the launcher to end at the gate")
    assert not ran.exists() and hooks_recorded(repo) == 0
    assert workstreams(repo)["told"]["status"] == "completed"


def test_empty_cgroups_an_aidp_left_when_it_died_are_removed_by_a_later_run(tmp_path: Path) -> None:
    """Killed as a hook's start would be recorded, aidp leaves the hook's cgroup (made before the
    spawn) empty and unrecorded, so no recovery knows of it. A later run removes the aidp cgroups
    that are empty and were made over 10 minutes ago; a fresh empty one (another aidp's, between
    its making and its spawn) and an old one still holding a process stay."""
    repo = make_repo(tmp_path)
    write_config(repo, hook_config("on_end", ["true"]))
    new_ws(repo, "told", "true")
    killed = cli(repo, "ws", "run", "told", env={"PYTHONPATH": FAULTS, "AIDP_FAULT_DIE_HOOK_START": "on_end"})
    assert killed.returncode == -signal.SIGKILL
    with closing(sqlite3.connect(repo / ".aidp" / "state.db")) as db:
        (run_id,) = db.execute("SELECT run_id FROM runs WHERE slug = 'told'").fetchone()
    own = Path("/proc/self/cgroup").read_text().split("0::", 1)[1].splitlines()[0]
    parent = cgroup_mount() / own.lstrip("/")
    left = parent / f"aidp-hook-{run_id}-told"
    wait_until_sync(lambda: left.is_dir() and "populated 0" in (left / "cgroup.events").read_text(), what="empty")
    fresh, busy = parent / f"aidp-test-fresh-p{os.getpid()}", parent / f"aidp-test-busy-p{os.getpid()}"
    fresh.mkdir()
    busy.mkdir()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        (busy / "cgroup.procs").write_text(str(sleeper.pid))
        an_hour_ago = time.time() - 3600
        for old in (left, busy):
            os.utime(old, (an_hour_ago, an_hour_ago))
        assert cli(repo, "ws", "run", "told").returncode == 0
        assert not left.exists()
        assert fresh.is_dir() and busy.is_dir()
    finally:
        sleeper.kill()
        sleeper.wait()
        wait_until_sync(lambda: "populated 0" in (busy / "cgroup.events").read_text(), what="the sleeper gone")
        for cgroup in (fresh, busy):
            cgroup.rmdir()


@pytest.mark.parametrize("hook_start", ["recorded", "refused"])
async def test_a_result_recorded_late_runs_its_on_end_hook_once(tmp_path: Path, hook_start: str) -> None:
    """The database refused a result, even as `error` (a full disk): the result is told at once,
    then recorded and told again once the disk takes writes (here: the next list). `on_end` runs
    once: when the result is first told, or, if its own start could not be recorded then either,
    when it is told again."""
    repo = make_repo(tmp_path)
    ran, freed = tmp_path / "ran", tmp_path / "freed"
    write_config(repo, hook_config("on_end", ["sh", "-c", f'echo "$AIDP_STATUS" >> {ran}']))
    new_ws(repo, "told", "true")
    faults = {"PYTHONPATH": FAULTS, "AIDP_FAULT_FINISH_ALL": "told", "AIDP_FAULT_UNTIL": str(freed)}
    if hook_start == "refused":
        faults["AIDP_FAULT_HOOK_START"] = "on_end"
    async with lsp_session(server_command(repo), tmp_path, initialize_params(), env=faults) as client:
        summary = await client.call("aidp/wsRun", {"slugs": ["told"]})
        assert [r["status"] for r in summary["results"]] == ["error"]
        if hook_start == "recorded":
            await wait_until(ran.exists, what="the on_end hook")
        else:
            await wait_until(
                lambda: any("could not record its start" in e for e in events(repo, "told")), what="the refusal"
            )
            assert not ran.exists()
        freed.touch()
        assert (await client.workstreams())["told"]["status"] == "error"  # recorded now
    # The server waits for its hooks before it exits: a second run of the hook would be written by now.
    assert ran.read_text() == "error\n"


def test_a_hook_that_ended_before_its_aidp_died_is_forgotten_as_such(tmp_path: Path) -> None:
    """aidp killed between the hook's exit and recording it: the next command ends nothing, and
    says that nothing was left."""
    repo = make_repo(tmp_path)
    ran = tmp_path / "ran"
    write_config(repo, hook_config("on_end", ["sh", "-c", f"echo $$ > {ran}"]))
    new_ws(repo, "told", "true")
    killed = cli(repo, "ws", "run", "told", env={"PYTHONPATH": FAULTS, "AIDP_FAULT_DIE_HOOK_END": ".told.on_end"})
    assert killed.returncode == -signal.SIGKILL
    assert ran.exists() and hooks_recorded(repo) == 1
    listed = cli(repo, "ws", "list", "--json")
    assert "hook on_end interrupted" in listed.stderr and "nothing of it was left running" in listed.stderr
    assert hooks_recorded(repo) == 0


# -- B3/B4: what drops its environment or leaves its group is still found --------------------------


@CGROUPS
def test_env_scrubbing_harness_is_stopped_by_recovery(tmp_path: Path, cgroups: str) -> None:
    repo = make_repo(tmp_path)
    pids, joined = tmp_path / "pids", tmp_path / "cgroup"
    script = f"cat /proc/self/cgroup > {joined}; sleep 60 & echo $! >> {pids}; echo $$ >> {pids}; wait"
    scrubbed = ["env", "-i", "PATH=/usr/bin:/bin", "sh", "-c", script]
    new_ws(repo, "scrub", shlex.join(scrubbed))
    env = cgroup_env(cgroups)
    owner = spawn_cli(repo, "ws", "run", "scrub", env=env)
    wait_until_sync(lambda: pids.exists() and len(read_pids(pids)) == 2, what="the harness's pids")
    owner.kill()
    owner.wait(30)
    assert all(pid_alive(pid) for pid in read_pids(pids))  # the owner died, its harness did not

    listed = cli(repo, "ws", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert {ws["slug"]: ws["status"] for ws in json.loads(listed.stdout)} == {"scrub": "cancelled"}
    assert not any(pid_alive(pid) for pid in read_pids(pids))
    own = next(line[3:] for line in joined.read_text().splitlines() if line.startswith("0::"))
    if cgroups == "auto" and Path(own).name.startswith("aidp-"):  # the run had a cgroup: recovery removed it
        assert not (cgroup_mount() / own.lstrip("/")).exists()


@CGROUPS
def test_a_retried_attempt_that_drops_its_environment_is_ended_by_recovery(tmp_path: Path, cgroups: str) -> None:
    """The second attempt of a retried workstream, which drops its environment, outlives its aidp
    process: the next list finds it where that attempt's start was recorded (with a cgroup, its
    own cgroup, recorded before it started: no pid is)."""
    repo = make_repo(tmp_path)
    write_config(repo, "[harness]\nretries = 1\nretry_backoff_s = 0\n")
    tries, pids = tmp_path / "tries", tmp_path / "pids"
    script = f"echo x >> {tries}; [ $(wc -l < {tries}) -ge 2 ] || exit 3; sleep 60 & echo $! >> {pids}; wait"
    new_ws(repo, "again", shlex.join(["env", "-i", "PATH=/usr/bin:/bin", "sh", "-c", script]))
    env = cgroup_env(cgroups)
    owner = spawn_cli(repo, "ws", "run", "again", env=env)
    wait_until_sync(lambda: pids.exists() and len(read_pids(pids)) == 1, what="the second attempt's sleep")
    owner.kill()
    owner.wait(30)
    assert pid_alive(read_pids(pids)[0])  # the owner died, its second attempt did not

    listed = cli(repo, "ws", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert {ws["slug"]: ws["status"] for ws in json.loads(listed.stdout)} == {"again": "cancelled"}
    assert not pid_alive(read_pids(pids)[0])


@CGROUPS
def test_a_workstream_started_in_a_slot_handed_over_is_ended_by_recovery(tmp_path: Path, cgroups: str) -> None:
    """With one slot, `second` takes the slot `first` frees in the transaction that records
    `first`'s end, which records `second`'s start too: another process sees it `running` while it
    runs. It drops its environment and outlives its aidp process: the next list ends it."""
    repo = make_repo(tmp_path)
    pids = tmp_path / "pids"
    new_ws(repo, "first", "true")
    script = f"sleep 60 & echo $! >> {pids}; wait"
    new_ws(repo, "second", shlex.join(["env", "-i", "PATH=/usr/bin:/bin", "sh", "-c", script]))
    env = cgroup_env(cgroups)
    owner = spawn_cli(repo, "ws", "run", "first", "second", "--max-concurrent", "1", env=env)
    wait_until_sync(lambda: pids.exists() and len(read_pids(pids)) == 1, what="second's sleep")
    assert workstreams(repo)["second"]["status"] == "running"
    owner.kill()
    owner.wait(30)
    assert pid_alive(read_pids(pids)[0])  # the owner died, second did not

    listed = cli(repo, "ws", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    statuses = {ws["slug"]: ws["status"] for ws in json.loads(listed.stdout)}
    assert statuses == {"first": "completed", "second": "cancelled"}
    assert not pid_alive(read_pids(pids)[0])


@CGROUPS
@pytest.mark.parametrize("how", ["exit", "cancel", "timeout", "interrupt"])
def test_setsid_descendants_never_outlive_their_run(tmp_path: Path, how: str, cgroups: str) -> None:
    repo = make_repo(tmp_path)
    escaped = tmp_path / "escaped"
    spawn_escapee = f"setsid sh -c 'echo $$ > {escaped}; exec sleep 60' &"
    wait_for_it = f"while [ ! -s {escaped} ]; do sleep 0.05; done"
    body = spawn_escapee + wait_for_it + ("" if how == "exit" else "; echo ready; sleep 60")
    new_ws(repo, "leaky", shlex.join(["sh", "-c", body]))
    env = cgroup_env(cgroups)
    args = ["ws", "run", "leaky", *(["--timeout", "1"] if how == "timeout" else [])]
    run = spawn_cli(repo, *args, env=env)
    if how == "cancel":
        wait_until_sync(lambda: escaped.exists() and escaped.read_text().strip() != "", what="the escapee")
        assert cli(repo, "ws", "cancel", "leaky", env=env).returncode == 0
    elif how == "interrupt":
        wait_until_sync(lambda: escaped.exists() and escaped.read_text().strip() != "", what="the escapee")
        run.send_signal(signal.SIGINT)
    run.wait(60)
    escapee = int(escaped.read_text())
    assert not pid_alive(escapee), f"the setsid descendant {escapee} outlived the run ({how})"
    expected = {"exit": "completed", "cancel": "cancelled", "timeout": "failed", "interrupt": "cancelled"}[how]
    assert workstreams(repo)["leaky"]["status"] == expected


# -- B5: the repl stops cleanly on SIGTERM and SIGHUP -----------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_repl_cancels_its_runs_on_a_signal(tmp_path: Path, sig: signal.Signals) -> None:
    repo = make_repo(tmp_path)
    pids = tmp_path / "pids"
    new_ws(repo, "sleeper", shlex.join(["sh", "-c", f"echo $$ > {pids}; exec sleep 60"]))
    repl = spawn_cli(repo, "repl", stdin=subprocess.PIPE)
    assert repl.stdin is not None
    lines = Lines(repl)
    repl.stdin.write("/ws run sleeper\n")
    repl.stdin.flush()
    lines.expect(r"sleeper running")
    wait_until_sync(lambda: pids.exists() and pids.read_text().strip() != "", what="the harness's pid")
    repl.send_signal(sig)
    repl.wait(60)
    assert not pid_alive(int(pids.read_text()))
    assert workstreams(repo)["sleeper"]["status"] == "cancelled"


# -- B6: recovery stops every leftover at once, and a list says so instead of waiting silently ------


# Ignores SIGTERM; on it, counts how many of the stubborn harnesses are alive at that moment.
STUBBORN = """
count_alive() {{ n=0; for f in {dir}/*.pid; do kill -0 "$(cat "$f")" 2>/dev/null && n=$((n+1)); done; echo $n; }}
trap 'count_alive > {dir}/$AIDP_SLUG.seen' TERM
echo $$ > {dir}/$AIDP_SLUG.pid
while :; do sleep 0.05; done
"""


def test_recovery_signals_every_leftover_before_waiting(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    board = tmp_path / "board"
    board.mkdir()
    slugs = ["s1", "s2", "s3", "s4"]
    write_config(repo, "[harness]\ngrace_s = 2\nmax_concurrent = 4\n")
    for slug in slugs:
        new_ws(repo, slug, shlex.join(["sh", "-c", STUBBORN.format(dir=board)]))
    owner = spawn_cli(repo, "ws", "run", *slugs)
    wait_until_sync(lambda: all(written(board / f"{s}.pid") for s in slugs), what="four stubborn harnesses")
    harnesses = [int((board / f"{s}.pid").read_text()) for s in slugs]
    owner.kill()
    owner.wait(30)

    listed = cli(repo, "ws", "list", "--json")
    assert listed.returncode == 0
    assert "stopping what a dead aidp process left running" in listed.stderr  # it says why it waits
    assert {ws["slug"]: ws["status"] for ws in json.loads(listed.stdout)} == dict.fromkeys(slugs, "cancelled")
    assert not any(pid_alive(pid) for pid in harnesses)
    # Each harness, when its SIGTERM came, saw all four alive: nobody was killed before all were asked.
    assert [(board / f"{s}.seen").read_text().strip() for s in slugs] == ["4"] * 4


async def test_server_lists_while_leftovers_are_stopped_in_the_background(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    board = tmp_path / "board"
    board.mkdir()
    write_config(repo, "[harness]\ngrace_s = 10\n")
    new_ws(repo, "stubborn", shlex.join(["sh", "-c", STUBBORN.format(dir=board)]))
    owner = spawn_cli(repo, "ws", "run", "stubborn")
    wait_until_sync(lambda: written(board / "stubborn.pid"), what="the stubborn harness")
    harness = int((board / "stubborn.pid").read_text())
    owner.kill()
    owner.wait(30)

    async with lsp_session(server_command(repo), tmp_path, initialize_params()) as client:
        listed = await client.workstreams()
        # Answered while the harness that ignores SIGTERM still runs out its grace period.
        assert pid_alive(harness)
        assert listed["stubborn"]["status"] == "running"
        await wait_until(lambda: not pid_alive(harness), what="the leftover stopped")
        await wait_until(
            lambda: any(s["status"] == "cancelled" for s in client.statuses("stubborn")), what="cancelled status"
        )
        assert (await client.workstreams())["stubborn"]["status"] == "cancelled"


# -- 18: a timeout too short to tell from a harness that ended on its own is refused ---------------


async def test_a_vanishing_timeout_is_refused_on_every_face(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    new_ws(repo, "quick", "true")
    for value in ("1e-300", "0.01", "nan", "inf"):
        refused = cli(repo, "ws", "run", "quick", "--timeout", value)
        assert refused.returncode == 2, (value, refused.stderr)
        assert "timeout must be a number of seconds from 0.1" in refused.stderr
    async with lsp_session(server_command(repo), tmp_path, initialize_params()) as client:
        error = await client.fails("aidp/wsRun", {"slugs": ["quick"], "timeoutS": 1e-300})
        assert error.code == -32602
    write_config(repo, "[harness]\ntimeout_s = 1e-300\n")
    assert cli(repo, "ws", "run", "quick").returncode == 2
    assert workstreams(repo)["quick"]["status"] == "active"  # nothing ran
