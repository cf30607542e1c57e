"""Shared fixtures for the end-to-end tests: a real git repository with one commit, helpers to
write `.aidp/config.toml` and small harness scripts, an opened Engine, and /proc probes to check
what the children left behind. Nothing here mocks the engine: harnesses are real processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from aidp.engine import Engine, Status

PYTHON = sys.executable
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "aidp tests",
    "GIT_AUTHOR_EMAIL": "tests@aidp.invalid",
    "GIT_COMMITTER_NAME": "aidp tests",
    "GIT_COMMITTER_EMAIL": "tests@aidp.invalid",
}


def git(cwd: Path, *args: str) -> str:
    """Run git in a test repository (never in the project's own checkout)."""
    out = subprocess.run(
        ["git", *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **GIT_IDENTITY},
    )
    assert out.returncode == 0, f"git {' '.join(args)} failed: {out.stderr}"
    return out.stdout


@pytest.fixture(autouse=True)
def _git_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """A git identity for every git the engine runs, whatever the machine's global config."""
    for key, value in GIT_IDENTITY.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A fresh repository on branch `main` with one commit (README.md)."""
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.name", GIT_IDENTITY["GIT_AUTHOR_NAME"])
    git(root, "config", "user.email", GIT_IDENTITY["GIT_AUTHOR_EMAIL"])
    git(root, "config", "commit.gpgsign", "false")
    (root / "README.md").write_text("hello\n")
    git(root, "add", "README.md")
    git(root, "commit", "-q", "-m", "initial")
    return root


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


async def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


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


def wait_until_sync(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


# -- /proc probes ---------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (a zombie runs nothing)."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) members of a process group."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


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
