"""Helpers for the CLI tests: real git repositories and real `python -m aidp` subprocesses.

Kept out of conftest.py (owned elsewhere); the test modules import these functions directly."""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

GIT_ENV = {
    "GIT_AUTHOR_NAME": "aidp test",
    "GIT_AUTHOR_EMAIL": "test@aidp.invalid",
    "GIT_COMMITTER_NAME": "aidp test",
    "GIT_COMMITTER_EMAIL": "test@aidp.invalid",
}
ENV = {**os.environ, **GIT_ENV}
WAIT_S = 60.0


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=ENV, check=True, capture_output=True, text=True).stdout


def make_repo(tmp_path: Path) -> Path:
    """A repository with one commit, on branch main."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("hello\n")
    git(repo, "add", "README.md")
    git(repo, "commit", "-q", "-m", "first")
    return repo


def cli(cwd: Path, *args: str, timeout: float = WAIT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aidp", *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout
    )


def spawn_cli(cwd: Path, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen([sys.executable, "-m", "aidp", *args], cwd=cwd, env=ENV, text=True, **kwargs)


def harness(tmp_path: Path, name: str, code: str) -> str:
    """A Python harness script outside the repository; returns a `--command` value that runs it
    with the workstream's slug as its argument."""
    script = tmp_path / f"{name}.py"
    script.write_text(code)
    return shlex.join([sys.executable, str(script), "{slug}"])


def gated(gate: Path, first: str, last: str) -> str:
    """Harness code that prints `first`, waits until `gate` exists, then prints `last`: tests order
    events by creating the file, never by sleeping."""
    return (
        f"import pathlib, time\nprint({first!r}, flush=True)\n"
        f"while not pathlib.Path({str(gate)!r}).exists():\n    time.sleep(0.05)\nprint({last!r})\n"
    )


def new_ws(repo: Path, slug: str, command: str, task: str = "do the thing") -> None:
    result = cli(repo, "ws", "new", slug, task, "--command", command)
    assert result.returncode == 0, result.stderr


def workstreams(repo: Path) -> dict[str, dict[str, Any]]:
    result = cli(repo, "ws", "list", "--json")
    assert result.returncode == 0, result.stderr
    return {ws["slug"]: ws for ws in json.loads(result.stdout)}


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def wait_for_status(repo: Path, slug: str, status: str) -> None:
    wait_until(lambda: workstreams(repo)[slug]["status"] == status, f"{slug} {status}")


def process_gone(pid: int) -> bool:
    """No such process, or only a zombie (which no init may reap in a container)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


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
