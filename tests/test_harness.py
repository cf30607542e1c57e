"""Unit tests of what a workstream runs: placeholder substitution, environment, spawn errors and
the bounded live view of a log file."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from aidp.engine import cgroups, harness, procs
from aidp.engine.backend import LocalAttempt
from aidp.engine.executor import CHUNK_MAX, LogTail, _describe_exit
from aidp.engine.harness import Child, StartError, build_argv, build_env, spawn

VALUES = {
    "slug": "s",
    "task": "say {slug} $(x)",
    "task_file": "/logs/s/run-1.task",
    "mode": "execute",
    "steps": "a,b",
    "branch": "aidp/s",
    "worktree": "/w",
}


def test_build_argv_substitutes_each_placeholder_once() -> None:
    argv = build_argv(["prog", "{task}", "--slug={slug}", "{branch}:{worktree}", "{mode}", "{steps}"], VALUES)
    # The task mentions `{slug}`: it is not expanded a second time.
    assert argv == ["prog", "say {slug} $(x)", "--slug=s", "aidp/s:/w", "execute", "a,b"]


def test_build_argv_leaves_other_braces_alone() -> None:
    assert build_argv(["{}", "{unknown}", "{{slug}}", "${slug}", "{ slug }"], VALUES) == [
        "{}",
        "{unknown}",
        "{s}",
        "$s",
        "{ slug }",
    ]


def test_build_env_engine_values_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FROM_PARENT", "yes")
    env = build_env({"EXTRA": "1", "AIDP_SLUG": "nope", "AIDP_RUN_ID": "nope"}, VALUES, "run-1")
    assert env["FROM_PARENT"] == "yes" and env["EXTRA"] == "1"
    assert (env["AIDP_SLUG"], env["AIDP_RUN_ID"], env["AIDP_TASK"]) == ("s", "run-1", "say {slug} $(x)")
    assert (env["AIDP_MODE"], env["AIDP_STEPS"], env["AIDP_WORKTREE"]) == ("execute", "a,b", "/w")


@pytest.fixture(params=["native", "launcher"])
def spawner(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways a harness in a cgroup starts: the native spawner, and `sh` where it was not built."""
    if request.param == "launcher":
        monkeypatch.setattr(harness, "native", None)
    return str(request.param)


def test_the_native_spawner_was_built() -> None:
    """`make venv` installs a C compiler, so here every harness in a cgroup starts with one exec; a
    build that failed quietly (`optional`) would cost an exec per workstream unseen."""
    assert harness.starts_directly()


@pytest.mark.parametrize("cgroup", [None, "in a cgroup"])
async def test_spawn_errors_say_what_to_fix(tmp_path: Path, cgroup: str | None, spawner: str) -> None:
    """A bad program is refused with a message that says what to fix, whichever way it starts:
    looked for before the launcher (which would only log it), or told by the native spawner's
    child, which failed its exec. Each leaves no cgroup behind."""
    fd = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT)

    async def start(argv: list[str], cwd: Path = tmp_path) -> None:
        place = cgroups.place("test-errors", f"p{os.getpid()}-{spawner}") if cgroup else None
        try:
            await spawn(argv, cwd, dict(os.environ), fd, place, make_cgroup=True, place_recorded=True)
        finally:
            assert place is None or not place.exists()

    try:
        with pytest.raises(StartError, match="'aidp-no-such-program-xyz': no such program"):
            await start(["aidp-no-such-program-xyz"])
        with pytest.raises(StartError, match=r"worktree .* is missing"):
            await start(["true"], tmp_path / "gone")
        script = tmp_path / "script"
        script.write_text("#!/bin/sh\n")
        with pytest.raises(StartError, match="permission denied"):
            await start(["./script"])
        with pytest.raises(StartError, match="'true': embedded null byte"):
            await start(["true", "a\0b"])
    finally:
        os.close(fd)


async def test_a_sandboxed_harness_that_is_missing_is_refused_before_the_sandbox_starts(
    tmp_path: Path, spawner: str
) -> None:
    """The sandbox (`env` stands in for bwrap) would run and only log that the harness is missing:
    it is looked for first, whichever way it starts."""
    place = cgroups.place("test-sandboxed", f"p{os.getpid()}-{spawner}")
    with open(tmp_path / "log", "wb") as log, pytest.raises(StartError, match="'aidp-no-such-program-xyz': no such"):
        await spawn(
            ["aidp-no-such-program-xyz"],
            tmp_path,
            dict(os.environ),
            log.fileno(),
            place,
            None,
            ["env"],
            make_cgroup=True,
            place_recorded=True,
        )
    assert place is None or not place.exists()


async def test_past_the_gate_the_harness_reads_its_own_stdin(tmp_path: Path) -> None:
    """The launcher's stdin is the gate; the harness gets the file (a child never let past is in
    tests/test_hardening_runs.py: aidp killed before it recorded the start)."""
    ran, stdin = tmp_path / "ran", tmp_path / "stdin"
    stdin.write_text("the task\n")
    with open(tmp_path / "log", "wb") as log:
        proc = await spawn(["sh", "-c", f"cat; touch {ran}"], tmp_path, dict(os.environ), log.fileno(), stdin=stdin)
        proc.go()
        assert await proc.wait() == 0
    assert ran.exists()
    assert (tmp_path / "log").read_text() == "the task\n"  # its stdin is the file, not the gate


@pytest.mark.parametrize("cgroup", [None, "in a cgroup"])
async def test_a_start_given_up_ends_at_the_gate_even_where_no_signal_reaches_it(
    tmp_path: Path, cgroup: str | None
) -> None:
    """A start whose record was refused, or that was cancelled, is killed before it runs. The kill
    can come before the launcher joined its cgroup, so that no signal reaches it (CI saw a run hang
    there): it still ends, at the gate, never having run. A cgroup whose place the caller did not
    record first (a hook's, a setup's) keeps the gate too: only the record makes it findable."""
    ran = tmp_path / "ran"
    place = cgroups.place("test-gate", f"p{os.getpid()}") if cgroup else None
    with open(tmp_path / "log", "wb") as log:
        proc = await spawn(["touch", str(ran)], tmp_path, dict(os.environ), log.fileno(), place, make_cgroup=True)
    attempt = LocalAttempt(proc, procs.Tree(), "run-1", "s")  # a tree that no signal of the kill reaches
    await asyncio.wait_for(attempt.kill(), 30)
    assert attempt.returncode == 125
    assert not ran.exists()
    if proc.cgroup is not None:
        cgroups.remove(proc.cgroup)
        assert not proc.cgroup.exists()


async def test_a_harness_that_cannot_join_its_cgroup_never_runs(tmp_path: Path, spawner: str) -> None:
    """The native spawner refuses the start, naming the cgroup; the launcher ends before the harness."""
    marker = tmp_path / "ran"
    with open(tmp_path / "log", "wb") as log:
        start = spawn(
            ["touch", str(marker)],
            tmp_path,
            dict(os.environ),
            log.fileno(),
            tmp_path / "no-cgroup",
            place_recorded=True,
        )
        if spawner == "native":
            with pytest.raises(StartError, match=r"'touch': cannot join its cgroup .*no-cgroup.*: No such file"):
                await start
        else:
            proc = await start
            assert await proc.wait() != 0
            assert "cgroup.procs" in (tmp_path / "log").read_text()
    assert not marker.exists()


async def test_a_harness_starts_clean_whichever_way_it_starts(tmp_path: Path, spawner: str) -> None:
    """What the harness finds at its first instruction, the same from both spawners: its own
    session, the file as stdin, stdout and stderr in the log, no other descriptor of aidp's (a
    pipe or the database held open would be inherited by every agent), the signal mask and ignored
    signals aidp itself was given (CI ignores one), less SIGPIPE and SIGXFSZ, which Python ignores
    and a harness must not, its cgroup, its directory."""
    own = dict(line.split(":\t") for line in Path("/proc/self/status").read_text().splitlines() if ":\t" in line)
    blocked = int(own["SigBlk"], 16)
    ignored = int(own["SigIgn"], 16) & ~(1 << (signal.SIGPIPE - 1) | 1 << (signal.SIGXFSZ - 1))
    assert ignored != int(own["SigIgn"], 16)  # Python did ignore them: the test can tell
    place = cgroups.place("test-clean", f"p{os.getpid()}-{spawner}")
    stdin = tmp_path / "task"
    stdin.write_text("the task\n")
    report = (  # no pipe or command substitution around what reads the shell's own descriptors
        'read -r line; echo "stdin=$line"; echo "oops" >&2; echo "pid=$$"; '
        "echo sid=$(cut -d' ' -f6 /proc/self/stat); echo fds=; ls /proc/$$/fd; "
        "grep -E '^Sig(Blk|Ign)' /proc/$$/status; grep '^0::' /proc/$$/cgroup; pwd"
    )
    with open(tmp_path / "log", "wb") as log:
        proc = await spawn(
            ["sh", "-c", report],
            tmp_path,
            dict(os.environ),
            log.fileno(),
            place,
            stdin,
            make_cgroup=True,
            place_recorded=True,
        )
        proc.go()
        assert await proc.wait() == 0
    if proc.cgroup is not None:
        cgroups.remove(proc.cgroup)
    lines = (tmp_path / "log").read_text().splitlines()
    assert lines[:2] == ["stdin=the task", "oops"]
    assert lines[2].removeprefix("pid=") == lines[3].removeprefix("sid=")
    assert lines[4:8] == ["fds=", "0", "1", "2"]
    assert lines[8:10] == [f"SigBlk:\t{blocked:016x}", f"SigIgn:\t{ignored:016x}"]
    if cgroups.available():
        assert place is not None and lines[10].startswith("0::/") and lines[10].endswith("/" + place.name)
    assert lines[-1] == str(tmp_path)


async def test_spawn_makes_the_cgroup_it_joins_and_removes_it_when_the_start_fails(
    tmp_path: Path, spawner: str
) -> None:
    """`make_cgroup`: the cgroup is made on the spawning thread; the child is in it from its first
    instruction, and a start that fails leaves no cgroup behind (where cgroups are unavailable the
    child runs without one, and says so by `Child.cgroup`)."""
    place, refused = (cgroups.place("test-make", f"p{os.getpid()}-{spawner}", attempt) for attempt in (1, 2))
    with open(tmp_path / "log", "wb") as log:

        async def start(argv: list[str], at: Path | None) -> Child:
            env = dict(os.environ)
            return await spawn(argv, tmp_path, env, log.fileno(), at, make_cgroup=True, place_recorded=True)

        proc = await start(["cat", "/proc/self/cgroup"], place)
        proc.go()
        assert await proc.wait() == 0
        with pytest.raises(StartError, match="no such program"):
            await start(["aidp-no-such-program-xyz"], refused)
    if cgroups.available():
        assert place is not None and proc.cgroup == place
        assert (tmp_path / "log").read_text().endswith(f"/{place.name}\n")
        cgroups.remove(place)
    else:
        assert proc.cgroup is None
    assert not any(p is not None and p.exists() for p in (place, refused))


def test_describe_exit() -> None:
    assert _describe_exit(0) == "exit code 0"
    assert _describe_exit(3) == "exit code 3"
    assert _describe_exit(-9) == "killed by SIGKILL"
    assert _describe_exit(-15) == "killed by SIGTERM"


def test_log_tail_reads_new_bytes_and_keeps_split_characters(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_bytes(b"")
    tail = LogTail(path)
    try:
        assert tail.read() == (0, "")
        data = "héllo ✓\n".encode()
        with path.open("ab") as f:
            f.write(data[:2])  # half of "é"
        assert tail.read() == (0, "h")
        with path.open("ab") as f:
            f.write(data[2:])
        assert tail.read() == (0, "éllo ✓\n")
        assert tail.read() == (0, "")
        assert tail.last_lines(1) == "héllo ✓"
    finally:
        tail.close()


def test_log_tail_skips_ahead_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_bytes(b"a" * (CHUNK_MAX * 3) + b"END")
    tail = LogTail(path)
    try:
        skipped, text = tail.read()
        assert skipped == CHUNK_MAX * 2 + 3
        assert text == "a" * (CHUNK_MAX - 3) + "END"
        assert tail.read() == (0, "")
    finally:
        tail.close()


def test_the_native_spawner_gives_stdio_when_aidp_has_none(tmp_path: Path) -> None:
    """aidp started with its stdin and stdout closed (`<&- >&-`, a service manager): the log and
    the task file it opens get descriptors 0 and 1, which the child's own stdio would overwrite
    before it used them."""
    code = f"""
import os
from aidp.engine import _spawn
os.close(0); os.close(1)
log = os.open({str(tmp_path / "log")!r}, os.O_WRONLY | os.O_CREAT)
task = os.open({str(tmp_path / "task")!r}, os.O_RDONLY)
assert (log, task) == (0, 1)
script = b"cat; echo out; echo err >&2"
pid = _spawn.spawn([b"/bin/sh"], [b"sh", b"-c", script], [], {str(tmp_path)!r}.encode(), task, log, -1)
raise SystemExit(os.waitpid(pid, 0)[1])
"""
    (tmp_path / "task").write_text("the task\n")
    done = subprocess.run([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "log").read_text() == "the task\nout\nerr\n"
