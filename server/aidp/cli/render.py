"""Text for people: every way the CLI and the repl show a status, a result or a run summary is
defined here once, so the live view, the summary and the repl say things the same way."""

from __future__ import annotations

import re
import sys
import time

from aidp.cli.progress_text import progress_text
from aidp.engine.events import StatusChanged
from aidp.engine.gitrepo import Worktree
from aidp.engine.model import ChangeSummary, RunSummary, Status, Workstream, WorkstreamResult

EMOJI = {
    Status.COMPLETED: "✅",
    Status.FAILED: "❌",
    Status.ERROR: "💥",
    Status.CANCELLED: "🚫",
    Status.LANDED: "🛬",
}

# Control characters (and ANSI sequences) in a harness's output would move our cursor around.
_CONTROL_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f]")


def report(message: str) -> None:
    """An expected error, for a person: one line on stderr, never a traceback."""
    print(f"aidp: error: {message}", file=sys.stderr, flush=True)


def clean(text: str) -> str:
    return _CONTROL_RE.sub("", text)


def seconds(value: float) -> str:
    return f"{value:.1f} s"


def clock() -> str:
    return time.strftime("[%H:%M:%S]")


def outcome(exit_code: int | None, duration_s: float | None) -> str:
    """'exit 0, 2.1 s': what a finished run did, or '' when it never ran."""
    parts = ([] if exit_code is None else [f"exit {exit_code}"]) + ([] if duration_s is None else [seconds(duration_s)])
    return ", ".join(parts)


def first_line(text: str | None) -> str:
    return text.strip().splitlines()[0] if text and text.strip() else ""


def indented(text: str, prefix: str = "    ") -> str:
    """Continuation lines of a multi-line message, indented under its first line."""
    return text.rstrip().replace("\n", "\n" + prefix)


def status_line(event: StatusChanged) -> str:
    """One line per status change: the plain (non-terminal) view and the repl print these."""
    line = f"{clock()} {event.slug} {event.status}"
    if details := outcome(event.exit_code, event.duration_s):
        line += f" ({details})"
    if why := first_line(event.error):
        line += f": {why}"
    if event.progress is not None:
        line += f" {progress_text(event.progress)}"
    return line


def result_row(result: WorkstreamResult, slug_width: int = 0) -> str:
    row = f"{EMOJI.get(result.status, '•')} {result.slug.ljust(slug_width)}  {result.status:<9}"
    if details := outcome(result.exit_code, result.duration_s):
        row += f"  ({details})"
    return row.rstrip()


def summary_lines(summary: RunSummary) -> list[str]:
    """Per-workstream results, the counts and wall time, then each failure with its error."""
    if not summary.results:
        return ["nothing to run (every workstream is paused, completed or already running)"]
    width = max(len(r.slug) for r in summary.results)
    lines = [result_row(r, width) for r in summary.results]
    lines.append(
        f"{summary.completed} completed, {summary.failed} failed, {summary.errored} errored, "
        f"{summary.cancelled} cancelled of {summary.total} in {seconds(summary.wall_s)}"
    )
    for r in summary.results:
        if r.status != Status.COMPLETED and r.error:
            lines.append(f"{EMOJI.get(r.status, '•')} {r.slug}: {indented(r.error)}")
            if r.log_path:
                lines.append(f"    log: {r.log_path}")
    return lines


def last_run(ws: Workstream) -> str:
    r = ws.last_result
    if r is None:
        return "-"
    return outcome(r.exit_code, r.duration_s) or str(r.status)


def change_summary(changes: ChangeSummary | None) -> str:
    """'+120 -8 · 5 files · 2 commits · dirty': what a workstream changed, compactly (a minus sign
    before the removed lines, as git's stat shows them)."""
    if changes is None:
        return "-"
    parts = [f"+{changes.added} −{changes.removed}", plural(changes.files, "file"), plural(changes.ahead, "commit")]
    if changes.behind:
        parts.append(f"{changes.behind} behind")
    if changes.dirty:
        parts.append("dirty")
    if changes.conflicts:
        parts.append("⚠ conflicts")
    return " · ".join(parts)


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def workstream_table(workstreams: list[Workstream]) -> list[str]:
    if not workstreams:
        return ["no workstreams yet: create one with 'aidp ws new <slug> <task...>'"]
    header = ("SLUG", "STATUS", "BRANCH", "CHANGES", "LAST RUN", "TASK")
    rows = [header] + [
        (w.slug, str(w.status), w.branch, change_summary(w.changes), last_run(w), first_line(w.task))
        for w in workstreams
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    widths[-1] = 0  # the task, last, is not padded
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]


def missing_worktree(ws: Workstream) -> str:
    return f"{ws.path} is missing; 'aidp ws rm {ws.slug}' removes what remains"


def out_of_step(workstreams: list[Workstream], leftovers: list[Worktree]) -> list[str]:
    """Where git and aidp's records disagree (an interrupted `ws new` or `ws rm`), and the fix."""
    notes = [f"! {ws.slug}: worktree {missing_worktree(ws)}" for ws in workstreams if ws.worktree_missing]
    for w in leftovers:
        fix = (
            f"'aidp ws new {w.path.name} <task...>' adopts it"
            if w.branch == f"aidp/{w.path.name}"
            else f"remove it with 'git worktree remove {w.path}'"
        )
        notes.append(f"! {w.path.name}: worktree {w.path} (branch {w.branch or 'detached'}) is no workstream; {fix}")
    return notes
