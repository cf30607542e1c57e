"""Live progress of a running harness: the progress channel, and what an agent's structured output says.

The channel: each attempt's harness gets `AIDP_PROGRESS`, the path of a file (next to its log) to
which it appends JSON lines such as `{"percent": 40, "step": "IMPLEMENTATION", "message": "tests
pass"}`. The executor's ticker reads it the way it reads logs: at most READ_MAX bytes per tick, never
blocking; a line longer than LINE_MAX is cut there, a malformed one is ignored and counted. A harness
whose log is Claude Code's `--output-format stream-json` also gets messages (the tool it uses, the
file it edits) from its output, without writing anything itself. docs/protocol.md has the contract.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from aidp.engine.model import Progress

READ_MAX = 64 * 1024  # per tick; when more piled up, the oldest reports are skipped (the latest count)
LINE_MAX = 4096  # bytes of one report; the rest of a longer line is dropped unread
MESSAGE_MAX = 200  # characters of a message or step name kept
STREAM_LINE_MAX = 1024 * 1024  # a stream-json event longer than this is only scanned for its tool and file
EMIT_EVERY_S = 0.25  # a workstream's progress is announced at most this often (its latest, when it changed)
STORE_EVERY_S = 1.0  # and written to the database (for other processes' viewers) at most this often

_TOOL_RE = re.compile(r'"type"\s*:\s*"tool_use".*?"name"\s*:\s*"([^"\\]{1,64})"')
_FILE_RE = re.compile(r'"(?:file_path|notebook_path|path)"\s*:\s*"((?:[^"\\]|\\.){1,1024})"')


def _cut(text: str) -> str:
    """One line of at most MESSAGE_MAX characters, so a chatty harness cannot flood a viewer."""
    line = " ".join(text.split())
    return line if len(line) <= MESSAGE_MAX else line[: MESSAGE_MAX - 1] + "…"


class Lines:
    """Whole lines from text that arrives in pieces, each at most `limit` bytes: a longer line is
    cut at `limit` (and flagged), the rest of it dropped as it comes, so memory stays bounded."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._partial = bytearray()
        self._cut = False  # the current line was cut: drop what comes until its newline

    def feed(self, data: bytes) -> list[tuple[bytes, bool]]:
        """(line, was cut) for each line `data` completes."""
        lines = []
        *complete, rest = data.split(b"\n")
        for piece in complete:
            lines.append(self._take(piece))
            self._partial.clear()
            self._cut = False
        self._take(rest)
        return lines

    def resync(self) -> None:
        """Bytes were skipped: what is buffered belongs to a line whose end is lost; drop it."""
        self._partial.clear()
        self._cut = True

    def _take(self, piece: bytes) -> tuple[bytes, bool]:
        if not self._cut:
            room = self._limit - len(self._partial)
            self._partial += piece[:room]
            self._cut = len(piece) > room
        return bytes(self._partial), self._cut


class ProgressFile:
    """The reports a harness appended to its `AIDP_PROGRESS` file, read in bounded steps."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self._pos = 0
        self._lines = Lines(LINE_MAX)
        self.malformed = 0  # lines that were not a report (said in the log once the run ends)

    def read(self) -> list[dict[str, Any]]:
        """The reports appended since the last read (the oldest skipped when over READ_MAX)."""
        size = os.fstat(self._fd).st_size
        if size - self._pos > READ_MAX:
            self._pos = size - READ_MAX
            self._lines.resync()
        data = os.pread(self._fd, size - self._pos, self._pos) if size > self._pos else b""
        self._pos += len(data)
        reports = []
        for line, _ in self._lines.feed(data):
            if not line.strip():
                continue
            report = parse_report(line)
            if report is None:
                self.malformed += 1
            else:
                reports.append(report)
        return reports

    def close(self) -> None:
        os.close(self._fd)


def parse_report(line: bytes) -> dict[str, Any] | None:
    """One report: a JSON object with any of `percent` (a number from 0 to 100), `step` and
    `message` (strings), each maybe null (cleared); other keys are ignored. None: malformed."""
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    report: dict[str, Any] = {}
    if "percent" in data:
        percent = data["percent"]
        if percent is not None and (isinstance(percent, bool) or not isinstance(percent, int | float)):
            return None
        if percent is not None and not 0 <= percent <= 100:
            return None
        report["percent"] = percent
    for key in ("step", "message"):
        if key in data:
            value = data[key]
            if value is not None and not isinstance(value, str):
                return None
            report[key] = None if value is None else _cut(value) or None
    return report


class ProgressState:
    """The latest progress of one attempt, from the reports in order: a key given replaces its
    value (null clears it), a key left out keeps it, except that entering another step clears the
    old step's percent and message. With `--steps A,B,C`, a report naming only its step gets the
    step's share: step i of n is (i - 1) / n * 100 % (the steps before it are done)."""

    def __init__(self, steps: list[str] | None) -> None:
        self._steps = steps or []
        self._percent: float | None = None
        self._step: str | None = None
        self._message: str | None = None

    def apply(self, report: dict[str, Any]) -> None:
        step = report.get("step", self._step)
        if step != self._step:
            self._percent = self._message = None
        self._step = step
        self._percent = report.get("percent", self._percent)
        self._message = report.get("message", self._message)

    def say(self, message: str) -> None:
        """A message from the agent's own output (its current tool or file)."""
        self._message = message

    def current(self) -> Progress:
        """The latest progress; all of it None until the harness says something (or once it cleared it)."""
        percent = self._percent
        if percent is None and self._step in self._steps:
            percent = 100 * self._steps.index(self._step) / len(self._steps)
        return Progress(percent=None if percent is None else round(percent, 1), step=self._step, message=self._message)


def is_stream_json(argv: list[str]) -> bool:
    """Claude Code writing its events as JSON lines (`--output-format stream-json`)."""
    for i, arg in enumerate(argv):
        if arg == "--output-format" and argv[i + 1 : i + 2] == ["stream-json"]:
            return True
        if arg == "--output-format=stream-json":
            return True
    return False


class StreamJson:
    """Claude Code's stream-json events (read from the log as the live view reads it) turned into
    progress messages: 'Edit src/app.py', 'Bash: pytest -q', or the first line of what it says."""

    def __init__(self, worktree: str) -> None:
        self._worktree = worktree.rstrip("/") + "/"
        self._lines = Lines(STREAM_LINE_MAX)

    def feed(self, text: str, skipped: int) -> str | None:
        """The latest message in this piece of output, or None."""
        if skipped:
            self._lines.resync()
        message = None
        for line, cut in self._lines.feed(text.encode()):
            found = self._scan(line) if cut else self._event(line)
            message = found or message
        return message

    def _event(self, line: bytes) -> str | None:
        try:
            event = json.loads(line)
        except ValueError:
            return None  # not an event (a line the agent's wrapper printed): not ours to judge
        if not isinstance(event, dict) or event.get("type") != "assistant":
            return None
        content = event.get("message", {}).get("content") if isinstance(event.get("message"), dict) else None
        message = None
        for block in content if isinstance(content, list) else []:
            if isinstance(block, dict) and block.get("type") == "tool_use" and isinstance(block.get("name"), str):
                message = self._tool(block["name"], block.get("input"))
            elif isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str):
                message = _cut(block["text"].strip().split("\n", 1)[0]) or message
        return message

    def _tool(self, name: str, args: object) -> str:
        args = args if isinstance(args, dict) else {}
        for key in ("file_path", "notebook_path", "path"):
            if isinstance(args.get(key), str):
                return _cut(f"{name} {args[key].removeprefix(self._worktree)}")
        for key in ("command", "pattern", "url", "description"):
            if isinstance(args.get(key), str):
                return _cut(f"{name}: {args[key]}")
        return name

    def _scan(self, line: bytes) -> str | None:
        """An event too long to parse (a tool writing a whole file): its tool and file, if it shows them."""
        text = line.decode("utf-8", errors="replace")
        tool = _TOOL_RE.search(text)
        if tool is None:
            return None
        path = _FILE_RE.search(text, tool.end())
        if path is None:
            return tool.group(1)
        return _cut(f"{tool.group(1)} {path.group(1).removeprefix(self._worktree)}")


class Tracker:
    """One attempt's progress: its channel file and, for a stream-json agent, its output, read each
    tick; says when the latest progress should be announced (and stored), never more often than
    EMIT_EVERY_S (STORE_EVERY_S)."""

    def __init__(self, path: Path, steps: list[str] | None, stream: StreamJson | None = None) -> None:
        self._file = ProgressFile(path)
        self._stream = stream
        self._state = ProgressState(steps)
        self._emitted = self._stored = Progress()  # nothing said yet: nothing to tell
        self._emitted_at = self._stored_at = -float("inf")

    def output(self, text: str, skipped: int) -> None:
        """New output of the harness (as the live view got it): a stream-json agent's events."""
        if self._stream is not None and (message := self._stream.feed(text, skipped)):
            self._state.say(message)

    def poll(self) -> None:
        for report in self._file.read():
            self._state.apply(report)

    def to_emit(self) -> Progress | None:
        """The progress to announce now, or None (unchanged, or announced too recently)."""
        now, current = time.monotonic(), self._state.current()
        if current == self._emitted or now - self._emitted_at < EMIT_EVERY_S:
            return None
        self._emitted, self._emitted_at = current, now
        return current

    def to_store(self) -> Progress | None:
        """The progress to write for other processes now, or None."""
        now, current = time.monotonic(), self._state.current()
        if current == self._stored or now - self._stored_at < STORE_EVERY_S:
            return None
        self._stored, self._stored_at = current, now
        return current

    def close(self) -> int:
        """Stop reading; returns how many malformed reports were ignored."""
        self._file.close()
        return self._file.malformed
