"""A small JSON-RPC client for `aidp serve`: LSP framing over the server's stdin/stdout.

Written here rather than borrowed from pygls so the benchmark measures the server, not a client
library: one reader task parses frames, answers the server's own requests (progress tokens) and
counts every notification, the way an editor that shows live output would have to read them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

Handler = Callable[[str, Any], None]


class RpcError(Exception):
    def __init__(self, method: str, error: dict[str, Any]) -> None:
        super().__init__(f"{method}: {error.get('code')} {error.get('message')}")
        self.error = error


class RpcClient:
    """One server process and its stdio channel."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.notifications: Counter[str] = Counter()
        self.output_bytes = 0  # UTF-8 bytes of `aidp/wsOutput` text received
        self.handlers: list[Handler] = []
        # When the last answer's bytes were all read, before decoding them (`time.perf_counter()`):
        # what the server took, apart from the JSON decoding of this client (100 ms for 6 MB).
        self.answer_read_at = 0.0
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[str, asyncio.Future[Any]]] = {}
        self._reader = asyncio.create_task(self._read_loop())

    @classmethod
    async def spawn(cls, argv: list[str], cwd: Path, stderr_path: Path, env: dict[str, str]) -> RpcClient:
        with stderr_path.open("ab") as err:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=cwd,
                env=env,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                limit=16 * 1024 * 1024,
            )
        return cls(proc)

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def initialize(self, root: Path) -> Any:
        """The LSP handshake, declaring work-done progress so the server exercises that path too."""
        result = await self.request(
            "initialize",
            {
                "processId": os.getpid(),
                "rootUri": root.as_uri(),
                "capabilities": {"window": {"workDoneProgress": True}},
            },
        )
        self.notify("initialized", {})
        return result

    async def request(self, method: str, params: Any) -> Any:
        msg_id = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = (method, future)
        self._send({"jsonrpc": "2.0", "id": msg_id, "method": method, "params": params})
        return await future

    def notify(self, method: str, params: Any) -> None:
        self._send({"jsonrpc": "2.0", "method": method, "params": params})

    async def close(self, timeout_s: float = 30.0) -> int:
        """shutdown + exit, then wait for the process; kill it if it does not go."""
        try:
            await asyncio.wait_for(self.request("shutdown", None), timeout_s)
            self.notify("exit", None)
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            return await asyncio.wait_for(self.proc.wait(), timeout_s)
        except (TimeoutError, ConnectionError, RpcError):
            self.proc.kill()
            return await self.proc.wait()
        finally:
            self._reader.cancel()

    def _send(self, message: dict[str, Any]) -> None:
        body = json.dumps(message).encode()
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)

    async def _read_loop(self) -> None:
        assert self.proc.stdout is not None
        stdout = self.proc.stdout
        try:
            while True:
                length = None
                while (line := await stdout.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode("ascii").partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                if not line or length is None:
                    break
                body = await stdout.readexactly(length)
                read_at = time.perf_counter()
                self._dispatch(json.loads(body), read_at)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        for method, future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError(f"{method}: the server closed its output"))

    def _dispatch(self, msg: dict[str, Any], read_at: float) -> None:
        if "method" in msg and "id" in msg:  # a request from the server: progress tokens etc.
            self._send({"jsonrpc": "2.0", "id": msg["id"], "result": None})
        elif "method" in msg:
            method, params = msg["method"], msg.get("params")
            self.notifications[method] += 1
            if method == "aidp/wsOutput" and isinstance(params, dict):
                self.output_bytes += len(params["text"].encode())
            for handler in self.handlers:
                handler(method, params)
        elif (entry := self._pending.pop(int(msg.get("id") or 0), None)) is not None:
            method, future = entry
            self.answer_read_at = read_at
            if "error" in msg:
                future.set_exception(RpcError(method, msg["error"]))
            else:
                future.set_result(msg.get("result"))
