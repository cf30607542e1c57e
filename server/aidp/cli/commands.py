"""The `aidp ws ...` commands: each parses nothing and decides nothing, it calls the engine and
prints. The repl calls the same handlers with the same parsed arguments."""

from __future__ import annotations

import asyncio
import shlex
import sys
from pathlib import Path

import msgspec

from aidp.cli import fastlist, ready
from aidp.cli.base import EXIT_FAILURE, EXIT_OK, Args, Handler
from aidp.cli.patterns import expand
from aidp.cli.progress_text import progress_text
from aidp.cli.render import (
    attempt_text,
    change_summary,
    expected,
    first_line,
    indented,
    missing_worktree,
    out_of_step,
    outcome,
    resources,
    schedule_text,
    summary_lines,
    table_rows,
    wrapped,
)
from aidp.cli.table import lay_out, terminal_width
from aidp.engine import Engine, RunSummary, Status, listing
from aidp.engine.errors import InvalidInput
from aidp.engine.executor import Run
from aidp.engine.gitrepo import current_dir, find_root
from aidp.engine.model import Workstream, priority_name

CANCEL_EXTRA_WAIT_S = 10.0  # beyond the harness grace period, for the owning process to act
POLL_S = 0.2


async def open_engine(create: bool = True, start_over: bool = False) -> Engine:
    """The engine of the repository around the current directory (any directory inside it); see
    `Engine.open` for `create` and `start_over`."""
    return await Engine.open(find_root(current_dir()), create=create, start_over=start_over)


def with_engine(handler: Handler, args: Args, create: bool = True, start_over: bool = False) -> int:
    """Run `handler` on the repository's engine; the engine is always closed (which cancels and
    records whatever this process still runs)."""

    async def run() -> int:
        engine = await open_engine(create, start_over)
        try:
            return await handler(engine, args)
        finally:
            await engine.close()

    return asyncio.run(run())


def main_ws(handler: Handler, args: Args) -> int:
    """Only `ws new` makes `.aidp/` where there is none (and adopts what a lost state database
    left); every other command in a repository aidp never touched finds nothing and writes nothing."""
    creating = args.ws_command == "new"
    return with_engine(handler, args, create=creating, start_over=creating)


def print_json(value: object) -> None:
    print(msgspec.json.encode(value).decode(), flush=True)


async def ws_new(engine: Engine, args: Args) -> int:
    from aidp.cli.agents import task_of
    from aidp.cli.bulk import create_all

    if args.from_file is not None:  # the parser let through either --from or a slug and its task
        return await create_all(engine, args.from_file)
    priority = 0 if args.priority is None else args.priority
    ws, adopted = await engine.create_or_adopt(
        args.slug, task_of(args), args.base_branch, args.command, priority=priority, after=args.after
    )
    print(f"created {ws.slug}: " + (adopted or f"worktree {ws.path} on branch {ws.branch}"))
    print("".join(f"{line}\n" for line in ready.setup_lines(ws)), end="", flush=True)
    if ws.priority or ws.after:
        print(f"{ws.slug}: {schedule_text(ws)}")
    return EXIT_OK


async def ws_set(engine: Engine, args: Args) -> int:
    if args.priority is None and args.after is None:
        raise InvalidInput("nothing to set: give --priority P, --after A,B or --no-after")
    ws = await engine.set_schedule(args.slug, args.priority, args.after)
    if args.json:
        print_json(ws)
    else:
        print(f"{ws.slug}: {schedule_text(ws)}")
    return EXIT_OK


async def ws_list(engine: Engine, args: Args) -> int:
    """The table (kept, with the fingerprint of what it was made from, taken before reading it, for
    the next `aidp ws list`: `fastlist`), or with --json the records."""
    if args.json:
        print_json(await engine.workstreams())
        return EXIT_OK
    root, state_dir = str(engine.root), str(engine.state_dir)
    inputs = listing.take(root, state_dir, str(engine.worktrees_dir))
    workstreams = await engine.workstreams()
    rows, after = table_rows(workstreams), out_of_step(workstreams, await engine.leftover_worktrees())
    print("\n".join(lay_out(rows, terminal_width()) + after), flush=True)
    held = await engine.db.call(engine.db.store.held)  # a `ws new`, `ws rm`, `land` or hook under way
    fastlist.keep(root, inputs, workstreams, rows, after, busy=bool(held.operations or held.hooks))
    return EXIT_OK


async def ws_status(engine: Engine, args: Args) -> int:
    """Each workstream in detail (a blank line between them); with --json one object a line."""
    for number, slug in enumerate(await expand(engine, args.slugs)):
        ws = await engine.get(slug)
        if args.json:
            print_json(ws)
        else:
            print(("\n" if number else "") + "\n".join(await status_lines(engine, ws)), flush=True)
    return EXIT_OK


async def status_lines(engine: Engine, ws: Workstream) -> list[str]:
    """One workstream in detail: the whole task (wrapped), the branch and its changes, the
    schedule, the current and last run, recent events and git status."""
    command = shlex.join(ws.command) if ws.command else "[harness] command of .aidp/config.toml"
    lines = [
        f"slug:       {ws.slug}",
        f"status:     {ws.status}",
        *wrapped("task:       ", ws.task),
        f"branch:     {ws.branch} (from {ws.base_branch or 'HEAD at creation'}"
        + (f" at {ws.base_commit[:12]})" if ws.base_commit else ")"),
        f"changes:    {change_summary(ws.changes)}",
        f"worktree:   {ws.path}",
        f"command:    {command}",
        *ready.setup_lines(ws),
        f"created:    {ws.created_at}",
        f"priority:   {priority_name(ws.priority)}",
        f"after:      {', '.join(ws.after) or '(no dependencies)'}",
        "expected:   " + ("unknown (no recorded runs yet)" if ws.expected_s is None else expected(ws.expected_s)),
    ]
    if (run := ws.current_run) is not None:
        since = f" since {run.started_at}" if run.started_at else ""
        lines.append(f"run:        {ws.status} in run {run.run_id}{since}, attempt {run.attempt}/{run.max_attempts}")
        if run.waiting:
            lines.append(f"  waiting: {run.waiting}")
        if run.host:
            lines.append(f"  host: {run.host}")
        if run.progress is not None:
            lines.append(f"  progress: {progress_text(run.progress)}")
    if (r := ws.last_result) is not None:
        sandboxed = f"sandboxed: {r.sandbox}" if r.sandbox else ""
        parts = (outcome(r.exit_code, r.duration_s), attempt_text(r.attempt, None), sandboxed)
        details = ", ".join(part for part in parts if part)
        lines.append(f"last run:   {r.status}" + (f" ({details})" if details else ""))
        why = "reason" if r.status == Status.BLOCKED else "error"
        said = ((why, r.error), ("host", r.host), ("log", r.log_path))
        lines += [f"  {label}: {indented(text)}" for label, text in said if text]
        if usage := resources(r.cpu_s, r.peak_rss_kb):
            lines.append(f"  used: {usage}")
    lines.append("recent events:")
    for event in await engine.history(ws.slug):
        lines.append(f"  {event.at}  {event.status:<9}  {event.run_id or '-'}  {first_line(event.message)}".rstrip())
    lines.append("git status --short:")
    git = await engine.git_status(ws.slug)
    if git is None:
        lines.append(f"  (no worktree: {missing_worktree(ws)})")
    else:
        lines += [f"  {line}" for line in git.splitlines()] or ["  (clean)"]
    return lines


async def ws_pause(engine: Engine, args: Args) -> int:
    for slug in await expand(engine, args.slugs):
        ws = await engine.set_paused(slug, args.paused)
        print(f"{ws.slug} {ws.status}", flush=True)
    return EXIT_OK


async def ws_rm(engine: Engine, args: Args) -> int:
    """One after another; the first refusal stops (what was removed before it stays removed)."""
    for slug in await expand(engine, args.slugs):
        for note in await engine.remove(slug, delete_branch=args.delete_branch, force=args.force):
            print(note, flush=True)
    return EXIT_OK


async def start_run(engine: Engine, args: Args) -> Run:
    """`ws run <slug...>` or `ws run-all`, with the options both share."""
    common = (args.max_concurrent, args.mode, args.steps, args.timeout)
    if args.ws_command == "run-all":
        return await engine.start_all(*common, halt=args.halt, base_from_deps=args.base_from_deps)
    slugs = await expand(engine, args.slugs)
    return await engine.start(slugs, *common, halt=args.halt, no_deps=args.no_deps, base_from_deps=args.base_from_deps)


def print_summary(summary: RunSummary, as_json: bool) -> int:
    """Print the summary; the exit code is 0 only when every workstream completed."""
    if as_json:
        print_json(summary)
    else:
        print("\n".join(summary_lines(summary)), flush=True)
    return EXIT_OK if summary.ok else EXIT_FAILURE


async def ws_run(engine: Engine, args: Args) -> int:
    from aidp.cli.live import choose_view, watch_run  # rich's live display: only a run needs it

    summary = await watch_run(engine, lambda: start_run(engine, args), choose_view(args.json))
    if args.notify:
        await ready.notify(summary)
    return print_summary(summary, args.json)


async def ws_cancel(engine: Engine, args: Args) -> int:
    """Cancel wherever they run, then wait (bounded) until the owner has ended and recorded them."""
    if args.all == bool(args.slugs):
        raise InvalidInput("name the workstreams to cancel, or --all (not both)")
    if args.all:
        slugs = [ws.slug for ws in await engine.workstreams(changes=False) if ws.status.in_flight]
        if not slugs:
            print("nothing is queued or running")
            return EXIT_OK
    else:
        slugs = await expand(engine, args.slugs)
    hit = await engine.cancel(slugs)
    for slug in slugs:
        if slug not in hit:
            print(f"{slug} is not running")
    if not hit:
        return EXIT_OK
    print(f"cancelling {', '.join(hit)}", flush=True)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + engine.grace_s() + CANCEL_EXTRA_WAIT_S
    while True:
        statuses = {slug: (await engine.get(slug, changes=False)).status for slug in hit}
        if not any(status.in_flight for status in statuses.values()) or loop.time() > deadline:
            break
        await asyncio.sleep(POLL_S)
    for slug, status in statuses.items():
        print(f"{slug} {status}" + (" (still stopping; check 'aidp ws list')" if status.in_flight else ""))
    return EXIT_FAILURE if any(status.in_flight for status in statuses.values()) else EXIT_OK


async def ws_logs(engine: Engine, args: Args) -> int:
    if args.follow:
        await follow_log(engine, args.slug)
        return EXIT_OK
    path, _ = await engine.log(args.slug, tail_bytes=0)
    if path is None:
        print(f"{args.slug} has not run yet", file=sys.stderr)
    else:  # the whole log, byte for byte (the engine's text is a bounded tail)
        await asyncio.to_thread(_copy_from, Path(path), 0)
    return EXIT_OK


async def follow_log(engine: Engine, slug: str) -> None:
    """Copy the latest run's log as it grows, until the workstream is no longer queued or running.
    The status is read before each copy, so the copy after the last check has every byte."""
    path, offset = None, 0
    while True:
        status = (await engine.get(slug, changes=False)).status
        if status != Status.QUEUED:  # a queued run has no log yet: don't print the previous one
            latest, _ = await engine.log(slug, tail_bytes=0)
            if latest != path:
                path, offset = latest, 0
            if path is not None:
                offset = await asyncio.to_thread(_copy_from, Path(path), offset)
        if not status.in_flight:
            return
        await asyncio.sleep(POLL_S)


def _copy_from(path: Path, offset: int) -> int:
    """Write the file's bytes from `offset` to stdout as they are; returns the new offset."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return offset
    sys.stdout.flush()
    binary = getattr(sys.stdout, "buffer", None)  # none in the repl's prompt, which takes text
    if binary is None:
        sys.stdout.write(data.decode(errors="replace"))
    else:
        binary.write(data)
        binary.flush()
    return offset + len(data)
