"""One run: a set of claimed workstreams executed by a bounded pool of workers.

Workers pull jobs from a queue, so the bound is the number of workers. Priorities and dependencies
slot in at `JobQueue.next()`: a priority order, or "skip jobs whose dependencies have not ended",
without touching the workers. Each job spawns its harness in its own process group, waits for it
(or for cancel/timeout, which end the whole group), and records one result.

Output is never piped through Python: the child writes into its log file, and a ticker reads the
new bytes ten times a second as a bounded live view (`LogTail`).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import os
import signal
import sqlite3
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from aidp.engine import cgroups, gitrepo, procs
from aidp.engine.errors import GitError
from aidp.engine.events import EventBus, OutputChunk, StatusChanged
from aidp.engine.harness import StartError, build_argv, build_env, spawn
from aidp.engine.model import RunSummary, Status, Workstream, WorkstreamResult, utc_now
from aidp.engine.store import AsyncStore

TICK_S = 0.1
CANCEL_POLL_TICKS = 5
CHUNK_MAX = 64 * 1024
TAIL_LINES = 8
RECORD_RETRY_S = (0.1, 0.5, 1.0)  # then the result is recorded `error`, or kept for later

log = logging.getLogger(__name__)

NO_COMMAND = (
    'no command configured: set [harness] command = ["prog", "arg", ...] in .aidp/config.toml, '
    "or create the workstream with --command"
)


class LogTail:
    """The live view of a log file: at most CHUNK_MAX bytes per read; when more has piled up it
    skips ahead and counts what it skipped, so memory stays bounded while the file keeps every byte."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        self._pos = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def read(self) -> tuple[int, str]:
        """(bytes skipped, new text): the text decoded as UTF-8 with replacement characters."""
        size = os.fstat(self._fd).st_size
        skipped = max(0, size - self._pos - CHUNK_MAX)
        if skipped:
            self._pos += skipped
            self._decoder.reset()
        data = os.pread(self._fd, size - self._pos, self._pos) if size > self._pos else b""
        self._pos += len(data)
        return skipped, self._decoder.decode(data)

    def last_lines(self, n: int = TAIL_LINES) -> str:
        size = os.fstat(self._fd).st_size
        start = max(0, size - 4096)
        text = os.pread(self._fd, size - start, start).decode("utf-8", errors="replace")
        return "\n".join(text.splitlines()[-n:])

    def close(self) -> None:
        os.close(self._fd)


def _describe_exit(code: int | None) -> str:
    if code is None or code >= 0:
        return f"exit code {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


@dataclass(frozen=True)
class RunOptions:
    max_concurrent: int
    mode: str
    steps: list[str] | None
    timeout_s: float | None
    grace_s: float
    env: dict[str, str]
    default_command: list[str] | None
    commit: str = "never"  # [harness] commit: never | on-success | always


@dataclass(eq=False)
class Job:
    ws: Workstream
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    tail: LogTail | None = None
    result: WorkstreamResult | None = None


class JobQueue:
    """FIFO today; the one place that decides what runs next."""

    def __init__(self, jobs: list[Job]) -> None:
        self._pending = deque(jobs)

    def next(self) -> Job | None:
        return self._pending.popleft() if self._pending else None


class Run:
    def __init__(
        self,
        run_id: str,
        workstreams: list[Workstream],
        options: RunOptions,
        db: AsyncStore,
        bus: EventBus,
        logs_dir: Path,
    ) -> None:
        self.run_id = run_id
        self.jobs = {ws.slug: Job(ws) for ws in workstreams}
        self.options = options
        self._db = db
        self._bus = bus
        self._logs_dir = logs_dir
        self._hurry = asyncio.Event()
        self.unrecorded: list[WorkstreamResult] = []  # results the database refused (see _store_result)

    def cancel(self, slugs: list[str] | None = None, hard: bool = False) -> list[str]:
        """Cancel some or all workstreams of this run; returns those that had not yet ended.
        `hard`: SIGKILL now, without waiting out the grace period (a second Ctrl-C)."""
        targets = [j for s, j in self.jobs.items() if slugs is None or s in slugs]
        hit = [j.ws.slug for j in targets if j.result is None and not j.cancel.is_set()]
        for job in targets:
            job.cancel.set()
        if hard:
            self._hurry.set()
        return hit

    async def execute(self) -> RunSummary:
        """Run every job; if this task is cancelled, cancel the jobs, wait until each has been
        ended and recorded, and only then let the cancellation through."""
        started = time.monotonic()
        queue = JobQueue(list(self.jobs.values()))
        workers = [
            asyncio.create_task(self._worker(queue), name=f"aidp-worker-{self.run_id}-{i}")
            for i in range(min(self.options.max_concurrent, len(self.jobs)))
        ]
        ticker = asyncio.create_task(self._tick(), name=f"aidp-ticker-{self.run_id}")
        try:
            if workers:  # asyncio.wait refuses an empty set: a run-all with nothing to run
                await asyncio.wait(workers)
        except asyncio.CancelledError:
            self.cancel()
            await asyncio.wait(workers)
            raise
        finally:
            ticker.cancel()
        for w in workers:
            w.result()  # a worker's unexpected exception is a bug: surface it, don't hide it
        results = [job.result for job in self.jobs.values() if job.result is not None]
        return RunSummary.of(self.run_id, results, time.monotonic() - started)

    async def _worker(self, queue: JobQueue) -> None:
        while (job := queue.next()) is not None:
            try:
                await self._run_job(job)
            except Exception as exc:  # a fault of one job (a bug, I/O) must not end the run
                log.exception("%s: aidp failed while running it", job.ws.slug)
                if job.result is None:
                    error = f"aidp failed while running it: {type(exc).__name__}: {exc}"
                    await self._finish(job, WorkstreamResult(slug=job.ws.slug, status=Status.ERROR, error=error))

    async def _tick(self) -> None:
        """Live output for every running job, and cancel requests made by other processes. One
        job's fault (a vanished log, a busy database) must never stop this for the others."""
        ticks = 0
        while True:
            await asyncio.sleep(TICK_S)
            for job in self.jobs.values():
                try:
                    self._flush_output(job)
                except OSError as exc:
                    log.warning("%s: cannot read its log for live output: %s", job.ws.slug, exc)
            ticks += 1
            if ticks % CANCEL_POLL_TICKS == 0:
                try:
                    self.cancel(await self._db.call(self._db.store.cancel_requests, self.run_id))
                except sqlite3.Error as exc:
                    log.warning("cannot read cancel requests (will retry): %s", exc)

    def _flush_output(self, job: Job) -> None:
        if job.tail is None:
            return
        skipped, text = job.tail.read()
        if skipped or text:
            self._bus.emit(OutputChunk(run_id=self.run_id, slug=job.ws.slug, text=text, skipped=skipped))

    async def _run_job(self, job: Job) -> None:
        ws = job.ws
        if job.cancel.is_set():
            await self._finish(
                job,
                WorkstreamResult(slug=ws.slug, status=Status.CANCELLED, error="cancelled before it started"),
            )
            return
        template = ws.command or self.options.default_command
        if not template:
            await self._finish(job, WorkstreamResult(slug=ws.slug, status=Status.ERROR, error=NO_COMMAND))
            return
        steps = ",".join(self.options.steps or [])
        values = {
            "slug": ws.slug,
            "task": ws.task,
            "mode": self.options.mode,
            "steps": steps,
            "branch": ws.branch,
            "worktree": ws.path,
        }
        log_path = self._logs_dir / ws.slug / f"{self.run_id}.log"
        started_at, t0 = utc_now(), time.monotonic()
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            error = f"cannot write its log {log_path}: {exc.strerror or exc}"
            await self._finish(
                job, WorkstreamResult(slug=ws.slug, status=Status.ERROR, started_at=started_at, error=error)
            )
            return
        try:
            proc, tree = await self._spawn(
                job, build_argv(template, values), build_env(self.options.env, values, self.run_id), log_fd
            )
        except StartError as exc:
            with contextlib.suppress(OSError):
                os.write(log_fd, f"[aidp] {exc}\n".encode())
            await self._finish(
                job,
                WorkstreamResult(slug=ws.slug, status=Status.ERROR, started_at=started_at, error=str(exc)),
                log_path,
            )
            return
        finally:
            os.close(log_fd)
        try:
            job.tail = LogTail(log_path)
            await self._db.call(
                self._db.store.mark_running,
                self.run_id,
                ws.slug,
                (proc.pid, procs.start_time(proc.pid), tree.cgroup),
                str(log_path),
                started_at,
            )
            self._bus.emit(
                StatusChanged(run_id=self.run_id, slug=ws.slug, status=Status.RUNNING, started_at=started_at)
            )
            status, why = await self._wait(job, proc, tree)
        except asyncio.CancelledError:
            await self._kill(proc, tree)
            await self._record(
                job, proc.returncode, Status.CANCELLED, "cancelled (aidp was stopped)", started_at, t0, log_path
            )
            raise
        except (OSError, sqlite3.Error) as exc:  # the start could not be recorded: nothing runs unrecorded
            await self._kill(proc, tree)
            why = f"aidp could not record its start: {exc}"
            await self._record(job, proc.returncode, Status.ERROR, why, started_at, t0, log_path)
            return
        await self._auto_commit(job, status)
        await self._record(job, proc.returncode, status, why, started_at, t0, log_path)

    async def _auto_commit(self, job: Job, status: Status) -> None:
        """`[harness] commit`: commit what the harness left, as its own event. A failed commit is
        said in the events and changes nothing else: the work stays in the worktree."""
        if self.options.commit == "never" or (self.options.commit == "on-success" and status != Status.COMPLETED):
            return
        task = job.ws.task.strip().splitlines()[0][:100]
        try:
            commit = await gitrepo.commit_all(Path(job.ws.path), f"{job.ws.slug}: {task}")
        except (GitError, OSError) as exc:
            message = f"auto-commit failed: {exc}"
        else:
            if commit is None:
                return
            message = f"auto-committed {commit[:12]}"
        try:
            await self._db.call(self._db.store.note, job.ws.slug, self.run_id, Status.RUNNING, message)
        except sqlite3.Error as exc:  # the commit is in git either way; the result must still be recorded
            log.warning("%s: %s, but the event could not be recorded: %s", job.ws.slug, message, exc)

    async def _spawn(
        self, job: Job, argv: list[str], env: dict[str, str], log_fd: int
    ) -> tuple[asyncio.subprocess.Process, procs.Tree]:
        """Start the harness in a cgroup of its own where the system allows, else without."""
        cgroup = cgroups.create(cgroups.place(self.run_id, job.ws.slug))
        try:
            proc = await spawn(argv, Path(job.ws.path), env, log_fd, cgroup)
        except StartError:
            if cgroup is not None:
                cgroups.remove(cgroup)
            raise
        return proc, procs.Tree(pgid=proc.pid, cgroup=cgroup)

    async def _kill(self, proc: asyncio.subprocess.Process, tree: procs.Tree) -> None:
        tree.signal(signal.SIGKILL)
        await proc.wait()
        await procs.terminate([tree], 0)

    async def _wait(self, job: Job, proc: asyncio.subprocess.Process, tree: procs.Tree) -> tuple[Status, str | None]:
        """Wait for the harness to exit, be cancelled or time out; afterwards nothing it started
        is left (not even a grandchild that outlived a clean exit, or one that called `setsid`)."""
        exited = asyncio.ensure_future(proc.wait())
        cancelled = asyncio.ensure_future(job.cancel.wait())
        try:
            await asyncio.wait({exited, cancelled}, timeout=self.options.timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cancelled.cancel()
        if exited.done():
            status, why = (Status.COMPLETED, None) if proc.returncode == 0 else (Status.FAILED, None)
        elif job.cancel.is_set():
            status, why = Status.CANCELLED, "cancelled"
        else:
            status, why = Status.FAILED, f"timed out after {self.options.timeout_s:g} s"
        await procs.terminate([tree, *await self._escaped(job, tree)], self.options.grace_s, self._hurry)
        await exited
        return status, why

    async def _escaped(self, job: Job, tree: procs.Tree) -> list[procs.Tree]:
        """Without a cgroup, what left the harness's group (`setsid`) is found by the environment
        marker it inherited (a /proc scan, so only then, and off the event loop)."""
        if tree.cgroup is not None:
            return []
        groups = await asyncio.to_thread(procs.marked_groups, self.run_id, job.ws.slug) - {tree.pgid}
        return [procs.Tree(pgid=g) for g in groups]

    async def _record(
        self,
        job: Job,
        code: int | None,
        status: Status,
        why: str | None,
        started_at: str,
        t0: float,
        log_path: Path,
    ) -> None:
        if job.tail is not None:
            with contextlib.suppress(OSError):
                self._flush_output(job)
        if status == Status.FAILED:
            how = _describe_exit(code)
            lines = job.tail.last_lines() if job.tail is not None else ""
            why = f"{why}; {how}" if why else how
            why += f"\n{lines}" if lines else ""
        if job.tail is not None:
            job.tail.close()
            job.tail = None  # the ticker must never read a closed (and maybe reused) descriptor
        result = WorkstreamResult(
            slug=job.ws.slug,
            status=status,
            exit_code=code,
            started_at=started_at,
            finished_at=utc_now(),
            duration_s=round(time.monotonic() - t0, 3),
            error=why,
        )
        await self._finish(job, result, log_path)

    async def _finish(self, job: Job, result: WorkstreamResult, log_path: Path | None = None) -> None:
        """Record the result (durable before anyone is told), release the claim, announce it."""
        if log_path is not None:
            result.log_path = str(log_path)
        if result.finished_at is None:
            result.finished_at = utc_now()
        result = await self._store_result(result)
        job.result = result
        self._bus.emit(
            StatusChanged(
                run_id=self.run_id,
                slug=result.slug,
                status=result.status,
                exit_code=result.exit_code,
                duration_s=result.duration_s,
                error=result.error,
            )
        )

    async def _store_result(self, result: WorkstreamResult) -> WorkstreamResult:
        """A database that refuses a write (disk full, I/O error) is retried briefly; then the
        workstream is recorded `error` saying why, a smaller write. If even that fails the result
        is kept in `unrecorded` for the engine to record later: the claim stays held meanwhile,
        so no one starts the workstream again on top of a status nobody could write."""
        for delay in (*RECORD_RETRY_S, None):
            try:
                await self._db.call(self._db.store.finish, self.run_id, result)
                return result
            except sqlite3.Error as exc:
                log.warning("%s: cannot record its result (%s)", result.slug, exc)
                if delay is None:
                    failure = f"aidp could not record its result ({result.status}): {exc}"
                    result = msgspec.structs.replace(result, status=Status.ERROR, error=failure)
                else:
                    await asyncio.sleep(delay)
        try:
            await self._db.call(self._db.store.finish, self.run_id, result)
        except sqlite3.Error:
            self.unrecorded.append(result)
        return result
