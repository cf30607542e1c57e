"""Shared fixtures for the end-to-end tests: a real git repository with one commit, helpers to
write `.aidp/config.toml` and small harness scripts, an opened Engine, and the cleanup of what a
test's children left behind. Nothing here mocks the engine: harnesses are real processes. Plain
helpers that the CLI and server tests share too live in support.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from support import GIT_IDENTITY, PYTHON, make_repo, pid_alive, wait_until

from aidp.engine import Engine, Status


@pytest.fixture(autouse=True)
def _git_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """A git identity for every git the engine runs, whatever the machine's global config."""
    for key, value in GIT_IDENTITY.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """The one-commit repository of `make_repo`."""
    return make_repo(tmp_path)


@pytest.fixture
def markers(tmp_path: Path) -> Path:
    """A directory outside the repository where harnesses record facts (pids, stamps, argv)."""
    path = tmp_path / "markers"
    path.mkdir()
    return path


def write_config(root: Path, text: str) -> Path:
    """Write `.aidp/config.toml` (the text is dedented)."""
    path = root / ".aidp" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def toml_list(argv: list[str]) -> str:
    """A TOML array of strings (basic strings with escapes, as json writes them)."""
    return "[" + ", ".join(json.dumps(a) for a in argv) + "]"


def write_script(directory: Path, name: str, body: str) -> Path:
    """Write a small (Python or shell) harness script; run it as [PYTHON, path] or ["sh", path]."""
    path = directory / name
    path.write_text(textwrap.dedent(body).lstrip())
    path.chmod(0o755)
    return path


@pytest.fixture
def scripts(tmp_path: Path) -> Path:
    path = tmp_path / "scripts"
    path.mkdir()
    return path


@pytest.fixture
async def engine(repo: Path) -> AsyncIterator[Engine]:
    eng = await Engine.open(repo)
    try:
        yield eng
    finally:
        await eng.close()


# -- polling (never a fixed sleep: the machine may be slow and noisy) ----------------------------


async def wait_file(path: Path, timeout: float = 30.0) -> Path:
    await wait_until(path.exists, timeout, what=str(path))
    return path


async def wait_status(engine: Engine, slug: str, status: Status, timeout: float = 30.0) -> None:
    """Poll the recorded status of a workstream (in whatever process runs it)."""
    deadline = time.monotonic() + timeout
    while (current := (await engine.get(slug)).status) != status:
        if time.monotonic() > deadline:
            raise AssertionError(f"{slug}: status is still {current}, not {status}, after {timeout} s")
        await asyncio.sleep(0.02)


# -- leftover processes --------------------------------------------------------------------------


def read_int(path: Path) -> int:
    return int(path.read_text().strip())


def processes_marked(prefix: str) -> list[int]:
    """Processes whose environment has AIDP_WORKTREE under `prefix`: harnesses (and their
    children) started for this test's repository."""
    needle = f"AIDP_WORKTREE={prefix}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or not pid_alive(int(entry.name)):
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if any(var.startswith(needle) for var in env):
            found.append(int(entry.name))
    return found


@pytest.fixture(autouse=True)
def _kill_leftovers(tmp_path: Path) -> Iterator[None]:
    """Whatever a failing test left running of its own harnesses is killed, by pid."""
    yield
    for pid in processes_marked(str(tmp_path)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# -- a separate aidp process: a small driver that opens the Engine and runs -------------------------

DRIVER = """
import asyncio
import os
import sys
from pathlib import Path

import msgspec

from aidp.engine import Engine, Status


async def main() -> None:
    root, *slugs = sys.argv[1:]
    engine = await Engine.open(Path(root))
    abandon = os.environ.get("DRIVER_ABANDON_WHEN")
    if abandon:
        # Start, wait for the file, then return with neither wait nor close: asyncio.run
        # cancels the run's tasks (what an aidp process stopped abruptly does).
        await engine.start(slugs)
        while not os.path.exists(abandon):
            await asyncio.sleep(0.02)
        return
    try:
        summary = await engine.run(slugs)
        sys.stdout.write(msgspec.json.encode(summary).decode() + "\\n")
    finally:
        await engine.close()


asyncio.run(main())
"""


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start a separate aidp process that runs workstreams: `driver.py <root> <slug>...` (or the
    CLI), in its own session; every one still alive at teardown is killed."""
    path = tmp_path / "driver.py"
    path.write_text(DRIVER)
    started: list[subprocess.Popen[str]] = []

    def start(root: Path, *slugs: str, cli: bool = False, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """With `cli`, the owner is `python -m aidp ws run <slugs> --json` run in the repository."""
        argv = [PYTHON, "-m", "aidp", "ws", "run", *slugs, "--json"] if cli else [PYTHON, str(path), str(root), *slugs]
        proc = subprocess.Popen(
            argv,
            cwd=root,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
