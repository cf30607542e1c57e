"""Process identity and ending a harness's whole process tree (Linux /proc).

A pid alone can be reused, so a process is identified by (pid, start time). Each workstream runs in
its own process group (its leader's pid and start time are recorded), in its own cgroup where the
system allows (`cgroups`), and with `AIDP_RUN_ID` in its environment. Recovery finds a dead aidp
process's leftovers by all three, so neither `env -i` nor `setsid` alone hides a process, and a
reused pid or pgid is never hit.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from aidp.engine import cgroups, kernfs

PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (state first); the command name may hold spaces and
    parentheses, so split after the last ')'."""
    try:
        return kernfs.read_text(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def start_time(pid: int) -> int | None:
    """Start time in clock ticks since boot, or None when the process does not exist."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def is_alive(pid: int, started: int | None) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z" and int(fields[19]) == started


def self_identity() -> tuple[int, int]:
    pid = os.getpid()
    started = start_time(pid)
    assert started is not None
    return pid, started


def recorded_group(pid: int, started: int) -> int | None:
    """The process group a harness with this identity leads, if any of it is left. The kernel
    never hands out a pid still in use as a pgid, so the group is ours unless the pid now names
    another process (a different start time): then our group is gone and the pid was reused."""
    now = start_time(pid)
    if now is not None and now != started:
        return None
    return pid if group_exists(pid) else None


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group: a scan of /proc."""
    members = []
    for entry in PROC.iterdir():
        fields = _stat_fields(int(entry.name)) if entry.name.isdigit() else None
        if fields and int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def usage(tree: Tree) -> tuple[int, float]:
    """What the tree's live processes use now: resident memory (KiB, summed) and CPU seconds."""
    if tree.cgroup is not None:
        pids = cgroups.members(tree.cgroup)
    else:
        pids = group_members(tree.pgid) if tree.pgid is not None else []
    rss_kb, cpu_s = 0, 0.0
    for pid in pids:
        fields = _stat_fields(pid)
        try:
            resident = int(kernfs.read_text(f"/proc/{pid}/statm").split()[1])
        except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
            continue
        if fields:
            rss_kb += resident * PAGE_KB
            cpu_s += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return rss_kb, cpu_s


def marked_groups(run_id: str, slug: str) -> set[int]:
    """Process groups holding a process started for this workstream run, found by the
    environment the harness inherited (so a reused pid or pgid is never mistaken for ours)."""
    return groups_marked(marker(run_id, slug))


def marker(run_id: str, slug: str) -> dict[str, str]:
    """The entries of the environment by which a workstream run's processes are found."""
    return {"AIDP_RUN_ID": run_id, "AIDP_SLUG": slug}


def groups_marked(marker: Mapping[str, str]) -> set[int]:
    """Process groups holding a process whose environment has every entry of `marker`."""
    return {pgid for _, _, pgid in marked(marker)}


def marked(marker: Mapping[str, str]) -> list[tuple[int, int, int]]:
    """(pid, parent pid, process group) of every live process whose environment has every entry
    of `marker`. Without cgroups this reads every process on the machine once per ended
    workstream, so each environment is searched for the whole entries as it is read, neither
    split nor parsed (1.5 ms a scan at 73 processes before, bench: overhead with AIDP_CGROUPS=0)."""
    markers = [f"\0{name}={value}\0".encode() for name, value in marker.items()]
    found = []
    for name in os.listdir(PROC):
        if not name.isdigit():
            continue
        try:
            env = b"\0" + kernfs.read_bytes(f"/proc/{name}/environ") + b"\0"  # entries end in NUL
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if all(marker in env for marker in markers) and (fields := _stat_fields(int(name))) and fields[0] != "Z":
            found.append((int(name), int(fields[1]), int(fields[2])))
    return found


def leftovers(marker: Mapping[str, str], cgroup: Path | None, pid: int | None, pid_start: int | None) -> list[Tree]:
    """Everything of a command whose aidp process died that may still run: its cgroup, which holds
    all of it; without one, the groups carrying its environment marker and the group it led, by
    its recorded identity (which `env -i` cannot drop). Reads /proc: call it off the event loop."""
    if cgroup is not None and cgroup.is_dir():
        return [Tree(cgroup=cgroup)]
    groups = groups_marked(marker)
    if pid is not None and pid_start is not None and (recorded := recorded_group(pid, pid_start)) is not None:
        groups.add(recorded)
    return [Tree(pgid=g) for g in groups]


def _signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to the group; False when the group has no process left (0 only probes)."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def group_exists(pgid: int) -> bool:
    """The cheap probe first; a scan only when it answers yes, since zombies (which no init may
    ever reap in a container) also answer it."""
    return _signal_group(pgid, 0) and bool(group_members(pgid))


@dataclass(frozen=True)
class Tree:
    """Every process one harness started: its process group, its cgroup where it has one (which
    also holds what left the group with `setsid`), and groups found by the environment marker."""

    pgid: int | None = None
    cgroup: Path | None = None

    def alive(self) -> bool:
        return (self.pgid is not None and group_exists(self.pgid)) or (
            self.cgroup is not None and cgroups.populated(self.cgroup)
        )

    def ended(self) -> bool:
        """Nothing of it is left, and its cgroup is removed. A cgroup's `rmdir` fails while any
        process is in it, so for a tree that ended on its own (nearly all) that one system call
        answers what reading `cgroup.events` would, and removes it (bench: overhead); what is left
        to ask is its process group (a process root moved out of the cgroup stays in it)."""
        if self.cgroup is not None and not cgroups.remove(self.cgroup):
            return False
        return self.pgid is None or not group_exists(self.pgid)

    def signal(self, sig: int) -> None:
        """Once per process: the cgroup holds the whole group, so a process never gets the signal
        twice (a second SIGTERM means "now" to some programs)."""
        if self.cgroup is not None and self.cgroup.is_dir():
            cgroups.signal_all(self.cgroup, sig)
        elif self.pgid is not None:
            _signal_group(self.pgid, sig)


async def terminate(
    trees: list[Tree], grace_s: float, hurry: asyncio.Event | None = None, poll_s: float = 0.05
) -> None:
    """SIGTERM every tree at once, wait one grace period (or until `hurry` is set) for them to go,
    then SIGKILL what is left; the cgroups are removed once empty.

    A group leader must be reaped by its parent meanwhile (asyncio does that for our children),
    else it lingers as a zombie member and the wait runs the full grace period."""
    given = trees = [t for t in trees if not t.ended()]  # the ended ones' cgroups are removed already
    for tree in trees:
        tree.signal(signal.SIGTERM)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    wait = poll_s / 10  # most processes go at once on SIGTERM: look again soon, then less often
    while trees and loop.time() < deadline and not (hurry and hurry.is_set()):
        await asyncio.sleep(wait)
        wait = min(wait * 2, poll_s)
        trees = [t for t in trees if t.alive()]
    for tree in trees:
        tree.signal(signal.SIGKILL)
    for _ in range(200):
        trees = [t for t in trees if t.alive()]
        if not trees:
            break
        await asyncio.sleep(poll_s)
    for tree in given:
        if tree.cgroup is not None:
            cgroups.remove(tree.cgroup)
