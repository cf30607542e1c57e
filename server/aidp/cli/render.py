"""Text for people: every way the CLI and the repl show a status, a result or a run summary is
defined here once, so the live view, the summary and the repl say things the same way."""

from __future__ import annotations

import re
import sys
import textwrap
import time
from typing import TYPE_CHECKING

from aidp.cli.progress_text import progress_text
from aidp.cli.table import Row, terminal_width
from aidp.engine.events import StatusChanged
from aidp.engine.model import ChangeSummary, RunSummary, Status, Workstream, WorkstreamResult, priority_name

if TYPE_CHECKING:
    from aidp.engine.executor import Run
    from aidp.engine.gitrepo import Worktree

EMOJI = {
    Status.QUEUED: "🕒",
    Status.RUNNING: "⏳",
    Status.COMPLETED: "✅",
    Status.FAILED: "❌",
    Status.ERROR: "💥",
    Status.CANCELLED: "🚫",
    Status.BLOCKED: "⛔",
    Status.LANDED: "🛬",
}
# Colours of the statuses in the live view (rich style names).
STYLES = {
    Status.RUNNING: "cyan",
    Status.COMPLETED: "green",
    Status.LANDED: "green",
    Status.FAILED: "red",
    Status.ERROR: "red",
    Status.CANCELLED: "yellow",
    Status.BLOCKED: "yellow",
}
_fancy = True  # colours and emoji; main turns them off (see `set_fancy`)

# Control characters (and ANSI sequences) in a harness's output would move our cursor around.
_CONTROL_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f]")


def report(message: str) -> None:
    """An expected error, for a person: one line on stderr, never a traceback."""
    print(f"aidp: error: {message}", file=sys.stderr, flush=True)


def set_fancy(on: bool) -> None:
    """Colours and emoji on or off for this process: off for NO_COLOR, --no-color, or output that
    is not a terminal (a pipe, a file, CI)."""
    global _fancy
    _fancy = on


def fancy() -> bool:
    return _fancy


def icon(status: Status) -> str:
    """The status's emoji, or '-' when they are off (a mark, so a row still lines up)."""
    return EMOJI.get(status, "•") if fancy() else "-"


def clean(text: str) -> str:
    return _CONTROL_RE.sub("", text)


def seconds(value: float) -> str:
    return f"{value:.1f} s"


def span(value: float) -> str:
    """A duration as people read it: '3.2 s', '43 s', '1m 20s', '2h 05m'."""
    if value < 10:
        return f"{value:.1f} s"
    if value < 60:
        return f"{value:.0f} s"
    minutes = round(value) // 60
    if minutes < 60:
        return f"{minutes}m {round(value) % 60:02d}s"
    return f"{minutes // 60}h {minutes % 60:02d}m"


def expected(value: float | None) -> str:
    """An expected duration from history ('~12 s'), or '-' when unknown."""
    return "-" if value is None else f"~{span(value)}"


def attempt_text(attempt: int | None, max_attempts: int | None) -> str:
    """'attempt 2/3' once a workstream is being retried; '' on its first attempt."""
    if attempt is None or attempt <= 1:
        return ""
    return f"attempt {attempt}/{max_attempts}" if max_attempts else f"attempt {attempt}"


def reason(status: Status, error: str | None) -> str:
    """The first line of why a workstream ended as it did, without repeating its status
    ('blocked: its dependency a failed' said of a blocked one reads 'its dependency a failed')."""
    why = first_line(error)
    return why.removeprefix(f"{status}: ")


def clock() -> str:
    return time.strftime("[%H:%M:%S]")


def outcome(exit_code: int | None, duration_s: float | None) -> str:
    """'exit 0, 2.1 s': what a finished run did, or '' when it never ran."""
    parts = ([] if exit_code is None else [f"exit {exit_code}"]) + ([] if duration_s is None else [seconds(duration_s)])
    return ", ".join(parts)


def resources(cpu_s: float | None, peak_rss_kb: int | None) -> str:
    """'1.2 s CPU, peak memory 34.5 MB': what a run's process tree used, '' where never measured."""
    parts = []
    if cpu_s is not None:
        parts.append(f"{seconds(cpu_s)} CPU")
    if peak_rss_kb is not None:
        parts.append(f"peak memory {peak_rss_kb / 1024:.1f} MB")
    return ", ".join(parts)


def wrapped(label: str, text: str) -> list[str]:
    """`label` then `text` in full, wrapped to the terminal's width, its lines kept, continuation
    lines indented under the text."""
    indent = " " * len(label)
    width = max(terminal_width() - len(label), 20)
    lines = [part for line in text.splitlines() or [""] for part in textwrap.wrap(line, width) or [""]]
    return [f"{label if number == 0 else indent}{line}".rstrip() for number, line in enumerate(lines)]


def first_line(text: str | None) -> str:
    return text.strip().splitlines()[0] if text and text.strip() else ""


def indented(text: str, prefix: str = "    ") -> str:
    """Continuation lines of a multi-line message, indented under its first line."""
    return text.rstrip().replace("\n", "\n" + prefix)


def status_line(event: StatusChanged) -> str:
    """One line per status change: the plain (non-terminal) view and the repl print these. A remote
    one says its machine; a queued one what it waits for (a dependency, a slot, a retry's back-off,
    which names the attempt); a retried one which attempt it is."""
    line = f"{clock()} {event.slug} {event.status}" + (f" on {event.host}" if event.host else "")
    retry = "" if event.waiting else attempt_text(event.attempt, event.max_attempts)
    if details := ", ".join(part for part in (outcome(event.exit_code, event.duration_s), retry) if part):
        line += f" ({details})"
    if why := "; ".join(part for part in (reason(event.status, event.error), event.waiting) if part):
        line += f": {why}"
    if said := progress_text(event.progress):
        line += f" {said}"
    return line


def start_notes(run: Run) -> list[str]:
    """What the engine decided when a run started, said before it goes on: the dependencies it
    pulled in (and for whom), and how the bound was chosen or why it was lowered."""
    notes = []
    if run.pulled_in:
        after = {slug: job.ws.after for slug, job in run.jobs.items()}
        pulled = set(run.pulled_in)
        named = [slug for slug in after if slug not in pulled and pulled & _waits_for(after, slug)]
        notes.append(f"also running {', '.join(run.pulled_in)}: dependencies of {', '.join(named)}")
    if run.options.concurrency_note:
        notes.append(run.options.concurrency_note)
    return notes


def _waits_for(after: dict[str, list[str]], slug: str) -> set[str]:
    """Every workstream `slug` waits for, directly or through others."""
    found: set[str] = set()
    todo = list(after.get(slug, []))
    while todo:
        dep = todo.pop()
        if dep not in found:
            found.add(dep)
            todo += after.get(dep, [])
    return found


def result_row(result: WorkstreamResult, slug_width: int = 0) -> str:
    row = f"{icon(result.status)} {result.slug.ljust(slug_width)}  {result.status:<9}"
    parts = (outcome(result.exit_code, result.duration_s), attempt_text(result.attempt, None))
    if details := ", ".join(part for part in parts if part):
        row += f"  ({details})"
    return row.rstrip()


def summary_lines(summary: RunSummary) -> list[str]:
    """Per-workstream results, the counts and wall time, then each failure with its error."""
    if not summary.results:
        return ["nothing to run (every workstream is paused, completed or already running)"]
    width = max(len(r.slug) for r in summary.results)
    lines = [result_row(r, width) for r in summary.results]
    blocked = f", {summary.blocked} blocked" if summary.blocked else ""
    lines.append(
        f"{summary.completed} completed, {summary.failed} failed, {summary.errored} errored, "
        f"{summary.cancelled} cancelled{blocked} of {summary.total} in {seconds(summary.wall_s)}"
    )
    if summary.forecast_s is not None:
        lines.append(f"forecast {span(summary.forecast_s)}, took {span(summary.wall_s)}")
    for r in summary.results:
        if r.status != Status.COMPLETED and r.error:
            lines.append(f"{icon(r.status)} {r.slug}: {indented(r.error)}")
            if r.log_path:
                lines.append(f"    log: {r.log_path}")
    return lines


def last_run(ws: Workstream) -> str:
    r = ws.last_result
    if r is None:
        return "-"
    return outcome(r.exit_code, r.duration_s) or str(r.status)


def change_summary(changes: ChangeSummary | None) -> str:
    """'+120 -8 · 5 files · 2 commits · uncommitted': what a workstream changed, compactly (a minus sign
    before the removed lines, as git's stat shows them)."""
    if changes is None:
        return "-"
    parts = [f"+{changes.added} −{changes.removed}", plural(changes.files, "file"), plural(changes.ahead, "commit")]
    if changes.behind:
        parts.append(f"{changes.behind} behind")
    if changes.dirty:
        parts.append("uncommitted")  # work in the worktree not committed yet: the marker to look for
    if changes.conflicts:
        parts.append("⚠ conflicts" if fancy() else "conflicts")
    return " · ".join(parts)


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def after_text(after: list[str]) -> str:
    return ", ".join(after) or "-"


def schedule_text(ws: Workstream) -> str:
    """'priority high · after a, b': how a workstream is scheduled, for `ws new` and `ws set`."""
    deps = f"after {after_text(ws.after)}" if ws.after else "no dependencies"
    return f"priority {priority_name(ws.priority)} · {deps}"


def state_note(ws: Workstream) -> str:
    """What a status alone does not say: what a queued one waits for, the machine a remote one runs
    on, which attempt a retried one is on, why a blocked one did not run; '' when there is nothing
    to add."""
    run = ws.current_run
    if run is not None:
        remote = f"on {run.host}" if run.host else ""
        said = (remote, attempt_text(run.attempt, run.max_attempts), progress_text(run.progress))
        return (ws.status == Status.QUEUED and run.waiting) or " · ".join(part for part in said if part)
    if ws.status == Status.BLOCKED and ws.last_result is not None:
        return first_line(ws.last_result.error)
    return ""


def table_rows(workstreams: list[Workstream]) -> list[Row]:
    """The workstream table's cells, not laid out yet (`table.lay_out`), and under each row what its
    status alone does not say."""
    return [
        (
            (
                w.slug,
                str(w.status),
                w.branch,
                priority_name(w.priority),
                after_text(w.after),
                change_summary(w.changes),
                last_run(w),
                expected(w.expected_s),
                first_line(w.task),
            ),
            state_note(w),
        )
        for w in workstreams
    ]


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
