"""The engine's records. They are msgspec Structs so the CLI's `--json` and the JSON-RPC server
serialize exactly what the engine produced, camelCase, with no second definition to drift."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum

import msgspec

from aidp.engine.errors import InvalidInput, InvalidSlug

SLUG_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
SLUG_MAX = 64
# Linux refuses to start a program when one argument or environment string is longer than this
# (with its terminating NUL). A run passes the task as `AIDP_TASK=<task>` only up to that bound;
# longer ones reach the harness through `{task_file}`/`AIDP_TASK_FILE` or `stdin = "task"`.
MAX_ARG_STRLEN = 131072
TASK_ENV_MAX_BYTES = MAX_ARG_STRLEN - len("AIDP_TASK=") - 1
TASK_MAX_BYTES = 1 << 20  # a sane bound on what is stored, listed and sent over the wire


def validate_slug(slug: object) -> str:
    """Every place a slug enters calls this, so a bad one never reaches git or the database."""
    if not isinstance(slug, str):
        raise InvalidSlug(f"slug must be a string, got {type(slug).__name__}")
    if len(slug) > SLUG_MAX:
        raise InvalidSlug(f"slug {slug[:20]!r}... is {len(slug)} characters; the limit is {SLUG_MAX}")
    if not SLUG_RE.fullmatch(slug):  # `match` and `$` would accept a trailing newline
        raise InvalidSlug(
            f"invalid slug {slug!r}: use lowercase letters, digits and single dashes "
            "(like 'fix-login-42'), at most 64 characters"
        )
    return slug


class Status(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    ERROR = "error"
    CANCELLED = "cancelled"
    LANDED = "landed"  # merged into its base branch by `land`; rests there, skipped by run-all
    BLOCKED = "blocked"  # not run: a dependency failed, errored or was cancelled (a later run retries)

    @property
    def in_flight(self) -> bool:
        return self in (Status.QUEUED, Status.RUNNING)


FINAL_STATUSES = (Status.COMPLETED, Status.FAILED, Status.ERROR, Status.CANCELLED, Status.BLOCKED)
# What a dependency must have reached (in this run or an earlier one) before its dependents start.
DONE_STATUSES = (Status.COMPLETED, Status.LANDED)

# Priorities are integers so finer levels can come later; these names are what people type.
PRIORITIES = {"high": 10, "normal": 0, "low": -10}
PRIORITY_RANGE = (-100, 100)


def parse_priority(value: object) -> int:
    """A priority name or an integer (as a number or text) in PRIORITY_RANGE."""
    if isinstance(value, str) and value.strip().lower() in PRIORITIES:
        return PRIORITIES[value.strip().lower()]
    number: object = value
    if isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            number = None
    low, high = PRIORITY_RANGE
    if isinstance(number, bool) or not isinstance(number, int) or not low <= number <= high:
        names = ", ".join(PRIORITIES)
        raise InvalidInput(f"invalid priority {value!r}: use {names}, or an integer from {low} to {high}")
    return number


def priority_name(priority: int) -> str:
    """The name for a named level, else the number: what tables and trees show."""
    return _PRIORITY_NAMES.get(priority) or str(priority)


_PRIORITY_NAMES = {value: name for name, value in PRIORITIES.items()}


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Record(msgspec.Struct, rename="camel", kw_only=True):
    """Base: camelCase on the wire, snake_case in Python."""


class WorkstreamResult(Record):
    slug: str
    status: Status
    exit_code: int | None = None
    started_at: str | None = None
    finished_at: str | None = None
    duration_s: float | None = None
    error: str | None = None
    log_path: str | None = None
    sandbox: str | None = None  # how it ran sandboxed ("bwrap", "bwrap, no network"); None: it did not
    host: str | None = None  # the machine its harness ran on ([executor] kind = "ray"); None: this one
    attempt: int = 1  # with retries, each attempt is its own record; this says which one
    # What the harness's process tree used, sampled from /proc (None where it never started).
    cpu_s: float | None = None
    peak_rss_kb: int | None = None


class Progress(Record):
    """How far a running harness says it is (see docs: the progress channel): any of a percentage
    (0-100), the step it is in (of `--steps`) and a short message (the current tool or file)."""

    percent: float | None = None
    step: str | None = None
    message: str | None = None


class CurrentRun(Record):
    """The run a workstream is queued or running in, whichever aidp process runs it: viewers that
    join late (a list fetched mid-run, a restarted editor) count elapsed time from `started_at`."""

    run_id: str
    started_at: str | None = None  # None while queued
    attempt: int = 1
    max_attempts: int = 1
    waiting: str | None = None  # while queued: what it waits for (a dependency, a slot, a retry's back-off)
    progress: Progress | None = None  # while running: the harness's latest progress report
    host: str | None = None  # while running: the machine its harness runs on; None: this one


SETUP_STATUSES = ("none", "running", "ok", "failed")


class SetupState(Record):
    """How a workstream's worktree was made ready (`[worktree]` copy and setup): `none` when no
    setup command was configured (files may still have been copied), `running`, `ok`, or `failed`
    with the reason; a workstream whose setup is not `ok` or `none` cannot run until it is redone."""

    status: str  # one of SETUP_STATUSES
    error: str | None = None
    log_path: str | None = None
    command: list[str] | None = None
    copied: list[str] = msgspec.field(default_factory=list)  # paths relative to the worktree
    finished_at: str | None = None
    # While `running`: the setup's process (it leads its process group) and its start time in clock
    # ticks since boot, recorded before it runs, by which a later aidp ends it if this one dies.
    pid: int | None = None
    pid_start: int | None = None

    def blocker(self, slug: str) -> str | None:
        """Why the workstream cannot run because of its setup (None: it can), and what to do."""
        if self.status == "failed":
            why = (self.error or "failed").splitlines()[0]
            return f"its setup failed ({why}); fix it, then redo it: 'aidp ws setup {slug}'"
        if self.status == "running":
            return "its setup is still running"
        return None


class ChangeSummary(Record):
    """What a workstream changed: its branch against the merge-base with its base branch, plus
    whether its worktree has uncommitted work. `conflicts`: it would not merge cleanly into its base
    branch as that branch is now (None where not computed)."""

    base_branch: str
    merge_base: str | None
    ahead: int
    behind: int
    files: int
    added: int
    removed: int
    dirty: bool
    conflicts: bool | None = None


class FileChange(Record):
    """One changed file; `added`/`removed` are None for a binary file. `status`: git's letter (A, M,
    D, R, C, T)."""

    path: str
    status: str
    added: int | None
    removed: int | None
    old_path: str | None = None  # for a rename or copy


class Diff(Record):
    """A workstream's committed work against the merge-base, and its uncommitted work apart. The
    patches are bounded: `truncated` says one was cut."""

    slug: str
    base_branch: str
    merge_base: str | None
    head: str
    files: list[FileChange]
    patch: str
    uncommitted: list[FileChange]
    uncommitted_patch: str
    truncated: bool = False


class BaseConflict(Record):
    """Whether a workstream merges cleanly into its base branch as that branch is now."""

    slug: str
    base_branch: str
    clean: bool
    files: list[str]


class PairConflict(Record):
    """Two workstreams whose changes would conflict with each other, in these files."""

    a: str
    b: str
    files: list[str]


class ConflictReport(Record):
    with_base: list[BaseConflict]
    pairs: list[PairConflict]


class LandResult(Record):
    slug: str
    into: str
    strategy: str
    commit: str  # the target branch's new head
    removed: bool = False  # `--rm`: its worktree and branch are gone


class SyncResult(Record):
    slug: str
    strategy: str
    head: str  # the workstream branch's new head


class PushResult(Record):
    slug: str
    remote: str
    branch: str
    pr_url: str | None = None


class Workstream(Record):
    slug: str
    task: str
    status: Status
    branch: str
    path: str
    base_branch: str | None
    command: list[str] | None
    created_at: str
    updated_at: str
    last_result: WorkstreamResult | None = None
    current_run: CurrentRun | None = None
    # The worktree's folder is gone (an interrupted removal, or deleted by hand): `remove` cleans up.
    worktree_missing: bool = False
    base_commit: str | None = None  # the commit the worktree started from (recorded at creation)
    changes: ChangeSummary | None = None
    priority: int = 0  # higher starts first among those ready (see PRIORITIES)
    after: list[str] = msgspec.field(default_factory=list)  # dependencies: slugs that must be done first
    expected_s: float | None = None  # expected run time, from recorded history (None: unknown)
    setup: SetupState | None = None  # None: created before aidp copied files or ran a setup


class RunSummary(Record):
    run_id: str
    results: list[WorkstreamResult]
    total: int
    completed: int
    failed: int
    errored: int
    cancelled: int
    wall_s: float
    blocked: int = 0
    concurrency: int | None = None  # the bound this run used
    concurrency_note: str | None = None  # why, when chosen by `auto`
    forecast_s: float | None = None  # the makespan forecast at the start, from history (None: unknown)
    pulled_in: list[str] = msgspec.field(default_factory=list)  # dependencies added to the run, not named

    @classmethod
    def of(
        cls,
        run_id: str,
        results: list[WorkstreamResult],
        wall_s: float,
        concurrency: int | None = None,
        concurrency_note: str | None = None,
        forecast_s: float | None = None,
        pulled_in: list[str] | None = None,
    ) -> RunSummary:
        def count(status: Status) -> int:
            return sum(1 for r in results if r.status == status)

        return cls(
            run_id=run_id,
            results=results,
            total=len(results),
            completed=count(Status.COMPLETED),
            failed=count(Status.FAILED),
            errored=count(Status.ERROR),
            cancelled=count(Status.CANCELLED),
            blocked=count(Status.BLOCKED),
            wall_s=round(wall_s, 3),
            concurrency=concurrency,
            concurrency_note=concurrency_note,
            forecast_s=forecast_s,
            pulled_in=pulled_in or [],
        )

    @property
    def ok(self) -> bool:
        return self.completed == self.total

    def counts(self) -> list[str]:
        """The outcomes that happened, as "2 completed", "1 failed"...: what every face says of a run."""
        outcomes = (
            (self.completed, "completed"),
            (self.failed, "failed"),
            (self.errored, "errored"),
            (self.cancelled, "cancelled"),
            (self.blocked, "blocked"),
        )
        return [f"{n} {word}" for n, word in outcomes if n]


class Event(Record):
    """One line of a workstream's audit trail."""

    slug: str
    run_id: str | None
    status: Status
    message: str | None
    at: str
