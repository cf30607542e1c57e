"""`aidp ws list` shown again from the table the last list printed, while nothing it read changed.

A full list imports asyncio, SQLite and the engine, opens the state database and asks git: about a
third of a second before the first row, seconds at 10,000 workstreams. So each plain `aidp ws list`
keeps what it printed, as data (`.aidp/ws-list.cache`): the cells of each row and the note under it
(the layout depends on the terminal's width at print time, so it is made again each time, by the
same `table.lay_out`), the lines after the table, and the fingerprint of every input of that list,
taken before it read them (`aidp.engine.listing`). The next `aidp ws list` (`serve`, called by
`main` before anything else is imported) prints the kept table when the fingerprint still holds.

It is not used, and the full list runs, when anything is unusual: no file, one of another format or
aidp version, a damaged or truncated one, a fingerprint that does not hold or was taken within the
racy window, another HOME or git environment, a run from a linked worktree (`.git` a file), a
colour setting the kept cells depend on (conflicts are marked '⚠' only in colour). The full list
keeps nothing while a workstream is in flight (queued, running, cancelling: a dead process's claims
are corrected by its `recover`) or one has no change summary.

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
from aidp.cli.table import HEADER, Row, lay_out, terminal_width
from aidp.engine import listing

TYPE_CHECKING = False  # typing itself costs milliseconds here: mypy reads this name as True
if TYPE_CHECKING:
    from aidp.engine.model import Workstream

CACHE_FILE = "ws-list.cache"
MAGIC = "aidp ws list table"
FORMAT = 1
STATE_DIR = ".aidp"  # gitrepo.STATE_DIR (gitrepo imports asyncio)
ASKED = (["ws", "list"], ["--no-color", "ws", "list"])  # the command lines served from the file


def environment() -> tuple[tuple[str, str], ...]:
    """What besides the files can change a list: where the user's git config is, git's variables."""
    return tuple(sorted((k, v) for k, v in os.environ.items() if k in ("HOME", "XDG_CONFIG_HOME") or k[:4] == "GIT_"))


def serve(argv: list[str]) -> bool:
    """Print the kept table for this command line when it is still what a full list would print;
    False when it printed nothing (the full list runs). BrokenPipeError as `print` raises it."""
    if argv not in ASKED:
        return False
    root = _root(os.getcwd())
    if root is None:
        return False
    try:
        with open(os.path.join(root, STATE_DIR, CACHE_FILE), "rb") as f:
            data = marshal.load(f)
    except (OSError, EOFError, ValueError, TypeError):
        return False
    fancy = sys.stdout.isatty() and not os.environ.get("NO_COLOR") and "--no-color" not in argv
    kept = _checked(data, root, fancy)
    if kept is None:
        return False
    rows, after = kept
    sys.stdout.write("".join(f"{line}\n" for line in lay_out(rows, terminal_width()) + after))
    sys.stdout.flush()
    return True


def keep(
    root: str, inputs: listing.Fingerprint, workstreams: list[Workstream], rows: list[Row], after: list[str]
) -> None:
    """Keep the table a full list printed (`rows` laid out, then the lines `after` it), with the
    fingerprint of its `inputs` taken before it read them; nothing when it cannot be checked later."""
    import contextlib

    from aidp.cli.render import fancy

    changes = [ws.changes for ws in workstreams]
    if any(ws.status.in_flight for ws in workstreams) or None in changes:
        return
    state_dir = os.path.join(root, STATE_DIR)
    shown = [(ws.path, ws.changes.dirty) for ws in workstreams if ws.changes is not None]
    inputs_now = listing.with_worktrees(inputs, state_dir, shown)
    if inputs_now is None or not inputs_now.trusted:
        return
    coloured = fancy() if any(c is not None and c.conflicts for c in changes) else None
    data = (MAGIC, FORMAT, __version__, root, environment(), coloured, inputs_now.as_data(), tuple(rows), tuple(after))
    path = os.path.join(state_dir, CACHE_FILE)
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        with open(temporary, "wb") as f:
            marshal.dump(data, f)
        os.replace(temporary, path)
    except OSError:  # a read-only state folder: the next list is a full one
        with contextlib.suppress(OSError):
            os.unlink(temporary)


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


def _checked(data: object, root: str, fancy: bool) -> tuple[list[Row], list[str]] | None:
    """The rows and the lines after them, when `data` is a kept table of this aidp, repository,
    environment and colour setting whose fingerprint still holds; None otherwise."""
    ours = (MAGIC, FORMAT, __version__, root, environment())
    if not (isinstance(data, tuple) and len(data) == 9 and data[:5] == ours):
        return None
    coloured, inputs, rows, after = data[5:]
    if (coloured is not None and coloured is not fancy) or not isinstance(rows, tuple) or not isinstance(after, tuple):
        return None
    if not (all(map(_is_row, rows)) and all(type(line) is str for line in after)):
        return None
    fp = listing.Fingerprint.from_data(inputs)
    if fp is None or not listing.still_true(fp):
        return None
    return list(rows), list(after)


def _is_row(row: object) -> bool:
    if not (isinstance(row, tuple) and len(row) == 2 and type(row[1]) is str and isinstance(row[0], tuple)):
        return False
    return len(row[0]) == len(HEADER) and all(type(cell) is str for cell in row[0])
