"""The watchdog of a remote attempt (`remote._watch` starts it before the harness): a small
process, quick to start, that outlives the Ray worker running the attempt and ends the harness's
tree if that worker dies first."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

from aidp.engine import procs


def main(argv: list[str]) -> None:
    """The watchdog: detached, it reads its stdin, a pipe the worker holds. "done" ends it
    quietly; an end of file without it means the worker died: SIGKILL the harness's tree, by its
    cgroup and by the environment marker every process of it carries (a grandchild in a session
    of its own too)."""
    run_id, slug, cgroup = argv
    if os.fork() > 0:
        os._exit(0)  # the starter returns at once; this process is init's child now
    if os.read(0, 4) == b"done":
        return
    tree = procs.Tree(cgroup=Path(cgroup) if cgroup else None)
    trees = [tree, *(procs.Tree(pgid=g) for g in procs.marked_groups(run_id, slug))]
    for each in trees:
        each.signal(signal.SIGKILL)
    with contextlib.suppress(OSError):
        asyncio.run(procs.terminate(trees, 0))


if __name__ == "__main__":
    main(sys.argv[1:])
