"""`aidp repl`: a prompt whose `/ws ...` lines are parsed by the CLI's own parser and handled by its
own commands. Runs go on in the background: their status lines and summaries are printed as they
happen while the prompt keeps reading. EOF (Ctrl-D), /quit, SIGTERM or SIGHUP (a closed terminal)
cancel what still runs, cleanly.

On a terminal the prompt is prompt_toolkit's: line editing, history (kept in .aidp/repl_history),
completion of commands, options and slugs, and background output printed above the prompt
without breaking the line being typed. Otherwise (a pipe, a script) lines are read as they come."""

from __future__ import annotations

import asyncio
import shlex
import signal
import sys
import threading
from collections.abc import Iterable

from prompt_toolkit import PromptSession
from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from prompt_toolkit.history import FileHistory
from prompt_toolkit.patch_stdout import patch_stdout

from aidp.cli import ready
from aidp.cli.base import EXIT_OK, Args, Handler, ParserExit, UsageError
from aidp.cli.commands import print_json, start_run, with_engine
from aidp.cli.parser import Parser, build_parser, parse, ws_subparsers
from aidp.cli.render import report, start_notes, status_line, summary_lines
from aidp.engine import Engine
from aidp.engine.errors import AidpError
from aidp.engine.events import EngineEvent, RunFinished, RunProgress, StatusChanged

PROMPT = "aidp> "
HELP = """\
/ws list [--json]                        every workstream
/ws new <slug> <task...> [--base-branch B] [--command "prog arg ..."] [--priority P] [--after A,B]
/ws new --from FILE                      many at once, all or none ('slug: task' lines, or TOML)
/ws set <slug> [--priority P] [--after A,B | --no-after]
/ws status <slug...> [--json]            details, recent events, git status
/ws run <slug...> [--max-concurrent N] [--mode M] [--steps A,B] [--timeout S]
        [--halt never|soon|now] [--no-deps] [--base-from-deps] [--notify]
/ws run-all [...]                        runs go on in the background
/ws cancel <slug...> | --all
/ws pause|resume|rm|logs ...             as on the command line ('/ws rm --help')
/ws diff|conflicts|land|sync|push ...    review and land, as on the command line ('/ws land --help')
/help                                    this text
/quit                                    cancel running runs and leave (also Ctrl-D)
A slug may be a pattern: /ws run 'issue-*'. Tab completes commands, options and slugs; Up recalls."""


HISTORY_FILE = "repl_history"
TOP_WORDS = ("/ws", "/help", "/quit")


def main_repl(args: Args, handlers: dict[str, Handler]) -> int:
    """`handlers`: the `ws` commands' handlers by name (from wiring.py, which imports this module)."""
    return with_engine(lambda engine, _: Repl(engine, build_parser(), handlers).loop(), args)


class ReplCompleter(Completer):
    """Completes the word under the cursor: `/ws` and the other commands first, then a `ws`
    subcommand, then its options and the slugs there are (kept fresh by the repl)."""

    def __init__(self, parser: Parser) -> None:
        self.commands = ws_subparsers(parser)
        self.slugs: list[str] = []

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterable[Completion]:
        words = document.text_before_cursor.split()
        if document.text_before_cursor.endswith(" ") or not words:
            words.append("")
        word = words[-1]
        if len(words) == 1:
            choices: Iterable[str] = TOP_WORDS
        elif words[0] != "/ws":
            choices = ()
        elif len(words) == 2:
            choices = self.commands
        elif word.startswith("-"):
            sub = self.commands.get(words[1])
            choices = [o for a in sub._actions for o in a.option_strings] if sub is not None else ()
        else:
            choices = self.slugs
        for choice in choices:
            if choice.startswith(word):
                yield Completion(choice, start_position=-len(word))


def stdin_lines() -> asyncio.Queue[str | None]:
    """Lines of stdin, read by a daemon thread so the event loop never blocks on input (and a
    pending read never holds up the exit); None marks EOF."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def pump() -> None:
        try:
            for line in iter(sys.stdin.readline, ""):
                loop.call_soon_threadsafe(queue.put_nowait, line)
            loop.call_soon_threadsafe(queue.put_nowait, None)
        except RuntimeError:  # the loop closed: the repl has ended
            pass

    threading.Thread(target=pump, name="aidp-stdin", daemon=True).start()
    return queue


class Repl:
    def __init__(self, engine: Engine, parser: Parser, handlers: dict[str, Handler]) -> None:
        self.engine = engine
        self.parser = parser
        self.handlers = handlers
        self.json_runs: set[str] = set()
        self.notify_runs: set[str] = set()  # runs started with --notify
        self.notifying: set[asyncio.Task[None]] = set()
        self.said: dict[str, str] = {}  # each run's latest progress note, printed once
        self.completer = ReplCompleter(parser)

    async def loop(self) -> int:
        self.engine.events.subscribe(self.on_event)  # kept until the engine closes: late summaries print
        await self.refresh_slugs()
        print("aidp repl: /help for commands, /quit or Ctrl-D to leave", flush=True)
        if sys.stdin.isatty() and sys.stdout.isatty():
            await self.prompt_loop()
        else:
            await self.line_loop()
        if self.engine.active_runs():
            print("cancelling the running runs...", flush=True)  # the engine's close() does it
        return EXIT_OK

    async def line_loop(self) -> None:
        """Lines from a pipe or a file, one command each."""
        lines = stdin_lines()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, self.interrupt)
        for sig in (signal.SIGTERM, signal.SIGHUP):  # kill, a closed terminal: leave as at EOF
            loop.add_signal_handler(sig, lines.put_nowait, None)
        while (line := await lines.get()) is not None and await self.handle(line.strip()):
            pass

    async def prompt_loop(self) -> None:
        """prompt_toolkit's prompt; whatever is printed meanwhile goes above it."""
        history = FileHistory(str(self.engine.state_dir / HISTORY_FILE))
        session: PromptSession[str] = PromptSession(
            history=history,
            completer=self.completer,
            complete_while_typing=False,  # Tab completes, as in a shell
        )
        loop = asyncio.get_running_loop()

        def leave() -> None:  # kill, a closed terminal: leave as at EOF
            if session.app.is_running:
                session.app.exit(exception=EOFError())

        for sig in (signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, leave)
        with patch_stdout(raw=True):
            while True:
                try:
                    line = await session.prompt_async(PROMPT)
                except KeyboardInterrupt:  # Ctrl-C at the prompt: cancel what runs, stay
                    self.interrupt()
                    continue
                except EOFError:
                    return
                if not await self.handle(line.strip()):
                    return

    async def refresh_slugs(self) -> None:
        """The slugs completion offers, read again after each command (which may add or remove one)."""
        self.completer.slugs = [ws.slug for ws in await self.engine.workstreams(changes=False)]

    def interrupt(self) -> None:
        runs = self.engine.active_runs()
        for run in runs:
            run.cancel()
        print("\ncancelling the running runs" if runs else "\n(/quit or Ctrl-D to leave)", flush=True)

    def on_event(self, event: EngineEvent) -> None:
        if isinstance(event, StatusChanged) and event.run_id is not None:
            print(status_line(event), flush=True)
        elif isinstance(event, RunProgress) and event.note is not None and self.said.get(event.run_id) != event.note:
            self.said[event.run_id] = event.note
            print(f"aidp: {event.note}", flush=True)
        elif isinstance(event, RunFinished):
            self.said.pop(event.summary.run_id, None)
            if event.summary.run_id in self.notify_runs:
                self.notify_runs.discard(event.summary.run_id)
                task = asyncio.create_task(ready.notify(event.summary))
                self.notifying.add(task)
                task.add_done_callback(self.notifying.discard)
            if event.summary.run_id in self.json_runs:
                print_json(event.summary)
            else:
                print("\n".join(summary_lines(event.summary)), flush=True)

    async def handle(self, line: str) -> bool:
        """Handle one line; False to leave."""
        if line in ("/quit", "/exit"):
            return False
        first = line.split()[0] if line else ""
        if line == "/help":
            print(HELP, flush=True)
        elif first == "/ws":
            await self.ws(line[1:])
            await self.refresh_slugs()
        elif first == "ws" or first in self.completer.commands:
            typed = line if first == "ws" else f"ws {line}"
            report(f"commands start with a slash here: try '/{typed}' (/help lists them)")
        elif line:
            report(f"unknown command {first!r} (try /help)")
        return True

    async def ws(self, line: str) -> None:
        try:
            args = parse(self.parser, shlex.split(line))
        except ValueError as exc:  # shlex: an unclosed quote
            report(str(exc))
            return
        except UsageError as exc:
            sys.stderr.write(exc.usage)
            report(str(exc))
            return
        except ParserExit:  # --help printed its text
            return
        try:
            if args.ws_command in ("run", "run-all"):
                run = await start_run(self.engine, args)
                if args.json:
                    self.json_runs.add(run.run_id)
                if args.notify:
                    self.notify_runs.add(run.run_id)
                print(f"started run {run.run_id}: {', '.join(run.jobs) or 'nothing to run'}", flush=True)
                for note in start_notes(run):
                    print(f"aidp: {note}", flush=True)
            elif args.ws_command == "logs" and args.follow:
                report("'logs -f' would hold the prompt; use it from a shell ('aidp ws logs -f <slug>')")
            else:
                await self.handlers[args.ws_command](self.engine, args)
        except AidpError as exc:
            report(str(exc))
