"""Watching a run: a live table on a terminal, plain status lines otherwise, and Ctrl-C handling.

The views only listen to engine events; `watch_run` starts the run, waits for it and turns SIGINT,
SIGTERM and SIGHUP into a graceful cancel (the engine ends every process group and records `cancelled`).
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TextIO

from rich.cells import cell_len
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from aidp.cli.progress_text import progress_text
from aidp.cli.render import (
    STYLES,
    attempt_text,
    clean,
    clock,
    fancy,
    icon,
    reason,
    span,
    start_notes,
    status_line,
)
from aidp.engine import Engine, RunSummary, Status
from aidp.engine.events import EngineEvent, OutputChunk, RunProgress, StatusChanged
from aidp.engine.executor import Run
from aidp.engine.model import Progress

REDRAW_S = 0.1  # at most ten redraws a second
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # Ctrl-C, kill, a closed terminal
HEADER_ORDER = (
    Status.RUNNING,
    Status.QUEUED,
    Status.COMPLETED,
    Status.FAILED,
    Status.ERROR,
    Status.CANCELLED,
    Status.BLOCKED,
)
BAR_WIDTH = 12


class View(Protocol):
    def on_event(self, event: EngineEvent) -> None: ...
    def note(self, message: str) -> None: ...
    def start(self) -> None: ...
    async def stop(self) -> None: ...


class QuietView:
    """For --json: stdout carries the summary and nothing else; what the run says of itself (a
    halt, a slower pace after a rate limit) goes to stderr, once each time it changes."""

    def __init__(self) -> None:
        self._said: str | None = None

    def on_event(self, event: EngineEvent) -> None:
        if isinstance(event, RunProgress) and event.note is not None and event.note != self._said:
            self._said = event.note
            self.progress_note(event.note)

    def progress_note(self, message: str) -> None:
        self.note(message)

    def note(self, message: str) -> None:
        print(f"aidp: {message}", file=sys.stderr, flush=True)

    def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


class PlainView(QuietView):
    """One line per status change, for pipes, logs and CI."""

    def __init__(self, out: TextIO) -> None:
        super().__init__()
        self._out = out

    def on_event(self, event: EngineEvent) -> None:
        if isinstance(event, StatusChanged):
            print(status_line(event), file=self._out, flush=True)
        else:
            super().on_event(event)

    def progress_note(self, message: str) -> None:
        """In the stream of status lines, where it happened."""
        print(f"{clock()} aidp: {message}", file=self._out, flush=True)


@dataclass
class _Row:
    status: Status
    started: float | None = None
    ended: float | None = None  # when it left queued/running: recently ended rows are shown first
    duration_s: float | None = None
    last_line: str = ""
    attempt: str = ""  # 'attempt 2/3' while a retry runs
    waiting: str | None = None  # while queued: what it waits for
    why: str = ""  # why it ended as it did (a blocked one never ran, so has no output to show)
    progress: Progress | None = None  # what a running harness last said of its progress
    host: str | None = None  # while running remotely: the machine it runs on

    def update(self, event: StatusChanged) -> None:
        """A status change, or (same status `running`) a new progress report: the latter keeps
        the elapsed time counting from the start."""
        if event.status == Status.RUNNING and (self.status != Status.RUNNING or self.started is None):
            self.started = time.monotonic()
        running_on = self.host if self.status == event.status == Status.RUNNING else None
        self.host = event.host or running_on
        if not event.status.in_flight and self.status.in_flight:
            self.ended = time.monotonic()
        self.status = event.status
        self.waiting = event.waiting
        self.attempt = attempt_text(event.attempt, event.max_attempts)
        self.duration_s = None if event.status.in_flight else event.duration_s
        self.progress = event.progress if event.status == Status.RUNNING else None
        self.why = reason(event.status, event.error)

    def elapsed(self) -> str:
        if self.duration_s is not None:
            return span(self.duration_s)
        if self.status == Status.RUNNING and self.started is not None:
            return span(time.monotonic() - self.started)
        return ""

    def detail(self) -> str:
        """What the row says after its status and time: the wait, the machine, the attempt, the
        progress without a percentage, the output, the reason."""
        if self.status == Status.QUEUED:
            return self.waiting or ""
        if self.status == Status.RUNNING:
            said = "" if self.progress is None or self.progress.percent is not None else progress_text(self.progress)
            remote = f"on {self.host}" if self.host else ""
            return " · ".join(part for part in (remote, self.attempt, said, self.last_line) if part)
        return self.last_line or self.why

    def rank(self) -> tuple[int, float]:
        """Running first, then the most recently ended, then queued (in order of arrival)."""
        if self.status == Status.RUNNING:
            return (0, self.started or 0.0)
        if self.ended is not None:
            return (1, -self.ended)
        return (2, 0.0)


class LiveView:
    """A frame redrawn in place by rich at most ten times a second, always within the terminal
    (measured in cells, read again on every redraw, so a resize is followed): a header (counts by
    status, elapsed time, ETA, concurrency), one row per workstream that fits (status, elapsed,
    progress bar or what it waits for or its last output line), and a counted line for the rest."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._rows: dict[str, _Row] = {}
        self._progress: RunProgress | None = None
        self._began = time.monotonic()
        self._ticker: asyncio.Task[None] | None = None
        self._live = Live(
            console=console,
            get_renderable=self._frame,
            auto_refresh=False,  # redrawn by `_tick` on the event loop, never from a thread of rich's
            redirect_stdout=False,
            redirect_stderr=False,
            vertical_overflow="crop",
        )

    def on_event(self, event: EngineEvent) -> None:
        if isinstance(event, StatusChanged):
            self._rows.setdefault(event.slug, _Row(event.status)).update(event)
        elif isinstance(event, RunProgress):
            self._progress = event
        elif isinstance(event, OutputChunk) and event.slug in self._rows:
            lines = [line for line in clean(event.text.replace("\r", "\n")).splitlines() if line.strip()]
            if lines:
                self._rows[event.slug].last_line = lines[-1].strip().expandtabs()

    def note(self, message: str) -> None:
        """Printed above the frame, which rich redraws below it."""
        self._console.print(Text(f"aidp: {message}"), soft_wrap=False, overflow="fold")

    def start(self) -> None:
        self._began = time.monotonic()
        self._live.start()
        self._ticker = asyncio.create_task(self._tick())

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        self._live.stop()

    async def _tick(self) -> None:
        while True:
            self._live.refresh()
            await asyncio.sleep(REDRAW_S)

    def _header(self) -> Text:
        """Counts by status, the elapsed time, then the engine's latest progress (ETA,
        concurrency and why it changed) while anything is left to do."""
        counts = Counter(row.status for row in self._rows.values())
        done = sum(n for status, n in counts.items() if not status.in_flight)
        parts = [f"{done}/{len(self._rows)} done"]
        parts += [f"{counts[status]} {status}" for status in HEADER_ORDER if counts[status]]
        parts.append(f"elapsed {span(time.monotonic() - self._began)}")
        if self._progress is not None and done < len(self._rows):
            if self._progress.eta_s is not None:
                parts.append(f"ETA {span(self._progress.eta_s)}")
            if self._progress.concurrency is not None:
                parts.append(f"concurrency {self._progress.concurrency}")
            if self._progress.note:
                parts.append(self._progress.note)
        return Text(" · ".join(parts), style="bold", no_wrap=True, overflow="ellipsis")

    def _frame(self) -> RenderableType:
        width, height = self._console.size
        ordered = sorted(self._rows.items(), key=lambda item: item[1].rank())
        room = max(height - 2, 1)  # the header, and the line the cursor rests on below the frame
        shown, folded = (ordered, []) if len(ordered) <= room else (ordered[: room - 1], ordered[room - 1 :])
        slug_width = min(max((cell_len(slug) for slug, _ in shown), default=0), max(width // 3, 8))
        lines = [self._header()] + [self._line(slug, row, slug_width) for slug, row in shown]
        if folded:
            counts = Counter(row.status for _, row in folded)
            more = ", ".join(f"{n} {status}" for status, n in counts.most_common())
            lines.append(Text(f"+{len(folded)} more: {more}", style="dim"))
        for line in lines:
            line.no_wrap, line.overflow = True, "ellipsis"
            line.truncate(width, overflow="ellipsis")
        return Group(*lines)

    @staticmethod
    def _line(slug: str, row: _Row, slug_width: int) -> Text:
        """One row, in cells: icon, slug, status, elapsed, then a bar and its percentage when the
        harness says how far it is, and the row's text."""
        name = Text(slug)
        name.truncate(slug_width, overflow="ellipsis", pad=True)
        line = Text.assemble(
            icon(row.status),
            " ",
            name,
            "  ",
            (f"{row.status:<9}", STYLES.get(row.status, "")),
            f" {row.elapsed():>7}  ",
        )
        progress = row.progress if row.status == Status.RUNNING else None
        if progress is not None and progress.percent is not None:
            percent = min(max(progress.percent, 0.0), 100.0)
            filled = round(percent / 100 * BAR_WIDTH)
            line.append("━" * filled if fancy() else "#" * filled, style="cyan")
            line.append(("─" if fancy() else "-") * (BAR_WIDTH - filled), style="dim")
            said = " ".join(part for part in (progress.step, progress.message) if part)
            line.append(" · ".join(part for part in (f" {percent:3.0f}%", said, row.detail()) if part))
        else:
            line.append(row.detail())
        return line


def choose_view(json_output: bool, out: TextIO = sys.stdout) -> View:
    if json_output:
        return QuietView()
    if not out.isatty():
        return PlainView(out)
    console = Console(file=out, no_color=not fancy(), emoji=False, markup=False, highlight=False)
    return LiveView(console)


class _Interrupts:
    """First Ctrl-C (or SIGTERM): cancel the run gracefully. Second: kill without the grace period.
    Either way the run ends normally, every workstream recorded, and its summary is printed."""

    def __init__(self, run: Run, view: View) -> None:
        self._run = run
        self._view = view
        self._count = 0

    def __call__(self) -> None:
        self._count += 1
        if self._count == 1:
            self._view.note(
                "cancelling: SIGTERM to each workstream, SIGKILL after the grace period (Ctrl-C again: now)"
            )
            self._run.cancel()
        elif self._count == 2:
            self._view.note("killing: SIGKILL to each workstream now")
            self._run.cancel(hard=True)


async def watch_run(engine: Engine, start: Callable[[], Awaitable[Run]], view: View) -> RunSummary:
    """Start a run, show it with `view` and return its summary, also after Ctrl-C."""
    unsubscribe = engine.events.subscribe(view.on_event)
    loop = asyncio.get_running_loop()
    try:
        run = await start()
        for note in start_notes(run):
            view.note(note)
        interrupts = _Interrupts(run, view)
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, interrupts)
        view.start()
        try:
            return await engine.wait(run)
        finally:
            for sig in STOP_SIGNALS:
                loop.remove_signal_handler(sig)
    finally:
        unsubscribe()
        await view.stop()
