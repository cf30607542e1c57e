"""The programs aidp runs for its own work (git, gh), so that what they start never outlives them.

git runs the repository's hooks (`post-checkout` when a worktree is made, `post-commit`,
`reference-transaction`, ...): the user's programs, which may run for minutes (`npm install`) or
for ever. Each tool therefore runs in its own process group, with its aidp process's identity in
its environment (`AIDP_TOOL_OWNER`, and `AIDP_TOOL` for the one command). A cancellation (Ctrl-C,
`$/cancelRequest`, a client gone) ends the command's whole tree before it goes on; recovery ends
what the tools of a dead aidp process left (`end_left`), once it finds that process's records.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from aidp.engine import procs

OWNER = "AIDP_TOOL_OWNER"
COMMAND = "AIDP_TOOL"
GRACE_S = 2.0  # what a cancelled tool's tree gets between SIGTERM and SIGKILL

_ids = itertools.count(1)


def owner_marker(pid: int, started: int | None) -> dict[str, str]:
    """The environment entry every tool run by the aidp process (pid, start time) carries."""
    return {OWNER: f"{pid}.{started}"}


@functools.cache
def _own_marker(pid: int) -> dict[str, str]:
    """This process's `owner_marker`, by pid (a forked child has its own)."""
    return owner_marker(pid, procs.start_time(pid))


@contextlib.asynccontextmanager
async def started(
    argv: list[str], cwd: Path, env: Mapping[str, str] | None = None, stdin: bool = False
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`argv` started in `cwd` with its stdout and stderr piped (and its stdin, if `stdin`, else
    /dev/null). If the body raises (a cancellation), the tool's tree is ended first."""
    marker = {**_own_marker(os.getpid()), COMMAND: str(next(_ids))}
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env={**(os.environ if env is None else env), **marker},
        process_group=0,
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        yield proc
    except BaseException:
        groups = await asyncio.to_thread(procs.groups_marked, marker)  # also what left with `setsid`
        await procs.terminate([procs.Tree(pgid=g) for g in groups | {proc.pid}], GRACE_S)
        await proc.wait()
        raise


async def run(
    argv: list[str], cwd: Path, env: Mapping[str, str] | None = None, stdin: bytes | None = None
) -> tuple[int, bytes, bytes]:
    """The tool's exit status, stdout and stderr, `stdin` written to it."""
    async with started(argv, cwd, env, stdin is not None) as proc:
        out, err = await proc.communicate(stdin)
    assert proc.returncode is not None
    return proc.returncode, out, err


async def end_hooks(grace_s: float, poll_s: float = 0.05) -> int:
    """End what this process's tools started (a repository's git hooks), not the tools: a git
    whose hook ended finishes its own work and its caller goes on (a land whose branch has moved
    still brings its worktree along), where ending git would cut that work short. SIGTERM, SIGKILL
    after `grace_s`. How many processes there were."""
    me = os.getpid()
    mine = _own_marker(me)

    def hooks() -> list[int]:
        return [pid for pid, parent, _ in procs.marked(mine) if parent != me]

    pids = await asyncio.to_thread(hooks)
    found = len(pids)
    _signal(pids, signal.SIGTERM)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    while pids and loop.time() < deadline:
        await asyncio.sleep(poll_s)
        pids = await asyncio.to_thread(hooks)
    _signal(pids, signal.SIGKILL)
    return found


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


async def end_left(owner_pid: int, owner_start: int, wait_s: float) -> bool:
    """End what the tools of the dead aidp process (owner_pid, owner_start) left running, SIGKILL
    after `wait_s`. Whether anything was left. A tool that both dropped its environment and left
    its group is not found: tools get no cgroup, since git runs several for each workstream made."""
    groups = await asyncio.to_thread(procs.groups_marked, owner_marker(owner_pid, owner_start))
    trees = [procs.Tree(pgid=g) for g in groups]
    await procs.terminate(trees, wait_s)
    return bool(trees)
