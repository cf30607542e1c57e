"""`aidp ws list` shown again from the table the last list printed, while nothing it read changed.

A full list imports asyncio, SQLite and the engine, opens the state database and asks git: about a
third of a second before the first row, seconds at 10,000 workstreams. So each plain `aidp ws list`
keeps what it printed, as data (`.aidp/ws-list.cache`): the cells of each row and the note under it
(the layout depends on the terminal's width at print time, so it is made again each time, by the
same code as the full list's, `table.lay_out_columns`), and the fingerprint of every input of that
list, taken before it read them (`aidp.engine.listing`). The next `aidp ws list` (`serve`, called
by `main` before anything else is imported) prints the kept table when the fingerprint still holds.

It is not used, and the full list runs, when anything is unusual: no file, one of another format or
aidp version or code, a damaged or truncated one, a fingerprint that does not hold or was taken
within the racy window, another HOME or git environment, a run from a linked worktree (`.git` a
file), a colour setting the kept cells depend on (conflicts are marked '⚠' only in colour). The full
list keeps nothing (and removes what was kept) while a workstream is in flight (queued, running,
cancelling: a dead process's claims are corrected by its `recover`) or being created, removed or
landed, a hook runs, one has no change summary, or worktrees are out of step with the records (the
'!' lines).

The file is `marshal` data of plain tuples, strings, ints, bools and None, behind a magic string and
a format number, and its shape is checked before use: reading it executes nothing (unlike pickle),
and `marshal` is built into the interpreter, where json costs an import of a few milliseconds (the
whole budget) and decodes 10,000 rows slower. It is written whole to a temporary file and renamed
into place, so two lists racing leave one whole, valid file.
"""

from __future__ import annotations

import marshal
import os
import sys

from aidp import __version__
from aidp.cli.table import HEADER, Row, lay_out_columns, terminal_width
from aidp.engine import listing

TYPE_CHECKING = False  # typing itself costs milliseconds here: mypy reads this name as True
if TYPE_CHECKING:
    from typing import Any

    from aidp.engine.model import Workstream

CACHE_FILE = "ws-list.cache"
MAGIC = "aidp ws list table"
FORMAT = 4
STATE_DIR = ".aidp"  # gitrepo.STATE_DIR (gitrepo imports asyncio)
ASKED = (["ws", "list"], ["--no-color", "ws", "list"])  # the command lines served from the file
# The code that makes the cells: a kept table is of this code (a checkout between two releases too).
_CLI = os.path.dirname(__file__)
CODE = [os.path.join(_CLI, name) for name in ("fastlist.py", "render.py", "progress_text.py")]
CODE.append(os.path.join(os.path.dirname(_CLI), "engine", "model.py"))


Identity = tuple[str, int, str, tuple[tuple[int, int], ...], tuple[tuple[str, str], ...]]


def identity() -> Identity | None:
    """What besides the repository's files a kept table depends on: aidp's version and code, where
    the user's git config is, and git's variables."""
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k in ("HOME", "XDG_CONFIG_HOME") or k[:4] == "GIT_"))
    code = []
    for path in CODE:
        try:
            st = os.stat(path)
        except OSError:
            return None
        code.append((st.st_size, st.st_mtime_ns))
    return (MAGIC, FORMAT, __version__, tuple(code), env)


def serve(argv: list[str]) -> bool:
    """Print the kept table for this command line when it is still what a full list would print;
    False when it printed nothing (the full list runs). BrokenPipeError as `print` raises it."""
    if argv not in ASKED:
        return False
    try:
        root = _root(os.getcwd())
    except OSError:  # the current directory was removed
        return False
    data = None if root is None else _ours(_read(os.path.join(root, STATE_DIR, CACHE_FILE)), root)
    if data is None:
        return False
    fancy = sys.stdout.isatty() and not os.environ.get("NO_COLOR") and "--no-color" not in argv
    kept = _checked(data, fancy)
    if kept is None:
        return False
    sys.stdout.write("\n".join(lay_out_columns(*kept, terminal_width())) + "\n")
    sys.stdout.flush()
    return True


def keep(
    root: str,
    inputs: listing.Fingerprint,
    workstreams: list[Workstream],
    rows: list[Row],
    after: list[str],
    busy: bool = False,
) -> None:
    """Keep the table a full list printed (`rows` laid out, then the lines `after` it), with the
    fingerprint of its `inputs` taken before it read them. When it cannot be checked later (see the
    module's docstring), lines after it tell of worktrees out of step (rare, and read from what the
    fingerprint does not stamp), or the list was made while another process was `busy` creating,
    removing or landing a workstream or running a hook (if it dies, only the full list's recovery
    corrects what it left), or within the racy window, the kept one is removed instead."""
    from aidp.cli.render import fancy

    path = os.path.join(root, STATE_DIR, CACHE_FILE)
    changes = [ws.changes for ws in workstreams]
    checked = None
    if not (after or busy or None in changes or any(ws.status.in_flight for ws in workstreams)):
        shown = [(ws.path, c.dirty) for ws, c in zip(workstreams, changes, strict=True) if c is not None]
        checked = listing.with_worktrees(inputs, os.path.dirname(path), shown)
    kind = identity()
    if checked is None or kind is None or not checked.trusted:
        _remove(path)
        return
    coloured = fancy() if any(c is not None and c.conflicts for c in changes) else None
    same: dict[str, str] = {}  # one object per distinct cell: marshal writes a repeat as a reference
    cells = zip(HEADER, *(row for row, _ in rows), strict=True)  # (with the header: nine columns, even of no rows)
    columns = tuple(tuple(same.setdefault(cell, cell) for cell in column[1:]) for column in cells)
    notes = tuple(same.setdefault(note, note) for _, note in rows)
    data = (kind, root, coloured, checked.as_data(), columns, notes)
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        with open(temporary, "wb") as f:
            marshal.dump(data, f)
        os.replace(temporary, path)
    except OSError:  # no state folder (a repository aidp never wrote to) or a read-only one
        _remove(temporary)


def _read(path: str) -> object:
    """The kept file's data, not checked yet; None when it is missing or not `marshal` data."""
    try:
        with open(path, "rb") as f:
            return marshal.loads(f.read())  # (`marshal.load` reads a file in small pieces: 5x slower)
    except (OSError, EOFError, ValueError, TypeError):
        return None


def _ours(data: object, root: str) -> tuple[Any, ...] | None:
    """`data` when it is a table kept by this aidp for this repository and environment (its six
    parts not checked yet); None otherwise."""
    kind = identity()
    if kind is None or not (isinstance(data, tuple) and len(data) == 6 and data[:2] == (kind, root)):
        return None
    return data


def _remove(path: str) -> None:
    import contextlib

    with contextlib.suppress(OSError):
        os.unlink(path)


def _root(start: str) -> str | None:
    """The main working tree around `start`: the nearest folder with a `.git` folder, owned by this
    user (git refuses another's). None where the full list must find it (a `.git` file: a linked
    worktree or a separate git dir; none at all)."""
    folder = start
    while True:
        dot_git = os.path.join(folder, ".git")
        try:
            st = os.stat(dot_git)
        except FileNotFoundError:
            parent = os.path.dirname(folder)
            if parent == folder:
                return None
            folder = parent
            continue
        except OSError:
            return None
        return folder if os.path.isdir(dot_git) and st.st_uid == os.geteuid() else None


def _checked(data: tuple[Any, ...], fancy: bool) -> tuple[tuple[tuple[str, ...], ...], tuple[str, ...]] | None:
    """The cells, by column, and the notes, when `data` (one of `_ours`) is a table kept for this
    colour setting, of the expected shape (checked by what raises TypeError on anything else, in
    C), whose fingerprint still holds; None otherwise."""
    coloured, inputs, columns, notes = data[2:]
    if (coloured is not None and coloured is not fancy) or not isinstance(notes, tuple):
        return None
    if not (isinstance(columns, tuple) and len(columns) == len(HEADER) and all(type(c) is tuple for c in columns)):
        return None
    if {len(column) for column in (*columns, notes)} != {len(notes)}:
        return None
    try:
        "".join(map("".join, columns)) + "".join(notes)
    except TypeError:
        return None
    fp = listing.Fingerprint.from_data(inputs)
    if fp is None or not listing.still_true(fp):
        return None
    return columns, notes
