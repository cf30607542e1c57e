"""The argument grammar, defined once: `main` parses command lines with it and the repl parses its
`/ws ...` lines with the very same subparsers, so the two can never drift apart. It knows no
handler: `wiring.py` maps each command (`args.top_command`, `args.ws_command`) to the code that runs it."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from aidp import __version__
from aidp.cli.base import ParserExit, UsageError
from aidp.engine.config import HALTS
from aidp.engine.errors import InvalidInput
from aidp.engine.model import PRIORITIES, PRIORITY_RANGE, parse_priority, validate_slug
from aidp.engine.presets import PRESETS

EPILOG = """\
exit codes:
  0  success (for runs: every workstream completed)
  1  a runtime failure: a workstream failed, errored or was cancelled; a refusal (busy, dirty
     worktree, unmerged commits); a git error
  2  an input error: bad arguments or option values, a bad or unknown slug, a bad
     .aidp/config.toml, or not inside a git repository
  141  the reader of the output went away (aidp ws list | head -2): aidp stops quietly

Run 'aidp demo' to see five workstreams run in parallel in a throwaway repository.
"""


class Parser(argparse.ArgumentParser):
    """Raises instead of exiting, so the repl survives a typo; `main` turns these into exit codes."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.format_usage())

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            self._print_message(message)
        raise ParserExit(status)


def parse(parser: Parser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse, then check what argparse cannot say: `ws new` takes a slug and its task, or --from."""
    args = parser.parse_args(argv)
    if getattr(args, "ws_command", None) == "new":
        given = args.slug is not None or args.task or args.task_file is not None
        message = None
        if args.from_file is not None and given:
            message = "--from FILE names the slugs and tasks itself: give nothing else with it"
        elif args.from_file is None and args.slug is None:
            message = "give a slug and its task (words, or --task-file FILE), or --from FILE"
        elif args.from_file is None and not (args.task or args.task_file):
            message = "one of the arguments task --task-file is required (or --from FILE, without a slug)"
        if message:
            raise UsageError(message, ws_subparsers(parser)["new"].format_usage())
    return args


def ws_subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """`ws`'s subcommands and their parsers (for checks and completion)."""
    top = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    ws = top.choices["ws"]
    return dict(next(a for a in ws._actions if isinstance(a, argparse._SubParsersAction)).choices)


def _steps(text: str) -> list[str]:
    return [step.strip() for step in text.split(",")]


def _command(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"cannot split {text!r} into arguments: {exc}") from exc


def _priority(text: str) -> int:
    try:
        return parse_priority(text)
    except InvalidInput as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _slugs(text: str) -> list[str]:
    """'a,b' -> ['a', 'b'], each a valid slug (whether it exists is the engine's to say)."""
    try:
        return [validate_slug(slug.strip()) for slug in text.split(",")]
    except InvalidInput as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


PRIORITY_HELP = "{} or an integer from {} to {}; the higher starts first (a new one: normal)".format(
    ", ".join(PRIORITIES), *PRIORITY_RANGE
)


def _add_schedule_options(parser: argparse.ArgumentParser, droppable: bool) -> None:
    """--priority and --after, shared by `ws new` and `ws set` (`droppable`: also --no-after)."""
    parser.add_argument("--priority", type=_priority, metavar="P", help=PRIORITY_HELP)
    deps = parser.add_mutually_exclusive_group()
    deps.add_argument("--after", type=_slugs, metavar="A,B", help="start only once A and B are completed or landed")
    if droppable:
        deps.add_argument("--no-after", dest="after", action="store_const", const=[], help="drop its dependencies")


def _add_slugs(parser: argparse.ArgumentParser, nargs: str = "+") -> None:
    """Slugs or shell-style patterns ('issue-*', quoted so the shell leaves them alone)."""
    parser.add_argument("slugs", nargs=nargs, metavar="slug", help="a slug or a pattern like 'issue-*' (quote it)")


def _add_json(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--json", action="store_true", help=f"print {what} as JSON, nothing else")


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-concurrent", type=int, metavar="N", help="run at most N at once (1..64)")
    parser.add_argument("--mode", default="execute", metavar="M", help="passed to the harness as {mode}")
    parser.add_argument("--steps", type=_steps, metavar="A,B", help="passed to the harness as {steps}")
    parser.add_argument("--timeout", type=float, metavar="S", help="stop a workstream after S seconds")
    parser.add_argument("--notify", action="store_true", help="a desktop notification when the run ends (notify-send)")
    parser.add_argument(
        "--halt",
        choices=HALTS,
        help="on the first failure: start nothing new (soon), also cancel what runs (now), or go on (never); "
        "default: [harness] halt",
    )
    parser.add_argument(
        "--base-from-deps",
        action=argparse.BooleanOptionalAction,
        help="start a dependent's worktree from its dependencies' branches (default: [scheduler] base_from_deps)",
    )
    parser.add_argument("--json", action="store_true", help="print the run summary as JSON, nothing else")


def build_parser() -> Parser:
    parser = Parser(
        prog="aidp",
        description="Run many coding workstreams (a git worktree plus a command) in parallel.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"aidp {__version__}")
    parser.add_argument(
        "--no-color", action="store_true", help="no colours or emoji (also: NO_COLOR set, or output not a terminal)"
    )
    top = parser.add_subparsers(dest="top_command", required=True, metavar="COMMAND")

    ws = top.add_parser("ws", help="manage and run workstreams", epilog=EPILOG)
    sub = ws.add_subparsers(dest="ws_command", required=True, metavar="WS_COMMAND")

    p = sub.add_parser("new", help="create a workstream: a worktree on branch aidp/<slug> and a task")
    p.add_argument("slug", nargs="?", help="(not with --from)")
    task = p.add_mutually_exclusive_group()  # the words, or a file for a long task (one of them: see parse)
    task.add_argument("task", nargs="*", default=[], help="what the workstream should do")
    task.add_argument("--task-file", metavar="FILE", help="read the task from FILE ('-': standard input)")
    p.add_argument(
        "--from",
        dest="from_file",
        type=Path,
        metavar="FILE",
        help="create many, all or none: lines 'slug: task', or FILE.toml with [slug] task, priority, after, command",
    )
    p.add_argument("--base-branch", metavar="B", help="start the branch from B (default: HEAD)")
    p.add_argument("--command", type=_command, metavar='"PROG ARG ..."', help="this workstream's harness")
    _add_schedule_options(p, droppable=False)

    p = sub.add_parser("set", help="change a workstream's priority or dependencies")
    p.add_argument("slug")
    _add_json(p, "the workstream")
    _add_schedule_options(p, droppable=True)

    p = sub.add_parser("list", help="every workstream with its status and last run")
    p.add_argument("--json", action="store_true", help="print the workstreams as JSON")

    p = sub.add_parser("status", help="workstreams in detail: task, recent events, git status")
    _add_slugs(p)
    p.add_argument("--json", action="store_true", help="print each workstream as JSON, one per line")

    p = sub.add_parser("setup", help="make a worktree ready again: copy [worktree] copy files, run [worktree] setup")
    p.add_argument("slug")

    for name, paused in (("pause", True), ("resume", False)):
        p = sub.add_parser(name, help=f"{name} workstreams (run-all skips paused ones)")
        _add_slugs(p)
        p.set_defaults(paused=paused)

    p = sub.add_parser("rm", help="remove workstreams' worktrees (refuses to lose work without --force)")
    _add_slugs(p)
    p.add_argument("--delete-branch", action="store_true", help="also delete branch aidp/<slug>")
    p.add_argument("--force", action="store_true", help="discard uncommitted changes and unmerged commits")

    p = sub.add_parser("run", help="run workstreams in parallel with a live view")
    _add_slugs(p)
    _add_run_options(p)
    p.add_argument(
        "--no-deps",
        action="store_true",
        help="refuse, naming them, when dependencies are not done (default: run them first, in this run)",
    )

    p = sub.add_parser("run-all", help="run every workstream not paused, completed or already running")
    _add_run_options(p)

    p = sub.add_parser("cancel", help="cancel running workstreams, also those another aidp process runs")
    _add_slugs(p, nargs="*")
    p.add_argument("--all", action="store_true", help="cancel every queued or running workstream")

    p = sub.add_parser("logs", help="print the latest run's log")
    p.add_argument("slug")
    p.add_argument("-f", "--follow", action="store_true", help="follow the log while the workstream runs")

    p = sub.add_parser(
        "diff", help="what a workstream changed: its commits since the merge-base, then uncommitted work"
    )
    p.add_argument("slug")
    _add_json(p, "the files, the patches and the uncommitted work")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--stat", action="store_true", help="files with lines added and removed")
    shape.add_argument("--name-only", action="store_true", help="only the names of the changed files")
    p.add_argument("--base", metavar="BRANCH", help="compare with BRANCH instead of the workstream's base branch")

    p = sub.add_parser("conflicts", help="which workstreams conflict with their base branch or with each other")
    p.add_argument("slugs", nargs="*", metavar="slug", help="default: every workstream not landed")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = sub.add_parser("land", help="land workstreams on their base branch, in order, atomically, nothing checked out")
    _add_slugs(p)
    p.add_argument("--strategy", choices=("merge", "squash", "rebase"), default="merge", help="default: merge")
    p.add_argument("--into", metavar="BRANCH", help="land on BRANCH instead of each workstream's base branch")
    p.add_argument("--rm", action="store_true", help="then remove each landed workstream's worktree and branch")
    p.add_argument("--json", action="store_true", help="print the results as JSON")

    p = sub.add_parser("sync", help="bring a workstream's branch up to date with its base branch")
    p.add_argument("slug")
    _add_json(p, "the result")
    p.add_argument("--strategy", choices=("rebase", "merge"), default="rebase", help="default: rebase")

    p = sub.add_parser("push", help="push a workstream's branch; --pr also opens a pull request with 'gh'")
    p.add_argument("slug")
    _add_json(p, "the result")
    p.add_argument("--remote", default="origin", metavar="R", help="default: origin")
    p.add_argument("--pr", action="store_true", help="open a pull request with the GitHub CLI (gh)")

    p = top.add_parser("init", help="write .aidp/config.toml for a coding agent found on PATH")
    p.add_argument("--preset", choices=list(PRESETS), help="the agent to configure (default: ask, or the one found)")
    p.add_argument("--force", action="store_true", help="replace an existing .aidp/config.toml")

    p = top.add_parser("doctor", help="check git, the config, the harness, the state database, worktrees, branches")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")

    p = top.add_parser("repl", help="an interactive prompt; runs go on in the background")

    p = top.add_parser("demo", help="run five demo workstreams in a throwaway repository")
    p.add_argument("--keep", action="store_true", help="keep the demo repository and print its path")
    p.add_argument("--max-concurrent", type=int, default=5, metavar="N", help="run at most N at once (1..64)")

    p = top.add_parser("serve", help="the JSON-RPC server (stdio) for editors")
    p.add_argument("--root", type=Path, metavar="PATH", help="the repository (default: from the client)")

    return parser
