"""A cgroup v2 of its own for each harness, where the system lets aidp create one.

A process group can be left (`setsid`, a double fork) and an environment marker dropped
(`env -i`), but a process cannot leave its cgroup without privileges, and `cgroup.kill` ends every
member at once. So where aidp may create cgroups (root, or a delegated user cgroup under systemd),
each harness runs in `<aidp's own cgroup>/aidp-<run id>-<slug>`; elsewhere this module says None
and aidp falls back to process groups and the environment marker (see `procs`).

`AIDP_CGROUPS=0` in aidp's environment turns cgroups off (to compare, or to work around a system
that misbehaves).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from functools import cache
from pathlib import Path

from aidp.engine import kernfs

log = logging.getLogger(__name__)

_disabled = False

# An empty aidp cgroup made this long ago is one an aidp process left when it died (see `sweep`).
STALE_S = 600.0


@cache
def _parent() -> Path | None:
    """aidp's own cgroup directory in the v2 hierarchy, when it is mounted and writable."""
    if os.environ.get("AIDP_CGROUPS") == "0":
        return None
    try:
        own = next(
            line[3:].strip() for line in Path("/proc/self/cgroup").read_text().splitlines() if line.startswith("0::")
        )
        mount = next(
            fields[4]
            for fields in (line.split() for line in Path("/proc/self/mountinfo").read_text().splitlines())
            if fields[fields.index("-") + 1] == "cgroup2"
        )
    except (OSError, StopIteration, ValueError):
        return None
    parent = Path(mount) / own.lstrip("/")
    return parent if os.access(parent, os.W_OK) else None


def available() -> bool:
    """Whether harnesses get cgroups here (for `aidp doctor`)."""
    return _parent() is not None and not _disabled


def place(run_id: str, slug: str, attempt: int = 1) -> Path | None:
    """Where this workstream run's cgroup goes, or None where aidp cannot have one. Known before
    anything starts, so a claim records it and recovery finds the cgroup whenever aidp died. A
    retried attempt gets its own (the last one's may still be emptying)."""
    parent = _parent()
    name = f"aidp-{run_id}-{slug}" + (f".{attempt}" if attempt > 1 else "")  # slugs have no dots
    return None if parent is None or _disabled else parent / name


def cpu_s(path: Path) -> float | None:
    """CPU time used by everything that ever ran in the cgroup (the kernel counts the dead too)."""
    try:
        stat = kernfs.read_text(path / "cpu.stat")
    except OSError:
        return None
    usec = next((int(line.split()[1]) for line in stat.splitlines() if line.startswith("usage_usec ")), None)
    return None if usec is None else usec / 1e6


def create(path: Path | None) -> Path | None:
    """Make the cgroup at `path` (from `place`); None where aidp cannot have one."""
    global _disabled
    if path is None or _disabled:
        return None
    try:
        path.mkdir()
    except OSError as exc:
        log.warning("cgroups unavailable (%s); falling back to process groups", exc)
        _disabled = True
        return None
    return path


def members(path: Path) -> list[int]:
    try:
        return [int(pid) for pid in kernfs.read_text(path / "cgroup.procs").split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def populated(path: Path) -> bool:
    """Any live process left (zombies count until reaped, as for a process group)."""
    try:
        return "populated 1" in kernfs.read_text(path / "cgroup.events")
    except FileNotFoundError:
        return False


def signal_all(path: Path, sig: int) -> None:
    if sig == signal.SIGKILL and _write(path / "cgroup.kill", b"1"):
        return  # the kernel kills every member at once, new forks included (Linux 5.14+)
    for pid in members(path):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def remove(path: Path) -> bool:
    """Remove an empty cgroup; one still populated stays (recovery or a later run retries).
    Whether it is gone."""
    try:
        path.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def sweep(stale_s: float = STALE_S) -> list[str]:
    """Remove the empty aidp cgroups made more than `stale_s` ago: the ones an aidp process made
    and then died before recording (a hook or setup killed at its gate), which no recovery knows
    of. An aidp's own cgroup is empty that long after its making only in the moment between its
    command's exit and its removal, and a populated one cannot be removed. The names removed."""
    parent = _parent()
    if parent is None or _disabled:
        return []
    before = time.time() - stale_s
    try:
        with os.scandir(parent) as entries:
            ours = [entry for entry in entries if entry.name.startswith("aidp-")]
    except OSError:
        return []
    removed = []
    for entry in ours:
        try:  # one another aidp removes meanwhile is simply gone
            if entry.stat(follow_symlinks=False).st_mtime < before:
                os.rmdir(entry.path)
                removed.append(entry.name)
        except OSError:
            continue
    return removed


def _write(path: Path, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError:
        return False
    try:
        os.write(fd, data)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
