"""What a workstream runs: the argv (placeholders substituted per argument, never through a shell),
its environment, and the spawn itself (own session, stdin closed, output straight into the log)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from aidp.engine import cgroups
from aidp.engine.config import PLACEHOLDERS
from aidp.engine.model import MAX_ARG_STRLEN, TASK_ENV_MAX_BYTES

try:
    from aidp.engine import _spawn as native
except ImportError:  # not built (no C compiler where aidp was installed): every harness starts through sh
    native = None  # type: ignore[assignment]

UTF8_MAX = 4  # bytes per character at most (a lone surrogate, passed through, takes 3)
_PLACEHOLDER_RE = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")


class StartError(Exception):
    """The program could not be started; the message says what to fix."""


# The launcher every harness starts through: it joins the cgroup in $1 (if any), waits on its stdin
# (the gate pipe) for aidp's word that the harness's identity is recorded, then becomes the harness
# with $2 as its stdin. A constant script: the harness's argv is passed as arguments that the shell
# never parses. The gate closes the window in which an aidp process killed right after the spawn
# left a harness that had dropped its environment (`env -i`) running where no recovery could find
# it; closed without the word (aidp died, or could not record the start), the harness never runs.
# A `preexec_fn` would do this without sh but makes Python fork instead of vfork: about 5 ms per
# spawn against 2 here (bench: containment). Where there is a cgroup and the native spawner
# (`_spawn`) was built, neither is needed: see `spawn`.
_LAUNCH = (
    '[ -z "$1" ] || echo 0 > "$1/cgroup.procs" || exit 125; read -r go || exit 125; in=$2; shift 2; exec "$@" < "$in"'
)

log = logging.getLogger(__name__)


class PidfdWatcher(asyncio.AbstractChildWatcher):
    """Python 3.11's default watcher starts a thread per child to `waitpid` it (bench: 16% of the
    server's CPU on 500 short jobs, and a thread crossing per exit). This one is what 3.12 uses by
    default: the child's pidfd is watched by the running loop, so its exit is an ordinary readable
    event. It serves whichever loop spawns (any thread); where `pidfd_open` fails (an old kernel,
    no descriptors left) that child is watched by a thread as before."""

    def __init__(self) -> None:
        self._fallback = asyncio.ThreadedChildWatcher()

    def __enter__(self) -> PidfdWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def is_active(self) -> bool:
        return True

    def close(self) -> None:
        self._fallback.close()

    def attach_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
        return None

    def add_child_handler(self, pid: int, callback: Callable[..., object], *args: object) -> None:
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            self._fallback.add_child_handler(pid, callback, *args)
            return
        asyncio.get_running_loop().add_reader(pidfd, self._reap, pid, pidfd, callback, args)

    def _reap(self, pid: int, pidfd: int, callback: Callable[..., object], args: tuple[object, ...]) -> None:
        asyncio.get_running_loop().remove_reader(pidfd)
        os.close(pidfd)
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:  # reaped by someone else: its status is lost (as 3.12 says it)
            log.warning("child process %d was reaped elsewhere; its exit status is unknown", pid)
            code = 255
        else:
            code = os.waitstatus_to_exitcode(status)
        callback(pid, code, *args)

    def remove_child_handler(self, pid: int) -> bool:
        return self._fallback.remove_child_handler(pid)


_REAPER = PidfdWatcher()  # `Child`'s: the policy's watcher is deprecated API from Python 3.12 on


def starts_directly() -> bool:
    """Whether a harness in a cgroup starts without the launcher (for `aidp doctor`)."""
    return native is not None


def watch_children_by_pidfd() -> None:
    """Install `PidfdWatcher` for this process's event-loop policy (once; 3.12+ needs nothing)."""
    if sys.version_info < (3, 12) and not isinstance(asyncio.get_child_watcher(), PidfdWatcher):
        asyncio.set_child_watcher(PidfdWatcher())


def build_argv(template: list[str], values: Mapping[str, str]) -> list[str]:
    """Substitute `{slug}`-style placeholders in one pass, so text that itself looks like a
    placeholder (a task mentioning `{slug}`) is never expanded twice. Other braces stay literal."""
    return [_PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], arg) for arg in template]


def build_env(extra: Mapping[str, str], values: Mapping[str, str], run_id: str) -> dict[str, str]:
    """aidp's variables over the configured ones. `AIDP_TASK` only when the kernel takes it (see
    `TASK_ENV_MAX_BYTES`); `AIDP_TASK_FILE` always names a file holding the task."""
    env = dict(os.environ)
    env.update(extra)
    env.pop("AIDP_TASK", None)  # never a stale one from aidp's own environment
    env.update(
        AIDP_SLUG=values["slug"],
        AIDP_TASK_FILE=values["task_file"],
        AIDP_MODE=values["mode"],
        AIDP_STEPS=values["steps"],
        AIDP_RUN_ID=run_id,
        AIDP_WORKTREE=values["worktree"],
    )
    if len(values["task"].encode()) <= TASK_ENV_MAX_BYTES:
        env["AIDP_TASK"] = values["task"]
    return env


def write_task_file(path: Path, task: str) -> Path:
    """The task, whole, in a file only its owner reads: `{task_file}`, `AIDP_TASK_FILE` and the
    harness's stdin with `stdin = "task"`. A failure is a `StartError`: nothing ran."""
    try:
        fd = open_making_folder(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:  # (a file object costs three more system calls per start: its size, isatty, tell)
            left = memoryview(task.encode())
            while left:
                left = left[os.write(fd, left) :]
        finally:
            os.close(fd)
    except OSError as exc:
        raise StartError(f"cannot write the task file {path}: {exc.strerror or exc}") from exc
    return path


def open_making_folder(path: Path, flags: int, mode: int = 0o644) -> int:
    """`os.open` that makes the folder only when it is missing: a run's files go into a folder
    that exists from the slug's second run on, and a `mkdir` per file showed in the profile."""
    try:
        return os.open(path, flags, mode)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, flags, mode)


def check_fits(argv: list[str], env: Mapping[str, str]) -> None:
    """Refuse, naming the ways that carry any size, what exec would refuse with E2BIG: one
    argument over MAX_ARG_STRLEN, or arguments and environment together over ARG_MAX."""
    ways = (
        "pass a long task through a file instead: {task_file} in [harness] command (or a preset that uses it) "
        'names a file holding the task, or [harness] stdin = "task" feeds it on standard input'
    )

    def size_of(text: str) -> int:  # a text exec cannot take at all is refused by the spawn itself
        return len(text.encode(errors="surrogatepass")) + 1

    pointer = 8
    limit = os.sysconf("SC_ARG_MAX")
    # A character takes at most 4 bytes: when even that bound fits, nothing is encoded (encoding
    # every variable was 7% of each harness's start in the profile, to answer nearly always "fits").
    bound = sum(UTF8_MAX * len(s) + 1 + pointer for s in argv) + sum(
        UTF8_MAX * (len(k) + len(v)) + 2 + pointer for k, v in env.items()
    )
    if bound <= limit and UTF8_MAX * max(map(len, argv), default=0) < MAX_ARG_STRLEN:
        return
    for arg in argv:
        if (size := size_of(arg)) > MAX_ARG_STRLEN:
            raise StartError(
                f"cannot start {argv[0]!r}: one argument is {size - 1} bytes, over the kernel's limit of "
                f"{MAX_ARG_STRLEN - 1} bytes for one argument (MAX_ARG_STRLEN; {{task}} puts the whole task in one); "
                + ways
            )
    total = sum(size_of(s) + pointer for s in [*argv, *(f"{k}={v}" for k, v in env.items())])
    if total > limit:
        raise StartError(
            f"cannot start {argv[0]!r}: its arguments and environment take {total} bytes, over the kernel's "
            f"limit of {limit} bytes (ARG_MAX); " + ways
        )


class _Direct:
    """A child the native spawner started: what `Child` reads of a `Popen`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None


class _Started(NamedTuple):
    proc: subprocess.Popen[bytes] | _Direct
    cgroup: Path | None  # the cgroup it joined before its first instruction, if any
    word: int | None  # the gate's write end: the launcher waits for it


async def spawn(
    argv: list[str],
    cwd: Path,
    env: dict[str, str],
    log_fd: int,
    cgroup: Path | None = None,
    stdin: Path | None = None,
    sandbox: Sequence[str] = (),
    *,
    make_cgroup: bool = False,
    place_recorded: bool = False,
) -> Child:
    """Start the harness in its own session (so cancel reaches its whole tree) and, given one, in
    its cgroup before its first instruction. The child writes into the log file itself: every byte
    is kept, and a flood costs the engine nothing. Its stdin is `stdin` (a file: never aidp's own
    stdin, which may be a JSON-RPC stream), else /dev/null. `sandbox`: an argv prefix
    (`sandbox.Box`) that runs the harness inside; the cgroup holds the sandbox. `make_cgroup`:
    `cgroup` is where its cgroup goes (`cgroups.place`), made on the spawning thread (a cgroup
    `mkdir` waits on the kernel's cgroup lock, which other harnesses joining theirs hold: 0.7 ms a
    start on the event loop, bench: overhead); `Child.cgroup` says which it joined.

    The caller records the child's identity, then calls `Child.go`. With `place_recorded` (the
    caller recorded `cgroup` before the spawn, where a recovery after aidp dies looks) and a cgroup
    to join, the native spawner starts the harness at once, in one exec: whatever the moment aidp
    dies, the recovery finds it there. Otherwise it starts through the launcher and waits at its
    gate until `go`."""
    check_fits(argv, env)

    def start() -> _Started:  # the PATH search too: it waits on the disk
        joined = cgroups.create(cgroup) if make_cgroup else cgroup
        try:
            if place_recorded and joined is not None and native is not None:
                return _Started(_start_direct(argv, cwd, env, log_fd, joined, stdin, sandbox), joined, None)
            return _start_launcher(argv, cwd, env, log_fd, joined, stdin, sandbox)
        except BaseException:
            if make_cgroup and joined is not None:
                cgroups.remove(joined)
            raise

    loop = asyncio.get_running_loop()
    started = loop.run_in_executor(None, start)
    try:
        return Child(await asyncio.shield(started), loop)
    except asyncio.CancelledError:
        await _abandon(started, owned=make_cgroup)
        raise
    except (OSError, ValueError) as exc:
        raise _start_error(exc, argv[0], cwd) from exc


def check_program(program: str, cwd: Path, env: Mapping[str, str]) -> None:
    """Raise the `StartError` a start of `program` would end with when it is missing or not
    executable (for a caller that records the start before the spawn)."""
    try:
        find_program(program, cwd, env)
    except OSError as exc:
        raise _start_error(exc, program, cwd) from exc


def _start_error(exc: OSError | ValueError, program: str, cwd: Path) -> StartError:
    """A failed start said as what to fix."""
    if isinstance(exc, OSError) and not cwd.is_dir():
        return StartError(f"worktree {cwd} is missing; remove the workstream and create it again")
    if isinstance(exc, FileNotFoundError):
        return StartError(
            f"cannot start {program!r}: no such program (check [harness] command in .aidp/config.toml "
            "or the workstream's --command)"
        )
    if isinstance(exc, PermissionError):
        return StartError(f"cannot start {program!r}: permission denied (is it executable?)")
    if isinstance(exc, OSError):
        return StartError(f"cannot start {program!r}: {exc.strerror or exc}")
    return StartError(f"cannot start {program!r}: {exc}")  # a NUL or an unencodable character


def _start_direct(
    argv: list[str],
    cwd: Path,
    env: Mapping[str, str],
    log_fd: int,
    cgroup: Path,
    stdin: Path | None,
    sandbox: Sequence[str],
) -> _Direct:
    """`spawn`'s start by the native spawner, on its worker thread: one exec, in the cgroup. The
    child searches PATH itself, as `subprocess` does (a search here stats every folder before it:
    5% of a start, bench: overhead); its failure says what `find_program` would. In a sandbox, the
    harness is looked for here: the sandbox would only log it."""
    assert native is not None
    if sandbox:
        find_program(argv[0], cwd, env)
        argv = [*sandbox, *argv]
    program = os.fsencode(argv[0])
    search = [program] if b"/" in program else [os.path.join(os.fsencode(d), program) for d in os.get_exec_path(env)]
    if any("=" in key for key in env):
        raise ValueError("illegal environment variable name")
    args, envp = [os.fsencode(a) for a in argv], [os.fsencode(f"{key}={value}") for key, value in env.items()]
    if any(b"\0" in text for text in (*args, *envp)):
        raise ValueError("embedded null byte")  # as subprocess says it, before the cgroup is joined
    cgroup_fd = _open_for_child(cgroup / "cgroup.procs", os.O_WRONLY, "join its cgroup")
    try:
        stdin_fd = _open_for_child(stdin or Path(os.devnull), os.O_RDONLY, "open its stdin")
        try:
            pid = native.spawn(search, args, envp, os.fsencode(cwd), stdin_fd, log_fd, cgroup_fd)
        finally:
            os.close(stdin_fd)
    finally:
        os.close(cgroup_fd)
    return _Direct(pid)


def _open_for_child(path: Path, flags: int, what: str) -> int:
    """A file the child is given, its failure said as what the child could not do (never as a
    missing program)."""
    assert native is not None
    try:
        return os.open(path, flags | os.O_CLOEXEC)
    except OSError as exc:
        raise native.SetupError(exc.errno, f"cannot {what} {path}: {exc.strerror}") from exc


def _start_launcher(
    argv: list[str],
    cwd: Path,
    env: dict[str, str],
    log_fd: int,
    cgroup: Path | None,
    stdin: Path | None,
    sandbox: Sequence[str],
) -> _Started:
    """`spawn`'s start through the launcher, on its worker thread (through sh, a missing program
    would only be a log line, so it is looked for here)."""
    find_program(argv[0], cwd, env)
    gate, word = os.pipe2(os.O_CLOEXEC)
    launcher = ["/bin/sh", "-c", _LAUNCH, "aidp-start", str(cgroup or ""), str(stdin or os.devnull)]
    try:
        popen = subprocess.Popen(
            [*launcher, *sandbox, *argv],
            cwd=cwd,
            env=env,
            stdin=gate,
            stdout=log_fd,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    except BaseException:
        os.close(word)
        raise
    finally:
        os.close(gate)
    return _Started(popen, cgroup, word)


class Child:
    """A started harness: its pid and, once reaped, its exit code (negative: the signal that ended
    it), as `asyncio.subprocess.Process` has them. `spawn` starts it on a worker thread: with vfork
    the caller stands still until the child has exec'd, which on a loaded machine took milliseconds
    of the event loop per harness (bench: overhead). Its exit is reaped through its pidfd. Started
    through the launcher, it waits at the gate until `go` (its `word`: the pipe's write end)."""

    def __init__(self, started: _Started, loop: asyncio.AbstractEventLoop) -> None:
        self.pid = started.proc.pid
        self.cgroup = started.cgroup
        self._proc = started.proc  # told the exit code too, so that a Popen never reaps the child itself
        self._loop = loop
        self._word = started.word
        self._exited: asyncio.Future[int] = loop.create_future()
        _REAPER.add_child_handler(self.pid, self._reaped)

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    @property
    def gated(self) -> bool:
        """Whether it waits at the launcher's gate for `go`."""
        return self._word is not None

    def go(self) -> None:
        """Let it past the gate: from here on it runs the harness."""
        if self._word is not None:
            with contextlib.suppress(BrokenPipeError):  # it was killed at the gate
                os.write(self._word, b"\n")
            self.close_gate()

    def close_gate(self) -> None:
        """Without the word, a child still at the gate ends there (exit 125): how a start given up
        ends even where no signal reaches it yet (a launcher not yet in its cgroup). After `go`,
        or started directly, nothing."""
        if self._word is not None:
            os.close(self._word)
            self._word = None

    @property
    def exited(self) -> asyncio.Future[int]:
        """Done with its exit code once it exited. Shared: never cancel it (`wait` shields it)."""
        return self._exited

    async def wait(self) -> int:
        """Until the child has exited; a cancelled wait leaves the others waiting."""
        return await asyncio.shield(self._exited)

    def _reaped(self, pid: int, code: int) -> None:
        """From the loop (its pidfd), or from a waiter thread (the fallback watcher). On the loop
        the exit is set at once: a hop through `call_soon_threadsafe` cost a wake-up of the loop
        and two callbacks a harness (bench: overhead)."""
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:  # a waiter thread
            on_loop = False
        if on_loop:
            self._set(code)
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
            self._loop.call_soon_threadsafe(self._set, code)

    def _set(self, code: int) -> None:
        self.close_gate()
        self._proc.returncode = code
        self._exited.set_result(code)


async def _abandon(started: asyncio.Future[_Started], owned: bool) -> None:
    """A spawn cancelled while its thread starts the child: the child is killed and reaped before
    the cancellation goes on (as asyncio does with a cancelled `create_subprocess_exec`), and the
    cgroup the spawn made for it (`owned`) is removed."""
    with contextlib.suppress(Exception):
        child = Child(await started, asyncio.get_running_loop())
        child.close_gate()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        await child.wait()
        if owned and child.cgroup is not None:
            cgroups.remove(child.cgroup)


def find_program(program: str, cwd: Path, env: Mapping[str, str]) -> str:
    """Where exec will find `program`, or raise as exec would (FileNotFoundError, PermissionError)."""
    if "/" in program:
        path = Path(program) if os.path.isabs(program) else cwd / program
        if not path.exists():
            raise FileNotFoundError(program)
        if path.is_dir() or not os.access(path, os.X_OK):
            raise PermissionError(program)
        return program  # exec resolves a relative one in `cwd`, as this did
    search = env.get("PATH", os.defpath)
    found = shutil.which(program, path=search)
    if found is None:
        raise (PermissionError if shutil.which(program, mode=os.F_OK, path=search) else FileNotFoundError)(program)
    return found
