"""The one place that says which code runs each command. The parser (grammar) and the handlers
(modules that call the engine and print) know nothing of each other; this table joins them.

To add a command: its grammar in parser.py, its handler in a module of its own (`async def
ws_x(engine, args: Args) -> int` for `aidp ws x`, `def main_x(args: Args) -> int` for `aidp x`,
exit codes from base.py), then one line in `WS` or `TOP` below.
"""

from __future__ import annotations

from collections.abc import Callable

from aidp.cli import agents, commands, demo, ready, review
from aidp.cli.base import Args, Handler

Main = Callable[[Args], int]

# `aidp ws <name>` (and `/ws <name>` in the repl): run on the repository's engine.
WS: dict[str, Handler] = {
    "new": commands.ws_new,
    "set": commands.ws_set,
    "list": commands.ws_list,
    "status": commands.ws_status,
    "setup": ready.ws_setup,
    "pause": commands.ws_pause,
    "resume": commands.ws_pause,
    "rm": commands.ws_rm,
    "run": commands.ws_run,
    "run-all": commands.ws_run,
    "cancel": commands.ws_cancel,
    "logs": commands.ws_logs,
    "diff": review.ws_diff,
    "conflicts": review.ws_conflicts,
    "land": review.ws_land,
    "sync": review.ws_sync,
    "push": review.ws_push,
}


def _repl(args: Args) -> int:
    """prompt_toolkit is imported only when the repl starts: every other command starts faster."""
    from aidp.cli import repl

    return repl.main_repl(args, WS)


# `aidp <name>`: everything else, each opening what it needs itself.
TOP: dict[str, Main] = {
    "init": agents.main_init,
    "doctor": agents.main_doctor,
    "repl": _repl,
    "demo": demo.main_demo,
    "serve": commands.main_serve,
}


def run(args: Args) -> int:
    """Run the parsed command line."""
    if args.top_command == "ws":
        return commands.main_ws(WS[args.ws_command], args)
    return TOP[args.top_command](args)
