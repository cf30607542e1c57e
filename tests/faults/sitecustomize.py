"""Fault injection for the hardening tests: put this folder on PYTHONPATH of an aidp process and
the variables below make its database refuse chosen writes, as a full disk or an I/O error would.
Python imports `sitecustomize` at start-up, so the real CLI or server runs unchanged otherwise.

- AIDP_FAULT_FINISH=<slug>: recording that workstream's result fails, except an `error` result
  (the smaller write aidp falls back to).
- AIDP_FAULT_FINISH_ALL=<slug>: recording any result of that workstream fails.
- AIDP_FAULT_RUNNING=<slug>: recording that workstream's start fails (also where another's end
  records it, handing it its slot: that whole transaction fails).
- AIDP_FAULT_DIE_RUNNING=<slug>: the process is SIGKILLed as it would record that workstream's
  start (its harness spawned, not yet recorded; or its slot about to be handed to it).
- AIDP_FAULT_SETUP_PID=<slug>, AIDP_FAULT_DIE_SETUP_PID=<slug>: the same for the process of that
  workstream's setup command (recording it fails; the process is SIGKILLed instead).
- AIDP_FAULT_HOOK_START=<hook>, AIDP_FAULT_DIE_HOOK_START=<hook>: the same for a hook (`on_end`,
  `on_run_end`).
- AIDP_FAULT_DIE_HOOK_END=<hook id>: the process is SIGKILLed as it would record that the hook
  (`<run id>.<slug>.on_end`, or a suffix of it) ended.
- AIDP_FAULT_UNTIL=<path>: the refusals above hold only until that file exists (the disk freed).
"""

from __future__ import annotations

import os
import signal
import sqlite3
from typing import Any

from aidp.engine.model import SetupState, Status, WorkstreamResult
from aidp.engine.store import HookInFlight, Store


def disk_full() -> sqlite3.OperationalError:
    """What sqlite3 raises when the disk is full, codes included."""
    error = sqlite3.OperationalError("database or disk is full (injected by tests/faults)")
    error.sqlite_errorcode = sqlite3.SQLITE_FULL
    error.sqlite_errorname = "SQLITE_FULL"
    return error


FAULTS = (
    "AIDP_FAULT_FINISH",
    "AIDP_FAULT_FINISH_ALL",
    "AIDP_FAULT_RUNNING",
    "AIDP_FAULT_DIE_RUNNING",
    "AIDP_FAULT_SETUP_PID",
    "AIDP_FAULT_DIE_SETUP_PID",
    "AIDP_FAULT_HOOK_START",
    "AIDP_FAULT_DIE_HOOK_START",
    "AIDP_FAULT_DIE_HOOK_END",
)


def _install() -> None:
    finish, mark_running, set_setup, hook_started = (
        Store.finish,
        Store.mark_running,
        Store.set_setup,
        Store.hook_started,
    )
    refuse_finish = os.environ.get("AIDP_FAULT_FINISH")
    refuse_all = os.environ.get("AIDP_FAULT_FINISH_ALL")
    refuse_running = os.environ.get("AIDP_FAULT_RUNNING")
    die_running = os.environ.get("AIDP_FAULT_DIE_RUNNING")
    refuse_setup_pid = os.environ.get("AIDP_FAULT_SETUP_PID")
    die_setup_pid = os.environ.get("AIDP_FAULT_DIE_SETUP_PID")
    refuse_hook = os.environ.get("AIDP_FAULT_HOOK_START")
    die_hook = os.environ.get("AIDP_FAULT_DIE_HOOK_START")
    die_hook_end = os.environ.get("AIDP_FAULT_DIE_HOOK_END")
    hook_ended = Store.hook_ended
    until = os.environ.get("AIDP_FAULT_UNTIL")

    def refusing() -> bool:
        return until is None or not os.path.exists(until)

    def faulty_finish(
        self: Store, run_id: str, result: WorkstreamResult, message: str | None = None, successor: Any = None
    ) -> bool:
        starts = successor.slug if successor is not None and successor.start is not None else None
        if starts is not None and starts == die_running:
            os.kill(os.getpid(), signal.SIGKILL)
        if refusing() and (
            result.slug == refuse_all
            or (result.slug == refuse_finish and result.status != Status.ERROR)
            or (starts is not None and starts == refuse_running)
        ):
            raise disk_full()
        return finish(self, run_id, result, message, successor)

    def faulty_mark_running(self: Store, run_id: str, slug: str, *args: Any, **kwargs: Any) -> bool:
        if slug == refuse_running and refusing():
            raise disk_full()
        if slug == die_running:
            os.kill(os.getpid(), signal.SIGKILL)
        return mark_running(self, run_id, slug, *args, **kwargs)

    def faulty_set_setup(self: Store, slug: str, setup: SetupState, *args: Any, **kwargs: Any) -> None:
        if setup.pid is not None and slug == refuse_setup_pid and refusing():
            raise disk_full()
        if setup.pid is not None and slug == die_setup_pid:
            os.kill(os.getpid(), signal.SIGKILL)
        set_setup(self, slug, setup, *args, **kwargs)

    def faulty_hook_started(self: Store, hook: HookInFlight) -> None:
        if hook.hook == refuse_hook and refusing():
            raise disk_full()
        if hook.hook == die_hook:
            os.kill(os.getpid(), signal.SIGKILL)
        hook_started(self, hook)

    def faulty_hook_ended(self: Store, hook_id: str) -> None:
        if die_hook_end and hook_id.endswith(die_hook_end):
            os.kill(os.getpid(), signal.SIGKILL)
        hook_ended(self, hook_id)

    Store.finish = faulty_finish  # type: ignore[method-assign]
    Store.mark_running = faulty_mark_running  # type: ignore[method-assign]
    Store.set_setup = faulty_set_setup  # type: ignore[method-assign]
    Store.hook_started = faulty_hook_started  # type: ignore[method-assign]
    Store.hook_ended = faulty_hook_ended  # type: ignore[method-assign]


if any(os.environ.get(v) for v in FAULTS):
    _install()
