"""`aidp serve`: the engine over JSON-RPC (pygls, LSP framing on stdio). A thin adapter: each
request is validated with its msgspec Struct from `aidp.protocol`, handed to the engine, and the
engine's events are forwarded as notifications. The contract is `docs/protocol.md`.

pygls is the JSON-RPC layer only (`JsonRPCServer`): aidp is no language server, so the LSP
lifecycle it speaks (`initialize`, `shutdown`, `exit`, `$/cancelRequest`, work-done progress) is
answered here with aidp's own types, and `aidp.server.lifecycle` answers `initialize` before this
module is even imported.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import sqlite3
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import attrs
import msgspec
from pygls.exceptions import (
    JsonRpcException,
    JsonRpcInternalError,
    JsonRpcInvalidParams,
    JsonRpcInvalidRequest,
    JsonRpcServerError,
)
from pygls.protocol import JsonRPCNotification, JsonRPCProtocol, JsonRPCRequestMessage, default_converter
from pygls.server import JsonRPCServer

from aidp import protocol as p
from aidp.engine import Engine
from aidp.engine.doctor import diagnose
from aidp.engine.errors import AidpError, Busy, CannotLand, InvalidInput, Refused, UnknownSlugs, refused_by_state
from aidp.engine.events import EngineEvent, ListChanged, OutputChunk, RunProgress, StatusChanged, StatusSeen
from aidp.engine.executor import Run
from aidp.engine.gitrepo import find_root
from aidp.engine.model import FINAL_STATUSES, RunSummary, Workstream
from aidp.server import lifecycle, wire
from aidp.server.snapshot import Encoded, ListSnapshot
from aidp.server.stdio import PipeWriter
from aidp.server.updates import RecordUpdates

log = logging.getLogger("aidp.server")

# Output notifications wait while the client has this much unread: live output is a view, the
# log file is the record, so a slow client makes the server skip output rather than grow.
OUTPUT_BACKLOG_MAX = 1024 * 1024
PROGRESS_CREATE_TIMEOUT_S = 5.0
# Requests read and not yet answered (runs aside) before the server stops reading more.
MAX_UNANSWERED = 64
FINISH_S = 30.0  # how long a stopping server waits for the requests already read, at each of its steps
# Signals that stop the server like the end of its input: every run cancelled and recorded.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)

P = TypeVar("P", bound=msgspec.Struct)
T = TypeVar("T")


def _converter() -> Any:
    """pygls turns unknown methods' params into namedtuples; keep them as plain JSON so that
    msgspec validates them and names the offending field."""
    converter = default_converter()
    converter.register_structure_hook(JsonRPCRequestMessage, _plain_message)
    converter.register_structure_hook(JsonRPCNotification, _plain_message)
    return converter


def _plain_message(obj: dict[str, Any], cls: type[Any]) -> Any:
    """`params` may be omitted (JSON-RPC 2.0) and stray members are ignored: either would
    otherwise make the constructor raise, and the request would never be answered."""
    names = {f.name for f in attrs.fields(cls)}
    return cls(**{"params": None, **{k: v for k, v in obj.items() if k in names}})


def parse(params: Any, cls: type[P]) -> P:
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise JsonRpcInvalidParams(f"params must be an object, got {type(params).__name__}")
    try:
        return msgspec.convert(params, cls)
    except msgspec.ValidationError as exc:
        raise JsonRpcInvalidParams(f"invalid params: {exc}") from exc


def to_jsonrpc(exc: AidpError) -> JsonRpcException:
    if isinstance(exc, CannotLand):  # before the classes it may derive from: its data says what to fix
        data = {"slug": exc.slug, "reason": exc.reason, "files": exc.files, "landed": msgspec.to_builtins(exc.landed)}
        return JsonRpcException(str(exc), p.CANNOT_LAND, data=data)
    if isinstance(exc, UnknownSlugs):
        return JsonRpcInvalidParams(str(exc), data={"unknown": exc.unknown})
    if isinstance(exc, Busy):
        return JsonRpcServerError(str(exc), p.SERVER_BUSY, data={"running": exc.running})
    if isinstance(exc, InvalidInput | Refused):
        return JsonRpcInvalidParams(str(exc))
    # Not JsonRpcServerError: it refuses codes outside -32099..-32000, and -32803 is one.
    return JsonRpcException(str(exc), p.REQUEST_FAILED)


class AidpProtocol(JsonRPCProtocol):
    """pygls's message handling, with every request answered: a body that cannot be decoded gets
    the JSON-RPC error for it (`wire.decode`), `initialize` with params that do not fit LSP's
    shape gets -32602, a second `initialize` and any request after the `shutdown` reply get an
    error. The lifecycle messages are handled here, the rest by pygls's dispatch."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.initialized = False
        # Requests read but not yet answered, runs aside (they last as long as their workstreams):
        # the server stops reading while there are too many (backpressure).
        self.unanswered: set[Any] = set()
        self.answered = asyncio.Event()

    def receive(self, body: bytes) -> None:
        """Decode one message body and handle it (`exit` raises SystemExit)."""
        data = wire.decode(body)
        if isinstance(data, wire.Rejected):
            log.warning("rejected a message (%s): %s", data.code, data.message)
            if data.answer:
                # Not _send_response: pygls leaves out an id of None, JSON-RPC wants `"id": null`.
                error = {"code": data.code, "message": data.message}
                self._send_data({"jsonrpc": "2.0", "id": data.msg_id, "error": error})
            return
        method = data.get("method")
        if isinstance(method, str) and "id" in data:
            if refusal := self._refusal(method):
                self._send_response(data["id"], error=refusal.to_response_error())
                return
            if method == p.INITIALIZE:
                self._initialize(data["id"], data.get("params"))
                return
            if method not in (p.WS_RUN, p.WS_RUN_ALL):
                self.unanswered.add(data["id"])
        elif method == p.EXIT:
            self._exit()
        elif method == p.CANCEL_REQUEST:
            self._cancel(data.get("params"))
            return
        elif method == p.INITIALIZED:
            return
        try:
            message = self.structure_message(data)
        except JsonRpcException as exc:  # a notification or response pygls cannot make sense of
            log.warning("skipped a message pygls cannot read: %s", exc)
            return
        self.handle_message(message)

    def _initialize(self, msg_id: Any, params: Any) -> None:
        """`initialize` that came after another message (usually `aidp.server.lifecycle` answers it)."""
        try:
            parsed = lifecycle.initialize_params(params)
        except lifecycle.BadInitialize as exc:
            self._send_response(msg_id, error=JsonRpcInvalidParams(str(exc)).to_response_error())
            return
        self.aidp.begin(parsed)
        self._send_response(msg_id, result=msgspec.to_builtins(lifecycle.RESULT))

    def _cancel(self, params: Any) -> None:
        """`$/cancelRequest`: pygls cancels the request's task (a run then cancels its workstreams)."""
        try:
            cancel = msgspec.convert(params, p.CancelParams)
        except msgspec.ValidationError as exc:
            log.warning("skipped a $/cancelRequest it cannot read: %s", exc)
            return
        self._handle_cancel_notification(cancel.id)

    def _exit(self) -> None:
        """`exit`: code 0 after `shutdown`, else 1 (LSP); the server stops like at end of input."""
        if isinstance(self.writer, PipeWriter):
            self.writer.close()
        raise SystemExit(0 if self._shutdown else 1)

    def notify(self, method: str, params: Any | None = None) -> None:
        """pygls's `notify` wraps the params in an attrs message that cattrs unstructures value by
        value (5% of the server's busy event-loop time on 500 short workstreams, bench: overhead);
        aidp's are plain data already (`msgspec.to_builtins`), so they go out as they are."""
        self._send_data({"jsonrpc": JsonRPCProtocol.VERSION, "method": method, "params": params})

    def shut_down(self) -> None:
        """After `shutdown` was handled: every other request still open is cancelled (answered so),
        and from now on only `exit` is accepted."""
        current = self.msg_id
        for msg_id, future in self._request_futures.items():
            if msg_id != current and not future.done():
                future.cancel()
        self._shutdown = True

    @property
    def aidp(self) -> AidpServer:
        assert isinstance(self._server, AidpServer)
        return self._server

    def _refusal(self, method: str) -> JsonRpcException | None:
        if self._shutdown:
            return JsonRpcException("the server has shut down: only 'exit' is accepted", p.REQUEST_FAILED)
        if method == p.INITIALIZE and self.initialized:
            return JsonRpcInvalidRequest(
                "the server is already initialized: one server serves one repository; start another for another"
            )
        return None

    def _send_response(self, msg_id: Any, result: Any = None, error: Any = None) -> None:
        """A result goes out as the plain data it is, like `notify`'s params: pygls wraps it in an
        attrs message that cattrs unstructures value by value (54 ms for a list of 2,000
        workstreams, against 13 ms as it is; bench: list10k). Anything not plain data still goes
        through pygls's converter (`_send_data`'s `default`). A result `Encoded` already (the list
        snapshot's) is written as it is around the response's own bytes, never copied into one: 6 MB
        at 10,000 workstreams, neither encoded nor copied again for each request."""
        if isinstance(result, Encoded) and error is None and self.writer is not None:
            self._result_types.pop(msg_id, None)
            head = b'{"jsonrpc":"2.0","id":%s,"result":' % msgspec.json.encode(msg_id)
            self.writer.write(wire.header(len(head) + len(result.body) + 1) + head)
            self.writer.write(result.body)
            self.writer.write(b"}")
        elif error is None:
            self._result_types.pop(msg_id, None)
            self._send_data({"jsonrpc": JsonRPCProtocol.VERSION, "id": msg_id, "result": result})
        else:
            super()._send_response(msg_id, result, error)
        if msg_id in self.unanswered:
            self.unanswered.discard(msg_id)
            self.answered.set()

    def structure_message(self, data: dict[str, Any]) -> Any:
        try:
            return super().structure_message(data)
        except JsonRpcException as exc:
            if "id" not in data or "method" not in data:
                raise
            self._send_response(data["id"], error=exc.to_response_error())
            return None

    def handle_message(self, message: Any) -> None:
        if message is not None:  # None: already answered with an error above
            super().handle_message(message)


class AidpServer(JsonRPCServer):
    protocol: AidpProtocol

    def __init__(self, root: Path | None) -> None:
        super().__init__(protocol_cls=AidpProtocol, converter_factory=_converter)
        self.root_arg = root
        self.root: Path | None = None  # the repository, known even when its engine could not open
        self.engine: Engine | None = None
        self.engine_error: str | None = None
        self._initializing: asyncio.Future[None] | None = None
        self.progress_supported = False  # the client accepts `window/workDoneProgress/create`
        self.stopping = False
        self.pending: set[asyncio.Task[Any]] = set()
        self._watch: asyncio.Task[None] | None = None
        self.out: PipeWriter | None = None
        self._dropped: dict[tuple[str, str], int] = {}
        self._progress: dict[str, ProgressReport] = {}  # the `$/progress` of each run followed, by run id
        self._moving = asyncio.Lock()
        self.lists: ListSnapshot | None = None  # `aidp/wsList`'s, once the engine is open
        self.takes_records = False  # the client takes `aidp/wsUpdated` (see updates.py)
        self.updates: RecordUpdates | None = None  # with it, once the engine is open
        self._list_change_due = False  # an `aidp/wsListChanged` for ended runs, sent at the loop's next turn

    # -- lifecycle ---------------------------------------------------------------------------

    def begin(self, params: p.InitializeParams) -> None:
        """`initialize` is answered: note what the client supports and open the repository in the
        background; requests that come before it is open wait for it (`require_engine`)."""
        self.protocol.initialized = True
        window = params.capabilities.window
        self.progress_supported = window is not None and window.work_done_progress
        experimental = params.capabilities.experimental
        self.takes_records = experimental is not None and experimental.aidp is not None and experimental.aidp.ws_updated
        self._initializing = asyncio.ensure_future(self._open_engine(lifecycle.start_dir(self.root_arg, params)))

    async def _open_engine(self, start: Path | None) -> None:
        try:
            root = self.root = await asyncio.to_thread(find_root, start or Path.cwd())
            self.engine = await Engine.open(root, settle=False)
        except AidpError as exc:
            self.engine_error = str(exc)
            log.error("cannot serve: %s", exc)
            return
        # Before `forward`: the list is invalidated before any client is told of a change.
        self.lists = ListSnapshot(self.engine, self._notify_list_changed)
        if self.takes_records:
            self.updates = RecordUpdates(self.engine, self._notify_records, self._notify_list_changed)
        self.engine.events.subscribe(self.forward)
        self._watch = asyncio.create_task(self.engine.watch_others(), name="aidp-watch-others")
        log.info("serving %s", root)

    async def require_engine(self) -> Engine:
        """The engine; a request that raced `initialize` waits for it rather than failing."""
        if self._initializing is not None:
            await asyncio.shield(self._initializing)
        if self.engine is None:
            reason = self.engine_error or "the server is not initialized yet (send 'initialize' first)"
            raise JsonRpcException(reason, p.SERVER_BUSY if self.engine_error is None else p.REQUEST_FAILED)
        return self.engine

    async def require_root(self) -> Path:
        """The repository, also when its engine could not open (for `aidp/doctor`)."""
        if self._initializing is not None:
            await asyncio.shield(self._initializing)
        if self.root is None:
            reason = self.engine_error or "the server is not initialized yet (send 'initialize' first)"
            raise JsonRpcException(reason, p.SERVER_BUSY if self.engine_error is None else p.REQUEST_FAILED)
        return self.root

    async def moving(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run a land or a sync: each moves a branch, then the worktrees that have it checked out.
        One at a time in this server, so requests racing for a branch queue rather than refuse each
        other (another process's are still caught by the compare-and-swap on the ref); and, once
        started, never cut short by `$/cancelRequest`, which would leave the branch moved and its
        worktree behind: the answer is then its result, as JSON-RPC allows. A stopping server's last
        resort (`stop`) cancels the work too, which still completes a branch move it began
        (`review.uninterrupted`), and waits for it."""
        async with self._moving:
            work = asyncio.ensure_future(op())
            while True:
                try:
                    return await asyncio.shield(work)
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if work.done() or task is None:  # the work itself was cancelled
                        raise
                    if self.stopping:
                        work.cancel()
                    task.uncancel()

    def refuse_if_stopping(self) -> None:
        if self.stopping:
            raise JsonRpcException("the server is shutting down; no new runs", p.REQUEST_FAILED)

    async def stop(self) -> None:
        """shutdown, exit or end of input: cancel every run (each workstream ended and recorded),
        let the other requests already read finish (up to `FINISH_S`; then the git hooks they wait
        on are ended, and after `FINISH_S` more they are cancelled), then close the engine, which
        they may still need to record their end."""
        self.stopping = True
        if self._initializing is not None:
            await asyncio.shield(self._initializing)
        if self._watch is not None:
            self._watch.cancel()
        if self.lists is not None:
            await self.lists.close()
        if self.engine is None:
            return
        await self.engine.cancel()
        others = self.pending - {asyncio.current_task()}
        if others:
            _, unfinished = await asyncio.wait(others, timeout=FINISH_S)
            if unfinished:  # most likely on a git hook that never ends: end those, so each finishes its own way
                await self.engine.end_git_hooks()
                _, unfinished = await asyncio.wait(unfinished, timeout=FINISH_S)
            if unfinished:
                for task in unfinished:
                    task.cancel()
                await asyncio.wait(unfinished, timeout=FINISH_S)
        if self.updates is not None:
            await self.updates.close()
        await self.engine.close()
        self.engine = None
        self.engine_error = "the server is shutting down"

    async def read(self, frames: wire.FrameReader, first: bytes | None = None) -> int:
        """Handle messages (`first`, if the start-up left one, then the stream's) until end of
        input (0), `exit` (its exit code) or broken framing (1). Backpressure: the next message is
        not read while MAX_UNANSWERED requests wait for their answer or the client has too much
        unread; the client's pipe fills and it waits."""
        left = first
        while True:
            body, left = left, None
            try:
                body = body or await frames.next_body()
            except wire.FramingError as exc:
                log.error("the message framing is broken (%s): ending the connection, so the client restarts", exc)
                return 1
            if body is None:
                return 0
            try:
                self.protocol.receive(body)
            except SystemExit as exc:  # `exit`: pygls closed the writer and asks to leave
                return exc.code if isinstance(exc.code, int) else 1
            await asyncio.sleep(0)  # let the handlers just started run before reading on
            await self._room()

    async def _room(self) -> None:
        while True:
            if self.out is not None:
                await self.out.writable()
            if len(self.protocol.unanswered) < MAX_UNANSWERED:
                return
            self.protocol.answered.clear()
            await self.protocol.answered.wait()

    def report_server_error(self, error: Exception, source: Any) -> None:
        """Expected errors (bad params, refusals) are answered to the client; log them in one
        line. Only an internal error deserves a traceback."""
        if isinstance(error, JsonRpcException) and error.code != JsonRpcInternalError.CODE:
            log.info("answered with error %s: %s", error.code, error.message)
        else:
            log.error("internal error (%s): %s", getattr(source, "__name__", source), error, exc_info=error)

    # -- engine events -> notifications ------------------------------------------------------

    def forward(self, event: EngineEvent) -> None:
        if isinstance(event, StatusChanged):
            final = self._notify_status(event)
            if final and event.run_id in self._progress:
                self._progress[event.run_id].ended(event.slug)
            elif event.run_id in self._progress:  # running (maybe with progress) or queued again for a retry
                self._progress[event.run_id].partial(
                    event.slug, None if event.progress is None else event.progress.percent
                )
            if final:
                self._record_changed(event.slug)
        elif isinstance(event, OutputChunk):
            self.send_output(event)
        elif isinstance(event, RunProgress):
            self.protocol.notify(p.RUN_PROGRESS, msgspec.to_builtins(event))
            if event.run_id in self._progress:
                self._progress[event.run_id].paced(event)
        elif isinstance(event, ListChanged):
            self._notify_list_changed()
        elif isinstance(event, StatusSeen) and self._notify_status(event.change):  # another process's run
            self._record_changed(event.change.slug)

    def _notify_status(self, event: StatusChanged) -> bool:
        """`aidp/wsStatus`; True when it ends the workstream's run. The stream ends then: what was
        skipped at its end is said first."""
        final = event.status in FINAL_STATUSES and event.run_id is not None
        if final and (dropped := self._dropped.pop((event.run_id or "", event.slug), 0)):
            self._notify_output(OutputChunk(run_id=event.run_id or "", slug=event.slug, text="", skipped=dropped))
        self.protocol.notify(p.WS_STATUS, msgspec.to_builtins(event))
        if self.updates is not None:
            self.updates.told(event.slug)
        return final

    def _record_changed(self, slug: str) -> None:
        """A run of `slug` ended: it changed the record beyond its status (its change summary, if it
        or its auto-commit committed; its history). The record, or the whole list to fetch again:
        once for the runs that end together (their results commit together), each such
        notification being a whole list fetched again by the client."""
        if self.updates is not None:
            self.updates.ended(slug)
        elif not self._list_change_due:
            self._list_change_due = True
            asyncio.get_running_loop().call_soon(self._announce_list_change)

    def _announce_list_change(self) -> None:
        self._list_change_due = False
        self._notify_list_changed()

    def _notify_list_changed(self) -> None:
        self.protocol.notify(p.WS_LIST_CHANGED, {})

    def _notify_records(self, workstreams: list[Workstream]) -> None:
        self.protocol.notify(p.WS_UPDATED, msgspec.to_builtins(p.WsUpdatedNotification(workstreams=workstreams)))

    def send_output(self, chunk: OutputChunk) -> None:
        """Live output unless the client is behind: then count it as skipped, and say so with the
        next chunk that goes out (or before the final status)."""
        key = (chunk.run_id, chunk.slug)
        if self.out is not None and self.out.backlog > OUTPUT_BACKLOG_MAX:
            self._dropped[key] = self._dropped.get(key, 0) + chunk.skipped + len(chunk.text.encode())
            return
        if dropped := self._dropped.pop(key, 0):
            chunk = OutputChunk(run_id=chunk.run_id, slug=chunk.slug, text=chunk.text, skipped=dropped + chunk.skipped)
        self._notify_output(chunk)

    def _notify_output(self, chunk: OutputChunk) -> None:
        notification = p.WsOutputNotification(run_id=chunk.run_id, slug=chunk.slug, text=chunk.shown)
        self.protocol.notify(p.WS_OUTPUT, msgspec.to_builtins(notification))

    # -- runs with work-done progress ---------------------------------------------------------

    async def follow(self, run: Run) -> RunSummary:
        """Wait for the run, reporting `$/progress` when the client supports it. Cancelling this
        (by `$/cancelRequest`) cancels the run: the engine records every workstream first."""
        engine = await self.require_engine()
        try:
            token = await self._progress_begin(run)
        except asyncio.CancelledError:  # cancelled while the client was accepting the token
            run.cancel()
            await engine.wait(run)  # every workstream ended and recorded, then let it through
            raise
        try:
            summary = await engine.wait(run)
        except asyncio.CancelledError:
            if token:
                self.send_progress(token, p.WorkDoneProgressEnd(message="cancelled"))
            raise
        finally:
            self._progress.pop(run.run_id, None)
        if token:
            message = ", ".join(summary.counts()) or "nothing to run"
            self.send_progress(token, p.WorkDoneProgressEnd(message=message))
        return summary

    def send_progress(
        self, token: str, value: p.WorkDoneProgressBegin | p.WorkDoneProgressReport | p.WorkDoneProgressEnd
    ) -> None:
        self.protocol.notify(p.PROGRESS, msgspec.to_builtins(p.ProgressParams(token=token, value=value)))

    async def _progress_begin(self, run: Run) -> str | None:
        if not self.progress_supported:
            return None
        token = str(uuid.uuid4())  # never reuse: clients keep finished tokens
        create = msgspec.to_builtins(p.WorkDoneProgressCreateParams(token=token))
        try:
            await asyncio.wait_for(
                self.protocol.send_request_async(p.WORK_DONE_PROGRESS_CREATE, create), PROGRESS_CREATE_TIMEOUT_S
            )
        except (TimeoutError, JsonRpcException) as exc:
            log.warning("client refused progress token: %s", exc)
            return None
        total = len(run.jobs)
        noun = "workstream" if total == 1 else "workstreams"
        begin = p.WorkDoneProgressBegin(title=f"Running {total} {noun}", percentage=0, cancellable=True)
        self.send_progress(token, begin)
        report = ProgressReport(total, lambda r: self.send_progress(token, r))
        self._progress[run.run_id] = report
        for slug, job in run.jobs.items():  # ended while the client was accepting the token
            if job.result is not None:
                report.ended(slug)
        return token


class ProgressReport:
    """The `$/progress` reports of one run: '3/10 done, about 1m 20s left; <note>'. The count is of
    the final statuses (each end is reported); the ETA and the note (a pace change, a halt) come
    from the engine's latest `RunProgress`. The percentage is the done ones plus the running ones'
    own progress (`percent` of their latest report), over the total. A report goes out only when
    its text or its (whole) percentage changes."""

    def __init__(self, total: int, send: Callable[[p.WorkDoneProgressReport], None]) -> None:
        self._total = total
        self._send = send
        self._done: set[str] = set()
        self._partial: dict[str, float] = {}  # running workstreams' own percent, 0-100
        self._eta_s: float | None = None
        self._note: str | None = None
        self._last = (self._message(), 0)  # what the begin implies: none done, nothing known yet

    def ended(self, slug: str) -> None:
        self._done.add(slug)
        self._partial.pop(slug, None)
        self._report()

    def partial(self, slug: str, percent: float | None) -> None:
        """A running workstream's harness said how far it is (None: it no longer says)."""
        if slug in self._done:
            return
        if percent is None:
            self._partial.pop(slug, None)
        else:
            self._partial[slug] = percent
        self._report()

    def paced(self, event: RunProgress) -> None:
        self._eta_s, self._note = event.eta_s, event.note
        self._report()

    def _message(self) -> str:
        done = len(self._done)
        message = f"{done}/{self._total} done"
        if self._eta_s is not None and done < self._total:
            message += f", about {rough_duration(self._eta_s)} left"
        return f"{message}; {self._note}" if self._note else message

    def _percentage(self) -> int:
        if not self._total:
            return 100
        return int(100 * (len(self._done) + sum(self._partial.values()) / 100) / self._total)

    def _report(self) -> None:
        message, percentage = self._message(), self._percentage()
        if (message, percentage) != self._last:
            self._last = (message, percentage)
            self._send(p.WorkDoneProgressReport(message=message, percentage=percentage))


def rough_duration(seconds: float) -> str:
    """'45s', '1m 20s', '2h 5m': a forecast is no more precise than that."""
    whole = max(1, math.ceil(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


def create_server(root: Path | None) -> AidpServer:
    server = AidpServer(root)

    @server.feature(p.SHUTDOWN)
    async def shutdown(ls: AidpServer, *_: Any) -> None:
        await ls.stop()
        ls.protocol.shut_down()

    def request(
        method: str, params_cls: type[P]
    ) -> Callable[[Callable[[AidpServer, Engine, P], Awaitable[Any]]], None]:
        """Register a handler: params validated, engine errors mapped to JSON-RPC errors,
        the result serialized camelCase."""

        def register(fn: Callable[[AidpServer, Engine, P], Awaitable[Any]]) -> None:
            async def handle(ls: AidpServer, params: Any) -> Any:
                parsed = parse(params, params_cls)
                task = asyncio.current_task()
                assert task is not None
                ls.pending.add(task)
                try:
                    result = await fn(ls, await ls.require_engine(), parsed)
                    return result if isinstance(result, Encoded) else msgspec.to_builtins(result)
                except AidpError as exc:
                    raise to_jsonrpc(exc) from exc
                except sqlite3.Error as exc:
                    raise to_jsonrpc(refused_by_state(exc)) from exc
                finally:
                    ls.pending.discard(task)

            server.feature(method)(handle)

        return register

    @server.feature(p.DOCTOR)
    async def doctor(ls: AidpServer, params: Any) -> Any:
        """`aidp doctor`'s findings. Needs no engine: it is most useful when the engine could not open."""
        parse(params, p.EmptyParams)
        return msgspec.to_builtins(await diagnose(await ls.require_root()))

    @request(p.WS_RUN, p.WsRunParams)
    async def ws_run(ls: AidpServer, engine: Engine, q: p.WsRunParams) -> RunSummary:
        ls.refuse_if_stopping()
        run = await engine.start(
            q.slugs,
            q.max_concurrent,
            q.mode,
            q.steps,
            q.timeout_s,
            halt=q.halt,
            no_deps=q.no_deps,
            base_from_deps=q.base_from_deps,
        )
        return await ls.follow(run)

    @request(p.WS_RUN_ALL, p.WsRunAllParams)
    async def ws_run_all(ls: AidpServer, engine: Engine, q: p.WsRunAllParams) -> RunSummary:
        ls.refuse_if_stopping()
        run = await engine.start_all(
            q.max_concurrent, q.mode, q.steps, q.timeout_s, halt=q.halt, base_from_deps=q.base_from_deps
        )
        return await ls.follow(run)

    @request(p.WS_LIST, p.EmptyParams)
    async def ws_list(ls: AidpServer, engine: Engine, q: p.EmptyParams) -> Encoded:
        assert ls.lists is not None  # made with the engine
        answer = await ls.lists.answer()
        if ls.updates is not None:
            ls.updates.listed(ls.lists.answered)
        return answer

    @request(p.WS_NEW, p.WsNewParams)
    async def ws_new(ls: AidpServer, engine: Engine, q: p.WsNewParams) -> p.Workstream:
        return await engine.create(q.slug, q.task, q.base_branch, q.command, priority=q.priority, after=q.after)

    @request(p.WS_SET, p.WsSetParams)
    async def ws_set(ls: AidpServer, engine: Engine, q: p.WsSetParams) -> p.Workstream:
        return await engine.set_schedule(q.slug, q.priority, q.after)

    @request(p.WS_SETUP, p.SlugParams)
    async def ws_setup(ls: AidpServer, engine: Engine, q: p.SlugParams) -> p.Workstream:
        """Copy the configured files and run the setup command again; a failed setup is a result
        (the workstream's `setup` says why), not an error."""
        return await engine.setup(q.slug)

    @request(p.WS_REMOVE, p.WsRemoveParams)
    async def ws_remove(ls: AidpServer, engine: Engine, q: p.WsRemoveParams) -> dict[str, Any]:
        for note in await engine.remove(q.slug, q.delete_branch, q.force):
            log.info("%s: %s", q.slug, note)
        return {}

    @request(p.WS_PAUSE, p.SlugParams)
    async def ws_pause(ls: AidpServer, engine: Engine, q: p.SlugParams) -> p.Workstream:
        return await engine.set_paused(q.slug, True)

    @request(p.WS_RESUME, p.SlugParams)
    async def ws_resume(ls: AidpServer, engine: Engine, q: p.SlugParams) -> p.Workstream:
        return await engine.set_paused(q.slug, False)

    @request(p.WS_CANCEL, p.WsCancelParams)
    async def ws_cancel(ls: AidpServer, engine: Engine, q: p.WsCancelParams) -> p.WsCancelResult:
        return p.WsCancelResult(cancelled=await engine.cancel(q.slugs, q.run_id))

    @request(p.WS_LOG, p.WsLogParams)
    async def ws_log(ls: AidpServer, engine: Engine, q: p.WsLogParams) -> p.WsLogResult:
        path, text = await engine.log(q.slug, q.tail_bytes)
        return p.WsLogResult(slug=q.slug, log_path=path, text=text)

    @request(p.WS_DIFF, p.WsDiffParams)
    async def ws_diff(ls: AidpServer, engine: Engine, q: p.WsDiffParams) -> p.Diff:
        return await engine.diff(q.slug, q.base, q.max_bytes)

    @request(p.WS_CONFLICTS, p.WsConflictsParams)
    async def ws_conflicts(ls: AidpServer, engine: Engine, q: p.WsConflictsParams) -> p.ConflictReport:
        return await engine.conflicts(q.slugs)

    @request(p.WS_LAND, p.WsLandParams)
    async def ws_land(ls: AidpServer, engine: Engine, q: p.WsLandParams) -> p.WsLandResult:
        return p.WsLandResult(landed=await ls.moving(lambda: engine.land(q.slugs, q.strategy, q.into, q.rm)))

    @request(p.WS_SYNC, p.WsSyncParams)
    async def ws_sync(ls: AidpServer, engine: Engine, q: p.WsSyncParams) -> p.SyncResult:
        return await ls.moving(lambda: engine.sync(q.slug, q.strategy))

    return server


async def run(root: Path | None, frames: wire.FrameReader, writer: PipeWriter, opening: lifecycle.Opening) -> int:
    """Serve what `aidp.server.lifecycle` started until end of input, `exit`, broken framing or a
    stop signal; then stop like at end of input. The exit code: 0, or 1 for `exit` without
    `shutdown` and for broken framing, or 128 + the signal's number."""
    server = create_server(root)
    server.out = writer
    server.protocol.set_writer(writer)
    if opening.initialize is not None:
        server.begin(opening.initialize)
    loop = asyncio.get_running_loop()
    reading = asyncio.ensure_future(server.read(frames, opening.first))
    stopped_by: list[int] = []

    def on_signal(signum: int) -> None:
        log.info("%s: cancelling every run, then exiting", signal.Signals(signum).name)
        stopped_by.append(signum)
        reading.cancel()

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await asyncio.wait([reading])
        return 128 + stopped_by[0] if stopped_by else reading.result()
    finally:
        # End of input (the editor went away), `exit`, a signal: nothing may outlive the server.
        reading.cancel()
        await server.stop()
        await writer.drain(timeout_s=5)
        writer.close()
