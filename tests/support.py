"""Plain helpers shared by conftest.py, cli_helpers.py, server_helpers.py and the tests: one git
identity and repository recipe, one way to run the CLI, one poll, one set of /proc probes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

PYTHON = sys.executable
WAIT_S = 60.0
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "aidp tests",
    "GIT_AUTHOR_EMAIL": "tests@aidp.invalid",
    "GIT_COMMITTER_NAME": "aidp tests",
    "GIT_COMMITTER_EMAIL": "tests@aidp.invalid",
}

# Run a test both ways a harness can be started: in a cgroup (directly, its start recorded first)
# and without (through the launcher, which waits at its gate until its pid is recorded).
CGROUPS = pytest.mark.parametrize("cgroups", ["auto", "off"], ids=["cgroups", "no-cgroups"])


def cgroup_env(cgroups: str) -> dict[str, str]:
    return {"AIDP_CGROUPS": "0"} if cgroups == "off" else {}


def cancel_b_harness(tmp_path: Path, repo: Path, stamps: Path) -> list[str]:
    """A harness command (argv; `{slug}` its argument) that stamps its start in `stamps`. As `a`, it
    has another aidp process (`aidp ws cancel b`) record a cancel of `b`, and ends the moment that
    process says "cancelling b" (stamped as `asked`): `a`'s slot frees before the run's ticker
    (every 0.5 s) can have read the request."""
    script = tmp_path / "cancel_b.py"
    script.write_text(
        "import pathlib, subprocess, sys\n"
        f"stamps = pathlib.Path({str(stamps)!r})\n"
        "(stamps / sys.argv[1]).write_text('started')\n"
        "if sys.argv[1] == 'a':\n"
        "    cancel = [sys.executable, '-m', 'aidp', 'ws', 'cancel', 'b']\n"
        f"    asking = subprocess.Popen(cancel, cwd={str(repo)!r}, stdout=subprocess.PIPE, text=True)\n"
        "    (stamps / 'asked').write_text(asking.stdout.readline())\n"
    )
    return [PYTHON, str(script), "{slug}"]


def child_env() -> dict[str, str]:
    """The environment for git and aidp children: commits work whatever the machine's git config."""
    return {**os.environ, **GIT_IDENTITY}


def git(cwd: Path, *args: str) -> str:
    """Run git in a test repository (never in the project's own checkout)."""
    out = subprocess.run(
        ["git", *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        env=child_env(),
    )
    assert out.returncode == 0, f"git {' '.join(args)} failed: {out.stderr}"
    return out.stdout


def make_repo(tmp_path: Path) -> Path:
    """A fresh repository `tmp_path/repo` on branch `main` with one commit (README.md)."""
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


def git_hook(repo: Path, name: str, body: str) -> None:
    """The repository's git hook `name` (post-checkout, post-commit, ...): `body` run by sh."""
    hook = repo / ".git" / "hooks" / name
    hook.parent.mkdir(exist_ok=True)
    hook.write_text(f"#!/bin/sh\n{body}\n")
    hook.chmod(0o755)


def cli(
    cwd: Path, *args: str, timeout: float = WAIT_S, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The `aidp` CLI in `cwd`: a separate process with its own engine (`env`: added variables)."""
    return subprocess.run(
        [PYTHON, "-m", "aidp", *args],
        cwd=cwd,
        env={**child_env(), **(env or {})},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# -- polling (never a fixed sleep: the machine may be slow and noisy) ----------------------------


def wait_until_sync(predicate: Callable[[], bool], timeout: float = WAIT_S, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


async def wait_until(predicate: Callable[[], bool], timeout: float = WAIT_S, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


# -- /proc probes (independent of the engine's own) ------------------------------------------------


def proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), or None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (a zombie runs nothing, and no init may
    reap it in a container)."""
    fields = proc_stat(pid)
    return fields is not None and fields[0] != "Z"


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) members of a process group."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = proc_stat(int(entry.name))
        if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def marked(marker: str) -> list[psutil.Process]:
    """Live processes with `marker` in their argv (whatever session or group they are in)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if marker in " ".join(proc.info["cmdline"] or []) and proc.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found
