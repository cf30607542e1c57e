"""Whether a worktree has uncommitted work, without one `git status` per worktree for every list.

A list shows it for every workstream, and at thousands of worktrees one git process each takes
seconds. What git answered is kept (`.aidp/dirty.json`) with the moment it was asked, and reused
only while nothing in the worktree or in what git reads for it (its index and HEAD, the
repository's config and excludes, the user's) changed since: every change to a file or folder sets
its ctime to the present, and the kernel's clock for ctime cannot be set back from user space. A
change just before git was asked may share its timestamp's tick (git's "racy" case), so anything
changed within `RACY_NS` of that moment is asked again. Worktrees too big to walk cheaply
(`WALK_MAX` entries) are always asked. The file is only a shortcut: a lost or stale one costs git
processes, never a wrong answer, so concurrent writers need no lock.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

import msgspec

CACHE_FILE = "dirty.json"
RACY_NS = 2_000_000_000  # file times tick coarsely (jiffies; 2 s on FAT): well past any tick
WALK_MAX = 2_000  # entries walked in one worktree before it counts as too big (always asked)


class Verified(msgspec.Struct, array_like=True):
    """What git said of one worktree: `dirty`, asked at `asked_ns`, its branch at `head`, its
    admin folder (`.git/worktrees/<id>`, as its `.git` file named it) and its index as git left it
    (`git status` itself rewrites the index: that write is no change); `big`: too many entries to
    walk, so never reused."""

    asked_ns: int
    dirty: bool
    head: str
    admin: str
    index: tuple[int, ...]
    big: bool = False


class TooBig(Exception):
    """More entries than `WALK_MAX` in one worktree."""


class DirtyCache:
    """The answers kept for one repository; `reusable` and `record` for a batch, then `save`."""

    def __init__(self, state_dir: Path, common_dir: Path) -> None:
        self._path = state_dir / CACHE_FILE
        self._changed = False
        try:
            self._known = msgspec.json.decode(self._path.read_bytes(), type=dict[str, Verified])
        except (OSError, msgspec.DecodeError):
            self._known = {}
        home = Path.home()
        config = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config") / "git"
        # What git reads besides the worktree that can change its answer (untracked files ignored or not).
        self._shared = [common_dir / "config", common_dir / "info" / "exclude", home / ".gitconfig"]
        self._shared += [config / "config", config / "ignore"]

    def reusable(self, worktrees: Iterable[tuple[str, str]]) -> dict[str, bool]:
        """The kept answers still true for these (worktree, branch head) pairs; the others are to
        be asked of git. Walks each worktree's entries (blocking: call it off the event loop)."""
        shared, now = _newest(self._shared), time.time_ns()
        found: dict[str, bool] = {}
        for path, head in worktrees:
            kept = self._known.get(path)
            if kept is None or kept.big or kept.head != head or kept.asked_ns > now:  # the clock was set back
                continue
            try:
                if _index_of(kept.admin) != kept.index:
                    continue
                newest = _newest_in(path, kept.admin, WALK_MAX)
            except TooBig:
                self._known[path] = msgspec.structs.replace(kept, big=True)
                self._changed = True
                continue
            except OSError:  # not readable as it was: git says what it is
                continue
            if max(newest, shared) < kept.asked_ns - RACY_NS:
                found[path] = kept.dirty
        return found

    def record(self, path: Path, head: str, asked_ns: int, dirty: bool) -> None:
        """What git said (`asked_ns`: `time.time_ns()` taken before git was started)."""
        was = self._known.get(str(path))
        try:
            admin = (path / ".git").read_text().removeprefix("gitdir:").strip()
            index = _index_of(admin)
        except OSError:
            self._known.pop(str(path), None)
            return
        self._known[str(path)] = Verified(asked_ns, dirty, head, admin, index, big=was is not None and was.big)
        self._changed = True

    def forget_except(self, paths: Iterable[str]) -> None:
        """Drop what is kept for worktrees that are no longer listed."""
        keep = set(paths)
        if any(k not in keep for k in self._known):
            self._known = {k: v for k, v in self._known.items() if k in keep}
            self._changed = True

    def save(self) -> None:
        """Written whole and renamed into place, so a reader never sees half a file."""
        if not self._changed:
            return
        temporary = self._path.with_name(f"{CACHE_FILE}.{os.getpid()}.tmp")
        try:
            temporary.write_bytes(msgspec.json.encode(self._known))
            temporary.replace(self._path)
        except OSError:  # a read-only state folder: the next list asks git again
            temporary.unlink(missing_ok=True)


def _newest(paths: Iterable[Path]) -> int:
    """The latest ctime among these files (0 for missing ones)."""
    newest = 0
    for path in paths:
        try:
            newest = max(newest, os.lstat(path).st_ctime_ns)
        except OSError:
            continue
    return newest


def _index_of(admin: str) -> tuple[int, ...]:
    """The index file's identity: git replaces it (a new inode) on every write. () when missing."""
    try:
        st = os.lstat(f"{admin}/index")
    except FileNotFoundError:
        return ()
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _newest_in(worktree: str, admin: str, limit: int) -> int:
    """The latest ctime of the worktree's folders and files, and of its HEAD in its admin folder
    (the index is compared whole). Raises TooBig past `limit` entries, OSError when unreadable."""
    newest = max(os.lstat(f"{admin}/HEAD").st_ctime_ns, os.lstat(worktree).st_ctime_ns)
    folders, seen = [worktree], 0
    while folders:
        with os.scandir(folders.pop()) as entries:
            for entry in entries:
                seen += 1
                if seen > limit:
                    raise TooBig(worktree)
                newest = max(newest, entry.stat(follow_symlinks=False).st_ctime_ns)
                if entry.is_dir(follow_symlinks=False):
                    folders.append(entry.path)
    return newest
