"""`aidp repl`: a prompt whose `/ws ...` lines are parsed by the CLI's own parser and handled by its
own commands. Runs go on in the background: their status lines and summaries are printed as they
happen while the prompt keeps reading. EOF (Ctrl-D), /quit, SIGTERM or SIGHUP (a closed terminal)
cancel what still runs, cleanly."""

from __future__ import annotations

import asyncio
import shlex
import signal
import sys
import threading

from aidp.cli import ready
from aidp.cli.base import EXIT_OK, Args, Handler, ParserExit, UsageError
from aidp.cli.commands import print_json, start_run, with_engine
from aidp.cli.parser import Parser, build_parser
from aidp.cli.render import report, start_notes, status_line, summary_lines
from aidp.engine import Engine
from aidp.engine.errors import AidpError
from aidp.engine.events import EngineEvent, RunFinished, RunProgress, StatusChanged

PROMPT = "aidp> "
HELP = """\
/ws list [--json]                        every workstream
/ws new <slug> <task...> [--base-branch B] [--command "prog arg ..."] [--priority P] [--after A,B]
/ws set <slug> [--priority P] [--after A,B | --no-after]
/ws status <slug>                        details, recent events, git status
/ws run <slug...> [--max-concurrent N] [--mode M] [--steps A,B] [--timeout S]
        [--halt never|soon|now] [--no-deps] [--base-from-deps] [--notify]
/ws run-all [...]                        runs go on in the background
/ws cancel <slug...>
/ws pause|resume|rm|logs ...             as on the command line ('/ws rm --help')
/ws diff|conflicts|land|sync|push ...    review and land, as on the command line ('/ws land --help')
/help                                    this text
/quit                                    cancel running runs and leave (also Ctrl-D)"""


def main_repl(args: Args, handlers: dict[str, Handler]) -> int:
    """`handlers`: the `ws` commands' handlers by name (from wiring.py, which imports this module)."""
    return with_engine(lambda engine, _: Repl(engine, build_parser(), handlers).loop(), args)


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
        self.interactive = sys.stdin.isatty()

    async def loop(self) -> int:
        self.engine.events.subscribe(self.on_event)  # kept until the engine closes: late summaries print
        lines = stdin_lines()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, self.interrupt)
        for sig in (signal.SIGTERM, signal.SIGHUP):  # kill, a closed terminal: leave as at EOF
            loop.add_signal_handler(sig, lines.put_nowait, None)
        print("aidp repl: /help for commands, /quit or Ctrl-D to leave", flush=True)
        while True:
            if self.interactive:
                print(PROMPT, end="", flush=True)
            line = await lines.get()
            if line is None or not await self.handle(line.strip()):
                break
        if self.engine.active_runs():
            print("cancelling the running runs...", flush=True)  # the engine's close() does it
        return EXIT_OK

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
        if line == "/help":
            print(HELP, flush=True)
        elif line.startswith("/ws"):
            await self.ws(line[1:])
        elif line:
            report(f"unknown command {line.split()[0]!r} (try /help)")
        return True

    async def ws(self, line: str) -> None:
        try:
            args = self.parser.parse_args(shlex.split(line))
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
