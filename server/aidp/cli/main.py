"""`aidp`: parse the command line, run the command, map errors to exit codes.

Expected errors (the engine's `AidpError`s) are one line on stderr, `aidp: error: <message>`, never
a traceback: input errors exit 2, runtime failures exit 1 (see the epilog of `aidp --help`).
"""

from __future__ import annotations

import io
import os
import signal
import sys
from collections.abc import Sequence

from aidp.cli import wiring
from aidp.cli.base import EXIT_FAILURE, EXIT_USAGE, ParserExit, UsageError, exit_code
from aidp.cli.parser import build_parser, parse
from aidp.cli.render import report, set_fancy
from aidp.engine.errors import AidpError

EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # what a shell reports for a tool the closed pipe ended


def main(argv: Sequence[str] | None = None) -> int:
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
    except BrokenPipeError:  # `aidp ws list | head -2`: the reader has gone; end quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the flush at exit finds no pipe
        return EXIT_BROKEN_PIPE
    except AidpError as exc:
        report(str(exc))
        return exit_code(exc)
    except KeyboardInterrupt:
        report("interrupted")
        return EXIT_FAILURE
