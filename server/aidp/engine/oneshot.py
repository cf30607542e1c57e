"""One command run to its end outside a run: a worktree's setup, a hook.

Contained like a harness (`harness.spawn`: its own session, its own cgroup where the system allows,
never a shell), its output straight into a log file, ended with its whole tree after a timeout, and
ended before a cancellation (Ctrl-C) goes on. Whatever it started is gone when this returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from aidp.engine import cgroups, procs
from aidp.engine.executor import _describe_exit as describe_exit
from aidp.engine.harness import StartError, spawn


@dataclass(frozen=True)
class Outcome:
    """How the command ended: `error` is None when it exited 0, else why not (it could not
    start, it exited non-zero, it timed out)."""

    exit_code: int | None
    error: str | None
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.error is None


async def run_contained(
    argv: list[str],
    cwd: Path,
    env: dict[str, str],
    log_path: Path,
    timeout_s: float,
    grace_s: float,
    place: Path | None,
    marker: Mapping[str, str] | None = None,
    record: Callable[[int, int | None], Awaitable[None]] | None = None,
) -> Outcome:
    """Run `argv` in `cwd` to its end, its output appended to `log_path`. `place`: where its cgroup
    goes (`cgroups.place`); `marker`: entries of `env` by which what left its process group
    (`setsid`) is found where there is no cgroup; `record(pid, start_time)`: called
    while the command waits at the gate, so it runs only once its caller can find it again (if
    `record` raises, the command ends unrun and the error is raised here). Raises OSError when the
    log cannot be written; a cancellation ends the command's tree before it goes on."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    t0 = time.monotonic()
    cgroup = cgroups.create(place)
    try:
        proc = await spawn(argv, cwd, env, log_fd, cgroup)
    except StartError as exc:
        with contextlib.suppress(OSError):
            os.write(log_fd, f"[aidp] {exc}\n".encode())
        if cgroup is not None:
            cgroups.remove(cgroup)
        return Outcome(None, str(exc), 0.0)
    finally:
        os.close(log_fd)
    tree = procs.Tree(pgid=proc.pid, cgroup=cgroup)
    exited = asyncio.ensure_future(proc.wait())
    try:
        if record is not None:
            await record(proc.pid, procs.start_time(proc.pid))
        proc.go()
        await asyncio.wait({exited}, timeout=timeout_s)
    except BaseException:  # cancelled, or its start not recorded
        proc.close_gate()
        await _end(tree, marker, grace_s)
        await exited
        raise
    timed_out = not exited.done()
    await _end(tree, marker, grace_s)  # also what outlived a clean exit
    code = await exited
    duration = round(time.monotonic() - t0, 3)
    if timed_out:
        return Outcome(code, f"timed out after {timeout_s:g} s (ended)", duration)
    return Outcome(code, None if code == 0 else describe_exit(code), duration)


async def _end(tree: procs.Tree, marker: Mapping[str, str] | None, grace_s: float) -> None:
    """SIGTERM the tree (and, without a cgroup, the groups carrying the marker), SIGKILL after `grace_s`."""
    trees = [tree]
    if tree.cgroup is None and marker is not None:
        groups = await asyncio.to_thread(procs.groups_marked, marker)
        trees += [procs.Tree(pgid=g) for g in groups - {tree.pgid}]
    await procs.terminate(trees, grace_s)


async def end_left(
    marker: Mapping[str, str], place: Path | None, pid: int | None, pid_start: int | None, wait_s: float
) -> bool:
    """End what a command run by an aidp process that died was left running (`procs.leftovers`;
    its cgroup at `place`), SIGKILL after `wait_s`. Whether anything of it was left."""
    trees = await asyncio.to_thread(procs.leftovers, marker, place, pid, pid_start)
    left = any(tree.alive() for tree in trees)
    await procs.terminate(trees, wait_s)
    return left
