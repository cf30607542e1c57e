"""Live output of the runs other aidp processes execute (a CLI run beside a server).

Their harnesses write into log files as ours do, and the runs table says where. A `Follower` reads
each such log with the executor's `LogTail` (bounded reads, skipped bytes counted) and emits the
new text as `OutputChunk` events, so a server's clients see a terminal's run as they see their own.
Their runs' statuses are told the same way, as `StatusSeen` events: each workstream's latest run
event since the last poll (so a harness that started and ended between two polls is told once, as it
ended), and what their owner stores on the claims without an event: a harness's progress (a
`running` status with it) and what a queued run waits for (a `queued` status with `waiting`), each
when it changed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec

from aidp.engine.events import EventBus, OutputChunk, StatusChanged, StatusSeen
from aidp.engine.executor import LogTail
from aidp.engine.model import Progress, Status
from aidp.engine.store import AsyncStore, RunInFlight, Transition

log = logging.getLogger(__name__)

Key = tuple[str, str, str]  # (run id, slug, log path): each attempt of a retried run has its own log


class Follower:
    """Follows every running workstream claimed by another process: polled by `Engine.follow_others`."""

    def __init__(self, db: AsyncStore, bus: EventBus, owner: tuple[int, int]) -> None:
        self._db = db
        self._bus = bus
        self._owner = owner
        self._tails: dict[Key, LogTail] = {}
        self._unreadable: set[Key] = set()  # said once, not retried while the run lasts
        self._progress: dict[Key, Progress] = {}  # the progress last announced of each run followed
        self._told: dict[str, tuple[str, Status, int | None]] = {}  # each slug's run status last told
        self._waiting: dict[tuple[str, str], str | None] = {}  # what each queued run was last told to wait for

    async def poll(self) -> None:
        """Start following runs that began elsewhere, emit what their logs gained, and let go of
        runs that ended once their last bytes are out (a run's claim goes only after its harness).
        Statuses are read first: a run told ended is no longer in flight, so its last output is out
        before its end is told, and no progress of it comes after."""
        transitions = await self._db.call(self._db.store.transitions)
        others = [
            r for r in await self._db.call(self._db.store.runs_in_flight) if (r.owner_pid, r.owner_start) != self._owner
        ]
        runs = {(r.run_id, r.slug, r.log_path): r for r in others if r.log_path is not None}
        live = set(runs)
        for key in live:
            if key not in self._tails and key not in self._unreadable:
                self._open(key, Path(key[2]))
        for key, tail in list(self._tails.items()):
            if not self._emit(key, tail) or key not in live:
                self._close(key)
        self._unreadable &= live
        self._announce_transitions(transitions)
        self._announce_waiting([r for r in others if r.log_path is None])
        self._announce_progress(runs)

    def _announce_transitions(self, transitions: list[Transition]) -> None:
        """Each workstream's latest only. Notes a run records while its status stays (a hook's
        failure, a waiting reason) are not told again."""
        latest = {t.slug: t for t in transitions}
        for slug, t in latest.items():
            told = (t.run_id, t.status, t.attempt)
            if self._told.get(slug) == told:
                continue
            self._told[slug] = told
            self._tell(
                StatusChanged(
                    run_id=t.run_id,
                    slug=slug,
                    status=t.status,
                    exit_code=t.exit_code,
                    duration_s=t.duration_s,
                    error=t.error,
                    started_at=t.started_at,
                    sandbox=t.sandbox,
                    host=t.host,
                    attempt=t.attempt,
                )
            )

    def _announce_waiting(self, queued: list[RunInFlight]) -> None:
        """What a queued run waits for, when that changed: its owner records it without an event."""
        waiting = {(r.run_id, r.slug): r for r in queued if r.waiting is not None}
        for key, run in waiting.items():
            if self._waiting.get(key) != run.waiting:
                self._waiting[key] = run.waiting
                self._tell(
                    StatusChanged(
                        run_id=run.run_id, slug=run.slug, status=Status.QUEUED, attempt=run.attempt, waiting=run.waiting
                    )
                )
        for key in self._waiting.keys() - waiting.keys():
            del self._waiting[key]

    def _announce_progress(self, runs: dict[Key, RunInFlight]) -> None:
        for key, run in runs.items():
            if run.progress is not None and run.progress != self._progress.get(key):
                self._progress[key] = run.progress
                self._tell(
                    StatusChanged(
                        run_id=run.run_id,
                        slug=run.slug,
                        status=Status.RUNNING,
                        started_at=run.started_at,
                        progress=run.progress,
                        host=run.host,
                    )
                )
        for key in self._progress.keys() - runs.keys():
            del self._progress[key]

    def _tell(self, change: StatusChanged) -> None:
        """A status of another process's run, as its owner's clients got it (see `StatusSeen`)."""
        self._bus.emit(StatusSeen(change=msgspec.structs.replace(change, elsewhere=True)))

    def close(self) -> None:
        for key in list(self._tails):
            self._close(key)

    def _open(self, key: Key, path: Path) -> None:
        try:
            self._tails[key] = LogTail(path)
        except OSError as exc:
            self._unreadable.add(key)
            log.warning("%s: cannot follow the log of run %s: %s", key[1], key[0], exc)

    def _emit(self, key: Key, tail: LogTail) -> bool:
        """Emit what the log gained; False when it cannot be read any more."""
        run_id, slug, _ = key
        try:
            skipped, text = tail.read()
        except OSError as exc:
            log.warning("%s: stopped following the log of run %s: %s", slug, run_id, exc)
            self._unreadable.add(key)
            return False
        if skipped or text:
            self._bus.emit(OutputChunk(run_id=run_id, slug=slug, text=text, skipped=skipped))
        return True

    def _close(self, key: Key) -> None:
        self._tails.pop(key).close()
