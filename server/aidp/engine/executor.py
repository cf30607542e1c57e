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
import os
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from aidp.engine import procs
from aidp.engine.events import EventBus, OutputChunk, StatusChanged
from aidp.engine.harness import StartError, build_argv, build_env, spawn
from aidp.engine.model import RunSummary, Status, Workstream, WorkstreamResult, utc_now
from aidp.engine.store import AsyncStore

TICK_S = 0.1
CANCEL_POLL_TICKS = 5
CHUNK_MAX = 64 * 1024
TAIL_LINES = 8

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
            await self._run_job(job)

    async def _tick(self) -> None:
        """Live output for every running job, and cancel requests made by other processes."""
        ticks = 0
        while True:
            await asyncio.sleep(TICK_S)
            for job in self.jobs.values():
                self._flush_output(job)
            ticks += 1
            if ticks % CANCEL_POLL_TICKS == 0:
                self.cancel(await self._db.call(self._db.store.cancel_requests, self.run_id))

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
        log_path.parent.mkdir(parents=True, exist_ok=True)
        started_at, t0 = utc_now(), time.monotonic()
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            proc = await spawn(
                build_argv(template, values),
                Path(ws.path),
                build_env(self.options.env, values, self.run_id),
                log_fd,
            )
        except StartError as exc:
            os.write(log_fd, f"[aidp] {exc}\n".encode())
            await self._finish(
                job,
                WorkstreamResult(slug=ws.slug, status=Status.ERROR, started_at=started_at, error=str(exc)),
                log_path,
            )
            return
        finally:
            os.close(log_fd)
        job.tail = LogTail(log_path)
        try:
            await self._db.call(self._db.store.mark_running, self.run_id, ws.slug, proc.pid, str(log_path), started_at)
            self._bus.emit(StatusChanged(run_id=self.run_id, slug=ws.slug, status=Status.RUNNING))
            status, why = await self._wait(job, proc)
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            await self._record(
                job,
                proc.returncode,
                Status.CANCELLED,
                "cancelled (aidp was stopped)",
                started_at,
                t0,
                log_path,
            )
            raise
        await self._record(job, proc.returncode, status, why, started_at, t0, log_path)

    async def _wait(self, job: Job, proc: asyncio.subprocess.Process) -> tuple[Status, str | None]:
        """Wait for the harness to exit, be cancelled or time out; afterwards nothing of its
        process group is left (not even a grandchild that outlived a clean exit)."""
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
        await procs.terminate_group(proc.pid, self.options.grace_s, self._hurry)
        await exited
        return status, why

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
        assert job.tail is not None
        self._flush_output(job)
        if status == Status.FAILED:
            how = _describe_exit(code)
            lines = job.tail.last_lines()
            why = f"{why}; {how}" if why else how
            why += f"\n{lines}" if lines else ""
        job.tail.close()
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
        if log_path is not None:
            result.log_path = str(log_path)
        if result.finished_at is None:
            result.finished_at = utc_now()
        await self._db.call(self._db.store.finish, self.run_id, result)
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
