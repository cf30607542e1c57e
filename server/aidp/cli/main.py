"""`aidp`: parse the command line, run the command, map errors to exit codes.

Expected errors (the engine's `AidpError`s) are one line on stderr, `aidp: error: <message>`, never
a traceback: input errors exit 2, runtime failures exit 1 (see the epilog of `aidp --help`).

`aidp ws list` is tried first from the table the last list kept (`fastlist`), before argparse, the
engine or asyncio are imported: this module imports only what that needs at the top, the rest when
a command runs.
"""

from __future__ import annotations

import os
import sys

from aidp.cli import fastlist

TYPE_CHECKING = False  # typing itself costs milliseconds here: mypy reads this name as True
if TYPE_CHECKING:
    from collections.abc import Sequence

EXIT_BROKEN_PIPE = 128 + 13  # SIGPIPE: what a shell reports for a tool the closed pipe ended


def main(argv: Sequence[str] | None = None) -> int:
    try:
        if fastlist.serve(sys.argv[1:] if argv is None else list(argv)):
            return 0
        return _run(argv)
    except BrokenPipeError:  # `aidp ws list | head -2`: the reader has gone; end quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the flush at exit finds no pipe
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        from aidp.cli.base import EXIT_FAILURE
        from aidp.cli.render import report

        report("interrupted")
        return EXIT_FAILURE


def _run(argv: Sequence[str] | None) -> int:
    """Parse the command line and run the command (the full path of every command)."""
    import io
    import sqlite3

    from aidp.cli import wiring
    from aidp.cli.base import EXIT_FAILURE, EXIT_USAGE, ParserExit, UsageError, exit_code
    from aidp.cli.parser import build_parser, parse
    from aidp.cli.render import report, set_fancy
    from aidp.engine.errors import AidpError, refused_by_state

    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # a pipe sees each line as it comes
    parser = build_parser()
    try:
        args = parse(parser, argv)
    except ParserExit as exc:
        return exc.status
    except UsageError as exc:
        sys.stderr.write(exc.usage)
        report(str(exc))
        return EXIT_USAGE
    set_fancy(sys.stdout.isatty() and not os.environ.get("NO_COLOR") and not args.no_color)
    try:
        return wiring.run(args)
    except AidpError as exc:
        report(str(exc))
        return exit_code(exc)
    except sqlite3.Error as exc:  # a write the state database refused (a full disk): said, never a traceback
        report(str(refused_by_state(exc)))
        return EXIT_FAILURE
