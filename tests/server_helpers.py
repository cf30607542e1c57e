"""Helpers for the end-to-end tests of `aidp serve`: the server command, a pytest-lsp client that
keeps aidp's custom notifications as plain JSON (in arrival order), and a small raw JSON-RPC client
over asyncio subprocess pipes for what a well-behaved client never does (garbage bodies, not
reading stdout, closing stdin mid-run). Both drive the server as a real subprocess over real stdio.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from lsprotocol import types as lsp
from pygls.exceptions import JsonRpcException
from pygls.protocol import JsonRPCNotification, JsonRPCRequestMessage, JsonRPCResponseMessage, default_converter
from pytest_lsp import LanguageClient
from pytest_lsp.client import register_lsp_features
from support import PYTHON, proc_stat, wait_until

from aidp.engine.model import Workstream
from aidp.engine.store import Store

STARTUP_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 60.0

WS_STATUS = "aidp/wsStatus"
WS_OUTPUT = "aidp/wsOutput"
WS_LIST_CHANGED = "aidp/wsListChanged"
WS_UPDATED = "aidp/wsUpdated"
RUN_PROGRESS = "aidp/runProgress"
AIDP_NOTIFICATIONS = (WS_STATUS, WS_OUTPUT, WS_LIST_CHANGED, WS_UPDATED, RUN_PROGRESS)

# -- the server command -------------------------------------------------------------------------


def server_command(root: Path | None) -> list[str]:
    """`aidp serve`, with `--root` when given (else the root comes from `initialize` or the cwd)."""
    return [PYTHON, "-m", "aidp", "serve", *(["--root", str(root)] if root is not None else [])]


# -- what the server left behind ----------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """Live descendants of `pid` (by /proc ppid links)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = proc_stat(int(entry.name))
            if fields is not None and fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def stored_workstreams(root: Path) -> dict[str, Workstream]:
    """The state the server left in the database, read without an engine (whose `recover` would
    correct a dead server's leftovers and so hide them)."""
    store = Store(root / ".aidp" / "state.db")
    try:
        return {ws.slug: ws for ws in store.all()}
    finally:
        store.close()


# -- the pytest-lsp client --------------------------------------------------------------------------


def _plain_json_converter() -> Any:
    """Keep custom methods' params and results as plain JSON (pygls would make namedtuples)."""
    converter = default_converter()  # type: ignore[no-untyped-call]
    for cls in (JsonRPCRequestMessage, JsonRPCNotification, JsonRPCResponseMessage):
        converter.register_structure_hook(cls, lambda obj, c: c(**obj))
    return converter


class AidpClient(LanguageClient):
    """pytest-lsp's client, recording aidp's notifications in arrival order."""

    def __init__(self) -> None:
        super().__init__(converter_factory=_plain_json_converter)
        register_lsp_features(self)
        self.notes: list[tuple[str, dict[str, Any]]] = []
        for method in AIDP_NOTIFICATIONS:
            self.feature(method)(functools.partial(self._record, method))

    def _record(self, method: str, params: dict[str, Any]) -> None:
        self.notes.append((method, params))

    @property
    def server(self) -> asyncio.subprocess.Process:
        assert self._server is not None
        return self._server

    def of(self, method: str) -> list[dict[str, Any]]:
        return [params for m, params in self.notes if m == method]

    def statuses(self, slug: str | None = None) -> list[dict[str, Any]]:
        return [n for n in self.of(WS_STATUS) if slug is None or n["slug"] == slug]

    async def call(self, method: str, params: Any = None, timeout: float = REQUEST_TIMEOUT_S) -> Any:
        return await asyncio.wait_for(self.protocol.send_request_async(method, params), timeout)  # type: ignore[no-untyped-call]

    def start_call(self, method: str, params: Any = None, msg_id: str | None = None) -> asyncio.Task[Any]:
        """Send a request now; its answer is the task's result (or exception)."""
        return asyncio.ensure_future(self.protocol.send_request_async(method, params, msg_id=msg_id))  # type: ignore[no-untyped-call]

    async def fails(self, method: str, params: Any = None, timeout: float = REQUEST_TIMEOUT_S) -> JsonRpcException:
        """The request must fail: its error (code, message, data)."""
        try:
            result = await self.call(method, params, timeout)
        except JsonRpcException as exc:
            return exc
        raise AssertionError(f"{method} {params!r} succeeded: {result!r}")

    async def workstreams(self) -> dict[str, dict[str, Any]]:
        result = await self.call("aidp/wsList", {})
        return {ws["slug"]: ws for ws in result["workstreams"]}


def initialize_params(
    *,
    progress: bool = False,
    root_uri: str | None = None,
    folders: list[str] | None = None,
    records: bool = False,
) -> lsp.InitializeParams:
    """`records`: the client takes `aidp/wsUpdated` (`capabilities.experimental.aidp.wsUpdated`)."""
    return lsp.InitializeParams(
        capabilities=lsp.ClientCapabilities(
            window=lsp.WindowClientCapabilities(work_done_progress=progress),
            experimental={"aidp": {"wsUpdated": True}} if records else None,
        ),
        root_uri=root_uri,
        workspace_folders=[lsp.WorkspaceFolder(uri=u, name=Path(u).name) for u in folders] if folders else None,
    )


async def stop_process(proc: asyncio.subprocess.Process, timeout: float = 30.0) -> None:
    if proc.returncode is None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), timeout)
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


@contextlib.asynccontextmanager
async def lsp_session(
    cmd: list[str],
    cwd: Path,
    params: lsp.InitializeParams | None = None,
    env: dict[str, str] | None = None,
) -> AsyncIterator[AidpClient]:
    """A pytest-lsp client connected to a fresh server process (`env`: added variables); initialized
    when `params` is given. Afterwards: shutdown + exit if the server is still up, else just reap it."""
    client = AidpClient()
    await client.start_io(*cmd, cwd=str(cwd), env={**os.environ, **(env or {})})
    try:
        if params is not None:
            await asyncio.wait_for(client.initialize_session(params), STARTUP_TIMEOUT_S)
        yield client
    finally:
        server = client.server
        if server.returncode is None and client.capabilities is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.shutdown_session(), 60)
        if server.stdin is not None and not server.stdin.is_closing():
            server.stdin.close()
        await stop_process(server)
        await client.stop()  # type: ignore[no-untyped-call]


# -- a raw JSON-RPC client ----------------------------------------------------------------------------


def frame(body: bytes) -> bytes:
    return f"Content-Length: {len(body)}\r\n\r\n".encode() + body


class RawClient:
    """JSON-RPC over the server's stdin/stdout with nothing in between. Reading can be paused
    (`reading.clear()`) to play a client that falls behind. Server requests for progress tokens
    are answered; every notification is kept in arrival order."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.notes: list[tuple[str, Any]] = []
        self.responses: dict[int | str | None, dict[str, Any]] = {}  # None: an error to an unreadable request
        self.server_requests: list[dict[str, Any]] = []
        self.reading = asyncio.Event()
        self.reading.set()
        # Cleared: the server's requests (progress tokens) wait for an answer until it is set.
        self.answering = asyncio.Event()
        self.answering.set()
        self.eof = False
        self._ids = itertools.count(1)
        self._answers: set[asyncio.Task[None]] = set()
        self._reader_task = asyncio.create_task(self._read_loop())

    @classmethod
    async def start(cls, cmd: list[str], cwd: Path, buffer: int = 64 * 1024) -> RawClient:
        """`buffer`: how much the client's side of the pipe takes in while `reading` is clear."""
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            cwd=str(cwd),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=None,  # the server's log goes to the test's stderr (captured by pytest)
            limit=buffer,
        )
        return cls(proc)

    async def _read_loop(self) -> None:
        assert self.proc.stdout is not None
        stdout = self.proc.stdout
        try:
            while True:
                await self.reading.wait()
                length = None
                while True:
                    line = await stdout.readline()
                    if not line:
                        return
                    if line in (b"\r\n", b"\n"):
                        break
                    name, _, value = line.decode("ascii").partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                assert length is not None, "a message without Content-Length"
                message = json.loads(await stdout.readexactly(length))
                self._dispatch(message)
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            self.eof = True

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "method" in message and "id" in message:
            self.server_requests.append(message)
            self._answers.add(asyncio.create_task(self._answer(message["id"])))
        elif "method" in message:
            self.notes.append((message["method"], message.get("params")))
        else:
            self.responses[message["id"]] = message

    async def _answer(self, msg_id: Any) -> None:
        await self.answering.wait()
        self.send({"jsonrpc": "2.0", "id": msg_id, "result": None})

    def send_raw(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)

    def send(self, message: dict[str, Any]) -> None:
        self.send_raw(frame(json.dumps(message).encode()))

    def notify(self, method: str, params: Any = None) -> None:
        self.send({"jsonrpc": "2.0", "method": method, **({"params": params} if params is not None else {})})

    def request_nowait(self, method: str, params: Any = None, *, omit_params: bool = False) -> int:
        msg_id = next(self._ids)
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": msg_id, "method": method}
        if not omit_params:
            message["params"] = params
        self.send(message)
        return msg_id

    async def response(self, msg_id: int | str | None, timeout: float = REQUEST_TIMEOUT_S) -> dict[str, Any]:
        await wait_until(lambda: msg_id in self.responses or self.eof, timeout, what=f"response {msg_id}")
        assert msg_id in self.responses, f"the server closed stdout before answering request {msg_id}"
        return self.responses.pop(msg_id)

    async def request(
        self, method: str, params: Any = None, timeout: float = REQUEST_TIMEOUT_S, *, omit_params: bool = False
    ) -> dict[str, Any]:
        return await self.response(self.request_nowait(method, params, omit_params=omit_params), timeout)

    async def result(self, method: str, params: Any = None, timeout: float = REQUEST_TIMEOUT_S) -> Any:
        response = await self.request(method, params, timeout)
        assert "error" not in response, response
        return response["result"]

    async def initialize(self, root_uri: str | None = None, progress: bool = False) -> None:
        caps = {"window": {"workDoneProgress": progress}}
        result = await self.result(
            "initialize",
            {"processId": os.getpid(), "rootUri": root_uri, "capabilities": caps},
            STARTUP_TIMEOUT_S,
        )
        assert "capabilities" in result
        self.notify("initialized", {})

    def of(self, method: str) -> list[Any]:
        return [params for m, params in self.notes if m == method]

    async def close(self, timeout: float = 60.0) -> int:
        """Close stdin (EOF), wait for the process; kill it if it does not go."""
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        self.reading.set()
        await stop_process(self.proc, timeout)
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(self._reader_task, 10)
        assert self.proc.returncode is not None
        return self.proc.returncode


@contextlib.asynccontextmanager
async def raw_session(cmd: list[str], cwd: Path) -> AsyncIterator[RawClient]:
    client = await RawClient.start(cmd, cwd)
    try:
        yield client
    finally:
        if client.proc.returncode is None:
            await client.close(timeout=30)
        for task in (client._reader_task, *client._answers):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
