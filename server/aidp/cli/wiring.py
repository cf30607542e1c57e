"""The one place that says which code runs each command. The parser (grammar) and the handlers
(modules that call the engine and print) know nothing of each other; this table joins them.

To add a command: its grammar in parser.py, its handler in a module of its own (`async def
ws_x(engine, args: Args) -> int` for `aidp ws x`, `def main_x(args: Args) -> int` for `aidp x`,
exit codes from base.py), then one line in `WS` or `TOP` below.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from aidp.cli.base import Args, Handler

if TYPE_CHECKING:
    from aidp.engine import Engine

Main = Callable[[Args], int]


def _ws(module: str, name: str) -> Handler:
    """`aidp.cli.<module>.<name>`, imported when the command runs: each command loads only what it
    needs (`ws list` neither rich's live view nor the doctor, `serve` not the engine before
    `initialize` is answered)."""

    async def handler(engine: Engine, args: Args) -> int:
        found: Handler = getattr(importlib.import_module(f"aidp.cli.{module}"), name)
        return await found(engine, args)

    return handler


def _main(module: str, name: str) -> Main:
    """`_ws` for a top-level command."""

    def main(args: Args) -> int:
        found: Main = getattr(importlib.import_module(f"aidp.cli.{module}"), name)
        return found(args)

    return main


# `aidp ws <name>` (and `/ws <name>` in the repl): run on the repository's engine.
WS: dict[str, Handler] = {
    "new": _ws("commands", "ws_new"),
    "set": _ws("commands", "ws_set"),
    "list": _ws("commands", "ws_list"),
    "status": _ws("commands", "ws_status"),
    "setup": _ws("ready", "ws_setup"),
    "pause": _ws("commands", "ws_pause"),
    "resume": _ws("commands", "ws_pause"),
    "rm": _ws("commands", "ws_rm"),
    "run": _ws("commands", "ws_run"),
    "run-all": _ws("commands", "ws_run"),
    "cancel": _ws("commands", "ws_cancel"),
    "logs": _ws("commands", "ws_logs"),
    "diff": _ws("review", "ws_diff"),
    "conflicts": _ws("review", "ws_conflicts"),
    "land": _ws("review", "ws_land"),
    "sync": _ws("review", "ws_sync"),
    "push": _ws("review", "ws_push"),
}


def _repl(args: Args) -> int:
    from aidp.cli import repl

    return repl.main_repl(args, WS)


def _serve(args: Args) -> int:
    from aidp.server.lifecycle import serve

    return serve(args.root)


# `aidp <name>`: everything else, each opening what it needs itself.
TOP: dict[str, Main] = {
    "init": _main("agents", "main_init"),
    "doctor": _main("agents", "main_doctor"),
    "repl": _repl,
    "demo": _main("demo", "main_demo"),
    "serve": _serve,
}


def run(args: Args) -> int:
    """Run the parsed command line."""
    if args.top_command == "ws":
        from aidp.cli.commands import main_ws

        return main_ws(WS[args.ws_command], args)
    return TOP[args.top_command](args)
