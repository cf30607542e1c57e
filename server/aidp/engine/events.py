"""What the engine tells its listeners while it works. The server forwards these as JSON-RPC
notifications unchanged (they are the wire payloads), the CLI draws its live view from them."""

from __future__ import annotations

import logging
from collections.abc import Callable

from aidp.engine.model import Progress, Record, RunSummary, Status

log = logging.getLogger(__name__)


class StatusChanged(Record):
    run_id: str | None
    slug: str
    status: Status
    exit_code: int | None = None
    duration_s: float | None = None
    error: str | None = None
    # With `running`: when the harness started, so every viewer counts elapsed time from the same moment.
    started_at: str | None = None
    sandbox: str | None = None  # with the final status: how the run was sandboxed (WorkstreamResult.sandbox)
    # With `running` and the final status: the machine the harness runs on (a Ray node); None: this one.
    host: str | None = None
    # With retries (`[harness] retries`): which attempt this is, of how many at most.
    attempt: int | None = None
    max_attempts: int | None = None
    # With `queued`: what it waits for (a dependency, a slot another aidp process holds, a back-off).
    waiting: str | None = None
    # With `running`: the harness's latest progress report, sent again (same status) when it changes.
    progress: Progress | None = None
    # Another aidp process's run (a terminal's), told inside a `StatusSeen`: a client tells it from
    # its own runs (no progress of its own run adopts it, no failure of it pops up).
    elsewhere: bool = False


class Interrupted(StatusChanged):
    """A dead aidp process's workstream, recorded `cancelled` by recovery: told as any status (the
    same payload), but the run was that process's, and so were its hooks: none runs for it here,
    least of all from a command that only lists."""


class RecordedLate(StatusChanged):
    """A result the database refused when its workstream ended (a full disk), recorded later and
    told again (the same payload). It was told when it happened, and its `on_end` hook ran then,
    unless the database refused that hook's start too."""


class OutputChunk(Record):
    """New output of a running workstream. `skipped` bytes came before `text` but are left out
    of the live view (a flood); the log file has them all."""

    run_id: str
    slug: str
    text: str
    skipped: int = 0

    @property
    def shown(self) -> str:
        """The text as a person should see it: with a visible marker where output was skipped."""
        return skipped_marker(self.skipped) + self.text if self.skipped else self.text


def skipped_marker(n: int) -> str:
    return f"\n[aidp: {n} bytes of output skipped; the log file has them all]\n"


class RunFinished(Record):
    summary: RunSummary


class RunProgress(Record):
    """How far a run is, sent whenever that changes: `done` of `total` ended, and the forecast of
    the time left (`eta_s`) from the expected durations and the bound (None: no history yet).
    `concurrency` is the bound in force now (lowered while rate limits come), `note` says why it changed."""

    run_id: str
    total: int
    done: int
    running: int
    eta_s: float | None = None
    concurrency: int | None = None
    note: str | None = None


class ListChanged(Record):
    pass


class StatusSeen(Record):
    """A status of another aidp process's run (a terminal's `aidp ws run` beside a server), told to
    viewers as that process's own `StatusChanged` is told to its (with `elsewhere`). A wrapper, so that
    nothing here acts on it as on its own: its hooks, progress and retries belong to that process."""

    change: StatusChanged


EngineEvent = StatusChanged | OutputChunk | RunFinished | RunProgress | ListChanged | StatusSeen
Listener = Callable[[EngineEvent], None]


class EventBus:
    """Synchronous fan-out on the event loop: listeners must be quick (queue, don't block)."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def emit(self, event: EngineEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("event listener failed on %s", type(event).__name__)
