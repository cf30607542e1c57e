"""The worker side of a remote attempt, in plain Python (`ray_backend`'s actor calls it on a
cluster node): a scratch clone of the workstream's branch from a git bundle, `[worktree] copy` and
`setup`, the harness run exactly as a local one (`LocalBackend`: own session, cgroup where the
node allows, same argv and environment building), its output and progress reports read back in
bounded chunks about ten times a second with a heartbeat, and a bundle of the new commits.

A watchdog process (`watchdog`) ends the harness's tree when the worker process that started it
dies, so a crashed worker leaves no orphan behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aidp.engine import cgroups, gitrepo, oneshot, procs
from aidp.engine.backend import Launch, LocalAttempt, LocalBackend
from aidp.engine.errors import GitError
from aidp.engine.harness import StartError, build_argv, build_env, write_task_file

TICK_S = 0.1
CHUNK_MAX = 64 * 1024  # one message's bytes of output at most; more waits for the next message
BEAT_S = 1.0  # a heartbeat at least this often when there is no output

Event = dict[str, object]  # {"out": bytes} | {"progress": bytes} | {"beat": 1} | {"started": pid, ...} | {"end": ...}


@dataclass(frozen=True)
class Spec:
    """What a remote attempt runs: the harness command before placeholders (the worker fills in
    its own worktree and task file), and what to do around it."""

    run_id: str
    slug: str
    branch: str
    base: str  # the branch's commit shipped in the bundle
    attempt: int
    command: list[str]
    values: dict[str, str]  # placeholders but `worktree` and `task_file`, which are the worker's
    env: dict[str, str]  # `[harness] env`
    stdin_task: bool
    grace_s: float
    commit: str  # [harness] commit: never | on-success | always
    commit_message: str
    copies: dict[str, bytes] = field(default_factory=dict)  # `[worktree] copy`: relative path -> content
    setup: list[str] | None = None
    setup_timeout_s: float = 1800.0


class RemoteRun:
    """One attempt on this node, from the bundle to the bundle of its new commits."""

    def __init__(self, spec: Spec, bundle: bytes) -> None:
        self.spec = spec
        self._bundle = bundle
        self._scratch = Path(tempfile.mkdtemp(prefix=f"aidp-{spec.slug}-"))
        self._repo = self._scratch / "repo"
        self._log = self._scratch / "output.log"
        self._progress = self._scratch / "progress"
        self._attempt: LocalAttempt | None = None
        self._stopped = False
        self._hurry = asyncio.Event()

    async def events(self) -> AsyncIterator[Event]:
        """The attempt's events, in order: output while it starts (setup), `started`, output,
        progress and heartbeats, then `end` (its exit code and a bundle of the new commits) or
        `error` (it could not start). The scratch folder goes when this ends."""
        try:
            async for event in self._run():
                yield event
        finally:
            await asyncio.to_thread(shutil.rmtree, self._scratch, True)

    async def stop(self, grace_s: float) -> None:
        """End the harness's tree: SIGTERM, `grace_s`, SIGKILL (a second call with 0: at once)."""
        self._stopped = True
        if grace_s <= 0:
            self._hurry.set()
        if self._attempt is not None:
            await self._attempt.stop(grace_s, self._hurry)

    async def _run(self) -> AsyncIterator[Event]:
        spec = self.spec
        try:
            await self._check_out()
        except (GitError, OSError) as exc:
            yield {"error": f"cannot check the branch out on {socket.gethostname()}: {exc}"}
            return
        os.close(os.open(self._log, os.O_WRONLY | os.O_CREAT, 0o644))
        os.close(os.open(self._progress, os.O_WRONLY | os.O_CREAT, 0o644))
        reader = _Reader(self._log, self._progress)
        values = {**spec.values, "worktree": str(self._repo), "task_file": str(self._scratch / "task")}
        env = {**build_env(spec.env, values, spec.run_id), "AIDP_PROGRESS": str(self._progress)}
        if spec.setup is not None:
            marker = procs.marker(spec.run_id, spec.slug)
            setup = asyncio.ensure_future(
                oneshot.run_contained(
                    spec.setup, self._repo, env, self._log, spec.setup_timeout_s, spec.grace_s, None, marker
                )
            )
            async for event in reader.follow(setup):
                yield event
            if (outcome := setup.result()).error is not None:
                yield {"error": f"the [worktree] setup failed on {socket.gethostname()}: {outcome.error}"}
                return
        try:
            watchdog = await asyncio.to_thread(_watch, spec)
        except (OSError, subprocess.CalledProcessError) as exc:
            yield {"error": f"cannot start the watchdog on {socket.gethostname()}: {exc}"}
            return
        try:
            try:
                attempt = await self._start(values, env)
            except StartError as exc:
                yield {"error": str(exc)}
                return
            self._attempt = attempt
            attempt.go()  # its watchdog watches it: a worker that dies leaves nothing running
            yield {"started": attempt.child[0], "host": socket.gethostname()}
            async for event in reader.follow(attempt.exited):
                yield event
            await attempt.stop(spec.grace_s, self._hurry)  # what outlived the harness goes too
            async for event in reader.drain():
                yield event
        finally:
            with contextlib.suppress(OSError):  # a watchdog already gone has nothing to hear
                os.write(watchdog, b"done")  # nothing is left to end: the watchdog goes quietly
            os.close(watchdog)
        code = attempt.returncode
        notes, bundle = await self._bring_out(code == 0 and not self._stopped)
        yield {"end": code, "notes": notes, "bundle": bundle}

    async def _check_out(self) -> None:
        """The branch from the bundle into a scratch clone, plus the copied files."""
        bundle = self._scratch / "in.bundle"
        bundle.write_bytes(self._bundle)
        await gitrepo.git(self._scratch, "clone", "--quiet", "--branch", self.spec.branch, str(bundle), str(self._repo))
        bundle.unlink()
        for relative, content in self.spec.copies.items():
            target = self._repo / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)

    async def _start(self, values: dict[str, str], env: dict[str, str]) -> LocalAttempt:
        spec = self.spec
        task_file = write_task_file(Path(values["task_file"]), values["task"])
        log_fd = os.open(self._log, os.O_WRONLY | os.O_APPEND)
        try:
            launch = Launch(
                run_id=spec.run_id,
                slug=spec.slug,
                worktree=self._repo,
                attempt=spec.attempt,
                argv=build_argv(spec.command, values),
                env=env,
                log_fd=log_fd,
                log_path=self._log,
                stdin=task_file if spec.stdin_task else None,
            )
            return await LocalBackend().start(launch)
        finally:
            os.close(log_fd)

    async def _bring_out(self, completed: bool) -> tuple[list[str], bytes | None]:
        """Commit what was left (by `[harness] commit`), then a bundle of the commits beyond the
        base: notes for the workstream's events, and the bundle (None without new commits)."""
        spec, notes = self.spec, []
        if spec.commit == "always" or (spec.commit == "on-success" and completed):
            try:
                commit = await gitrepo.commit_all(self._repo, spec.commit_message)
            except (GitError, OSError) as exc:
                notes.append(f"auto-commit failed: {exc}")
            else:
                if commit is not None:
                    notes.append(f"auto-committed {commit[:12]}")
        head = (await gitrepo.git(self._repo, "rev-parse", f"refs/heads/{spec.branch}")).strip()
        if head == spec.base:
            return notes, None
        out = self._scratch / "out.bundle"
        branch = f"refs/heads/{spec.branch}"
        await gitrepo.git(self._repo, "bundle", "create", "--quiet", str(out), branch, f"^{spec.base}")
        return notes, out.read_bytes()


class _Reader:
    """The worker-side log and progress file, read as whole bounded chunks (nothing skipped:
    aidp's copy of the log must have every byte)."""

    def __init__(self, log: Path, progress: Path) -> None:
        self._files = [("out", log, 0), ("progress", progress, 0)]
        self._said = time.monotonic()

    async def follow(self, until: asyncio.Future[Any]) -> AsyncIterator[Event]:
        """Chunks about ten times a second, and a heartbeat when quiet, until `until` is done."""
        while not until.done():
            await asyncio.wait({until}, timeout=TICK_S)
            async for event in self.drain():
                yield event
            if time.monotonic() - self._said >= BEAT_S:
                self._said = time.monotonic()
                yield {"beat": 1}

    async def drain(self) -> AsyncIterator[Event]:
        for i, (kind, path, pos) in enumerate(self._files):
            while chunk := _pread(path, pos):
                pos += len(chunk)
                self._files[i] = (kind, path, pos)
                self._said = time.monotonic()
                yield {kind: chunk}


def _pread(path: Path, pos: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, CHUNK_MAX, pos)
    finally:
        os.close(fd)


def _watch(spec: Spec) -> int:
    """Start the watchdog of this attempt, before its harness; returns the pipe that keeps it
    waiting. It detaches (a double fork, done when this returns): Ray ends a dying worker's
    children, and the watchdog must outlive the worker to end what the harness left."""
    cgroup = cgroups.place(spec.run_id, spec.slug, spec.attempt)  # where `LocalBackend` puts it
    argv = [sys.executable, "-m", "aidp.engine.watchdog", spec.run_id, spec.slug, str(cgroup or "")]
    read, write = os.pipe()
    try:
        subprocess.run(argv, stdin=read, start_new_session=True, check=True)
    finally:
        os.close(read)
    return write
