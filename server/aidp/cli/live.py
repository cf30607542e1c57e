"""Watching a run: a live table on a terminal, plain status lines otherwise, and Ctrl-C handling.

The views only listen to engine events; `watch_run` starts the run, waits for it and turns SIGINT,
SIGTERM and SIGHUP into a graceful cancel (the engine ends every process group and records `cancelled`).
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TextIO

import msgspec

from aidp.cli.render import EMOJI, attempt_text, clean, clock, progress_line, reason, seconds, start_notes, status_line
from aidp.engine import Engine, RunSummary, Status
from aidp.engine.events import EngineEvent, OutputChunk, RunProgress, StatusChanged
from aidp.engine.executor import Run

REDRAW_S = 0.1  # at most ten redraws a second
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # Ctrl-C, kill, a closed terminal
ICONS = {Status.QUEUED: "🕒", Status.RUNNING: "⏳", **EMOJI}


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
    duration_s: float | None = None
    last_line: str = ""
    attempt: str = ""  # 'attempt 2/3' while a retry runs
    waiting: str | None = None  # while queued: what it waits for
    why: str = ""  # why it ended as it did (a blocked one never ran, so has no output to show)

    def update(self, event: StatusChanged) -> None:
        self.status = event.status
        self.waiting = event.waiting
        self.attempt = attempt_text(event.attempt, event.max_attempts)
        self.duration_s = event.duration_s if event.status not in (Status.QUEUED, Status.RUNNING) else None
        if event.status == Status.RUNNING:
            self.started = time.monotonic()
        self.why = reason(event.status, event.error)

    def elapsed(self) -> str:
        if self.duration_s is not None:
            return seconds(self.duration_s)
        if self.status == Status.RUNNING and self.started is not None:
            return seconds(time.monotonic() - self.started)
        return ""

    def detail(self) -> str:
        """What the row says after its status and time: the wait, the attempt, the output, the reason."""
        if self.status == Status.QUEUED:
            return self.waiting or ""
        if self.status == Status.RUNNING:
            return " · ".join(part for part in (self.attempt, self.last_line) if part)
        return self.last_line or self.why


class LiveView:
    """A header line (done of total, ETA, concurrency and why it changed), then one row per
    workstream (status, elapsed, what it waits for or its last output line), redrawn in place with
    ANSI cursor movement at most ten times a second."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._rows: dict[str, _Row] = {}
        self._progress: RunProgress | None = None
        self._drawn = 0
        self._ticker: asyncio.Task[None] | None = None

    def on_event(self, event: EngineEvent) -> None:
        if isinstance(event, StatusChanged):
            self._rows.setdefault(event.slug, _Row(event.status)).update(event)
        elif isinstance(event, RunProgress):
            self._progress = event
        elif isinstance(event, OutputChunk) and event.slug in self._rows:
            lines = [line for line in clean(event.text.replace("\r", "\n")).splitlines() if line.strip()]
            if lines:
                self._rows[event.slug].last_line = lines[-1].strip()

    def note(self, message: str) -> None:
        """Above the table, which is redrawn below it (a line printed elsewhere would shift it)."""
        up = f"\x1b[{self._drawn}F" if self._drawn else ""
        self._out.write(f"{up}\x1b[2K\x1b[J" + f"aidp: {message}\n")
        self._drawn = 0
        self._draw()

    def start(self) -> None:
        self._ticker = asyncio.create_task(self._tick())

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        self._draw()

    async def _tick(self) -> None:
        while True:
            self._draw()
            await asyncio.sleep(REDRAW_S)

    def _header(self) -> str | None:
        """The latest progress, with the counts of the rows as drawn (the engine's last progress
        may predate the last status change), and no ETA once everything has ended."""
        if self._progress is None:
            return None
        statuses = [row.status for row in self._rows.values()]
        done = sum(1 for status in statuses if not status.in_flight)
        running = statuses.count(Status.RUNNING)
        eta = self._progress.eta_s if done < len(statuses) else None
        progress = msgspec.structs.replace(self._progress, total=len(statuses), done=done, running=running, eta_s=eta)
        return progress_line(progress)

    def _draw(self) -> None:
        width = shutil.get_terminal_size().columns
        slug_width = max((len(slug) for slug in self._rows), default=0)
        lines = [] if (header := self._header()) is None else [header[:width]]
        for slug, row in self._rows.items():
            text = f"{slug.ljust(slug_width)}  {row.status:<9}  {row.elapsed():>8}  {row.detail()}"
            lines.append(f"{ICONS.get(row.status, '  ')} {text[: max(width - 4, 10)]}")
        up = f"\x1b[{self._drawn}F" if self._drawn else ""  # back to the first row we drew
        self._out.write(up + "".join(f"\x1b[2K{line}\n" for line in lines))
        self._out.flush()
        self._drawn = len(lines)


def choose_view(json_output: bool, out: TextIO = sys.stdout) -> View:
    if json_output:
        return QuietView()
    return LiveView(out) if out.isatty() else PlainView(out)


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
