"""Ready worktrees and word when a run ends, on the command line: `aidp ws setup <slug>`, what
`ws new` and `ws status` say of a worktree's setup, and `--notify` (a desktop notification
through `notify-send`)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys

from aidp.cli.base import EXIT_FAILURE, EXIT_OK, Args
from aidp.cli.render import first_line
from aidp.engine import Engine, RunSummary
from aidp.engine.model import Workstream

NOTIFY_SEND = "notify-send"
NOTIFY_TIMEOUT_S = 10.0
_said_missing = False  # said once per process (the repl may run many)


def setup_lines(ws: Workstream) -> list[str]:
    """How the worktree was made ready: the files copied, the setup's state and, when it failed,
    why and how to redo it."""
    state = ws.setup
    if state is None:
        return []
    lines = [f"copied:     {', '.join(state.copied)}"] if state.copied else []
    command = f" ({' '.join(state.command)})" if state.command else ""
    if state.status == "none":
        lines.append("setup:      none (no [worktree] setup command)")
    elif state.status == "failed":
        lines.append(f"setup:      failed{command}: {first_line(state.error)}")
        lines.append(f"  to redo it: aidp ws setup {ws.slug}")
    else:
        lines.append(f"setup:      {state.status}{command}")
    if state.log_path:
        lines.append(f"  log: {state.log_path}")
    return lines


async def ws_setup(engine: Engine, args: Args) -> int:
    """Copy the configured files and run the setup command again; exit 1 when the setup failed."""
    ws = await engine.setup(args.slug)
    print("\n".join([f"{ws.slug}:", *setup_lines(ws)]), flush=True)
    return EXIT_FAILURE if ws.setup is not None and ws.setup.status == "failed" else EXIT_OK


def notification(summary: RunSummary) -> tuple[str, str]:
    """The title and body of a run's desktop notification."""
    title = "aidp: run completed" if summary.ok else "aidp: run ended with failures"
    counts = summary.counts() or ["0 completed"]
    failed = [r.slug for r in summary.results if r.status != "completed"]
    body = f"{', '.join(counts)} of {summary.total}" + (f"\nnot completed: {', '.join(failed)}" if failed else "")
    return title, body


async def notify(summary: RunSummary) -> None:
    """A desktop notification of the run's end through `notify-send`, never through a shell; where
    there is none, say so (once). A notification that fails is said, and changes nothing else."""
    global _said_missing
    program = shutil.which(NOTIFY_SEND)
    if program is None:
        if not _said_missing:
            _said_missing = True
            print(
                f"aidp: no desktop notification: {NOTIFY_SEND} was not found on PATH "
                "(it comes with libnotify, e.g. the libnotify-bin package)",
                file=sys.stderr,
                flush=True,
            )
        return
    title, body = notification(summary)
    urgency = "normal" if summary.ok else "critical"
    proc = await asyncio.create_subprocess_exec(
        program,
        "--app-name=aidp",
        f"--urgency={urgency}",
        title,
        body,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), NOTIFY_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        print(f"aidp: {NOTIFY_SEND} did not answer within {NOTIFY_TIMEOUT_S:g} s", file=sys.stderr, flush=True)
        return
    if proc.returncode != 0:
        why = err.decode(errors="replace").strip() or f"exit code {proc.returncode}"
        print(f"aidp: {NOTIFY_SEND} failed: {why}", file=sys.stderr, flush=True)
