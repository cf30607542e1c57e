"""What every part of the CLI shares and nothing else: exit codes, the errors the parser raises,
and `Args`, the parsed options a handler reads. It imports nothing from the CLI, so every other
module can import it without a circle: base <- render <- handlers <- wiring <- main / repl."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from aidp.engine.errors import AidpError, ConfigError, InvalidInput, NotARepository

if TYPE_CHECKING:
    from aidp.engine import Engine

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

INPUT_ERRORS = (InvalidInput, ConfigError, NotARepository)


def exit_code(error: AidpError) -> int:
    """Input errors exit 2, runtime failures 1 (see the epilog of `aidp --help`)."""
    return EXIT_USAGE if isinstance(error, INPUT_ERRORS) else EXIT_FAILURE


class Args(Protocol):
    """The options of one command, read by name (`args.slug`, `args.json`). A handler needs
    nothing more of the parser: a test or the repl may hand it any object with those names."""

    def __getattr__(self, name: str) -> Any: ...


Handler = Callable[["Engine", "Args"], Awaitable[int]]  # `aidp ws <name>`: runs on the repository's engine


class UsageError(Exception):
    """The parser rejected the arguments; `usage` is the usage line of the (sub)command at fault."""

    def __init__(self, message: str, usage: str) -> None:
        super().__init__(message)
        self.usage = usage


class ParserExit(Exception):
    """The parser finished on its own (after --help or --version) with this exit status."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status
