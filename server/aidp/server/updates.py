"""`aidp/wsUpdated`: the records of workstreams whose runs ended, for a client that takes them.

A run's end changes a workstream's record beyond its status: its change summary (the harness may have
committed or left work), and the history behind `expectedS`. `aidp/wsListChanged` makes a client fetch
the whole list for that: at 10,000 workstreams a 6 MB answer, computed again in about a second, after
every run's end. A client that declares `capabilities.experimental.aidp.wsUpdated` gets just the
records that changed instead (a few git commands each).

The final `aidp/wsStatus` goes out at once; the record is computed after it and sent if no status of
that workstream was told meanwhile, so a client never gets a record older than a status it already
has (one that is stale is computed again). Runs ending together share one computation and one
message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aidp.engine import Engine
from aidp.engine.model import Workstream

log = logging.getLogger("aidp.server")


class RecordUpdates:
    """`ended(slug)` once a workstream's final status is told: `send` gets its record soon after, or
    `fallback` is called (the client fetches the whole list) when it cannot be computed."""

    def __init__(self, engine: Engine, send: Callable[[list[Workstream]], None], fallback: Callable[[], None]) -> None:
        self._engine = engine
        self._send = send
        self._fallback = fallback
        self._pending: set[str] = set()
        self._told: dict[str, int] = {}  # statuses told of each workstream since it was last computed
        self._task: asyncio.Task[None] | None = None

    def told(self, slug: str) -> None:
        """A status of `slug` went out: a record computed before it must not follow it."""
        if slug in self._told:
            self._told[slug] += 1

    def ended(self, slug: str) -> None:
        self._pending.add(slug)
        self._told.setdefault(slug, 0)
        if self._task is None:
            self._task = asyncio.create_task(self._compute(), name="aidp-record-updates")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})

    async def _compute(self) -> None:
        try:
            while self._pending:
                slugs = sorted(self._pending)
                self._pending.clear()
                before = {slug: self._told[slug] for slug in slugs}
                records = await self._engine.records(slugs)
                fresh = [ws for ws in records if self._told[ws.slug] == before[ws.slug]]
                self._pending.update(ws.slug for ws in records if self._told[ws.slug] != before[ws.slug])
                for slug in slugs:
                    if slug not in self._pending:  # sent, or gone (its removal says so itself)
                        del self._told[slug]
                if fresh:
                    self._send(fresh)
        except Exception as exc:  # the whole list then: it says what fails, if anything still does
            log.warning("cannot send the records of ended runs: %s", exc)
            self._pending.clear()
            self._told.clear()
            self._fallback()
        finally:
            self._task = None
