"""Where one attempt's harness runs: the seam between the scheduler (`executor.Run`, which keeps
the queue, the bound, retries and the recording) and what starts, ends and waits for a harness.

`LocalBackend` runs it on this machine (its own process group and cgroup); `ray_backend` runs it
in a Ray actor on a cluster. Either way the harness's output ends up in the attempt's log file,
which the executor's ticker reads as the live view, so every face sees the same events.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from aidp.engine import cgroups, harness, procs
from aidp.engine.harness import Child, spawn
from aidp.engine.model import Workstream


@dataclass(frozen=True)
class Launch:
    """Everything a backend needs to start one attempt: the argv and environment are built by the
    executor (placeholders substituted per argument, never a shell string); a remote backend
    builds them again where it runs, from `command`, `values` and `extra_env`."""

    run_id: str
    slug: str
    worktree: Path
    attempt: int
    argv: list[str]
    env: dict[str, str]
    log_fd: int  # the attempt's log, open for appending; valid only during `start`
    log_path: Path
    stdin: Path | None  # the task file with `[harness] stdin = "task"`, else /dev/null
    sandbox: Sequence[str] = ()  # an argv prefix that runs the harness inside a sandbox
    # What to say while the start waits (a remote slot): the workstream stays `queued` with it.
    waiting: Callable[[str], Awaitable[None]] | None = None
    cancel: asyncio.Event | None = None  # set: stop waiting and raise StartError (the attempt is cancelled)
    command: list[str] = field(default_factory=list)  # the argv before placeholders
    values: Mapping[str, str] = field(default_factory=dict)  # the placeholders' values
    extra_env: Mapping[str, str] = field(default_factory=dict)  # `[harness] env`
    grace_s: float = 0.0  # between SIGTERM and SIGKILL
    commit: str = "never"  # `[harness] commit`, for a backend that commits where the harness ran
    commit_message: str = ""


class Attempt(Protocol):
    """One started harness, wherever it runs."""

    host: str | None  # the machine it runs on; None on this one (the local backend)
    lost: str | None  # set when a remote worker was lost: the attempt then ends `failed`

    @property
    def child(self) -> tuple[int, int | None, Path | None]:
        """Its pid, start time and cgroup: recorded with the claim when it is `gated`."""

    @property
    def tree(self) -> procs.Tree | None:
        """Its processes on this machine (sampled for memory and CPU), if it runs here."""

    @property
    def returncode(self) -> int | None:
        """Once it exited: its exit code; negative: killed by that signal."""

    @property
    def gated(self) -> bool:
        """Whether its `child` is recorded now, before `go` (a launcher waits at its gate for it).
        False: it runs already, where its backend's `recorded_before` said, recorded before it
        started."""

    def go(self) -> None:
        """Let the harness run: its `child` is recorded, so a recovery finds it if aidp dies."""

    @property
    def exited(self) -> asyncio.Future[Any]:
        """Done once the harness has exited (or its remote worker was lost). Shared: a waiter
        shields it or waits on it with callbacks, never cancels it."""

    async def stop(self, grace_s: float, hurry: asyncio.Event) -> None:
        """End its whole tree: SIGTERM, a grace period (cut short by `hurry`), SIGKILL; return
        when nothing it started is left (also after a clean exit: grandchildren go too)."""

    async def kill(self) -> None:
        """SIGKILL its whole tree now and wait for it (aidp is being stopped)."""

    async def bring_back(self) -> tuple[list[str], str | None]:
        """After it ended: its work into the local branch. Returns notes for the workstream's
        events and an error that ends the attempt `error` (the local branch moved), or None."""


class Backend(Protocol):
    def recorded_before(self, run_id: str, slug: str, attempt: int) -> Path | None:
        """Where the attempt's harness will be, when that alone finds it again (its cgroup) and it
        can start there at once: the executor records the start before it starts, and it never
        waits at a gate. None: it records the started attempt's `child`, then lets it go."""

    async def start(self, launch: Launch) -> Attempt:
        """Start the harness; raise `harness.StartError` (saying what to fix) when it cannot."""

    async def close(self) -> None:
        """Release what the backend holds (a Ray connection) when the engine closes."""


class LocalAttempt:
    """A harness on this machine: its process group (and cgroup, where the system allows)."""

    host: str | None = None
    lost: str | None = None

    def __init__(self, proc: Child, tree: procs.Tree, run_id: str, slug: str) -> None:
        self._proc = proc
        self.tree = tree
        self.run_id = run_id
        self.slug = slug

    @property
    def child(self) -> tuple[int, int | None, Path | None]:
        """Read only when recorded (a gated start): a /proc read per start otherwise (bench: overhead)."""
        return self._proc.pid, procs.start_time(self._proc.pid), self.tree.cgroup

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    @property
    def gated(self) -> bool:
        return self._proc.gated

    def go(self) -> None:
        self._proc.go()

    @property
    def exited(self) -> asyncio.Future[int]:
        return self._proc.exited

    async def stop(self, grace_s: float, hurry: asyncio.Event) -> None:
        self._proc.close_gate()
        await procs.terminate([self.tree, *await self._escaped()], grace_s, hurry)
        await self._proc.wait()

    async def kill(self) -> None:
        self._proc.close_gate()  # the kill can come before a launcher joined its cgroup
        self.tree.signal(signal.SIGKILL)
        await self._proc.wait()
        await procs.terminate([self.tree], 0)

    async def bring_back(self) -> tuple[list[str], str | None]:
        return [], None  # it worked in the local worktree itself

    async def _escaped(self) -> list[procs.Tree]:
        """Without a cgroup, what left the harness's group (`setsid`) is found by the environment
        marker it inherited (a /proc scan, so only then, and off the event loop)."""
        if self.tree.cgroup is not None:
            return []
        groups = await asyncio.to_thread(procs.marked_groups, self.run_id, self.slug) - {self.tree.pgid}
        return [procs.Tree(pgid=g) for g in groups]


class LocalBackend:
    """Harnesses on this machine, output straight into the log file (never through Python)."""

    def recorded_before(self, run_id: str, slug: str, attempt: int) -> Path | None:
        """Its cgroup, where the native spawner starts it in one exec (without it, the launcher's
        gate waits for the recorded pid)."""
        return cgroups.place(run_id, slug, attempt) if harness.starts_directly() else None

    async def start(self, launch: Launch) -> LocalAttempt:
        """In a cgroup of its own where the system allows, else without (`spawn` makes it). Started
        there at once where it can be: the executor recorded that place before (`recorded_before`),
        and on a Ray worker its watchdog ends it with the worker."""
        proc = await spawn(
            launch.argv,
            launch.worktree,
            launch.env,
            launch.log_fd,
            cgroups.place(launch.run_id, launch.slug, launch.attempt),
            stdin=launch.stdin,
            sandbox=launch.sandbox,
            make_cgroup=True,
            place_recorded=True,
        )
        return LocalAttempt(proc, procs.Tree(pgid=proc.pid, cgroup=proc.cgroup), launch.run_id, launch.slug)

    async def close(self) -> None:
        return None


def commit_message(ws: Workstream) -> str:
    """`[harness] commit`'s message: the slug and the task's first line."""
    return f"{ws.slug}: {ws.task.strip().splitlines()[0][:100]}"
