"""`aidp serve` start-up: `initialize` is answered before asyncio and the JSON-RPC layer are imported.

pygls imports lsprotocol's ~1,000 attrs classes (0.3 to 1 s on a shared 2-core machine), the
engine its executor, store and git helpers, and asyncio alone costs several times the
interpreter's own start. An editor waits for the answer to `initialize` before it shows anything,
and that answer needs none of them: the server offers no LSP capability, and the repository is
opened after it (requests that come meanwhile wait for it, see `AidpServer.require_engine`). So
this module, which imports only msgspec and the wire types, reads the first message with blocking
reads; if it is `initialize` it answers it, and only then starts the event loop, imports the
server (`aidp.server.app`) and hands it the rest of the stream.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import unquote, urlparse

import msgspec

import aidp
from aidp import protocol as p
from aidp.server import wire

if TYPE_CHECKING:
    from aidp.server.stdio import PipeWriter

log = logging.getLogger("aidp.server")

RESULT = p.InitializeResult(capabilities={}, server_info=p.ServerInfo(name="aidp", version=aidp.__version__))


class BadInitialize(Exception):
    """`initialize` params that do not fit LSP's shape: answered -32602, the server stays uninitialized."""


def initialize_params(params: Any) -> p.InitializeParams:
    if not isinstance(params, dict):
        raise BadInitialize(f"invalid params: initialize takes an object, got {type(params).__name__}")
    try:
        return msgspec.convert(params, p.InitializeParams)
    except msgspec.ValidationError as exc:
        raise BadInitialize(f"invalid params: {exc}") from exc


def start_dir(root: Path | None, params: p.InitializeParams) -> Path | None:
    """Where to look for the repository: `--root`, else the first workspace folder, else `rootUri`."""
    if root is not None:
        return root
    if params.workspace_folders:
        return _fs_path(params.workspace_folders[0].uri)
    return _fs_path(params.root_uri) if params.root_uri else None


def _fs_path(uri: str) -> Path:
    """A `file:` URI's path (percent-decoded); any other URI is no folder here: the current one."""
    parsed = urlparse(uri)
    return Path(unquote(parsed.path)) if parsed.scheme == "file" and parsed.path else Path(".")


@dataclass
class Opening:
    """What the start-up read: the client's `initialize` (answered), or a first message it left to
    the server (anything else, including an `initialize` it could not read)."""

    initialize: p.InitializeParams | None = None
    first: bytes | None = None


def _open(stdin: BinaryIO, stdout: BinaryIO, frames: wire.FrameReader) -> Opening | int:
    """Read the first message and answer it if it is `initialize`; an exit code at the end of
    input or when the framing is broken (nothing else has happened yet)."""
    try:
        body = wire.read_first(stdin.fileno(), frames)
    except wire.FramingError as exc:
        log.error("the message framing is broken (%s): ending the connection, so the client restarts", exc)
        return 1
    if body is None:
        return 0
    data = wire.decode(body)
    if isinstance(data, wire.Rejected) or data.get("method") != p.INITIALIZE or "id" not in data:
        return Opening(first=body)
    try:
        params = initialize_params(data.get("params"))
    except BadInitialize:
        return Opening(first=body)  # the server answers it with the same error, and stays uninitialized
    stdout.write(wire.frame({"jsonrpc": "2.0", "id": data["id"], "result": msgspec.to_builtins(RESULT)}))
    return Opening(initialize=params)


async def _serve(
    root: Path | None, stdin: BinaryIO, stdout: BinaryIO, frames: wire.FrameReader, opening: Opening
) -> int:
    from aidp.server.app import run  # pygls, lsprotocol and the engine: once the client has its answer
    from aidp.server.stdio import open_pipes

    writer: PipeWriter = await open_pipes(stdin, stdout, frames)
    return await run(root, frames, writer, opening)


def detach_stdout() -> BinaryIO:
    """Keep the real stdout for JSON-RPC only: hand back a private copy of it and point fd 1 (and
    `sys.stdout`) at stderr, so a stray print or a child process can never corrupt the channel."""
    private = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    return private


def serve(root: Path | None) -> int:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="aidp serve: %(levelname)s %(message)s")
    # pygls logs every error response with a traceback; `report_server_error` says what matters.
    logging.getLogger("pygls").setLevel(logging.CRITICAL)
    stdout = detach_stdout()
    frames = wire.FrameReader()
    try:
        opening = _open(sys.stdin.buffer, stdout, frames)
        if isinstance(opening, int):
            stdout.close()
            return opening
        import asyncio  # only now: the answer to `initialize` is out

        return asyncio.run(_serve(root, sys.stdin.buffer, stdout, frames, opening))
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
