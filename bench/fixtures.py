"""What every scenario needs: throwaway repositories, workstreams, the aidp commands to run, timing
helpers, and the server's memory as the kernel reports it."""

from __future__ import annotations

import os
import resource
import sqlite3
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path

from aidp.engine import Engine
from bench.rpc import RpcClient

PYTHON = sys.executable
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "aidp bench",
    "GIT_AUTHOR_EMAIL": "bench@aidp.invalid",
    "GIT_COMMITTER_NAME": "aidp bench",
    "GIT_COMMITTER_EMAIL": "bench@aidp.invalid",
}
ENV = {**os.environ, **GIT_IDENTITY}
SERVE_FALLBACK = (
    "from aidp.server.lifecycle import serve; from pathlib import Path; import sys; "
    "raise SystemExit(serve(Path(sys.argv[1])))"
)


def sh(cmd: Sequence[str], cwd: Path | None = None, stdin: bytes | None = None) -> float:
    """Run a command to completion (output discarded, failure raises); returns its wall time."""
    return sh_cpu(cmd, cwd, stdin)[0]


def sh_cpu(cmd: Sequence[str], cwd: Path | None = None, stdin: bytes | None = None) -> tuple[float, float]:
    """`sh`, also returning the CPU seconds (user + system) of the command and every descendant it
    waited for: on a noisy machine CPU time is steadier than wall time."""
    before = children_cpu()
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, input=stdin, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=True)
    return time.perf_counter() - t0, children_cpu() - before


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def process_cpu(pid: int, children: bool = True) -> float:
    """CPU seconds of a running process (all threads), plus (by default) the children it reaped."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11 : 15 if children else 13]) / os.sysconf("SC_CLK_TCK")


def make_repo(path: Path, command: list[str], max_concurrent: int = 8) -> Path:
    """A repository with one commit and `.aidp/config.toml` naming the harness."""
    path.mkdir(parents=True)
    for args in (["init", "-q", "-b", "main"], ["commit", "-q", "--allow-empty", "-m", "bench"]):
        subprocess.run(["git", *args], cwd=path, env=ENV, check=True)
    (path / ".aidp").mkdir()
    quoted = ", ".join(f'"{a}"' for a in command)
    (path / ".aidp" / "config.toml").write_text(
        f"[harness]\ncommand = [{quoted}]\nmax_concurrent = {max_concurrent}\ngrace_s = 5\n"
    )
    return path


async def create_workstreams(
    root: Path,
    slugs: Sequence[str],
    commands: Sequence[list[str] | None] | None = None,
    after: Mapping[str, list[str]] | None = None,
) -> None:
    """Create workstreams through the engine API in this process (setup, not what is measured);
    `after`: the dependencies of some of them (created earlier in `slugs`)."""
    engine = await Engine.open(root)
    try:
        for i, slug in enumerate(slugs):
            command = commands[i] if commands else None
            await engine.create(slug, f"bench task {slug}", command=command, after=(after or {}).get(slug))
    finally:
        await engine.close()


def reset_statuses(root: Path) -> None:
    """Make every workstream runnable by run-all again. aidp has no "reset" (pause/resume restores
    the last run's status), so the benchmark sets the resting status back to `active` in SQLite,
    between repetitions and outside the timed part."""
    with sqlite3.connect(root / ".aidp" / "state.db") as db:
        db.execute("UPDATE workstreams SET status = 'active'")


def worktrees(root: Path) -> list[Path]:
    return sorted((root / ".worktrees").iterdir())


def aidp_cli() -> list[str]:
    return [PYTHON, "-m", "aidp"]


def serve_argv(root: Path) -> list[str]:
    """`python -m aidp serve --root ROOT`, or the documented fallback while the CLI lacks `serve`."""
    if serve_wired():
        return [*aidp_cli(), "serve", "--root", str(root)]
    return [PYTHON, "-c", SERVE_FALLBACK, str(root)]


@cache
def serve_wired() -> bool:
    probe = subprocess.run([*aidp_cli(), "serve", "--help"], env=ENV, capture_output=True, check=False)
    return probe.returncode == 0


@cache
def cli_available() -> bool:
    probe = subprocess.run([*aidp_cli(), "ws", "run-all", "--help"], env=ENV, capture_output=True, check=False)
    return probe.returncode == 0 and b"--json" in probe.stdout


async def start_server(root: Path, stderr_path: Path) -> RpcClient:
    client = await RpcClient.spawn(serve_argv(root), root, stderr_path, ENV)
    await client.initialize(root)
    return client


def proc_status(pid: int, field: str) -> int:
    """A memory figure from /proc/<pid>/status (VmRSS, VmHWM) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)
