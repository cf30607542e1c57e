"""`aidp/wsUpdated`: the records of workstreams whose runs ended, for a client that takes them.

A run's end changes a workstream's record beyond its status: its change summary (the harness may have
committed or left work), and the history behind `expectedS`. `aidp/wsListChanged` makes a client fetch
the whole list for that: at 10,000 workstreams a 6 MB answer, computed again in about a second, after
every run's end. A client that declares `capabilities.experimental.aidp.wsUpdated` gets just the
records that changed instead (a few git commands each).

A run's end can change other records too, which no status of theirs tells:
- the change summary of every workstream made on the ended one's branch (its base moved if the run
  committed): they get their records;
- the forecast of every workstream with no completed run of its own, which takes its command's:
  those whose forecast is no longer what the client was last given (by the whole list or a record)
  get their records. Forecasts are rough (`store.rough`), so that happens when a face would show
  another figure, not at every run's end.

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
        self._ended: set[str] = set()  # pending for their runs' ends (the others' records not looked at yet)
        # What the client was last given of each workstream: the whole list last answered, then records.
        self._listed: list[Workstream] = []
        self._listed_by_slug: dict[str, Workstream] | None = {}
        self._sent: dict[str, Workstream] = {}

    def told(self, slug: str) -> None:
        """A status of `slug` went out: a record computed before it must not follow it."""
        if slug in self._told:
            self._told[slug] += 1

    def ended(self, slug: str) -> None:
        self._ended.add(slug)
        self._update(slug)

    def listed(self, workstreams: list[Workstream]) -> None:
        """The client was given this whole list (it replaces what records told before it)."""
        if workstreams is not self._listed:
            self._listed, self._listed_by_slug = workstreams, None  # made when first needed
        self._sent.clear()

    def _update(self, slug: str) -> None:
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
                    self._sent.update((ws.slug, ws) for ws in fresh)
                ended = self._ended.intersection(slugs)
                if ended:
                    self._ended -= ended
                    for slug in await self._moved_by({ws.branch for ws in records if ws.slug in ended}):
                        self._update(slug)
        except Exception as exc:  # the whole list then: it says what fails, if anything still does
            log.warning("cannot send the records of ended runs: %s", exc)
            self._pending.clear()
            self._told.clear()
            self._ended.clear()
            self._fallback()
        finally:
            self._task = None

    async def _moved_by(self, branches: set[str]) -> list[str]:
        """The workstreams that runs which ended on `branches` changed, as the client was given them:
        those made on one of those branches, and those whose forecast is no longer the one given."""
        if not (self._listed or self._sent):  # it was given none
            return []
        if self._listed_by_slug is None:
            self._listed_by_slug = {ws.slug: ws for ws in self._listed}
        given = {**self._listed_by_slug, **self._sent}
        on_them = {slug for slug, ws in given.items() if _base(ws) in branches}
        now = await self._engine.borrowed_forecasts()
        forecast = {slug for slug, s in now.items() if slug in given and given[slug].expected_s != s}
        return sorted((on_them | forecast) - self._pending)


def _base(ws: Workstream) -> str | None:
    """The branch a workstream's change summary was made against."""
    return ws.changes.base_branch if ws.changes is not None else ws.base_branch
