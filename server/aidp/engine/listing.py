"""The fingerprint of everything a list of the workstreams reads, so a list made earlier can be
shown again, unchanged, without opening the state database or asking git.

A list reads the state database, the config, the worktrees folder, git's refs and, per worktree,
whether it has uncommitted work. `take` stamps each of those files and folders (inode, size,
mtime) BEFORE the list reads them; `still_true` stamps them again: when nothing changed, the
list made after `take` is still what a new one would show. A folder's stamp changes when an entry
is added, removed or renamed in it, which is how git writes a loose ref (a rename into
`refs/heads/...`) and how SQLite's log, a new worktree or a removed one show.

File times tick coarsely (a jiffy), so a change just after `take` may carry the same stamp as one
just before it: as git does with its index ("racy git"), a fingerprint with any input stamped
within `dirty.RACY_NS` of the moment it was taken is not trusted, and never holds.

Uncommitted work is per worktree what `aidp.engine.dirty` checks (its index, its HEAD, the ctimes
of its files, git's shared config and excludes): `with_worktrees` adds, for each worktree, git's
last answer kept in `.aidp/dirty.json`, the flag the list showed and the paths in it then
(`dirty.entries_of`, kept with the answer); it holds while that answer still holds and says the
same. Stamping the paths listed, rather than walking each worktree again, saves a scandir per
folder: at 10,000 worktrees most of the check's system calls.

Imports nothing but os and time (and `dirty`'s checks, which import nothing more): `aidp ws list`
checks a fingerprint before anything else is imported. Both the CLI (its table cache,
`aidp.cli.fastlist`) and the server can keep one with what they listed. Use:

    fp = take(root, state_dir, worktrees_dir)   # before reading anything
    ...list...                                  # (with its uncommitted-work flags: shown)
    fp = with_worktrees(fp, state_dir, shown)   # None: some worktree cannot be checked
    ...later...
    if fp is not None and still_true(fp): reuse what was listed
"""

from __future__ import annotations

import os
import stat
import time

from aidp.engine import dirty

TYPE_CHECKING = False  # typing itself costs milliseconds here: mypy reads this name as True
if TYPE_CHECKING:
    from collections.abc import Iterable

# The engine's file names (engine.STATE_DB, config.CONFIG_NAME), here too: importing those modules
# would import SQLite and the engine (tests/test_cli_fastlist.py checks they agree).
STATE_DB = "state.db"
CONFIG_NAME = "config.toml"

Stamp = tuple[int, int, int] | None  # (inode, size, mtime_ns); None: missing or empty
# The worktrees checked, as columns (cheap to check the types of at 10,000): their paths, the
# uncommitted flag the list showed for each, git's answer as `dirty.json` keeps it (the admin
# folder, the index's identity, when git was asked), and the paths in each (one tuple for all the
# worktrees that hold the same, so `marshal` writes it once).
Worktrees = tuple[
    tuple[str, ...],
    tuple[bool, ...],
    tuple[str, ...],
    tuple[tuple[int, ...], ...],
    tuple[int, ...],
    tuple[tuple[str, ...], ...],
]
NO_WORKTREES: Worktrees = ((), (), (), (), (), ())


class Fingerprint:
    """The stamps of a list's inputs, taken at `taken_ns`; `trusted`: none was racy then;
    `common`: the repository's git common dir (whose config and excludes git reads)."""

    __slots__ = ("common", "files", "taken_ns", "trusted", "worktrees")

    def __init__(
        self,
        taken_ns: int,
        trusted: bool,
        common: str,
        files: tuple[tuple[str, Stamp], ...],
        worktrees: Worktrees = NO_WORKTREES,
    ) -> None:
        self.taken_ns, self.trusted, self.common = taken_ns, trusted, common
        self.files, self.worktrees = files, worktrees

    def as_data(self) -> tuple[int, bool, str, tuple[tuple[str, Stamp], ...], Worktrees]:
        """Plain tuples, ints, bools and strings (for `marshal`, json or memory)."""
        return (self.taken_ns, self.trusted, self.common, self.files, self.worktrees)

    @classmethod
    def from_data(cls, data: object) -> Fingerprint | None:
        """The fingerprint `as_data` gave, or None when `data` is not exactly of that shape."""
        if not (isinstance(data, tuple) and len(data) == 5):
            return None
        taken_ns, trusted, common, files, worktrees = data
        if not (type(taken_ns) is int and type(trusted) is bool and type(common) is str and isinstance(files, tuple)):
            return None
        if not (all(map(_is_file, files)) and _are_worktrees(worktrees)):
            return None
        return cls(taken_ns, trusted, common, files, worktrees)


def take(root: str, state_dir: str, worktrees_dir: str) -> Fingerprint:
    """Stamp every input of a list of the repository at `root` (state in `state_dir`, worktrees
    made in `worktrees_dir`); call it before the list reads anything."""
    now = time.time_ns()
    try:
        git_dir, common = _git_dirs(root)
    except OSError:
        return Fingerprint(now, False, "", ())  # not a repository as expected: never trusted
    paths = [
        os.path.join(state_dir, STATE_DB),
        os.path.join(state_dir, STATE_DB + "-wal"),
        os.path.join(state_dir, CONFIG_NAME),
        worktrees_dir,
        os.path.join(git_dir, "HEAD"),  # the main worktree's HEAD (the base of 'HEAD at creation')
        os.path.join(common, "HEAD"),
        os.path.join(common, "packed-refs"),
        os.path.join(common, "worktrees"),
        *_folders(os.path.join(common, "refs")),
        *dirty.shared_files(common),
    ]
    files = tuple((path, _stamp(path)) for path in dict.fromkeys(paths))
    racy = now - dirty.RACY_NS
    trusted = all(stamp is None or stamp[2] < racy for _, stamp in files)
    return Fingerprint(now, trusted, common, files)


def with_worktrees(fp: Fingerprint, state_dir: str, shown: Iterable[tuple[str, bool]]) -> Fingerprint | None:
    """`fp` with each worktree's check: `shown` holds (worktree path, the uncommitted flag the list
    showed) for each workstream whose changes it showed. None when a worktree has no answer of
    git's kept (`dirty.json`) that says the same, or cannot be listed: it cannot be checked without
    git. Each worktree's paths are the ones its answer keeps (listed after it, as `dirty.holds`
    needs them), else listed now; an untrusted `fp` comes back as it is (it never holds: no need to
    list them)."""
    from pathlib import Path

    kept = dirty.load(Path(state_dir))
    paths, flags = tuple(path for path, _ in shown), tuple(flag for _, flag in shown)
    answers = [kept.get(path) for path in paths]
    found = [answer for answer, flag in zip(answers, flags, strict=True) if answer and answer.dirty == flag]
    now = time.time_ns()
    if len(found) < len(answers) or any(answer.big or answer.asked_ns > now for answer in found):
        return None
    if not fp.trusted:
        return fp
    admins, indexes = tuple(a.admin for a in found), tuple(a.index for a in found)
    asked = tuple(a.asked_ns for a in found)
    same: dict[str, str] = {}  # one object per distinct path and per distinct tuple: `marshal` writes
    shapes: dict[tuple[str, ...], tuple[str, ...]] = {}  # a repeat as a reference
    try:
        listed = [dirty.entries_of(p) if a.entries is None else a.entries for p, a in zip(paths, found, strict=True)]
    except (dirty.TooBig, OSError):
        return None
    entries = tuple(shapes.setdefault(names, tuple(same.setdefault(e, e) for e in names)) for names in listed)
    return Fingerprint(fp.taken_ns, fp.trusted, fp.common, fp.files, (paths, flags, admins, indexes, asked, entries))


def still_true(fp: Fingerprint) -> bool:
    """Whether every input is as it was when `fp` was taken (and `fp` is trusted): a list made
    after `take` shows what a new list would."""
    if not fp.trusted or time.time_ns() < fp.taken_ns:  # the clock was set back
        return False
    if any(_stamp(path) != stamp for path, stamp in fp.files):
        return False
    shared = dirty.newest(dirty.shared_files(fp.common))
    paths, _, admins, indexes, asked, entries = fp.worktrees
    try:
        return all(map(dirty.holds, paths, admins, indexes, asked, [shared] * len(paths), entries))
    except (dirty.TooBig, OSError):
        return False


def _git_dirs(root: str) -> tuple[str, str]:
    """The main worktree's git dir and the repository's common dir: `<root>/.git` for both, unless
    `.git` is a file naming the git dir (`gitdir: ...`), whose `commondir` names the common one."""
    dot_git = os.path.join(root, ".git")
    if os.path.isdir(dot_git):
        return dot_git, dot_git
    with open(dot_git) as f:
        git_dir = os.path.join(root, f.read().removeprefix("gitdir:").strip())
    try:
        with open(os.path.join(git_dir, "commondir")) as f:
            return git_dir, os.path.normpath(os.path.join(git_dir, f.read().strip()))
    except FileNotFoundError:
        return git_dir, git_dir


def _folders(top: str) -> list[str]:
    """`top` and every folder under it (a ref written, added or removed changes one of their stamps)."""
    found, todo = [], [top]
    while todo:
        folder = todo.pop()
        found.append(folder)
        try:
            with os.scandir(folder) as entries:
                todo += [entry.path for entry in entries if entry.is_dir(follow_symlinks=False)]
        except OSError:
            continue
    return sorted(found)


def _stamp(path: str) -> Stamp:
    """An empty file reads as a missing one: every input means the same by both (no state, no
    config, no refs), and SQLite makes its log empty when the database is opened and deletes it
    when the last connection closes, without a change to what it holds. No ctime: SQLite running as
    root gives its log the database's owner each time it opens it (a new ctime, nothing written)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if st.st_size == 0 and stat.S_ISREG(st.st_mode):
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _is_file(item: object) -> bool:
    if not (isinstance(item, tuple) and len(item) == 2 and type(item[0]) is str):
        return False
    stamp = item[1]
    return stamp is None or (isinstance(stamp, tuple) and len(stamp) == 3 and all(type(n) is int for n in stamp))


def _are_worktrees(columns: object) -> bool:
    """Whether `columns` is a `Worktrees`: six columns of one length, each of its type (checked by
    what raises TypeError on anything else, in C: 10,000 worktrees in a millisecond or two)."""
    if not (isinstance(columns, tuple) and len(columns) == 6 and all(type(c) is tuple for c in columns)):
        return False
    paths, flags, admins, indexes, asked, entries = columns
    if len({len(column) for column in columns}) != 1:
        return False
    shapes = list({id(names): names for names in entries}.values())  # each shared tuple once
    if not set(map(type, shapes)) <= {tuple}:
        return False
    try:
        "".join(paths + admins)
        "".join(map("".join, shapes))
    except TypeError:
        return False
    numbers = [n for index in indexes if type(index) is tuple for n in index]
    kinds = (set(map(type, flags)), set(map(type, indexes)), set(map(type, asked)), set(map(type, numbers)))
    return not paths or (kinds[0] <= {bool} and kinds[1] == {tuple} and kinds[2] == {int} and kinds[3] <= {int})


def main(argv: list[str]) -> int:
    """`python -m aidp.engine.listing <parent pid>`: `still_true` of the fingerprint marshalled on
    stdin, for a server that checks thousands of worktrees in the background
    (`aidp.server.snapshot`): in a process of its own at idle priority, the walk takes neither a
    core nor the server's GIL from its answers, and it ends with the server. Exit 0: it holds, 1:
    it does not, 2: not asked as expected; its CPU seconds on stdout."""
    import ctypes
    import marshal
    import signal
    import sys

    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except OSError:  # refused (in some containers): the lowest priority nice gives, then
        os.nice(19)
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: ended when the server ends
    if len(argv) != 1 or str(os.getppid()) != argv[0]:  # the server already gone, or not it
        return 2
    try:
        fp = Fingerprint.from_data(marshal.loads(sys.stdin.buffer.read()))
    except (EOFError, ValueError, TypeError):
        fp = None
    if fp is None:
        return 2
    started = time.thread_time()
    holds = still_true(fp)
    print(time.thread_time() - started)
    return 0 if holds else 1


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
