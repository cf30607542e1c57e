"""The engine: workstreams (worktree + task) and their runs, for one repository.

Async and event-emitting so that the CLI and the JSON-RPC server are thin adapters: they call
these methods and forward `EventBus` events. Every value from outside is validated here again,
so no adapter can let a bad slug through by forgetting to.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import secrets
import signal
import sqlite3
import time
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from aidp.engine import cgroups, gitrepo, hooks, procs, review, sandbox, scheduling, setup, toolrun
from aidp.engine.backend import Backend, LocalBackend
from aidp.engine.config import CONFIG_NAME, DEFAULT_GRACE_S, HALTS, MIN_TIMEOUT_S, Config, load_config
from aidp.engine.errors import AlreadyExists, ConfigError, InvalidInput, Refused, StateError, UnknownSlugs
from aidp.engine.events import EventBus, Interrupted, ListChanged, RecordedLate, RunFinished, StatusChanged
from aidp.engine.executor import FailurePolicy, Run, RunOptions, read_tail
from aidp.engine.follow import Follower
from aidp.engine.harness import watch_children_by_pidfd
from aidp.engine.hooks import HookRunner
from aidp.engine.model import (
    DONE_STATUSES,
    TASK_MAX_BYTES,
    ChangeSummary,
    ConflictReport,
    Diff,
    Event,
    LandResult,
    PushResult,
    RunSummary,
    Status,
    SyncResult,
    Workstream,
    WorkstreamResult,
    parse_priority,
    utc_now,
    validate_slug,
)
from aidp.engine.store import AsyncStore, Claim, History, HookInFlight, Operation, Store, state_exists

if TYPE_CHECKING:
    from aidp.engine.ray_backend import RayBackend

log = logging.getLogger(__name__)

STATE_DB = "state.db"
LOG_TAIL_DEFAULT = 1024 * 1024
# How often another process's logs are read for live output (its own runs read theirs ten times a second).
FOLLOW_INTERVAL_S = 0.2
RACY_S = 2.0  # a config file changed this recently is parsed again even if its stat looks unchanged
_OP_COMMANDS = {"create": "new", "remove": "rm", "land": "land", "sync": "sync", "setup": "setup"}
PROMPT_EXIT_S = 0.5  # recovery waits this long for leftovers to end on SIGTERM before going on in the background
NOT_RUNNABLE_BY_RUN_ALL = (Status.PAUSED, Status.COMPLETED, Status.LANDED, Status.QUEUED, Status.RUNNING)


def new_run_id() -> str:
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


def _check_options(
    max_concurrent: int | None, mode: str, steps: list[str] | None, timeout_s: float | None, halt: str | None = None
) -> None:
    if halt is not None and halt not in HALTS:
        raise InvalidInput(f"halt must be one of {', '.join(HALTS)}, got {halt!r}")
    if max_concurrent is not None and (
        isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int) or not 1 <= max_concurrent <= 64
    ):
        raise InvalidInput(f"max_concurrent must be an integer from 1 to 64, got {max_concurrent!r}")
    if not isinstance(mode, str) or not mode:
        raise InvalidInput(f"mode must be a non-empty string, got {mode!r}")
    if steps is not None and not all(isinstance(s, str) and s and "," not in s for s in steps):
        raise InvalidInput(f"steps must be non-empty names without commas, got {steps!r}")
    if timeout_s is not None and (
        isinstance(timeout_s, bool)
        or not isinstance(timeout_s, int | float)
        or not MIN_TIMEOUT_S <= timeout_s < math.inf  # also refuses NaN
    ):
        raise InvalidInput(f"timeout must be a number of seconds from {MIN_TIMEOUT_S:g}, got {timeout_s!r}")


class Engine:
    def __init__(self, root: Path, db: AsyncStore) -> None:
        self.root = root
        self.state_dir = root / gitrepo.STATE_DIR
        self.logs_dir = self.state_dir / "logs"
        self.db = db
        self.events = EventBus()
        self._owner = procs.self_identity()
        self._runs: dict[str, tuple[Run, asyncio.Task[RunSummary]]] = {}
        # Summaries of ended runs, kept while the caller holds the Run: `wait` after the end.
        self._ended: weakref.WeakKeyDictionary[Run, RunSummary] = weakref.WeakKeyDictionary()
        self._recovering = asyncio.Lock()
        self._stopping: set[tuple[str, str]] = set()  # (slug, run id) of leftovers being stopped
        self._stoppers: set[asyncio.Task[None]] = set()
        self._unrecorded: list[tuple[str, WorkstreamResult]] = []  # (run id, result) to record later
        self._config: tuple[tuple[int, int, int, int], Config] | None = None  # (file's stat, parsed)
        self.hooks = HookRunner(root, self.logs_dir, db, self.config, self.events, self._owner)
        self._local = LocalBackend()
        self._remote: RayBackend | None = None  # once `[executor] kind = "ray"` was used

    @classmethod
    async def open(cls, root: Path, settle: bool = True, *, create: bool = True, start_over: bool = False) -> Engine:
        """Open the repository's state and correct what dead aidp processes left behind; with
        `settle`, also wait (one grace period at most, and saying so) for their leftover harnesses
        to be stopped. A server does not: it answers at once and corrects in the background.

        Without `create`, a repository with no state yet is left as it is (no `.aidp/`, no line in
        `.git/info/exclude`) and reads as empty. A missing or emptied state database where aidp
        worktrees exist is refused, since an empty one would orphan them, unless `start_over`
        (`ws new`, which adopts them one by one): then it is said, not done silently."""
        watch_children_by_pidfd()  # git's processes too: `ws list` runs one per workstream
        root = root.resolve()
        path = root / gitrepo.STATE_DIR / STATE_DB
        if not state_exists(path) and (leftovers := await _aidp_worktrees(root, setup.configured_dir(root))):
            names = ", ".join(w.path.name for w in leftovers)
            if not start_over:
                raise StateError(
                    f"the state database {path} is missing or empty, but aidp worktrees exist ({names} in "
                    f"{setup.configured_dir(root)}): it was deleted or truncated, and an empty one would orphan "
                    "them. Restore it from a backup if there is one; otherwise re-create each workstream with "
                    "'aidp ws new <slug> <task>', which adopts its worktree and branch"
                )
            log.warning(
                "the state database %s was missing or empty: starting a new one; the aidp worktrees %s are not "
                "in it ('aidp ws new <slug> <task>' adopts each)",
                path,
                names,
            )
        if create or state_exists(path):
            gitrepo.ensure_ignored(root, setup.ignore_pattern(root, setup.configured_dir(root)))
        db = AsyncStore(await asyncio.to_thread(Store, path, create))
        engine = cls(root, db)
        await engine.recover()
        if settle:
            await engine.settled()
        return engine

    async def close(self) -> None:
        """Cancel every run of this process, wait until each is ended and recorded (and what
        recovery is stopping), close the db."""
        for run, _ in list(self._runs.values()):
            run.cancel()
        tasks = [task for _, task in self._runs.values()]
        if tasks:
            await asyncio.wait(tasks)
        await self.settled()
        await self._record_unrecorded()
        await self.hooks.drain()
        if self._remote is not None:
            await self._remote.close()
        for _, result in self._unrecorded:
            log.error("%s: its result (%s) could not be recorded; it stays claimed", result.slug, result.status)
        self.db.close()

    def config(self) -> Config:
        """Fresh each time, so an edit takes effect at the next run without a restart; parsed again
        only when the file changed (a stat, not a parse per ended workstream: bench, overhead).
        File times tick coarsely (a jiffy), so a file changed in the last RACY_S is always parsed,
        as git does with its index: two edits of the same size within one tick are never missed."""
        try:
            stat = os.stat(self.state_dir / CONFIG_NAME)
        except OSError:
            stamp = None  # missing (defaults) or unreadable: load_config says which
        else:
            racy = time.time_ns() - stat.st_mtime_ns < RACY_S * 1e9
            stamp = None if racy else (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
        if stamp is None or self._config is None or self._config[0] != stamp:
            config = load_config(self.state_dir)
            self._config = None if stamp is None else (stamp, config)
            return config
        return self._config[1]

    def grace_s(self) -> float:
        """The configured grace period; the default when the config is broken, since ending
        processes must not fail on a typo in it."""
        try:
            return self.config().harness.grace_s
        except ConfigError:
            return DEFAULT_GRACE_S

    @property
    def worktrees_dir(self) -> Path:
        """Where new worktrees go (`[worktree] dir`); the default when the config is broken, since
        looking up what aidp made must not fail on a typo. Existing workstreams keep their path."""
        return setup.configured_dir(self.root)

    async def check_state(self) -> None:
        """Refuse (`StateError`) when the state database was deleted, replaced or truncated since
        it was opened. Every request checks first; a run already going records to the end into
        what it has open, so its processes are still ended and nothing escapes."""
        await self.db.call(self.db.store.verify)

    # -- workstreams -------------------------------------------------------------------------

    async def create(
        self,
        slug: str,
        task: str,
        base_branch: str | None = None,
        command: list[str] | None = None,
        *,
        priority: int | str = 0,
        after: list[str] | None = None,
    ) -> Workstream:
        return (await self.create_or_adopt(slug, task, base_branch, command, priority=priority, after=after))[0]

    async def create_or_adopt(
        self,
        slug: str,
        task: str,
        base_branch: str | None = None,
        command: list[str] | None = None,
        *,
        priority: int | str = 0,
        after: list[str] | None = None,
    ) -> tuple[Workstream, str | None]:
        """Create the workstream, or adopt the worktree and branch `aidp/<slug>` that an
        interrupted `create` or `remove` left behind. Returns it and, when adopted, a note saying so.
        `priority`: a name (high, normal, low) or an integer; `after`: the slugs it runs after."""
        validate_slug(slug)
        level = parse_priority(priority)
        deps = _check_after(after or [])
        if slug in deps:
            raise InvalidInput(f"{slug} cannot run after itself")
        if not isinstance(task, str) or not task.strip():
            raise InvalidInput("the task must be a non-empty text")
        for text in (task, base_branch or ""):
            if not isinstance(text, str) or not _is_text(text):
                # Checked before the worktree exists: the database or git would refuse it later.
                raise InvalidInput(f"not valid UTF-8 text without NUL characters: {text!r}")
        if (size := len(task.encode())) > TASK_MAX_BYTES:
            raise InvalidInput(
                f"the task is {size} bytes; the limit is {TASK_MAX_BYTES} bytes. Put longer instructions in a "
                "file of the repository and name it in the task"
            )
        if command is not None and (not command or not all(isinstance(a, str) and a for a in command)):
            raise InvalidInput("command must be a non-empty list of non-empty arguments")
        config = self.config()  # a bad [worktree] section is refused before anything is made
        worktrees = setup.worktrees_dir(self.root, config.worktree.dir)
        await self.check_state()
        gitrepo.ensure_ignored(self.root, setup.ignore_pattern(self.root, worktrees))  # [worktree] dir may have changed
        if await self.db.call(self.db.store.get, slug):
            raise AlreadyExists(f"workstream {slug!r} already exists")
        if deps:  # checked again when stored, in the same transaction
            known = {ws.slug for ws in await self.db.call(self.db.store.all)}
            if unknown := [d for d in deps if d not in known]:
                raise UnknownSlugs(unknown, f"named as a dependency of {slug!r}")
        async with self._holding(slug, "create"):
            if await self.db.call(self.db.store.get, slug):  # created by another process meanwhile
                raise AlreadyExists(f"workstream {slug!r} already exists")
            path, branch = worktrees / slug, f"aidp/{slug}"
            if base_branch is not None:
                await gitrepo.resolve_commit(self.root, base_branch)
            note = await self._adoptable(path, branch)
            if note is None:
                await gitrepo.add_worktree(self.root, path, branch, base_branch)
            # Recorded so review and landing know where the work started and where it goes.
            base_branch = base_branch or await gitrepo.current_branch(self.root)
            base_commit = await gitrepo.merge_base(self.root, branch, base_branch or "HEAD")
            ws = self._new_record(slug, task, branch, path, base_branch, command, base_commit)
            ws = msgspec.structs.replace(ws, priority=level, after=deps)
            # The creation stays held (token not passed) until its worktree is ready: no run starts before.
            await self.db.call(self.db.store.insert, ws, None, note or "created")
            if setup.configured(config):
                self.events.emit(ListChanged())
                state = await setup.prepare(self.root, ws, config, self.db, self.logs_dir, worktrees)
                ws = msgspec.structs.replace(ws, setup=state)
        self.events.emit(ListChanged())
        return ws, note

    async def setup(self, slug: str) -> Workstream:
        """Make the worktree ready again: copy the configured files, run the setup command (a
        workstream whose setup failed can run once this succeeds). Refused while it runs."""
        ws = await self.get(slug, changes=False)
        config = self.config()
        if not setup.configured(config):
            raise InvalidInput(
                "nothing to set up: configure [worktree] copy = [...] and/or setup = [...] in .aidp/config.toml"
            )
        if ws.worktree_missing:
            raise Refused(f"the worktree {ws.path} of {slug!r} is missing; remove the workstream and create it again")
        async with self._holding(slug, "setup"):
            self.events.emit(ListChanged())
            worktrees = setup.worktrees_dir(self.root, config.worktree.dir)
            await setup.prepare(self.root, ws, config, self.db, self.logs_dir, worktrees)
        self.events.emit(ListChanged())
        return await self.get(slug, changes=False)

    async def _with_setup(self, workstreams: list[Workstream]) -> list[Workstream]:
        """The records with their setup state (how each worktree was made ready)."""
        states = await self.db.call(self.db.store.setup_states)
        return [msgspec.structs.replace(ws, setup=states.get(ws.slug)) for ws in workstreams]

    async def _adoptable(self, path: Path, branch: str) -> str | None:
        """None when `path` is free; a note when it holds the worktree of `branch` that an
        interrupted command left; a refusal when it holds anything else."""
        if not path.exists():
            return None
        leftover = await gitrepo.worktree_at(self.root, path)
        if leftover is None or not (path / ".git").exists():
            raise Refused(
                f"{path} already exists and is not a worktree of this repository; move it away or pick another slug"
            )
        if leftover.branch != branch:
            raise Refused(
                f"{path} is a worktree on {leftover.branch or 'a detached HEAD'}, not {branch}; "
                "remove it ('git worktree remove') or pick another slug"
            )
        return f"adopted the worktree {path} on branch {branch} that an interrupted 'ws new' or 'ws rm' left"

    @asynccontextmanager
    async def _holding(self, slug: str, op: str) -> AsyncIterator[str]:
        """Hold `slug` in the database while git creates or removes its worktree, so no other
        process runs, creates or removes it meanwhile; released on every way out, and by
        `recover` when this process dies holding it."""
        token = f"{op}-{secrets.token_hex(6)}"
        await self.db.call(self.db.store.hold, slug, op, token, self._owner)
        try:
            yield token
        finally:
            await self.db.call(self.db.store.release, slug, token)

    @staticmethod
    def _new_record(
        slug: str,
        task: str,
        branch: str,
        path: Path,
        base_branch: str | None,
        command: list[str] | None,
        base_commit: str | None,
    ) -> Workstream:
        now = utc_now()
        return Workstream(
            slug=slug,
            task=task,
            status=Status.ACTIVE,
            branch=branch,
            path=str(path),
            base_branch=base_branch,
            command=command,
            created_at=now,
            updated_at=now,
            base_commit=base_commit,
        )

    async def workstreams(self, changes: bool = True) -> list[Workstream]:
        """Every workstream; what a dead aidp process left in flight is corrected first, so a
        long-lived server never shows, or refuses to run, a workstream nobody runs (`start`,
        `start_all` and `cancel` come through here too). `changes`: with their change summaries."""
        await self.check_state()
        await self.recover()
        stored = await self.db.call(self.db.store.all)
        # A stat each (40 ms at 10,000): off the event loop.
        marked = await asyncio.to_thread(lambda: [_with_worktree_state(ws) for ws in stored])
        found = await self._with_setup(await self._with_expected(marked))
        return await review.changes_of(self, found, everything=True) if changes else found

    async def leftover_worktrees(self) -> list[gitrepo.Worktree]:
        """Worktrees in the worktrees folder that are no workstream (an interrupted `create` or `remove`
        left them): `create` of their slug adopts them. git is asked only when the folder holds
        something that is no workstream's (`git worktree list` reads every worktree: seconds at
        thousands)."""
        if not self.worktrees_dir.is_dir():
            return []
        known = set(await self.db.call(self.db.store.paths))
        held = {op.slug for op in await self.db.call(self.db.store.operations)}
        with os.scandir(self.worktrees_dir) as entries:  # (a Path each costs 2 µs: 20 ms at 10,000)
            strangers = {Path(e.path) for e in entries if e.path not in known and e.name not in held}
        return [w for w in await gitrepo.worktrees(self.root) if w.path in strangers] if strangers else []

    async def _settled_workstreams(self) -> list[Workstream]:
        """For a run: what a dead process left running is stopped first, so its workstreams can run."""
        await self.recover()
        await self.settled()
        return await self.db.call(self.db.store.all)

    async def get(self, slug: str, changes: bool = True) -> Workstream:
        """One workstream, corrected like `workstreams` (pause, remove and log come through here);
        `changes`: with its change summary (which costs a few git commands)."""
        validate_slug(slug)
        found = await self.records([slug], changes)
        if not found:
            leftover = self.worktrees_dir / slug
            if (leftover / ".git").exists():  # what an interrupted `create` or `remove` left
                raise UnknownSlugs([slug], f"but {leftover} is a worktree: 'aidp ws new {slug} <task...>' adopts it")
            raise UnknownSlugs([slug])
        return found[0]

    async def records(self, slugs: list[str], changes: bool = True) -> list[Workstream]:
        """The records of those of `slugs` that exist, as `workstreams` gives them: a few, without
        the cost of all (a server sends them to its client when their runs end, not the whole list)."""
        await self.check_state()
        await self.recover()
        stored = [ws for slug in slugs if (ws := await self.db.call(self.db.store.get, slug)) is not None]
        found = await self._with_setup(await self._with_expected([_with_worktree_state(ws) for ws in stored]))
        return await review.changes_of(self, found) if changes else found

    async def _with_expected(self, workstreams: list[Workstream]) -> list[Workstream]:
        """The records with `expected_s`, what their recorded history says a run takes."""
        try:
            config = self.config()
        except ConfigError:  # a list must not fail on a typo in the config: no forecast then
            return workstreams
        history = await self._history(workstreams, config.harness.resolved_command, config.scheduler.history_runs)
        return [msgspec.structs.replace(ws, expected_s=history[ws.slug].expected_s) for ws in workstreams]

    async def borrowed_forecasts(self) -> dict[str, float | None]:
        """The forecast of each workstream with no completed run of its own: its command's, which
        another workstream's run moves without any event of its own (a server sends the records it
        moved: `aidp.server.updates`)."""
        try:
            config = self.config()
        except ConfigError:  # no forecasts then (`_with_expected`)
            return {}
        default = json.dumps(config.harness.resolved_command)
        found = await self.db.call(self.db.store.borrowed, default, config.scheduler.history_runs)
        return {slug: history.expected_s for slug, history in found.items()}

    # -- review and land (see review.py) ----------------------------------------------------------

    async def changes(self, ws: Workstream) -> ChangeSummary:
        """What `ws` changed against its base branch (raises when its branch or base is gone)."""
        return await review.summary(self.root, ws)

    async def diff(self, slug: str, base: str | None = None, max_bytes: int | None = None) -> Diff:
        """Committed work against the merge-base with `base` (default: its base branch), and the
        uncommitted work apart; each patch bounded by `max_bytes` (default 1 MiB)."""
        return await review.diff(self, slug, base, max_bytes)

    async def conflicts(self, slugs: list[str] | None = None) -> ConflictReport:
        """Each workstream (default: every one not landed) against its base branch, and pairwise."""
        return await review.conflicts(self, slugs)

    async def land(
        self, slugs: list[str], strategy: str = "merge", into: str | None = None, rm: bool = False
    ) -> list[LandResult]:
        """Land each in order into its base branch (or `into`); raises `CannotLand` at the first
        that cannot, having changed nothing of it."""
        return await review.land(self, slugs, strategy, into, rm)

    async def sync(self, slug: str, strategy: str = "rebase") -> SyncResult:
        return await review.sync(self, slug, strategy)

    async def push(self, slug: str, remote: str = "origin", pr: bool = False) -> PushResult:
        return await review.push(self, slug, remote, pr)

    async def history(self, slug: str, limit: int = 10) -> list[Event]:
        await self.get(slug, changes=False)
        return await self.db.call(self.db.store.events, slug, limit)

    async def git_status(self, slug: str) -> str | None:
        """`git status --short` of the worktree; None when the worktree is missing."""
        ws = await self.get(slug, changes=False)
        return None if ws.worktree_missing else await gitrepo.status_short(Path(ws.path))

    async def set_paused(self, slug: str, paused: bool) -> Workstream:
        await self.get(slug, changes=False)
        status = await self.db.call(self.db.store.set_paused, slug, paused)
        self.events.emit(StatusChanged(run_id=None, slug=slug, status=status))
        self.events.emit(ListChanged())
        return await self.get(slug)

    async def set_schedule(
        self, slug: str, priority: int | str | None = None, after: list[str] | None = None
    ) -> Workstream:
        """Change a workstream's priority and/or dependencies (None: unchanged; `after=[]` drops
        them). A run going on reads priorities when it picks what starts next; dependencies count
        from the next run. A cycle or an unknown slug is refused, and nothing is changed."""
        validate_slug(slug)
        level = None if priority is None else parse_priority(priority)
        deps = None if after is None else _check_after(after)
        if level is None and deps is None:
            raise InvalidInput("nothing to set: give a priority and/or dependencies")
        await self.get(slug, changes=False)
        await self.db.call(self.db.store.set_schedule, slug, level, deps)
        for run in self.active_runs():
            run.reprioritized()
        self.events.emit(ListChanged())
        return await self.get(slug)

    async def remove(self, slug: str, delete_branch: bool = False, force: bool = False) -> list[str]:
        """Remove the worktree (and the branch if asked). Refuses to lose work unless `force`;
        returns what was discarded, so the caller can say it: nothing goes silently. The slug is
        held throughout, so no run starts in a worktree that is going away."""
        await self.get(slug, changes=False)
        async with self._holding(slug, "remove") as token:
            ws = await self.get(slug, changes=False)  # as it is now that no other process can change it
            path = Path(ws.path)
            problems = [] if ws.worktree_missing else await self._would_lose(path, ws.setup.copied if ws.setup else [])
            base = ws.base_branch or "HEAD"
            # A landed branch's work is on its base even when squashed or rebased (other commits).
            check = delete_branch and ws.status != Status.LANDED
            unmerged = await gitrepo.unmerged_commits(self.root, ws.branch, base) if check else []
            if unmerged:
                problems.append(f"branch {ws.branch} has {len(unmerged)} commit(s) not merged into {base}")
            if problems and not force:
                raise Refused(f"refusing to remove {slug!r}: " + "; ".join(problems) + "\n(use --force to discard)")
            await gitrepo.remove_worktree(self.root, path, force=force and not ws.worktree_missing)
            notes = [f"discarded: {p}" for p in problems]
            if ws.worktree_missing:
                notes.append(f"the worktree {path} was already gone; removed what remained of {slug!r}")
            else:
                notes.append(f"removed worktree {path}")
            if delete_branch:
                await gitrepo.delete_branch(self.root, ws.branch)
                notes.append(f"deleted branch {ws.branch}")
            else:
                notes.append(f"kept branch {ws.branch}")
            dependents = await self.db.call(self.db.store.delete, slug, token)
            if dependents:
                notes.append(f"{', '.join(dependents)} no longer run after {slug}")
        self.events.emit(ListChanged())
        return notes

    async def _would_lose(self, path: Path, copied: list[str]) -> list[str]:
        """What removing the worktree would lose or override: changes, ignored files (`.env`) but
        the `copied` ones still as in the main checkout, checked-out submodules' own git data, a lock."""
        problems = []
        if dirty := await gitrepo.status_short(path):
            problems.append(f"the worktree {path} has uncommitted changes:\n{dirty.rstrip()}")
        kept = await asyncio.to_thread(setup.unchanged_copies, self.root, path, copied)
        if ignored := [f for f in await gitrepo.ignored_files(path) if f not in kept]:
            problems.append(f"the worktree {path} has ignored files that would be deleted:\n{gitrepo.listed(ignored)}")
        if submodules := await gitrepo.initialised_submodules(path):
            problems.append(f"the worktree {path} has checked-out submodules: {', '.join(submodules)}")
        worktree = await gitrepo.worktree_at(self.root, path)
        if worktree is not None and worktree.locked is not None:
            problems.append(f"the worktree {path} is locked" + (f": {worktree.locked}" if worktree.locked else ""))
        return problems

    async def log(self, slug: str, tail_bytes: int | None = None) -> tuple[str | None, str]:
        """The latest run's log: its path and (the tail of) its text."""
        await self.get(slug, changes=False)
        path = await self.db.call(self.db.store.latest_log_path, slug)
        if path is None:
            return None, ""
        limit = LOG_TAIL_DEFAULT if tail_bytes is None else tail_bytes
        return path, await asyncio.to_thread(read_tail, Path(path), limit)

    # -- runs --------------------------------------------------------------------------------

    async def start(
        self,
        slugs: list[str],
        max_concurrent: int | None = None,
        mode: str = "execute",
        steps: list[str] | None = None,
        timeout_s: float | None = None,
        *,
        halt: str | None = None,
        no_deps: bool = False,
        base_from_deps: bool | None = None,
    ) -> Run:
        """Validate everything, claim every workstream, and start the run in the background.
        Dependencies not done yet are pulled into the run (`run.pulled_in` names them), or with
        `no_deps` refused. Any error raises before anything was claimed or started."""
        if not slugs:
            raise InvalidInput("name at least one workstream to run")
        for slug in slugs:
            validate_slug(slug)
        _check_options(max_concurrent, mode, steps, timeout_s, halt)
        wanted = list(dict.fromkeys(slugs))
        known = {ws.slug: ws for ws in await self._settled_workstreams()}
        unknown = [s for s in wanted if s not in known]
        if unknown:
            raise UnknownSlugs(unknown)
        paused = [s for s in wanted if known[s].status == Status.PAUSED]
        if paused:
            raise Refused(f"paused: {', '.join(paused)} (resume first: 'aidp ws resume <slug>')")
        pulled = _unmet_dependencies(known, wanted)
        await self._refuse_unready([*pulled, *wanted])
        if pulled and no_deps:
            raise Refused(
                f"not done yet, and named as dependencies: {', '.join(pulled)} (run them first, or let this run "
                "pull them in: without --no-deps, they run before the workstreams that wait for them)"
            )
        run = await self._start(
            [known[s] for s in [*pulled, *wanted]], known, max_concurrent, mode, steps, timeout_s, halt, base_from_deps
        )
        run.pulled_in = pulled
        return run

    async def start_all(
        self,
        max_concurrent: int | None = None,
        mode: str = "execute",
        steps: list[str] | None = None,
        timeout_s: float | None = None,
        *,
        halt: str | None = None,
        base_from_deps: bool | None = None,
    ) -> Run:
        """Every workstream that is not paused, completed or already in flight (maybe none)."""
        _check_options(max_concurrent, mode, steps, timeout_s, halt)
        known = {ws.slug: ws for ws in await self._settled_workstreams()}
        setting_up = {
            s for s, state in (await self.db.call(self.db.store.setup_states)).items() if state.status == "running"
        }
        todo = [ws for ws in known.values() if ws.status not in NOT_RUNNABLE_BY_RUN_ALL and ws.slug not in setting_up]
        return await self._start(todo, known, max_concurrent, mode, steps, timeout_s, halt, base_from_deps)

    async def _start(
        self,
        workstreams: list[Workstream],
        known: dict[str, Workstream],
        max_concurrent: int | None,
        mode: str,
        steps: list[str] | None,
        timeout_s: float | None,
        halt: str | None,
        base_from_deps: bool | None,
    ) -> Run:
        config = self.config()
        harness = config.harness
        history = await self._history(workstreams, harness.resolved_command, config.scheduler.history_runs)
        bound, note = _bound(config.max_concurrent, [h.peak_rss_kb for h in history.values()])
        share = min(max_concurrent or bound, bound)
        if max_concurrent is not None and max_concurrent > bound:
            note = f"--max-concurrent {max_concurrent} lowered to the repository's bound {bound}"
        options = RunOptions(
            max_concurrent=share,
            mode=mode,
            steps=steps,
            timeout_s=timeout_s or harness.timeout_s,
            grace_s=harness.grace_s,
            env=harness.env,
            default_command=harness.resolved_command,
            stdin=harness.stdin,
            commit=harness.commit,
            sandbox=config.sandbox,
            repo_bound=bound,
            policy=FailurePolicy(
                retries=harness.retries,
                retry_on_exit=tuple(harness.retry_on_exit),
                retry_on_timeout=harness.retry_on_timeout,
                backoff_s=harness.retry_backoff_s,
                rate_limit_exit=tuple(harness.rate_limit_exit),
                rate_limit_pattern=re.compile(harness.rate_limit_pattern) if harness.rate_limit_pattern else None,
                rate_limit_retries=harness.rate_limit_retries,
                recover_s=config.scheduler.rate_limit_recover_s,
                halt=halt or harness.halt,
            ),
            base_from_deps=config.scheduler.base_from_deps if base_from_deps is None else base_from_deps,
            expected={slug: h.expected_s for slug, h in history.items()},
            concurrency_note=note,
            backend=self._backend(config),
        )
        workstreams = await self._with_setup(workstreams)  # the executor blocks those not ready
        run_id = new_run_id()
        slugs = [ws.slug for ws in workstreams]
        if slugs:
            places = {slug: cgroups.place(run_id, slug) for slug in slugs}
            await self.db.call(self.db.store.claim, slugs, run_id, self._owner, places, harness.retries + 1)
        outside = {d: known[d] for ws in workstreams for d in ws.after if d in known and d not in slugs}
        run = Run(run_id, workstreams, options, self.db, self.events, self.logs_dir, self.recover, self.root, outside)
        for slug in slugs:
            self.events.emit(StatusChanged(run_id=run_id, slug=slug, status=Status.QUEUED))
        task = asyncio.create_task(self._execute(run), name=f"aidp-run-{run_id}")
        self._runs[run_id] = (run, task)
        return run

    def _backend(self, config: Config) -> Backend:
        """Where this run's harnesses go (`[executor] kind`). Ray is an optional extra, imported
        (and connected to) only when configured."""
        if config.executor.kind == "local":
            return self._local
        if self._remote is None:
            from aidp.engine import ray_backend  # slow to import, and missing without the extra

            self._remote = ray_backend.RayBackend(self.root)
        self._remote.configure(config)
        return self._remote

    async def _refuse_unready(self, slugs: list[str]) -> None:
        """`ws run` refuses workstreams whose setup failed or still runs, saying why and what to do
        (`run-all` records them blocked instead, through the executor, with the same reason)."""
        states = await self.db.call(self.db.store.setup_states)
        unready = [f"{s}: {why}" for s in slugs if s in states and (why := states[s].blocker(s)) is not None]
        if unready:
            raise Refused("cannot run, not ready: " + "; ".join(unready))

    async def _history(self, workstreams: list[Workstream], default: list[str] | None, n: int) -> dict[str, History]:
        """What recorded runs say of each workstream (matched by its harness command too)."""
        command_of: dict[tuple[str, ...] | None, str] = {None: json.dumps(default)}  # once per command
        for command in {tuple(ws.command) for ws in workstreams if ws.command}:
            command_of[command] = json.dumps(list(command))
        commands = {ws.slug: command_of[tuple(ws.command) if ws.command else None] for ws in workstreams}
        return await self.db.call(self.db.store.history, commands, n) if commands else {}

    async def _execute(self, run: Run) -> RunSummary:
        try:
            summary = await run.execute()
        finally:
            del self._runs[run.run_id]
            self._unrecorded += [(run.run_id, result) for result in run.unrecorded]
        await self._forget_old_runs(list(run.jobs))
        if removed := await asyncio.to_thread(cgroups.sweep):
            log.info("removed %d empty cgroups that aidp processes left when they died", len(removed))
        self._ended[run] = summary
        self.events.emit(RunFinished(summary=summary))
        return summary

    async def _forget_old_runs(self, slugs: list[str]) -> None:
        """`[state] keep_runs`: the runs before the latest N of these workstreams go, with their
        events and log files. The results are recorded already, so a failure here is a warning."""
        try:
            keep = self.config().state.keep_runs
        except ConfigError:
            return
        if keep is None:
            return
        try:
            paths = await self.db.call(self.db.store.prune_runs, slugs, keep)
        except sqlite3.Error as exc:
            log.warning("old runs not forgotten ([state] keep_runs): %s", exc)
            return
        await asyncio.to_thread(_remove_run_files, paths)

    async def wait(self, run: Run) -> RunSummary:
        """The run's summary. Cancelling the waiter cancels the run: every process group is
        ended and every status recorded before the cancellation propagates."""
        task = self._runs[run.run_id][1] if run.run_id in self._runs else None
        if task is None and run in self._ended:
            return self._ended[run]  # it ended before anyone waited (the caller awaited elsewhere)
        if task is None:
            raise InvalidInput(f"run {run.run_id} is not running in this process")
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            run.cancel()
            await asyncio.wait({task})
            raise

    async def run(self, slugs: list[str], **options: Any) -> RunSummary:
        """`start` + `wait`: options as for `start`."""
        return await self.wait(await self.start(slugs, **options))

    async def run_all(self, **options: Any) -> RunSummary:
        return await self.wait(await self.start_all(**options))

    async def watch_others(self, interval_s: float = 1.0) -> None:
        """Until cancelled, for a long-lived engine (the server's): say `ListChanged` whenever
        another aidp process (a CLI run beside the server) changed the list beyond its runs, and
        correct what a process that died left behind (it commits nothing, so only `recover`
        notices); and emit the statuses and live output of their runs (`follow_others`)."""
        follower = asyncio.create_task(self.follow_others(), name="aidp-follow-others")
        try:
            seen = await self.db.call(self.db.store.versions)
            broken: str | None = None
            while True:
                await asyncio.sleep(interval_s)
                try:
                    await self.check_state()
                    await self.recover()
                    now = await self.db.call(self.db.store.versions)
                except StateError as exc:
                    if str(exc) != broken:  # said once; each request is refused with it too
                        broken = str(exc)
                        log.error("%s", exc)
                        self.events.emit(ListChanged())
                    continue
                (committed, changes), (seen_committed, seen_changes) = now, seen
                seen = now
                if committed != seen_committed and changes != seen_changes:  # not only runs: they come as statuses
                    self.events.emit(ListChanged())
        finally:
            follower.cancel()
            await asyncio.wait({follower})

    async def follow_others(self, interval_s: float = FOLLOW_INTERVAL_S) -> None:
        """Until cancelled: `OutputChunk`s of the runs other aidp processes execute, read from
        their log files (see follow.py), as this process's own runs emit theirs."""
        follower = Follower(self.db, self.events, self._owner)
        said: str | None = None
        try:
            while True:
                try:
                    await follower.poll()
                    said = None
                except Exception as exc:  # one failed poll (a locked or replaced database) must not end it
                    if str(exc) != said:  # said once, not five times a second
                        said = str(exc)
                        log.warning("cannot follow the output of other aidp processes: %s", exc)
                await asyncio.sleep(interval_s)
        finally:
            follower.close()

    def active_runs(self) -> list[Run]:
        return [run for run, _ in self._runs.values()]

    async def cancel(self, slugs: list[str] | None = None, run_id: str | None = None) -> list[str]:
        """Cancel workstreams wherever they run: in this process directly, in another aidp
        process through a flag in the database that its owner polls. Returns the slugs hit.
        With neither slugs nor run_id: every run of this process."""
        for slug in slugs or []:
            validate_slug(slug)
        if slugs is not None:
            await self._require_known(slugs)
        hit: list[str] = []
        for run in self.active_runs():
            if run_id is None or run.run_id == run_id:
                hit += run.cancel(slugs)
        if slugs is None and run_id is None:
            return hit  # "everything" means this process's runs, never other processes'
        await self.check_state()
        claims = await self.db.call(self.db.store.request_cancel, slugs, run_id)
        return list(dict.fromkeys(hit + [c.slug for c in claims]))

    async def _require_known(self, slugs: list[str]) -> None:
        known = {ws.slug for ws in await self.workstreams(changes=False)}
        unknown = [s for s in dict.fromkeys(slugs) if s not in known]
        if unknown:
            raise UnknownSlugs(unknown)

    def _gone(self, owner_pid: int, owner_start: int) -> bool:
        """Whether the aidp process that holds something is another one, and dead."""
        return (owner_pid, owner_start) != self._owner and not procs.is_alive(owner_pid, owner_start)

    async def _release_dead_operations(self, operations: list[Operation]) -> None:
        """A creation or removal whose process died is released (nothing ran, so no status is
        recorded); what it left in git is reported by `workstreams` and `leftover_worktrees`."""
        for held in operations:
            if not self._gone(held.owner_pid, held.owner_start):
                continue
            message = f"interrupted: the aidp process (pid {held.owner_pid}) doing 'ws {_OP_COMMANDS[held.op]}' is gone"
            if await self.db.recovery_write(
                f"{held.slug}: {message}", self.db.store.release_stale_operation, held, message
            ):
                log.warning("%s: %s", held.slug, message)
                await setup.interrupted(self.db, held.slug, message, min(self.grace_s(), PROMPT_EXIT_S))

    async def end_git_hooks(self) -> None:
        """End the repository's git hooks that this process's git runs (not git itself), so that
        a request stuck on one finishes its own way: for a server that stops."""
        if found := await toolrun.end_hooks(toolrun.GRACE_S):
            log.warning("ended %d process(es) of git hooks that requests were waiting on", found)

    async def _end_dead_tools(self, records: Sequence[Operation | Claim]) -> None:
        """What the git of a dead process's creation, removal, landing or run left running (its
        hooks: `toolrun`) is ended before its records are released, once per dead process."""
        dead = list({(r.owner_pid, r.owner_start) for r in records if self._gone(r.owner_pid, r.owner_start)})
        wait_s = min(self.grace_s(), PROMPT_EXIT_S)
        ended = await asyncio.gather(*(toolrun.end_left(pid, started, wait_s) for pid, started in dead))
        for (pid, _), left in zip(dead, ended, strict=True):
            if left:
                log.warning("ended what git left running for the aidp process (pid %d) that is gone", pid)

    async def _end_dead_hooks(self, running: list[HookInFlight]) -> None:
        """Hooks whose process died: what they left running is ended, all at once."""
        dead = [hook for hook in running if self._gone(hook.owner_pid, hook.owner_start)]
        wait_s = min(self.grace_s(), PROMPT_EXIT_S)
        await asyncio.gather(*(hooks.interrupted(self.db, hook, wait_s) for hook in dead))

    async def recover(self) -> list[str]:
        """Correct claims whose owning process died (crash, SIGKILL): end what is left of their
        harnesses and record the workstreams `cancelled`; and record results this process could
        not write earlier. Runs whenever workstreams are read.

        Leftover harnesses get SIGTERM at once, all together. Those gone at once are corrected
        before this returns; the others get one grace period in the background (`settled` waits
        for it), so a list never waits on a harness that ignores SIGTERM. Their claims stay held
        until they are gone: a workstream never runs twice at once."""
        async with self._recovering:
            held = await self.db.call(self.db.store.held)
            claims = [c for c in held.claims if (c.slug, c.run_id) not in self._stopping]
            await self._end_dead_tools([*held.operations, *claims])
            await self._release_dead_operations(held.operations)
            await self._end_dead_hooks(held.hooks)
            await self._record_unrecorded()
            stale = [c for c in claims if self._gone(c.owner_pid, c.owner_start)]
            if not stale:
                return []
            trees = {c: await asyncio.to_thread(_leftovers, c) for c in stale}
            for tree in (t for ts in trees.values() for t in ts):
                tree.signal(signal.SIGTERM)
            left = await _still_alive(stale, trees, min(self.grace_s(), PROMPT_EXIT_S))
            done = [c for c in stale if c not in left]
            for tree in (t for c in done for t in trees[c]):
                if tree.cgroup is not None:  # empty now: nothing else would ever remove it
                    cgroups.remove(tree.cgroup)
            if left:
                self._stopping.update((c.slug, c.run_id) for c in left)
                log.warning(
                    "stopping what a dead aidp process left running (%s): SIGTERM sent, SIGKILL after %g s",
                    ", ".join(c.slug for c in left),
                    self.grace_s(),
                )
                stopper = asyncio.create_task(self._stop_leftovers({c: trees[c] for c in left}))
                self._stoppers.add(stopper)
                stopper.add_done_callback(self._stoppers.discard)
            return [slug for c in done if (slug := await self._release(c))]

    async def settled(self) -> None:
        """Wait until what `recover` is stopping in the background has been stopped and recorded."""
        while self._stoppers:
            await asyncio.wait(set(self._stoppers))

    async def _stop_leftovers(self, trees: dict[Claim, list[procs.Tree]]) -> None:
        await procs.terminate([t for ts in trees.values() for t in ts], self.grace_s())
        async with self._recovering:
            for claim in trees:
                self._stopping.discard((claim.slug, claim.run_id))
                await self._release(claim)

    async def _release(self, claim: Claim) -> str | None:
        message = f"interrupted: the aidp process (pid {claim.owner_pid}) that ran it is gone"
        said = f"{claim.slug}: {message}; what it left was ended"
        if not await self.db.recovery_write(said, self.db.store.release_stale, claim, message):
            return None  # another process got there first, or the database refused
        log.warning("%s: %s", claim.slug, message)
        ws = await self.db.call(self.db.store.get, claim.slug)
        if ws is not None and (moved := await sandbox.reattach(Path(ws.path), ws.branch)):
            await self.db.recovery_write(
                f"{claim.slug}: {moved}", self.db.store.note, claim.slug, claim.run_id, Status.CANCELLED, moved
            )
        self.events.emit(Interrupted(run_id=claim.run_id, slug=claim.slug, status=Status.CANCELLED, error=message))
        return claim.slug

    async def _record_unrecorded(self) -> None:
        """Results the database refused while a run ended (disk full): record them now."""
        for run_id, result in list(self._unrecorded):
            try:
                await self.db.call(self.db.store.finish, run_id, result)
            except sqlite3.Error as exc:
                log.warning("%s: its result still cannot be recorded: %s", result.slug, exc)
                return
            self._unrecorded.remove((run_id, result))
            self.events.emit(RecordedLate(run_id=run_id, slug=result.slug, status=result.status, error=result.error))


async def _still_alive(claims: list[Claim], trees: dict[Claim, list[procs.Tree]], wait_s: float) -> list[Claim]:
    """The claims whose harnesses still run after up to `wait_s`: most end at once on SIGTERM."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        left = [c for c in claims if any(t.alive() for t in trees[c])]
        if not left or loop.time() >= deadline:
            return left
        await asyncio.sleep(0.02)


def _leftovers(claim: Claim) -> list[procs.Tree]:
    """Everything of a dead owner's harness that may still run."""
    cgroup = Path(claim.cgroup) if claim.cgroup is not None else None
    return procs.leftovers(procs.marker(claim.run_id, claim.slug), cgroup, claim.child_pid, claim.child_start)


def _check_after(after: object) -> list[str]:
    if not isinstance(after, list):
        raise InvalidInput(f"dependencies must be a list of slugs, got {after!r}")
    return list(dict.fromkeys(validate_slug(slug) for slug in after))


def _unmet_dependencies(known: dict[str, Workstream], wanted: list[str]) -> list[str]:
    """What `wanted` waits for, transitively, that is not done and could run now (not paused, not in
    another run, which the run waits for instead): pulled into the run, dependencies first."""
    pulled: dict[str, None] = {}

    def visit(slug: str) -> None:
        for dep in known[slug].after:
            ws = known.get(dep)
            if dep in pulled or dep in wanted or ws is None:
                continue
            if ws.status in DONE_STATUSES or ws.status == Status.PAUSED or ws.status.in_flight:
                continue
            visit(dep)
            pulled[dep] = None

    for slug in wanted:
        visit(slug)
    return list(pulled)


def _bound(configured: int | str, peaks: list[int | None]) -> tuple[int, str | None]:
    """The repository's bound: as configured, or for "auto" from the cores, the memory available
    and the highest peak memory recorded for the workstreams about to run."""
    if isinstance(configured, int):
        return configured, None
    recorded = [p for p in peaks if p is not None]
    return scheduling.auto_bound(os.cpu_count() or 1, _available_kb(), max(recorded) if recorded else None)


def _available_kb() -> int | None:
    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    return next((int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemAvailable:")), None)


def _with_worktree_state(ws: Workstream) -> Workstream:
    """The record with `worktree_missing` set: a worktree's folder has its `.git` file."""
    return msgspec.structs.replace(ws, worktree_missing=not os.path.exists(os.path.join(ws.path, ".git")))


async def _aidp_worktrees(root: Path, folder: Path) -> list[gitrepo.Worktree]:
    """The worktrees aidp made: in its worktrees folder, on an `aidp/*` branch, still on disk."""
    if not folder.is_dir():
        return []
    return [
        w
        for w in await gitrepo.worktrees(root)
        if w.path.parent == folder and (w.branch or "").startswith("aidp/") and w.path.is_dir()
    ]


def _remove_run_files(log_paths: list[str]) -> None:
    """A forgotten attempt's log and the task and progress files kept beside it."""
    for log_path in map(Path, log_paths):
        for path in (log_path, log_path.with_suffix(".task"), log_path.with_suffix(".progress")):
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("cannot remove %s of a forgotten run: %s", path, exc)


def _is_text(text: str) -> bool:
    """Storable and passable to a process: no NUL, no lone surrogate."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\0" not in text
