"""The workstream table laid out for the terminal: cells in, lines out.

Kept apart from `render` (which makes the cells) and importing nothing but os and sys, because
`aidp ws list` lays out a table it kept from the last list (`aidp.cli.fastlist`) before anything
else is imported; the full list lays its cells out with this same code, so both print the same
bytes for the same width.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing itself costs milliseconds here: mypy reads this name as True
if TYPE_CHECKING:
    from collections.abc import Sequence

TASK_MIN_WIDTH = 24  # a task in a table is cut to what the width leaves, but never to less than this
EMPTY = "no workstreams yet: create one with 'aidp ws new <slug> <task...>'"
HEADER = ("SLUG", "STATUS", "BRANCH", "PRIORITY", "AFTER", "CHANGES", "LAST RUN", "EXPECTED", "TASK")

# One workstream: its cells (as `HEADER`) and the note shown under it ('' for none).
Row = tuple[tuple[str, ...], str]


def terminal_width() -> int:
    """The terminal's columns as `shutil.get_terminal_size` says them (COLUMNS, then the terminal of
    stdout, else 80), without importing shutil."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 80


def cut(text: str, width: int) -> str:
    """`text` within `width` terminal cells (wide characters count two), '…' where it was cut.
    Short ASCII text is left as it is without importing rich (`aidp ws list` starts faster)."""
    if text.isascii() and text.isprintable() and len(text) <= width:
        return text
    from rich.text import Text

    line = Text(text)
    line.truncate(max(width, 1), overflow="ellipsis")
    return line.plain


def lay_out(rows: list[Row], width: int) -> list[str]:
    """The table in `width` columns: a line per row, columns padded to their widest cell, the task
    (last, not padded) cut to what is left, and under a row that has one, its note."""
    return lay_out_columns(list(zip(*(cells for cells, _ in rows), strict=True)), [note for _, note in rows], width)


def lay_out_columns(columns: Sequence[Sequence[str]], notes: Sequence[str], width: int) -> list[str]:
    """`lay_out` of the cells as columns (as `HEADER`), a row's note at its index in `notes`. By
    column and in C where it can (`aidp ws list` lays out 10,000 kept rows: twice as fast as a
    row at a time)."""
    if not notes:
        return [EMPTY]
    *padded, tasks = [(head, *column) for head, column in zip(HEADER, columns, strict=True)]
    widths = [max(map(len, column)) for column in padded]
    room = max(width - sum(widths) - 2 * len(widths), TASK_MIN_WIDTH)  # the task, last, is not padded
    if not (max(map(len, tasks)) <= room and "".join(tasks).isascii() and "".join(tasks).isprintable()):
        tasks = tuple(cut(task, room) for task in tasks)
    line = "".join(f"%-{size}s  " for size in widths) + "%s"  # each cell padded as str.ljust
    lines = list(map(line.__mod__, zip(*padded, tasks, strict=True)))
    if not any(notes):
        return lines
    noted = zip(lines, ("", *notes), strict=True)
    return [part for line, note in noted for part in ((line, f"  ↳ {note}") if note else (line,))]
