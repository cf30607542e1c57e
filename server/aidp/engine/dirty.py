"""Whether a worktree has uncommitted work, without one `git status` per worktree for every list.

A list shows it for every workstream, and at thousands of worktrees one git process each takes
seconds. What git answered is kept (`.aidp/dirty.json`) with the moment it was asked, and reused
only while nothing in the worktree or in what git reads for it (its index and HEAD, the
repository's config and excludes, the user's) changed since: every change to a file or folder sets
its ctime to the present, and the kernel's clock for ctime cannot be set back from user space. A
change just before git was asked may share its timestamp's tick (git's "racy" case), so anything
changed within `RACY_NS` of that moment is asked again. Worktrees too big to walk cheaply
(`WALK_MAX` entries) are always asked. Each answer also keeps the paths found in the worktree
after it (listed by the first check that reuses it), so later checks stamp those instead of
walking the worktree again. The file is only a shortcut: a lost or stale one costs git
processes, never a wrong answer, so concurrent writers need no lock.

The checks themselves (`holds`, `shared_files`, `newest`) use os alone, and msgspec is imported
only to read and write the file: `aidp.engine.listing` reuses them in `aidp ws list`'s fast path,
which must start in a few milliseconds.
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False  # typing itself costs milliseconds here: mypy reads this name as True
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from pathlib import Path

CACHE_FILE = "dirty.json"
RACY_NS = 2_000_000_000  # file times tick coarsely (jiffies; 2 s on FAT): well past any tick
WALK_MAX = 2_000  # entries walked in one worktree before it counts as too big (always asked)

# One answer as dirty.json keeps it: (asked_ns, dirty, head, admin, index, big, entries); see `Verified`.
Kept = tuple[int, bool, str, str, tuple[int, ...], bool, tuple[str, ...] | None]


class Verified:
    """What git said of one worktree: `dirty`, asked at `asked_ns`, its branch at `head`, its
    admin folder (`.git/worktrees/<id>`, as its `.git` file named it) and its index as git left it
    (`git status` itself rewrites the index: that write is no change); `big`: too many entries to
    walk, so never reused; `entries`: the paths in it, listed after git answered (None: not yet),
    which the next checks stamp instead of walking it (see `holds`). A plain class, not a msgspec
    Struct, so that importing this module imports no msgspec."""

    __slots__ = ("admin", "asked_ns", "big", "dirty", "entries", "head", "index")

    def __init__(
        self,
        asked_ns: int,
        dirty: bool,
        head: str,
        admin: str,
        index: tuple[int, ...],
        big: bool = False,
        entries: tuple[str, ...] | None = None,
    ) -> None:
        self.asked_ns, self.dirty, self.head = asked_ns, dirty, head
        self.admin, self.index, self.big, self.entries = admin, index, big, entries

    def as_kept(self) -> Kept:
        return (self.asked_ns, self.dirty, self.head, self.admin, self.index, self.big, self.entries)


class TooBig(Exception):
    """More entries than `WALK_MAX` in one worktree."""


def load(state_dir: Path) -> dict[str, Verified]:
    """The answers kept in the repository's `dirty.json` ({} when missing or unreadable)."""
    import msgspec

    class Answer(msgspec.Struct, array_like=True):  # `Kept`; an earlier aidp's has no entries
        asked_ns: int
        dirty: bool
        head: str
        admin: str
        index: tuple[int, ...]
        big: bool
        entries: tuple[str, ...] | None = None

    try:
        kept = msgspec.json.decode((state_dir / CACHE_FILE).read_bytes(), type=dict[str, Answer])
    except (OSError, msgspec.DecodeError):
        return {}
    return {path: Verified(*msgspec.structs.astuple(answer)) for path, answer in kept.items()}


def shared_files(common_dir: str) -> list[str]:
    """What git reads besides the worktree that can change its answer (untracked files ignored or
    not): the repository's config and excludes, the user's."""
    home = os.path.expanduser("~")
    config = os.path.join(os.environ.get("XDG_CONFIG_HOME") or os.path.join(home, ".config"), "git")
    own = [os.path.join(common_dir, "config"), os.path.join(common_dir, "info", "exclude")]
    return [*own, os.path.join(home, ".gitconfig"), os.path.join(config, "config"), os.path.join(config, "ignore")]


def holds(
    worktree: str, admin: str, index: tuple[int, ...], asked_ns: int, shared: int, entries: tuple[str, ...]
) -> bool:
    """Whether what git answered of `worktree` at `asked_ns` is still true: its index is the one
    git left (`index`, in its admin folder `admin`), and nothing in it, its HEAD or the shared files
    (`shared`: their newest ctime, see `newest`) changed since `RACY_NS` before git was asked.
    Raises OSError when it is not readable.

    `entries` is what `entries_of` found in it after git was asked: a folder's ctime changes when
    an entry is added, removed or renamed in it, so while the worktree's and each listed folder's
    ctime are older than the answer, they hold what was listed, and stamping them is stamping
    everything in it. That is an lstat each, without a scandir of every folder (5 system calls)."""
    if asked_ns > time.time_ns() or index_of(admin) != index:  # (or the clock was set back)
        return False
    lstat = os.lstat
    newest = max(lstat(f"{admin}/HEAD").st_ctime_ns, lstat(worktree).st_ctime_ns, shared)
    for path in entries:
        newest = max(newest, lstat(f"{worktree}/{path}").st_ctime_ns)
    return newest < asked_ns - RACY_NS


def entries_of(worktree: str) -> tuple[str, ...]:
    """The paths of everything in `worktree`, relative to it, for `holds` to stamp later. Raises
    TooBig past `WALK_MAX` entries, OSError when it is not readable."""
    start = len(os.path.join(worktree, ""))
    return tuple(entry.path[start:] for entry in _walk(worktree, WALK_MAX))


class DirtyCache:
    """The answers kept for one repository; `reusable` and `record` for a batch, then `save`."""

    def __init__(self, state_dir: Path, common_dir: Path) -> None:
        self._path = state_dir / CACHE_FILE
        self._changed = False
        self._known = load(state_dir)
        self._shared = shared_files(str(common_dir))

    def reusable(self, worktrees: Iterable[tuple[str, str]]) -> dict[str, bool]:
        """The kept answers still true for these (worktree, branch head) pairs; the others are to
        be asked of git. Stamps each worktree's entries, listed once after its answer (blocking:
        call it off the event loop)."""
        shared = newest(self._shared)
        found: dict[str, bool] = {}
        for path, head in worktrees:
            kept = self._known.get(path)
            if kept is None or kept.head != head or kept.big:
                continue
            try:
                entries = entries_of(path) if kept.entries is None else kept.entries
                if holds(path, kept.admin, kept.index, kept.asked_ns, shared, entries):
                    found[path] = kept.dirty
                    if kept.entries is None:
                        kept.entries, self._changed = entries, True
            except TooBig:
                self._known[path] = Verified(*kept.as_kept()[:5], big=True)
                self._changed = True
            except OSError:  # not readable as it was: git says what it is
                continue
        return found

    def record(self, path: Path, head: str, asked_ns: int, dirty: bool) -> None:
        """What git said (`asked_ns`: `time.time_ns()` taken before git was started)."""
        was = self._known.get(str(path))
        try:
            admin = (path / ".git").read_text().removeprefix("gitdir:").strip()
            index = index_of(admin)
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
        import msgspec

        if not self._changed:
            return
        temporary = self._path.with_name(f"{CACHE_FILE}.{os.getpid()}.tmp")
        try:
            temporary.write_bytes(msgspec.json.encode({k: v.as_kept() for k, v in self._known.items()}))
            temporary.replace(self._path)
        except OSError:  # a read-only state folder: the next list asks git again
            temporary.unlink(missing_ok=True)


def newest(paths: Iterable[str]) -> int:
    """The latest ctime among these files (0 for missing ones)."""
    found = 0
    for path in paths:
        try:
            found = max(found, os.lstat(path).st_ctime_ns)
        except OSError:
            continue
    return found


def index_of(admin: str) -> tuple[int, ...]:
    """The index file's identity: git replaces it (a new inode) on every write. () when missing."""
    try:
        st = os.lstat(f"{admin}/index")
    except FileNotFoundError:
        return ()
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _walk(worktree: str, limit: int) -> Iterator[os.DirEntry[str]]:
    """Every entry in `worktree`, at any depth. Raises TooBig past `limit` entries, OSError when
    unreadable."""
    folders, seen = [worktree], 0
    while folders:
        with os.scandir(folders.pop()) as entries:
            for entry in entries:
                seen += 1
                if seen > limit:
                    raise TooBig(worktree)
                yield entry
                if entry.is_dir(follow_symlinks=False):
                    folders.append(entry.path)
