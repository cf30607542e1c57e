"""Word when something ends: `[hooks] on_end` runs after each workstream of a run ends, `on_run_end`
after each run, with the result in `{placeholder}`s and AIDP_* variables.

Hooks follow the engine's events: a workstream's final `StatusChanged` and `RunFinished` are only
emitted once the result is durable, so a hook never delays recording it and nothing it does can
change a status. Each hook runs contained (`oneshot`: never a shell, its own process tree, its
output in `.aidp/logs/hooks/`), is ended after `[hooks] timeout_s`, and a failure is said in aidp's
log and, for `on_end`, in the workstream's events. The engine waits for running hooks when it closes;
a hook runs only once it is recorded (`hooks` table), so when its aidp process dies (SIGKILL) the
next one's recovery ends what it left running.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sqlite3
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

from aidp.engine import cgroups, oneshot, procs
from aidp.engine.config import Config
from aidp.engine.errors import ConfigError
from aidp.engine.events import EngineEvent, EventBus, Interrupted, RecordedLate, RunFinished, StatusChanged
from aidp.engine.model import FINAL_STATUSES, RunSummary
from aidp.engine.store import AsyncStore, HookInFlight

log = logging.getLogger(__name__)

ON_END_FIELDS = ("slug", "status", "exit_code", "duration", "run_id", "log", "error")
ON_RUN_END_FIELDS = ("run_id", "total", "completed", "failed", "errored", "cancelled", "blocked", "duration", "ok")


def substitute(template: list[str], values: Mapping[str, str]) -> list[str]:
    """`{name}` replaced by its value in each argument, in one pass (a value that looks like a
    placeholder stays as it is); other braces stay literal."""
    pattern = re.compile(r"\{(" + "|".join(map(re.escape, values)) + r")\}")
    return [pattern.sub(lambda m: values[m.group(1)], arg) for arg in template]


def environment(values: Mapping[str, str], hook: str) -> dict[str, str]:
    """aidp's environment with each value as AIDP_<NAME> (AIDP_SLUG, AIDP_EXIT_CODE, ...)."""
    env = dict(os.environ)
    env.update({f"AIDP_{name.upper()}": value for name, value in values.items()})
    env["AIDP_HOOK"] = hook
    return env


def _number(value: float | int | None) -> str:
    return "" if value is None else f"{value:g}"


class HookRunner:
    """Starts the configured hooks on the engine's events, each in a task of its own."""

    def __init__(
        self,
        root: Path,
        logs_dir: Path,
        db: AsyncStore,
        config: Callable[[], Config],
        bus: EventBus,
        owner: tuple[int, int],
    ) -> None:
        self._root = root
        self._owner = owner
        self._logs_dir = logs_dir / "hooks"
        self._db = db
        self._config = config
        self._tasks: set[asyncio.Task[None]] = set()
        self._owed: set[str] = set()  # `on_end` hooks whose start the database refused: run when told again
        bus.subscribe(self._on_event)

    def _on_event(self, event: EngineEvent) -> None:
        if isinstance(event, Interrupted):
            return
        if isinstance(event, RecordedLate):  # its hook ran when it was first told, unless owed
            name = _hook_id("on_end", event.run_id or "", event.slug)
            if name in self._owed:
                self._owed.remove(name)
                self._workstream_ended(event)
            return
        if isinstance(event, StatusChanged) and event.run_id is not None and event.status in FINAL_STATUSES:
            self._workstream_ended(event)
        elif isinstance(event, RunFinished):
            self._start(self._run_ended(event.summary))

    def _start(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work, name="aidp-hook")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for every hook started so far (each is bounded by its timeout)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    def _configured(self) -> Config | None:
        try:
            return self._config()
        except ConfigError as exc:
            log.warning("hooks not run: %s", exc)
            return None

    def _workstream_ended(self, event: StatusChanged) -> None:
        """`on_end`, in a task of its own only when one is configured: a task per ended
        workstream only to find none cost two loop callbacks each (bench: overhead)."""
        config = self._configured()
        if config is not None and config.hooks.on_end is not None and event.run_id is not None:
            self._start(self._on_end(event, event.run_id, config, config.hooks.on_end))

    async def _on_end(self, event: StatusChanged, run_id: str, config: Config, on_end: list[str]) -> None:
        try:
            log_path = await self._db.call(self._db.store.run_log_path, run_id, event.slug)
            values = {
                "slug": event.slug,
                "status": str(event.status),
                "exit_code": _number(event.exit_code),
                "duration": _number(event.duration_s),
                "run_id": run_id,
                "log": log_path or "",
                "error": event.error or "",
            }
            error = await self._run("on_end", config, on_end, values)
            if error is not None:
                message = f"hook on_end failed: {error} (log: {self._log('on_end', run_id, event.slug)})"
                log.warning("%s: %s", event.slug, message)
                await self._db.call(self._db.store.note, event.slug, run_id, event.status, message)
        except Exception:
            log.exception("%s: the on_end hook could not be run", event.slug)

    async def _run_ended(self, summary: RunSummary) -> None:
        config = self._configured()
        if config is None or config.hooks.on_run_end is None:
            return
        try:
            values = {
                "run_id": summary.run_id,
                "total": str(summary.total),
                "completed": str(summary.completed),
                "failed": str(summary.failed),
                "errored": str(summary.errored),
                "cancelled": str(summary.cancelled),
                "blocked": str(summary.blocked),
                "duration": _number(summary.wall_s),
                "ok": "true" if summary.ok else "false",
            }
            error = await self._run("on_run_end", config, config.hooks.on_run_end, values)
            if error is not None:
                where = self._log("on_run_end", summary.run_id, None)
                log.warning("run %s: hook on_run_end failed: %s (log: %s)", summary.run_id, error, where)
        except Exception:
            log.exception("run %s: the on_run_end hook could not be run", summary.run_id)

    def _log(self, hook: str, run_id: str, slug: str | None) -> Path:
        return self._logs_dir / f"{_hook_id(hook, run_id, slug)}.log"

    async def _run(self, hook: str, config: Config, template: list[str], values: Mapping[str, str]) -> str | None:
        """Run one hook to its end, recorded while it runs; why it failed, or None."""
        run_id, slug = values["run_id"], values.get("slug")
        name = _hook_id(hook, run_id, slug)

        async def record(pid: int, pid_start: int | None) -> None:
            running = HookInFlight(name, hook, run_id, slug, *self._owner, pid, pid_start)
            await self._db.call(self._db.store.hook_started, running)

        try:
            outcome = await oneshot.run_contained(
                substitute(template, values),
                self._root,
                environment(values, hook),
                self._log(hook, run_id, slug),
                config.hooks.timeout_s,
                config.harness.grace_s,
                _place(run_id, slug),
                _marker(hook, run_id, slug),
                record,
            )
        except sqlite3.Error as exc:  # from `record`: it was ended before it ran
            if slug is not None:
                self._owed.add(name)
            return f"could not record its start, so it did not run: {exc}"
        finally:
            try:
                await self._db.call(self._db.store.hook_ended, name)
            except sqlite3.Error as exc:  # kept until this process is gone; the next one's recovery forgets it
                log.warning("hook %s: its end could not be recorded: %s", name, exc)
        return outcome.error


def _hook_id(hook: str, run_id: str, slug: str | None) -> str:
    """A hook's name for one run (and workstream): its record's and its log's."""
    return f"{run_id}.{slug}.{hook}" if slug is not None else f"{run_id}.{hook}"


def _marker(hook: str, run_id: str, slug: str | None) -> dict[str, str]:
    """The entries of a hook's environment by which its processes are found."""
    return {**(procs.marker(run_id, slug) if slug is not None else {"AIDP_RUN_ID": run_id}), "AIDP_HOOK": hook}


def _place(run_id: str, slug: str | None) -> Path | None:
    return cgroups.place(f"hook-{run_id}", slug or "run")


async def interrupted(db: AsyncStore, hook: HookInFlight, wait_s: float) -> None:
    """The aidp process running `hook` died: what the hook left running is ended (SIGKILL after
    `wait_s`) and the hook forgotten, said in aidp's log and, for `on_end`, in the workstream's events."""
    marker, place = _marker(hook.hook, hook.run_id, hook.slug), _place(hook.run_id, hook.slug)
    left = await oneshot.end_left(marker, place, hook.pid, hook.pid_start, wait_s)
    gone = f"hook {hook.hook} interrupted: the aidp process (pid {hook.owner_pid}) that ran it is gone"
    message = f"{gone}; {'it was ended' if left else 'nothing of it was left running'}"
    who = hook.slug or f"run {hook.run_id}"
    if await db.recovery_write(f"{who}: {message}", db.store.release_stale_hook, hook, message):
        log.warning("%s: %s", who, message)
