"""Helpers for the CLI tests: real git repositories and real `python -m aidp` subprocesses.

Kept out of conftest.py (owned elsewhere); the test modules import these functions directly, and
what the other tests share too (repositories, `cli`, polling, /proc probes) from support.py."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import queue
import re
import select
import shlex
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyte
from support import PYTHON, WAIT_S, child_env, cli, wait_until_sync


def spawn_cli(cwd: Path, *args: str, env: dict[str, str] | None = None, **kwargs: Any) -> subprocess.Popen[str]:
    """The CLI started in the background (`env`: added variables)."""
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen(
        [PYTHON, "-m", "aidp", *args], cwd=cwd, env={**child_env(), **(env or {})}, text=True, **kwargs
    )


def harness(tmp_path: Path, name: str, code: str) -> str:
    """A Python harness script outside the repository; returns a `--command` value that runs it
    with the workstream's slug as its argument."""
    script = tmp_path / f"{name}.py"
    script.write_text(code)
    return shlex.join([PYTHON, str(script), "{slug}"])


def wait_for(gate: Path) -> str:
    """Harness code (with `pathlib` and `time` imported) that waits until `gate` exists."""
    return f"while not pathlib.Path({str(gate)!r}).exists():\n    time.sleep(0.05)\n"


def gated(gate: Path, first: str, last: str) -> str:
    """Harness code that prints `first`, waits until `gate` exists, then prints `last`: tests order
    events by creating the file, never by sleeping."""
    return f"import pathlib, time\nprint({first!r}, flush=True)\n{wait_for(gate)}print({last!r})\n"


def new_ws(repo: Path, slug: str, command: str, task: str = "do the thing") -> None:
    result = cli(repo, "ws", "new", slug, task, "--command", command)
    assert result.returncode == 0, result.stderr


def workstreams(repo: Path) -> dict[str, dict[str, Any]]:
    result = cli(repo, "ws", "list", "--json")
    assert result.returncode == 0, result.stderr
    return {ws["slug"]: ws for ws in json.loads(result.stdout)}


def events(repo: Path, slug: str) -> list[str]:
    """The recent events `ws status` shows, one line each."""
    out = cli(repo, "ws", "status", slug)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("recent events:\n", 1)[1].split("git status --short:", 1)[0]
    return [line.strip() for line in lines.splitlines()]


def wait_for_status(repo: Path, slug: str, status: str) -> None:
    wait_until_sync(lambda: workstreams(repo)[slug]["status"] == status, what=f"{slug} {status}")


class Lines:
    """A process's output read line by line by a thread, so a test can wait for a line with a
    timeout instead of blocking forever on a pipe."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        stream = proc.stdout

        def pump() -> None:
            for line in stream:
                self._queue.put(line.rstrip("\n"))
            self._queue.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def expect(self, pattern: str, timeout: float = WAIT_S) -> str:
        """The next line matching `pattern` (lines before it are kept in `seen`)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r}; seen:\n" + "\n".join(self.seen)) from None
            if line is None:
                raise AssertionError(f"output ended before {pattern!r}; seen:\n" + "\n".join(self.seen))
            self.seen.append(line)
            if re.search(pattern, line):
                return line


class Terminal:
    """The CLI on a pseudo-terminal of a fixed size, read back through pyte as a person would see
    it: `screen` is what is on the terminal now, `history` what scrolled off its top."""

    def __init__(self, cwd: Path, *args: str, columns: int = 80, rows: int = 24, env: dict[str, str] | None = None):
        self.columns, self.rows = columns, rows
        self.screen = pyte.HistoryScreen(columns, rows, history=100_000)
        self._stream = pyte.ByteStream(self.screen)
        self.raw = b""
        self._controller, terminal = pty.openpty()
        self.resize(columns, rows, terminal)
        environ = {k: v for k, v in child_env().items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "aidp", *args],
            cwd=cwd,
            env={**environ, "TERM": "xterm-256color", **(env or {})},
            stdin=terminal,
            stdout=terminal,
            stderr=terminal,
            start_new_session=True,  # the pty becomes its controlling terminal, as in a real shell
        )
        os.close(terminal)

    def resize(self, columns: int, rows: int, fd: int | None = None) -> None:
        """Set the terminal's size (the kernel tells the process with SIGWINCH)."""
        fcntl.ioctl(
            self._controller if fd is None else fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0)
        )
        self.columns, self.rows = columns, rows
        self.screen.resize(rows, columns)

    def write(self, text: str) -> None:
        os.write(self._controller, text.encode())

    def read(self, until: Callable[[], bool] | None = None, timeout: float = WAIT_S) -> bool:
        """Feed the output to the screen until `until()` holds (True) or the CLI has closed the
        terminal (False)."""
        deadline = time.monotonic() + timeout
        while until is None or not until():
            ready, _, _ = select.select([self._controller], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise AssertionError("the terminal showed nothing expected in time:\n" + "\n".join(self.lines()))
            try:
                chunk = os.read(self._controller, 65536)
            except OSError:  # EIO: every process on the terminal has closed it
                return False
            if not chunk:
                return False
            self.raw += chunk
            self._stream.feed(chunk)
        return True

    def display(self) -> str:
        """The screen now, one line per row, trailing blanks cut."""
        return "\n".join(line.rstrip() for line in self.screen.display)

    def lines(self) -> list[str]:
        """Every line the terminal showed that is still there: the history, then the screen."""
        scrolled = ["".join(line[x].data for x in sorted(line)).rstrip() for line in self.screen.history.top]
        return scrolled + [line.rstrip() for line in self.screen.display]

    def close(self) -> int:
        """Read to the end, wait for the CLI; its exit code."""
        self.read()
        os.close(self._controller)
        return self.proc.wait(timeout=WAIT_S)
