"""One run: a set of claimed workstreams, started in the order the scheduler picks.

A dispatcher loop starts the jobs whose dependencies are done, highest priority and longest
critical path first (`scheduling`), while the run's share of the bound (lowered while rate limits
come) and the repository's slots (leases in the database, shared by every aidp process) allow.
Each attempt spawns its harness in its own process group (and cgroup), waits for it (or for
cancel/timeout, which end the whole tree), and then either records the result or, by the failure
policy, queues another attempt after a back-off. A failure can halt the run (`--halt`).

Output is never piped through Python: the child writes into its log file, and a ticker reads the
new bytes ten times a second as a bounded live view (`LogTail`).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import heapq
import logging
import math
import os
import re
import signal
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import msgspec

from aidp.engine import cgroups, gitrepo, procs, review, sandbox, scheduling
from aidp.engine.backend import Attempt, Backend, Launch, LocalBackend, commit_message
from aidp.engine.config import Sandbox
from aidp.engine.errors import AidpError, GitError
from aidp.engine.events import EventBus, OutputChunk, RunProgress, StatusChanged
from aidp.engine.harness import (
    StartError,
    build_argv,
    build_env,
    check_program,
    open_making_folder,
    write_task_file,
)
from aidp.engine.model import DONE_STATUSES, RunSummary, Status, Workstream, WorkstreamResult, utc_now
from aidp.engine.progress import StreamJson, Tracker, is_stream_json
from aidp.engine.store import AsyncStore, StartRecord, Successor

TICK_S = 0.1
CANCEL_POLL_TICKS = 5  # also how often (in ticks) the harnesses' memory and CPU are sampled
CHUNK_MAX = 64 * 1024
TAIL_LINES = 8
RECORD_RETRY_S = (0.1, 0.5, 1.0)  # then the result is recorded `error`, or kept for later
STATE_TTL_S = 0.2  # statuses and priorities of other workstreams are read at most this often
ETA_EVERY_S = 0.5  # the forecast is recomputed at most this often
RATE_LIMIT_RECOVER_S = 60.0
RATE_LIMIT_SCAN = 64 * 1024  # how much of an attempt's last output `rate_limit_pattern` is matched on

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


def _never_started(job: Job) -> str:
    """Why a job cancelled before its harness ran ends so (a retry: before which attempt)."""
    return f"{job.why_cancelled} before " + ("it started" if job.attempt == 1 else f"attempt {job.attempt}")


def _describe_exit(code: int | None) -> str:
    if code is None or code >= 0:
        return f"exit code {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


@dataclass(frozen=True)
class FailurePolicy:
    """What happens after an attempt fails (`[harness]` retries, rate limits and halt)."""

    retries: int = 0
    retry_on_exit: tuple[int, ...] = ()  # empty: any non-zero exit
    retry_on_timeout: bool = False
    backoff_s: float = 1.0
    rate_limit_exit: tuple[int, ...] = ()
    rate_limit_pattern: re.Pattern[str] | None = None
    rate_limit_retries: int = 10
    recover_s: float = RATE_LIMIT_RECOVER_S  # a clean stretch this long raises the bound by one again
    halt: str = "never"  # never | soon | now


@dataclass(frozen=True)
class RunOptions:
    max_concurrent: int  # this run's share: at most the repository's bound
    mode: str
    steps: list[str] | None
    timeout_s: float | None
    grace_s: float
    env: dict[str, str]
    default_command: list[str] | None
    commit: str = "never"  # [harness] commit: never | on-success | always
    stdin: str = "none"  # [harness] stdin: none (/dev/null) | task (the task file)
    repo_bound: int | None = None  # across every aidp process of the repository (None: this run's share)
    policy: FailurePolicy = field(default_factory=FailurePolicy)
    base_from_deps: bool = False
    expected: dict[str, float | None] = field(default_factory=dict)  # slug -> seconds, from history
    concurrency_note: str | None = None  # how the bound was chosen, for the summary
    sandbox: Sandbox = field(default_factory=Sandbox)
    backend: Backend = field(default_factory=LocalBackend)  # where each attempt's harness runs


class State(Enum):
    PENDING = "pending"  # waiting to start (first attempt or a retry)
    RUNNING = "running"
    DONE = "done"


class Flag(asyncio.Event):
    """An `asyncio.Event` that also calls back when set, so that a harness's wait ends at its
    exit or its cancel without a task waiting on each (with `asyncio.wait`, 7 of the 26 loop
    callbacks a workstream cost, bench: overhead)."""

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: list[Callable[[], object]] = []

    def set(self) -> None:
        super().set()
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def call_when_set(self, callback: Callable[[], object]) -> None:
        self._callbacks.append(callback)

    def forget(self, callback: Callable[[], object]) -> None:
        with contextlib.suppress(ValueError):
            self._callbacks.remove(callback)


async def _until(future: asyncio.Future[Any], flag: Flag, timeout_s: float | None) -> None:
    """Until `future` is done, `flag` is set or `timeout_s` has passed. `future` is shared (a
    harness's exit): neither this nor its cancellation cancels it."""
    loop = asyncio.get_running_loop()
    woken: asyncio.Future[None] = loop.create_future()

    def wake(*_: object) -> None:
        if not woken.done():
            woken.set_result(None)

    future.add_done_callback(wake)
    flag.call_when_set(wake)
    timer = None if timeout_s is None else loop.call_later(timeout_s, wake)
    if future.done() or flag.is_set():
        wake()
    try:
        await woken
    finally:
        future.remove_done_callback(wake)
        flag.forget(wake)
        if timer is not None:
            timer.cancel()


@dataclass(frozen=True)
class _Plan:
    """How an attempt starts, decided before anything of it exists: its placeholders' values, its
    files, its environment, when it started, and where its harness will be (`recorded_before`)."""

    template: list[str]
    values: dict[str, str]
    log_path: Path
    progress_path: Path
    env: dict[str, str]
    started_at: str
    place: Path | None
    attempt: int

    def record(self) -> StartRecord:
        """The start as the database keeps it, where its place is known."""
        return StartRecord(str(self.log_path), self.started_at, self.attempt, self.template, cgroup=str(self.place))


@dataclass(eq=False)
class Job:
    ws: Workstream
    cancel: Flag = field(default_factory=Flag)
    tail: LogTail | None = None
    result: WorkstreamResult | None = None
    state: State = State.PENDING
    attempt: int = 1
    max_attempts: int = 1
    rate_limited: int = 0  # attempts that hit a rate limit (retried without counting against `retries`)
    not_before: float = 0.0  # monotonic time before which a retry must not start
    waiting: str | None = None  # what it waits for, as last recorded
    slot_reason: str | None = None  # slots held by other aidp processes
    backoff_reason: str | None = None  # a retry's back-off
    started: float = 0.0  # monotonic start of the current attempt
    why_cancelled: str = "cancelled"
    timed_out: bool = False
    box: sandbox.Box | None = None  # set while its worktree is prepared for a sandboxed attempt
    tree: procs.Tree | None = None
    peak_rss_kb: int | None = None
    cpu_s: float | None = None
    tracker: Tracker | None = None  # while an attempt runs: its progress reports
    started_at: str | None = None  # when the current attempt's harness started
    host: str | None = None  # the machine the current attempt's harness runs on; None: this one
    recorded: _Plan | None = None  # its next start, recorded already with the slot it took (`_finish`)


class Run:
    """The scheduler of one run: it starts the jobs whose dependencies are done, in priority and
    critical-path order, while this run's share and the repository's slots allow, and decides what
    follows each attempt (a retry after a back-off, a slower pace after a rate limit, a halt)."""

    def __init__(
        self,
        run_id: str,
        workstreams: list[Workstream],
        options: RunOptions,
        db: AsyncStore,
        bus: EventBus,
        logs_dir: Path,
        reclaim: Callable[[], Awaitable[object]] | None = None,
        root: Path | None = None,
        outside: Mapping[str, Workstream] | None = None,
    ) -> None:
        """`reclaim` frees the slots of dead aidp processes (the engine's `recover`); `root` and
        `outside` (dependencies not in this run) are what `base_from_deps` starts from."""
        self.run_id = run_id
        self.jobs = {ws.slug: Job(ws, max_attempts=options.policy.retries + 1) for ws in workstreams}
        self.options = options
        self._db = db
        self._bus = bus
        self._logs_dir = logs_dir
        self._reclaim = reclaim
        self._root = root
        self._outside = dict(outside or {})
        self._hurry = asyncio.Event()
        self._wake = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._index = {slug: i for i, slug in enumerate(self.jobs)}
        self._graph = {ws.slug: list(ws.after) for ws in workstreams}
        self._has_history = any(options.expected.get(slug) is not None for slug in self.jobs)
        self._expected = scheduling.with_fallback({slug: options.expected.get(slug) for slug in self.jobs})
        self._levels = scheduling.bottom_levels(self._graph, self._expected)
        self.limit = options.max_concurrent  # lowered while rate limits come, raised again after
        self._calm_since = time.monotonic()
        self._halted: str | None = None  # why nothing more starts
        self._known: dict[str, tuple[Status, int]] = {}  # status and priority, read at most every STATE_TTL_S
        self._known_at = -math.inf
        self._keys: dict[str, tuple[int, float, int]] = {}  # `_key`s, valid until a priority read differs
        self._slots_said: list[Job] = []  # jobs whose `slot_reason` is set
        self._slots_changed: list[Job] = []  # jobs whose `slot_reason` changed in this pass
        # A pass runs at every end, so it must not look at every pending job: at 500 that made the
        # run's cost grow with the square of its size (bench: overhead). Pending jobs are kept apart
        # (`_set_state`); a plain one (no dependency, no setup to wait for) changes only when it is
        # cancelled, the run halts, or it starts, so a pass looks at the conditional ones and takes
        # plain ones from `_queue`, in their order, only as many as may start.
        self._pending: dict[str, Job] = dict(self.jobs)  # not started yet, or queued again (run order)
        self._conditional = {s: j for s, j in self.jobs.items() if j.ws.after or _setup_blocks(j.ws)}
        self._queue: list[Job] = []  # the plain pending jobs by order key (`_key`), when not stale
        self._queue_stale = True
        self._look_at_all = True  # a cancel since the last pass: every pending job is looked at
        self._backing_off: set[str] = set()  # pending retries (their `not_before` is a deadline)
        self._done = 0  # jobs with a result
        self._changes = -1  # `schedule_changes` when they were read
        self._taking = False  # a pass waits for the slots of jobs it picked (`_start_ready`)
        self._progress: tuple[object, ...] = ()
        self._eta: float | None = None  # the last forecast, made at most every ETA_EVERY_S
        self._eta_at = -math.inf
        self.note: str | None = None
        self.pulled_in: list[str] = []  # dependencies the engine added to the run (to say so)
        self.unrecorded: list[WorkstreamResult] = []  # results the database refused (see _store_result)
        self._programs_found: set[tuple[str, str | None, str | None]] = set()  # see _look_for_program

    def cancel(self, slugs: list[str] | None = None, hard: bool = False, why: str = "cancelled") -> list[str]:
        """Cancel some or all workstreams of this run; returns those that had not yet ended.
        `hard`: SIGKILL now, without waiting out the grace period (a second Ctrl-C)."""
        targets = [j for s, j in self.jobs.items() if slugs is None or s in slugs]
        hit = [j.ws.slug for j in targets if j.result is None and not j.cancel.is_set()]
        for job in targets:
            if not job.cancel.is_set():
                job.why_cancelled = why
            job.cancel.set()
        self._look_at_all = True
        if hard:
            self._hurry.set()
        self._wake.set()
        return hit

    def reprioritized(self) -> None:
        """Priorities or statuses changed in this process: read them afresh at the next pick."""
        self._known_at = -math.inf
        self._wake.set()

    async def execute(self) -> RunSummary:
        """Run every job; if this task is cancelled, cancel the jobs, wait until each has been
        ended and recorded, and only then let the cancellation through."""
        started = time.monotonic()
        forecast = self._forecast()
        ticker = asyncio.create_task(self._tick(), name=f"aidp-ticker-{self.run_id}")
        try:
            await self._dispatch()
        except asyncio.CancelledError:
            self.cancel()
            await self._drain()
            raise
        finally:
            ticker.cancel()
        results = [job.result for job in self.jobs.values() if job.result is not None]
        return RunSummary.of(
            self.run_id,
            results,
            time.monotonic() - started,
            concurrency=self.options.max_concurrent,
            concurrency_note=self.options.concurrency_note,
            forecast_s=None if forecast is None else round(forecast, 1),
            pulled_in=self.pulled_in,
        )

    async def _drain(self) -> None:
        """After a cancel: record what never started, wait for what runs to be ended and recorded."""
        while any(job.result is None for job in self.jobs.values()):
            await self._conclude_unstartable(everything=True)
            if self._tasks:
                await asyncio.wait(set(self._tasks.values()))

    # -- choosing what starts ----------------------------------------------------------------

    async def _dispatch(self) -> None:
        while True:
            self._wake.clear()  # before looking: what happens from here on wakes the wait below
            await self._conclude_unstartable()
            if not self._pending and not self._tasks:
                self._report_progress()  # the last word: every job done (viewers wait for done == total)
                return
            now = time.monotonic()
            self._recover_pace(now)
            poll = await self._start_ready(now)
            await self._report_waiting()
            self._report_progress()
            backoffs = [d - now for s in self._backing_off if (d := self.jobs[s].not_before) > now]
            timeouts = [*backoffs, *([TICK_S] if poll else []), *([self._pace_left(now)] if self._slowed else [])]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, min(timeouts)) if timeouts else None)

    async def _read_known(self, order_matters: bool = False) -> None:
        """Statuses and priorities as they are now (other processes change them too), read at most
        every STATE_TTL_S; and when the order matters (more are ready than may start), whenever a
        priority was set since: a priority set while a run goes counts at its next pick."""
        now = time.monotonic()
        if now - self._known_at < STATE_TTL_S:
            if not order_matters:
                return
            changes = await self._db.call(self._db.store.schedule_changes)
            if changes == self._changes:
                return
        outside = {d for j in self._conditional.values() for d in j.ws.after if d not in self.jobs}
        self._changes = await self._db.call(self._db.store.schedule_changes)
        before = self._known
        self._known = await self._db.call(self._db.store.schedule_state, [*self._pending, *outside])
        self._known_at = now
        if any(before.get(s, _UNKNOWN)[1] != self._known.get(s, _UNKNOWN)[1] for s in self._pending):
            self._keys.clear()  # the order changes only with a priority (statuses change all the time)
            self._queue_stale = True

    def _deps_waiting(self, job: Job) -> list[str]:
        """The dependencies not done yet (in this run, or elsewhere: another run, an earlier one)."""
        waiting = []
        for dep in job.ws.after:
            inside = self.jobs.get(dep)
            if inside is not None:
                done = inside.result is not None and inside.result.status == Status.COMPLETED
            else:
                done = dep in self._known and self._known[dep][0] in DONE_STATUSES
            if not done:
                waiting.append(dep)
        return waiting

    def _blocker(self, job: Job) -> str | None:
        """Why `job` can never start in this run: its setup failed (or still runs), or a dependency
        ended otherwise than done."""
        if job.ws.setup is not None and (why := job.ws.setup.blocker(job.ws.slug)) is not None:
            return f"blocked: {why}"
        for dep in job.ws.after:
            inside = self.jobs.get(dep)
            if inside is not None and inside.result is not None and inside.result.status != Status.COMPLETED:
                return f"blocked: its dependency {dep} {inside.result.status}"
            if inside is None and dep in self._known:
                status = self._known[dep][0]
                if status not in DONE_STATUSES and not status.in_flight:
                    return f"blocked: its dependency {dep} is {status} (not in this run)"
            if inside is None and dep not in self._known and self._known_at > -math.inf:
                return f"blocked: its dependency {dep} no longer exists"
        return None

    async def _conclude_unstartable(self, everything: bool = False) -> None:
        """End the pending jobs that will never start: cancelled, halted, or blocked. A plain job
        can only be cancelled or halted, so it is looked at only after a cancel or once halted."""
        everything = everything or self._look_at_all or self._halted is not None
        self._look_at_all = False  # (before the awaits below: a cancel meanwhile is looked at next)
        for job in list((self._pending if everything else self._conditional).values()):
            if job.cancel.is_set():
                await self._end(job, Status.CANCELLED, _never_started(job))
            elif self._halted is not None:
                await self._end(job, Status.CANCELLED, f"not started: {self._halted}")
            elif (blocker := self._blocker(job)) is not None:
                await self._end(job, Status.BLOCKED, blocker)

    async def _end(self, job: Job, status: Status, why: str) -> None:
        self._set_state(job, State.DONE)
        await self._finish(job, WorkstreamResult(slug=job.ws.slug, status=status, error=why, attempt=job.attempt))

    def _set_state(self, job: Job, state: State) -> None:
        """Every change of a job's state goes through here, which keeps the pending jobs apart."""
        job.state, slug = state, job.ws.slug
        if state is not State.PENDING:
            self._pending.pop(slug, None)
            self._conditional.pop(slug, None)
            self._backing_off.discard(slug)
            return
        # Queued again (a retry, rare): in the run's order, as at the start.
        self._pending = {s: j for s, j in self.jobs.items() if j.state is State.PENDING}
        if job.ws.after or _setup_blocks(job.ws):
            self._conditional = {s: j for s, j in self._pending.items() if j.ws.after or _setup_blocks(j.ws)}
        self._queue_stale = True
        self._backing_off.add(slug)

    def _key(self, slug: str) -> tuple[int, float, int]:
        """Kept until a priority read differs from the one before: the plain jobs' queue is sorted by it."""
        key = self._keys.get(slug)
        if key is None:
            priority = self._known.get(slug, (Status.QUEUED, self.jobs[slug].ws.priority))[1]
            key = self._keys[slug] = scheduling.order_key(priority, self._levels.get(slug, 0.0), self._index[slug])
        return key

    async def _start_ready(self, now: float) -> bool:
        """Start what may start now; True when something waits on other processes (poll again soon)."""
        free = self.limit - len(self._tasks)
        if not self._pending or free <= 0:
            return False
        await self._read_known()
        conditional, outside = [], False
        for job in self._conditional.values():
            deps = self._deps_waiting(job)
            if deps:
                outside = outside or any(d not in self.jobs for d in deps)
            elif job.not_before <= now:
                conditional.append(job)
        plain = self._first_plain(free + 1, now)  # one more than may start: whether the order matters
        if len(conditional) + len(plain) > free:
            await self._read_known(order_matters=True)
            plain = self._first_plain(free + 1, now)  # (the same, unless priorities were read again)
        ready = conditional + plain
        if not ready:
            return outside
        for job in self._slots_said:
            job.slot_reason = None  # said again below while other processes still hold the slots
        self._slots_changed += self._slots_said
        self._slots_said = []
        # Only the first `free` start: picking them is linear in the candidates, sorting them is not.
        first = heapq.nsmallest(free, ready, key=lambda j: self._key(j.ws.slug))
        wanted = [j.ws.slug for j in first]
        self._taking = True  # these are still pending: no `_successor` may pick one meanwhile
        try:
            taken = await self._take_slots(wanted)
        finally:
            self._taking = False
        for slug in taken:
            if self._still_startable(self.jobs[slug]):
                self._launch(self.jobs[slug])
        if len(taken) < len(wanted):  # every ready job waits for a slot: each is told so
            every_plain = [j for s, j in self._pending.items() if s not in self._conditional and j.not_before <= now]
            await self._say_slots_held([j for j in conditional + every_plain if j.ws.slug not in taken])
            return True
        return outside

    def _first_plain(self, n: int, now: float) -> list[Job]:
        """The first `n` plain pending jobs that may start now, in their order: the queue is sorted
        again only when priorities were read again or a job was queued again, and what started or
        ended is dropped from its front as it goes."""
        if self._queue_stale:
            plain = [j for s, j in self._pending.items() if s not in self._conditional]
            self._queue, self._queue_stale = sorted(plain, key=lambda j: self._key(j.ws.slug)), False
        queue = self._queue
        gone = 0
        while gone < len(queue) and queue[gone].state is not State.PENDING:
            gone += 1
        del queue[:gone]
        found = []
        for job in queue:
            if job.state is State.PENDING and job.not_before <= now:
                found.append(job)
                if len(found) == n:
                    break
        return found

    async def _take_slots(self, slugs: list[str]) -> list[str]:
        """Slots of the repository's bound, for as many of `slugs` (in order) as are free."""
        bound = self.options.repo_bound
        if bound is None:
            return slugs
        taken = await self._db.write(self._db.store.take_slots, self.run_id, slugs, bound)
        if len(taken) < len(slugs) and self._reclaim is not None:
            await self._reclaim()  # a dead process's slots come back once its claims are corrected
            taken += await self._db.write(self._db.store.take_slots, self.run_id, slugs[len(taken) :], bound)
        return taken

    async def _say_slots_held(self, jobs: list[Job]) -> None:
        holders = await self._db.call(self._db.store.slot_holders)
        others = [h for h in holders if h.run_id != self.run_id]
        if not others:
            return
        pids = ", ".join(sorted({str(h.owner_pid) for h in others}))
        why = (
            f"waiting for a slot: {len(holders)} of the repository's {self.options.repo_bound} are taken, "
            f"{len(others)} by other aidp processes (pid {pids})"
        )
        for job in jobs:
            job.slot_reason = why
        self._slots_said += jobs
        self._slots_changed += jobs

    def _still_startable(self, job: Job) -> bool:
        """After the round trip that took its slot: halted or cancelled meanwhile, it stays
        pending, and the next pass ends it (and releases its claim, the slot with it)."""
        return self._halted is None and not job.cancel.is_set()

    def _launch(self, job: Job) -> None:
        self._set_state(job, State.RUNNING)
        job.slot_reason = None
        task = asyncio.create_task(self._attempt(job), name=f"aidp-{self.run_id}-{job.ws.slug}-{job.attempt}")
        self._tasks[job.ws.slug] = task
        task.add_done_callback(lambda _: self._attempt_ended(job))

    def _attempt_ended(self, job: Job) -> None:
        self._tasks.pop(job.ws.slug, None)
        self._wake.set()

    def _successor(self, job: Job, result: WorkstreamResult) -> Job | None:
        """The job the next pass would start in the slot `job` frees, when only the order could
        make it another: it takes the slot in the transaction that records `job`'s end, which
        checks the order too (`Store.finish`). A pass after the end took two round trips to the
        database (a read of the order's change count, a write to take the slot) while the slot
        stood idle: 10-15% of a run of 500 harnesses that do nothing (bench: overhead). Out of
        the queue from here on, so that no pass starts it too (`_finish` puts it back if it got
        no slot)."""
        if (
            job.ws.slug not in self._tasks  # it never ran: it holds no slot
            or len(self._tasks) > self.limit  # the share was lowered (a rate limit)
            or self._halts_on(result)
            or self._halted is not None
            or self._look_at_all  # a cancel the next pass must look at first
            or self._conditional  # a dependency or setup: only a pass knows what may start
            or self._changes < 0  # the order was never read
            or self._taking  # a pass picked jobs, still pending, and waits for their slots
        ):
            return None
        found = self._first_plain(1, time.monotonic())
        if not found or not self._still_startable(found[0]):
            return None
        self._set_state(found[0], State.RUNNING)
        return found[0]

    async def _report_waiting(self) -> None:
        """Record and announce what queued jobs wait for, when that changed (a few writes per job).
        A plain job's reason changes only with its slot's (a retry records its back-off itself)."""
        changed = {}
        touched, self._slots_changed = self._slots_changed, []
        for job in [*self._conditional.values(), *touched]:
            if job.state is not State.PENDING:
                continue
            deps = self._deps_waiting(job)
            why = job.slot_reason or (f"waiting for {', '.join(deps)}" if deps else job.backoff_reason)
            if why != job.waiting:
                job.waiting = changed[job.ws.slug] = why
        if not changed:
            return
        await self._db.write(self._db.store.set_waiting, self.run_id, changed)
        for slug, why in changed.items():
            job = self.jobs[slug]
            self._bus.emit(
                StatusChanged(
                    run_id=self.run_id,
                    slug=slug,
                    status=Status.QUEUED,
                    waiting=why,
                    attempt=job.attempt,
                    max_attempts=job.max_attempts,
                )
            )

    # -- pace: rate limits lower it, a calm stretch raises it again ----------------------------

    @property
    def _slowed(self) -> bool:
        return self.limit < self.options.max_concurrent

    def _pace_left(self, now: float) -> float:
        return self.options.policy.recover_s - (now - self._calm_since)

    def _slow_down(self, slug: str) -> None:
        old, self.limit = self.limit, max(1, self.limit // 2)
        self._calm_since = time.monotonic()
        self.note = f"rate limited ({slug}): concurrency {old} -> {self.limit}"
        log.info("%s", self.note)

    def _recover_pace(self, now: float) -> None:
        if self._slowed and self._pace_left(now) <= 0:
            self.limit += 1
            self._calm_since = now
            self.note = f"no rate limit for {self.options.policy.recover_s:g} s: concurrency back up to {self.limit}"
            log.info("%s", self.note)

    # -- how far it is ---------------------------------------------------------------------------

    def _forecast(self) -> float | None:
        """Seconds until the run ends if each job takes its expected time (None without history)."""
        if not self._has_history:
            return None
        now = time.monotonic()
        pending = {s: self._expected[s] for s, j in self.jobs.items() if j.state is State.PENDING}
        running = {s: max(0.0, self._expected[s] - (now - self.jobs[s].started)) for s in self._tasks}
        return scheduling.forecast(pending, running, self._graph, max(1, self.limit), self._key)

    def _report_progress(self) -> None:
        """A `RunProgress` when the counts, the pace or (at most every ETA_EVERY_S) the forecast changed."""
        done = self._done
        counts = (done, len(self._tasks), self.limit, self.note)
        now = time.monotonic()
        stale = now - self._eta_at >= ETA_EVERY_S or done == len(self.jobs)
        if counts == self._progress and not stale:
            return
        self._progress = counts
        if stale:
            self._eta, self._eta_at = self._forecast(), now
        eta = self._eta
        self._bus.emit(
            RunProgress(
                run_id=self.run_id,
                total=len(self.jobs),
                done=done,
                running=len(self._tasks),
                eta_s=None if eta is None else round(eta, 1),
                concurrency=self.limit,
                note=self.note,
            )
        )

    # -- the ticker --------------------------------------------------------------------------

    async def _tick(self) -> None:
        """Live output for every running job, cancel requests made by other processes, and what
        the harnesses use (sampled from /proc). One job's fault (a vanished log, a busy database)
        must never stop this for the others."""
        ticks = 0
        while True:
            await asyncio.sleep(TICK_S)
            for job in self.jobs.values():
                try:
                    self._flush_output(job)
                except OSError as exc:
                    log.warning("%s: cannot read its log for live output: %s", job.ws.slug, exc)
            await self._report_harness_progress()
            ticks += 1
            if ticks % CANCEL_POLL_TICKS == 0:
                try:
                    if asked := await self._db.call(self._db.store.cancel_requests, self.run_id):
                        self.cancel(asked)  # (none asked: no pass to wake)
                except sqlite3.Error as exc:
                    log.warning("cannot read cancel requests (will retry): %s", exc)
                await self._sample()
                if self._tasks:
                    self._report_progress()

    async def _sample(self) -> None:
        running = [(j, j.tree) for j in self.jobs.values() if j.tree is not None]
        if not running:
            return
        usages = await asyncio.to_thread(lambda: [procs.usage(tree) for _, tree in running])
        for (job, _), (rss_kb, cpu_s) in zip(running, usages, strict=True):
            job.peak_rss_kb = max(job.peak_rss_kb or 0, rss_kb) or None
            job.cpu_s = max(job.cpu_s or 0.0, cpu_s)

    def _flush_output(self, job: Job) -> None:
        if job.tail is None:
            return
        skipped, text = job.tail.read()
        if skipped or text:
            self._bus.emit(OutputChunk(run_id=self.run_id, slug=job.ws.slug, text=text, skipped=skipped))
            if job.tracker is not None:
                job.tracker.output(text, skipped)

    async def _report_harness_progress(self) -> None:
        """Read each running harness's progress reports; announce what changed (a `running`
        StatusChanged again, with its progress) and store it for other processes' viewers."""
        stored = {}
        for job in self.jobs.values():
            tracker = job.tracker
            if tracker is None:
                continue
            try:
                tracker.poll()
            except OSError as exc:
                log.warning("%s: cannot read its progress reports: %s", job.ws.slug, exc)
                continue
            if (latest := tracker.to_emit()) is not None:
                self._bus.emit(
                    StatusChanged(
                        run_id=self.run_id,
                        slug=job.ws.slug,
                        status=Status.RUNNING,
                        started_at=job.started_at,
                        attempt=job.attempt,
                        max_attempts=job.max_attempts,
                        progress=latest,
                        host=job.host,
                    )
                )
            if (latest := tracker.to_store()) is not None:
                stored[job.ws.slug] = latest
        if stored:
            try:
                await self._db.write(self._db.store.set_progress, self.run_id, stored)
            except sqlite3.Error as exc:  # a view of the run, not its record: the next change tries again
                log.warning("cannot record progress: %s", exc)

    def _watch_progress(self, job: Job, path: Path, argv: list[str]) -> None:
        """Follow the attempt's progress file and, for a stream-json agent, its events."""
        stream = StreamJson(job.ws.path) if is_stream_json(argv) else None
        job.tracker = Tracker(path, self.options.steps, stream)

    @staticmethod
    def _stop_watching_progress(job: Job, log_path: Path) -> None:
        """Malformed reports are said once, in the log, when the attempt ends."""
        if job.tracker is None:
            return
        malformed, job.tracker = job.tracker.close(), None
        if malformed:
            note = (
                f"[aidp] ignored {malformed} malformed progress report(s) in $AIDP_PROGRESS "
                "(each line must be a JSON object: percent 0-100, step, message)\n"
            )
            with contextlib.suppress(OSError), log_path.open("a", encoding="utf-8") as f:
                f.write(note)

    async def _attempt(self, job: Job) -> None:
        """One attempt of one job; what follows it (a retry, a halt) is decided in `_conclude`.
        A fault of aidp's own (a bug, I/O) ends only this workstream, `error`, saying so."""
        try:
            await self._run_attempt(job)
        except Exception as exc:
            log.exception("%s: aidp failed while running it", job.ws.slug)
            if job.result is None:
                self._set_state(job, State.DONE)
                error = f"aidp failed while running it: {type(exc).__name__}: {exc}"
                await self._finish(job, WorkstreamResult(slug=job.ws.slug, status=Status.ERROR, error=error))

    def _plan(self, job: Job, template: list[str]) -> _Plan:
        ws = job.ws
        values = {
            "slug": ws.slug,
            "task": ws.task,
            "mode": self.options.mode,
            "steps": ",".join(self.options.steps or []),
            "branch": ws.branch,
            "worktree": ws.path,
        }
        name = f"{self.run_id}.log" if job.attempt == 1 else f"{self.run_id}.{job.attempt}.log"
        log_path = self._logs_dir / ws.slug / name
        values["task_file"] = str(log_path.with_suffix(".task"))  # the task, whole, kept beside the log
        progress_path = log_path.with_suffix(".progress")  # the harness's $AIDP_PROGRESS, beside its log
        env = {**build_env(self.options.env, values, self.run_id), "AIDP_PROGRESS": str(progress_path)}
        place = self.options.backend.recorded_before(self.run_id, ws.slug, job.attempt)
        return _Plan(template, values, log_path, progress_path, env, utc_now(), place, job.attempt)

    def _start_to_record(self, job: Job) -> _Plan | None:
        """`job`'s start, when the end that frees its slot can record it too (`Store.finish`),
        saving the round trip `mark_running` takes before every start: a plain start on this
        machine, unsandboxed, its program found (a start recorded first would say `running` before
        a missing program's error)."""
        template = job.ws.command or self.options.default_command
        if not template or self.options.sandbox.kind != "none" or (self.options.base_from_deps and job.ws.after):
            return None
        try:
            plan = self._plan(job, template)
            if plan.place is not None:
                self._look_for_program(build_argv(template[:1], plan.values)[0], Path(job.ws.path), plan.env)
                return plan
        except (StartError, ValueError):  # said by the attempt itself, which plans again
            pass
        return None

    async def _run_attempt(self, job: Job) -> None:
        ws = job.ws
        job.started, job.timed_out, job.peak_rss_kb, job.cpu_s = time.monotonic(), False, None, None
        recorded, job.recorded = job.recorded, None
        template = ws.command or self.options.default_command
        if not template:
            await self._conclude(job, self._result(job, Status.ERROR, NO_COMMAND))
            return
        if job.attempt == 1 and self.options.base_from_deps and ws.after:
            try:
                await self._start_from_deps(job)
            except (AidpError, OSError) as exc:
                await self._conclude(job, self._result(job, Status.ERROR, str(exc)))
                return
        plan = recorded or self._plan(job, template)
        values, log_path, progress_path, env = plan.values, plan.log_path, plan.progress_path, plan.env
        started_at, t0 = plan.started_at, time.monotonic()
        try:
            os.close(open_making_folder(progress_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC))
            log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            error = f"cannot write its log {log_path}: {exc.strerror or exc}"
            await self._conclude(job, self._result(job, Status.ERROR, error, started_at))
            return
        place = plan.place

        async def mark_running(child: tuple[int | None, int | None, Path | None], host: str | None) -> bool:
            """False: a cancel was asked meanwhile (by another process: the ticker reads those
            requests only every few ticks), so it must not run."""
            record, log = self._db.store.mark_running, str(log_path)
            started = await self._db.write(
                record, self.run_id, ws.slug, child, log, started_at, job.attempt, template, host
            )
            if not started:
                self.cancel([ws.slug])
            return started

        try:
            task_file = write_task_file(Path(values["task_file"]), ws.task)  # before the sandbox binds it
            if self._root is not None:
                job.box = await sandbox.prepare(
                    self.options.sandbox, Path(ws.path), ws.branch, env, self._root, [progress_path, task_file]
                )
            if place is not None and recorded is None:  # where it will be is all a recovery needs: recorded first
                self._look_for_program(build_argv(template[:1], values)[0], Path(ws.path), env)
                try:
                    started = await mark_running((None, None, place), None)
                except (OSError, sqlite3.Error) as exc:
                    raise StartError(f"aidp could not record its start, so it did not run: {exc}") from exc
                if not started:
                    raise StartError(_never_started(job))
            attempt = await self._start(job, template, values, env, log_fd, log_path)
        except StartError as exc:
            with contextlib.suppress(OSError):
                os.write(log_fd, f"[aidp] {exc}\n".encode())
            if job.cancel.is_set():  # cancelled while a backend waited for a place, or as it was recorded
                result = self._result(job, Status.CANCELLED, _never_started(job), started_at)
            else:
                result = self._result(job, Status.ERROR, str(exc), started_at)
            await self._conclude(job, result, log_path)
            return
        finally:
            os.close(log_fd)
        try:
            job.tail = LogTail(log_path)
            job.tree, job.host = attempt.tree, attempt.host
            job.started_at = started_at
            self._watch_progress(job, progress_path, template)
            if attempt.gated:  # its pid (and node) is how a recovery finds it: recorded, then it runs
                if not await mark_running(attempt.child, attempt.host):
                    await attempt.kill()  # still at its gate: it never ran
                    never = _never_started(job)
                    await self._record(job, attempt.returncode, Status.CANCELLED, never, started_at, t0, log_path)
                    return
                attempt.go()
            self._bus.emit(
                StatusChanged(
                    run_id=self.run_id,
                    slug=ws.slug,
                    status=Status.RUNNING,
                    started_at=started_at,
                    attempt=job.attempt,
                    max_attempts=job.max_attempts,
                    host=attempt.host,
                )
            )
            status, why = await self._wait(job, attempt)
        except asyncio.CancelledError:
            await attempt.kill()
            await self._record(
                job, attempt.returncode, Status.CANCELLED, "cancelled (aidp was stopped)", started_at, t0, log_path
            )
            raise
        except (OSError, sqlite3.Error) as exc:  # the start could not be recorded: nothing runs unrecorded
            await attempt.kill()
            why = f"aidp could not record its start: {exc}"
            await self._record(job, attempt.returncode, Status.ERROR, why, started_at, t0, log_path)
            return
        # A remote attempt commits where it ran, and its commits come back.
        if attempt.host is None and not await self._auto_commit(job, status):
            status, why = Status.CANCELLED, f"{job.why_cancelled} during its auto-commit (a git hook held it)"
        status, why = await self._bring_back(job, attempt, status, why)
        await self._record(job, attempt.returncode, status, why, started_at, t0, log_path)

    def _look_for_program(self, program: str, cwd: Path, env: Mapping[str, str]) -> None:
        """A start recorded before the spawn would say `running` before a missing program's
        error, so the program is looked for first: once a run for each program and PATH (a
        search per start was 5% of it, bench: overhead), and in the worktree for a relative one."""
        key = (program, env.get("PATH"), str(cwd) if "/" in program and not os.path.isabs(program) else None)
        if key not in self._programs_found:
            check_program(program, cwd, env)
            self._programs_found.add(key)

    async def _start_from_deps(self, job: Job) -> None:
        """`--base-from-deps`: the worktree starts from its completed dependencies' work (a landed
        one's work is on the base branch already)."""
        deps = [self.jobs[d].ws if d in self.jobs else self._outside.get(d) for d in job.ws.after]
        found = [d for d in deps if d is not None and self._status_of(d.slug) == Status.COMPLETED]
        if found and self._root is not None:
            message = await review.start_from(self._root, job.ws, found)
            await self._db.call(self._db.store.note, job.ws.slug, self.run_id, Status.QUEUED, message)

    def _status_of(self, slug: str) -> Status | None:
        job = self.jobs.get(slug)
        if job is not None:
            return job.result.status if job.result is not None else None
        return self._known[slug][0] if slug in self._known else None

    @staticmethod
    def _result(job: Job, status: Status, error: str | None, started_at: str | None = None) -> WorkstreamResult:
        return WorkstreamResult(
            slug=job.ws.slug, status=status, error=error, attempt=job.attempt, started_at=started_at
        )

    async def _auto_commit(self, job: Job, status: Status) -> bool:
        """`[harness] commit`: commit what the harness left, as its own event. A failed commit is
        said in the events and changes nothing else: the work stays in the worktree. False when the
        workstream was cancelled meanwhile (`ws cancel`), which ends git and its hooks: a
        repository's `post-commit` hook may never end."""
        if self.options.commit == "never" or (self.options.commit == "on-success" and status != Status.COMPLETED):
            return True
        committing = asyncio.ensure_future(gitrepo.commit_all(Path(job.ws.path), commit_message(job.ws)))
        cancelled = asyncio.ensure_future(job.cancel.wait())
        try:
            await asyncio.wait({committing, cancelled}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cancelled.cancel()
            if not committing.done():
                committing.cancel()
                await asyncio.wait({committing})
        if committing.cancelled():
            return False
        try:
            commit = committing.result()
        except (GitError, OSError) as exc:
            message = f"auto-commit failed: {exc}"
        else:
            if commit is None:
                return True
            message = f"auto-committed {commit[:12]}"
        try:
            await self._db.call(self._db.store.note, job.ws.slug, self.run_id, Status.RUNNING, message)
        except sqlite3.Error as exc:  # the commit is in git either way; the result must still be recorded
            log.warning("%s: %s, but the event could not be recorded: %s", job.ws.slug, message, exc)
        return True

    async def _start(
        self, job: Job, template: list[str], values: dict[str, str], env: dict[str, str], log_fd: int, log_path: Path
    ) -> Attempt:
        """Start the harness through the run's backend; its task file (`AIDP_TASK_FILE`) is its
        stdin with `stdin = "task"`. While a backend waits for a place (a remote slot), the
        workstream stays `queued`, saying what it waits for."""

        async def waiting(why: str) -> None:
            job.waiting = why
            await self._db.write(self._db.store.set_waiting, self.run_id, {job.ws.slug: why})
            self._bus.emit(
                StatusChanged(
                    run_id=self.run_id,
                    slug=job.ws.slug,
                    status=Status.QUEUED,
                    waiting=why,
                    attempt=job.attempt,
                    max_attempts=job.max_attempts,
                )
            )

        launch = Launch(
            run_id=self.run_id,
            slug=job.ws.slug,
            worktree=Path(job.ws.path),
            attempt=job.attempt,
            argv=build_argv(template, values),
            env=env,
            log_fd=log_fd,
            log_path=log_path,
            stdin=Path(env["AIDP_TASK_FILE"]) if self.options.stdin == "task" else None,
            sandbox=job.box.prefix if job.box else (),
            waiting=waiting,
            cancel=job.cancel,
            command=template,
            values=values,
            extra_env=self.options.env,
            grace_s=self.options.grace_s,
            commit=self.options.commit,
            commit_message=commit_message(job.ws),
        )
        return await self.options.backend.start(launch)

    async def _wait(self, job: Job, attempt: Attempt) -> tuple[Status, str | None]:
        """Wait for the harness to exit, be cancelled or time out; afterwards nothing it started
        is left (not even a grandchild that outlived a clean exit, or one that called `setsid`)."""
        exited = attempt.exited
        await _until(exited, job.cancel, self.options.timeout_s)
        why: str | None = None
        if exited.done() and attempt.lost is not None:
            status, why = Status.FAILED, f"remote worker lost: {attempt.lost}"
        elif exited.done():
            status = Status.COMPLETED if attempt.returncode == 0 else Status.FAILED
        elif job.cancel.is_set():
            status, why = Status.CANCELLED, job.why_cancelled
        else:
            job.timed_out = True
            status, why = Status.FAILED, f"timed out after {self.options.timeout_s:g} s"
        tree = attempt.tree
        if tree is not None and tree.cgroup is not None:  # the kernel's count, read before the cgroup goes
            job.cpu_s = cgroups.cpu_s(tree.cgroup) or job.cpu_s
        await attempt.stop(self.options.grace_s, self._hurry)
        await asyncio.shield(exited)
        return status, why

    async def _bring_back(
        self, job: Job, attempt: Attempt, status: Status, why: str | None
    ) -> tuple[Status, str | None]:
        """A remote attempt's commits into the local branch (fast-forward only); a refusal (the
        local branch moved meanwhile) ends it `error`, saying so. Nothing to do for a local one."""
        notes, refused = await attempt.bring_back()
        for note in notes:
            try:
                await self._db.call(self._db.store.note, job.ws.slug, self.run_id, Status.RUNNING, note)
            except sqlite3.Error as exc:  # the work came back either way; the result must still be recorded
                log.warning("%s: %s, but the event could not be recorded: %s", job.ws.slug, note, exc)
        if refused is not None:
            return Status.ERROR, f"{why}; {refused}" if why else refused
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
        if job.tail is not None:
            with contextlib.suppress(OSError):
                self._flush_output(job)
        self._stop_watching_progress(job, log_path)
        if status == Status.FAILED:
            how = _describe_exit(code)
            lines = job.tail.last_lines() if job.tail is not None else ""
            why = f"{why}; {how}" if why else how
            why += f"\n{lines}" if lines else ""
        if job.tail is not None:
            job.tail.close()
            job.tail = None  # the ticker must never read a closed (and maybe reused) descriptor
        job.tree = None
        result = WorkstreamResult(
            slug=job.ws.slug,
            status=status,
            exit_code=code,
            started_at=started_at,
            finished_at=utc_now(),
            duration_s=round(time.monotonic() - t0, 3),
            error=why,
            attempt=job.attempt,
            cpu_s=None if job.cpu_s is None else round(job.cpu_s, 3),
            peak_rss_kb=job.peak_rss_kb,
            host=job.host,
        )
        await self._conclude(job, result, log_path)

    # -- after an attempt: a retry, or the end (and maybe a halt) -------------------------------

    async def _conclude(self, job: Job, result: WorkstreamResult, log_path: Path | None = None) -> None:
        result = await self._leave_sandbox(job, result)
        if log_path is not None:
            result.log_path = str(log_path)
        kind = self._retry_kind(job, result, log_path)
        if kind is not None and await self._queue_retry(job, result, kind):
            return
        self._set_state(job, State.DONE)
        await self._finish(job, result)
        policy = self.options.policy
        if self._halts_on(result) and self._halted is None:
            self._halted = self.note = f"halted after {job.ws.slug} {result.status} (--halt {policy.halt})"
            log.info("%s", self._halted)
            if policy.halt == "now":
                self.cancel(list(self._tasks), why=f"cancelled: {self._halted}")

    def _halts_on(self, result: WorkstreamResult) -> bool:
        """Whether this end halts the run (`--halt soon` or `now`: a failure or an error)."""
        return result.status in (Status.FAILED, Status.ERROR) and self.options.policy.halt != "never"

    def _retry_kind(self, job: Job, result: WorkstreamResult, log_path: Path | None) -> str | None:
        """Why this failed attempt is tried again ("rate limit", "timeout", "retry"), or None."""
        policy = self.options.policy
        if result.status != Status.FAILED or job.cancel.is_set():
            return None
        tries_left = job.attempt - job.rate_limited <= policy.retries
        if job.timed_out:
            return "timeout" if policy.retry_on_timeout and tries_left else None
        code = result.exit_code
        limited = code in policy.rate_limit_exit or self._says_rate_limited(log_path)
        if limited and job.rate_limited < policy.rate_limit_retries:
            return "rate limit"
        if tries_left and (not policy.retry_on_exit or code in policy.retry_on_exit):
            return "retry"
        return None

    def _says_rate_limited(self, log_path: Path | None) -> bool:
        """`rate_limit_pattern` found in the attempt's last RATE_LIMIT_SCAN bytes of output."""
        pattern = self.options.policy.rate_limit_pattern
        if pattern is None or log_path is None:
            return False
        try:
            return pattern.search(read_tail(log_path, RATE_LIMIT_SCAN)) is not None
        except OSError as exc:
            log.warning("cannot read %s for rate limits: %s", log_path, exc)
            return False

    async def _queue_retry(self, job: Job, result: WorkstreamResult, kind: str) -> bool:
        """Record the failed attempt and queue the next after a back-off (the claim stays, the slot
        goes back). False when the database refuses: the attempt's result then stands."""
        if kind == "rate limit":
            job.rate_limited += 1
            job.max_attempts += 1
            self._slow_down(job.ws.slug)
        delay = scheduling.backoff(job.attempt, self.options.policy.backoff_s)
        waiting = f"attempt {job.attempt + 1}/{job.max_attempts} after a {delay:.1f} s back-off ({kind})"
        try:
            await self._db.write(self._db.store.retry, self.run_id, result, waiting)
        except sqlite3.Error as exc:
            log.warning("%s: cannot record attempt %d to retry it: %s", job.ws.slug, job.attempt, exc)
            return False
        job.attempt += 1
        job.not_before = time.monotonic() + delay
        job.waiting, job.backoff_reason = waiting, waiting
        self._set_state(job, State.PENDING)
        self._bus.emit(
            StatusChanged(
                run_id=self.run_id,
                slug=job.ws.slug,
                status=Status.QUEUED,
                exit_code=result.exit_code,
                duration_s=result.duration_s,
                error=result.error,
                attempt=job.attempt,
                max_attempts=job.max_attempts,
                waiting=waiting,
            )
        )
        return True

    async def _finish(self, job: Job, result: WorkstreamResult) -> None:
        """Record the result (durable before anyone is told), release the claim, announce it;
        the job that takes its slot (`_successor`) starts as soon as that is recorded."""
        result = await self._leave_sandbox(job, result)
        if result.finished_at is None:
            result.finished_at = utc_now()
        successor = self._successor(job, result)
        then, plan = None, None
        if successor is not None:
            plan = self._start_to_record(successor)  # recorded with the end too, when it can be
            start = None if plan is None else plan.record()
            then = Successor(successor.ws.slug, self._changes, self.options.repo_bound, start)
        starts = False
        try:
            result, handed = await self._store_result(result, then)
            starts = handed and successor is not None and self._still_startable(successor)
        finally:
            if successor is not None and not starts:
                self._set_state(successor, State.PENDING)  # back in the queue, for the next pass
                self._wake.set()
            elif successor is not None:
                successor.recorded = plan
        if successor is not None and starts:
            self._tasks.pop(job.ws.slug)  # its slot is the successor's (the rest of its task is sync)
            self._launch(successor)
        job.result = result
        self._done += 1
        self._bus.emit(
            StatusChanged(
                run_id=self.run_id,
                slug=result.slug,
                status=result.status,
                exit_code=result.exit_code,
                duration_s=result.duration_s,
                error=result.error,
                attempt=result.attempt,
                max_attempts=job.max_attempts,
                sandbox=result.sandbox,
                host=result.host,
            )
        )

    async def _leave_sandbox(self, job: Job, result: WorkstreamResult) -> WorkstreamResult:
        """A sandboxed attempt committed on a detached HEAD: its branch follows (fast-forward only),
        as an event, before the result is recorded; a refusal is said in the result."""
        box, job.box = job.box, None
        if box is None:
            return result
        result, moved = await sandbox.leave(box, result)
        if moved is not None:
            try:
                await self._db.call(self._db.store.note, job.ws.slug, self.run_id, Status.RUNNING, moved)
            except sqlite3.Error as exc:  # the branch moved either way; the result must still be recorded
                log.warning("%s: %s, but the event could not be recorded: %s", job.ws.slug, moved, exc)
        return result

    async def _store_result(self, result: WorkstreamResult, then: Successor | None) -> tuple[WorkstreamResult, bool]:
        """A database that refuses a write (disk full, I/O error) is retried briefly; then the
        workstream is recorded `error` saying why, a smaller write. If even that fails the result
        is kept in `unrecorded` for the engine to record later: the claim stays held meanwhile,
        so no one starts the workstream again on top of a status nobody could write. Whether
        `then` took the slot: only ever in the first try (meanwhile no pass could take one either,
        a write too)."""
        for delay in (*RECORD_RETRY_S, None):
            try:
                handed = await self._db.write(self._db.store.finish, self.run_id, result, None, then)
                return result, handed
            except sqlite3.Error as exc:
                log.warning("%s: cannot record its result (%s)", result.slug, exc)
                if delay is None:
                    failure = f"aidp could not record its result ({result.status}): {exc}"
                    result = msgspec.structs.replace(result, status=Status.ERROR, error=failure)
                else:
                    await asyncio.sleep(delay)
            then = None
        try:
            await self._db.write(self._db.store.finish, self.run_id, result)
        except sqlite3.Error:
            self.unrecorded.append(result)
        return result, False


_UNKNOWN: tuple[Status | None, int | None] = (None, None)  # a workstream `_known` does not hold


def _setup_blocks(ws: Workstream) -> bool:
    """Whether the workstream's setup keeps it from starting (failed, or still running)."""
    return ws.setup is not None and ws.setup.blocker(ws.slug) is not None


def read_tail(path: Path, limit: int) -> str:
    """The file's last `limit` bytes as text ("" when it does not exist)."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - limit))
            return f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
