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

from aidp.cli.render import EMOJI, clean, seconds, status_line
from aidp.engine import Engine, RunSummary, Status
from aidp.engine.events import EngineEvent, OutputChunk, StatusChanged
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
    """For --json: stdout carries the summary and nothing else."""

    def on_event(self, event: EngineEvent) -> None:
        pass

    def note(self, message: str) -> None:
        print(f"aidp: {message}", file=sys.stderr, flush=True)

    def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


class PlainView(QuietView):
    """One line per status change, for pipes, logs and CI."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def on_event(self, event: EngineEvent) -> None:
        if isinstance(event, StatusChanged):
            print(status_line(event), file=self._out, flush=True)


@dataclass
class _Row:
    status: Status
    started: float | None = None
    duration_s: float | None = None
    last_line: str = ""

    def elapsed(self) -> str:
        if self.duration_s is not None:
            return seconds(self.duration_s)
        return seconds(time.monotonic() - self.started) if self.started is not None else ""


class LiveView:
    """One row per workstream (status, elapsed, last output line), redrawn in place with ANSI
    cursor movement at most ten times a second."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._rows: dict[str, _Row] = {}
        self._drawn = 0
        self._ticker: asyncio.Task[None] | None = None

    def on_event(self, event: EngineEvent) -> None:
        if isinstance(event, StatusChanged):
            row = self._rows.setdefault(event.slug, _Row(event.status))
            row.status = event.status
            if event.status == Status.RUNNING:
                row.started = time.monotonic()
            if event.duration_s is not None:
                row.duration_s = event.duration_s
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

    def _draw(self) -> None:
        width = shutil.get_terminal_size().columns
        slug_width = max((len(slug) for slug in self._rows), default=0)
        lines = []
        for slug, row in self._rows.items():
            text = f"{slug.ljust(slug_width)}  {row.status:<9}  {row.elapsed():>8}  {row.last_line}"
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
