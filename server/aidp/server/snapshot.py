"""The last `aidp/wsList` answer, answered again while it is still true.

A full list at 10,000 workstreams costs about a second (every record, its run history, its change
summary); a client asks again after each `aidp/wsListChanged`, and an editor may ask often. So the
last list is kept, with what it was computed from, and answered again while:
- no event of this server's engine said the list changed (statuses, create, remove, set, pause,
  land, sync, a run's end; the snapshot hears them before the server forwards them);
- no other aidp process committed to the state database (`PRAGMA data_version`), and no dead one
  left anything to correct (`Engine.recover`, run on every request, as a full list always did);
- git's refs and configuration, the state and config files and every worktree's files are as
  they were (`aidp.engine.listing`'s fingerprint, taken before the list was computed).
That last check walks every worktree (about 15 µs each). While it is cheap (`CHEAP_S`, estimated
from the worktrees' count and what the last check cost each) it runs on every request, so every
answer is exact; past that (thousands of worktrees) the snapshot is
answered at once and the check runs in the background, at most every `RECHECK_S` while clients keep
asking; when it finds a change the list is computed again and `aidp/wsListChanged` sent, so a change
made by hand inside a worktree shows within a few seconds. The background check runs in a child
process at idle priority (`listing.main`): in a thread its walk, a tenth of a second at 10,000,
took the GIL and a core from the answers given meanwhile. Whatever aidp itself changes stays exact
at any size: it comes through the first two checks. A worktree only git can check (too big to walk,
`dirty.WALK_MAX`: most real checkouts) leaves no fingerprint, and every list is computed, exact, as
it was before there was a snapshot: deferring those would leave a commit or an edit by hand unseen
for seconds in an ordinary repository.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import marshal
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable

import msgspec

from aidp import protocol as p
from aidp.engine import Engine, listing
from aidp.engine.events import EngineEvent, ListChanged, RunFinished, StatusChanged
from aidp.engine.model import Workstream
from aidp.server.coalesce import Coalesced

log = logging.getLogger("aidp.server")

CHEAP_S = 0.005  # a check of git and the worktrees this fast runs on every request
RECHECK_S = 2.0  # past it, at most one background check this often while clients ask (see `_stale`)
PER_WORKTREE_S = 15e-6  # what checking one worktree costs, until a check measured it


class Encoded:
    """A result already encoded as JSON: sent as it is (`AidpProtocol._send_response`)."""

    def __init__(self, body: bytes) -> None:
        self.body = body


@dataclasses.dataclass
class Snapshot:
    """One computed list and what it was computed from (read before the list was); `fingerprint`
    None: some worktree cannot be checked without git (see `listing.with_worktrees`)."""

    generation: int  # the engine events that changed the list before it was computed
    data_version: int
    fingerprint: listing.Fingerprint | None
    workstreams: list[Workstream]
    worktrees: int  # how many worktrees the fingerprint checks
    encoded: Encoded | None = None
    reused: int = 0  # answers from it after the first
    marshalled: bytes | None = None  # the fingerprint, for the background check's child

    def answer(self) -> Encoded:
        """The `aidp/wsList` result as JSON, encoded once per snapshot."""
        if self.encoded is None:
            self.encoded = Encoded(msgspec.json.encode(p.WsListResult(workstreams=self.workstreams)))
        return self.encoded


class ListSnapshot:
    """`aidp/wsList` for one engine: `answer` per request; `changed` is called when a background
    check found a change (the server sends `aidp/wsListChanged`). `cheap_s` and `recheck_s`: the
    policy above."""

    def __init__(
        self, engine: Engine, changed: Callable[[], None], cheap_s: float = CHEAP_S, recheck_s: float = RECHECK_S
    ) -> None:
        self._engine = engine
        self._changed = changed
        self._cheap_s = cheap_s
        self._recheck_s = recheck_s
        self._lists: Coalesced[Snapshot] = Coalesced()
        self._generation = 0
        self._current: Snapshot | None = None
        self._per_worktree_s = PER_WORKTREE_S  # CPU time, as the last whole check measured it
        self._checked_at = -math.inf  # the loop's time when the last background check started
        self._checking: asyncio.Task[None] | None = None
        self._aside = True  # background checks in a child process, until one fails
        self.computed = 0  # full lists computed
        self.reused = 0  # answers from the snapshot
        self.answered: list[Workstream] = []  # the list `answer` last gave
        self._unsubscribe: Callable[[], None] | None = engine.events.subscribe(self._on_event)

    def _on_event(self, event: EngineEvent) -> None:
        """Something this process did (or `Engine.watch_others` saw) changed the list: the next
        request computes it again. Live output and a run's pace change nothing listed."""
        if isinstance(event, StatusChanged | ListChanged | RunFinished):
            self._generation += 1

    async def answer(self) -> Encoded:
        """The list, exact but for what the background regime defers (see the module)."""
        await self._engine.check_state()
        await self._engine.recover()  # a dead process's leftovers: corrected (and announced) first
        snapshot = self._current
        why = "the first list" if snapshot is None else await self._stale(snapshot)
        if snapshot is not None and why is None:
            self.reused += 1
            snapshot.reused += 1
            if snapshot.reused == 1:  # said once per snapshot, not for each answer
                log.info("wsList: the snapshot of %d workstreams answered again", len(snapshot.workstreams))
        else:
            snapshot = await self._lists.get(lambda: self._compute(why or "asked"))
        self.answered = snapshot.workstreams
        return snapshot.answer()

    async def close(self) -> None:
        """Stop listening and checking (a server stops once per way out: it may come twice)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._checking is not None:
            self._checking.cancel()
            await asyncio.wait({self._checking})

    async def _stale(self, snapshot: Snapshot) -> str | None:
        """Why the snapshot is no longer true; None while it is (or its check is deferred)."""
        if snapshot.generation != self._generation:
            return "this server changed it"
        if await self._engine.db.call(self._engine.db.store.data_version) != snapshot.data_version:
            return "another aidp process changed the state"
        fingerprint = snapshot.fingerprint
        if fingerprint is None:
            return "a worktree only git can check"
        cost = self._per_worktree_s * snapshot.worktrees
        if cost <= self._cheap_s:
            return None if await self._unchanged(snapshot, fingerprint) else "git or a worktree changed"
        loop = asyncio.get_running_loop()
        # Every `recheck_s`, or less often when a check takes long: at most a tenth of the time.
        if self._checking is None and loop.time() - self._checked_at >= max(self._recheck_s, 10 * cost):
            self._checked_at = loop.time()
            check = self._check_in_background(snapshot, fingerprint)
            self._checking = asyncio.create_task(check, name="aidp-list-check")
        return None

    async def _unchanged(self, snapshot: Snapshot, fingerprint: listing.Fingerprint, aside: bool = False) -> bool:
        """Whether git and every worktree are as the snapshot's fingerprint says; `aside`: checked
        by a child process (see the module), or in a thread where that fails. A check that held
        walked every worktree: what it cost each is kept for the next estimate (one that did not
        may have stopped early, or not walked at all when the fingerprint was too recent)."""
        checked = None
        if aside and self._aside:
            checked = await _check_aside(snapshot, fingerprint)
            self._aside = checked is not None  # it failed (the log says why): threads from now on
        if checked is None:
            checked = await asyncio.to_thread(_timed_check, fingerprint)
        unchanged, spent = checked
        if unchanged:
            self._per_worktree_s = spent / max(1, snapshot.worktrees)
        return unchanged

    async def _check_in_background(self, snapshot: Snapshot, fingerprint: listing.Fingerprint) -> None:
        """A change found: the list computed again (requests meanwhile still get the old one),
        then announced if it differs from the last one answered, so clients fetch the new one. That
        may be newer than `snapshot`: a request can compute one while the check runs (which takes
        a while at idle priority), and what it answered needs no announcement."""
        try:
            if snapshot is not self._current or await self._unchanged(snapshot, fingerprint, aside=True):
                return
            answered = self._current
            new = await self._lists.get(lambda: self._compute("the background check found git or a worktree changed"))
            if new.workstreams != answered.workstreams:
                self._changed()
        except Exception as exc:  # the next request computes it again, and says what fails
            log.warning("the background check of the list failed: %s", exc)
        finally:
            self._checking = None

    async def _compute(self, why: str) -> Snapshot:
        engine, generation = self._engine, self._generation
        data_version = await engine.db.call(engine.db.store.data_version)
        state_dir = str(engine.state_dir)
        taken = await asyncio.to_thread(listing.take, str(engine.root), state_dir, str(engine.worktrees_dir))
        workstreams = await engine.workstreams()
        shown = [(w.path, w.changes.dirty) for w in workstreams if w.changes is not None and not w.worktree_missing]
        fingerprint = await asyncio.to_thread(listing.with_worktrees, taken, state_dir, shown)
        self._current = Snapshot(generation, data_version, fingerprint, workstreams, len(shown))
        self.computed += 1
        log.info(
            "wsList: computed %d workstreams (%s; %d computed, %d answered from the snapshot)",
            len(workstreams),
            why,
            self.computed,
            self.reused,
        )
        return self._current


def _timed_check(fingerprint: listing.Fingerprint) -> tuple[bool, float]:
    """`listing.still_true` and the CPU time it took: its own cost, not the load of the machine
    (a busy machine must not make a small repository's list a deferred one)."""
    started = time.thread_time()
    return listing.still_true(fingerprint), time.thread_time() - started


async def _check_aside(snapshot: Snapshot, fingerprint: listing.Fingerprint) -> tuple[bool, float] | None:
    """`_timed_check` in a child process at idle priority; None (said in the log) when that failed."""
    if snapshot.marshalled is None:
        snapshot.marshalled = await asyncio.to_thread(marshal.dumps, fingerprint.as_data())
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "aidp.engine.listing",
            str(os.getpid()),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except OSError as exc:
        log.warning("background checks of the list run in a thread from now on: their process did not start: %s", exc)
        return None
    try:
        out, err = await proc.communicate(snapshot.marshalled)
    finally:
        if proc.returncode is None:  # cancelled: the server is closing
            proc.kill()
            await proc.wait()
    try:
        if proc.returncode in (0, 1):
            return proc.returncode == 0, float(out)
    except ValueError:
        pass
    said = err.decode(errors="replace").strip()[-500:] or out.decode(errors="replace").strip()[-200:]
    log.warning(
        "background checks of the list run in a thread from now on: their process ended %s: %s", proc.returncode, said
    )
    return None
