"""stdin/stdout as asyncio pipes for pygls.

pygls's own stdio writer flushes synchronously, so a client that stops reading would freeze the
event loop, and its stdin reader is a pool thread that can keep the process from exiting. Pipe
transports never block, and the write transport's buffer size tells the server when the client
falls behind, so live output can be dropped instead of piling up in memory.
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from typing import BinaryIO

from pygls.io_ import StdinAsyncReader


class PipeReader:
    """The reader interface pygls's `run_async` expects, where end of input reads as b""."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    async def readline(self) -> bytes:
        try:
            return await self._reader.readline()
        except ValueError:  # a header line beyond the stream limit: treat as garbage, keep going
            return b"\r\n"

    async def readexactly(self, n: int) -> bytes:
        try:
            return await self._reader.readexactly(n)
        except asyncio.IncompleteReadError:
            return b""


class PipeWriter:
    def __init__(self, transport: asyncio.WriteTransport) -> None:
        self._transport = transport

    def write(self, data: bytes) -> None:
        if not self._transport.is_closing():
            self._transport.write(data)

    @property
    def backlog(self) -> int:
        """Bytes written but not yet taken by the client."""
        return self._transport.get_write_buffer_size()

    async def drain(self, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.backlog and not self._transport.is_closing() and loop.time() < deadline:
            await asyncio.sleep(0.01)

    def close(self) -> None:
        self._transport.close()


class FileWriter(PipeWriter):
    """stdout redirected to a regular file (`aidp serve > out`): a file never makes a writer
    wait for a reader, and asyncio cannot watch one, so plain writes it is."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    def write(self, data: bytes) -> None:
        if not self._stream.closed:
            self._stream.write(data)

    @property
    def backlog(self) -> int:
        return 0

    async def drain(self, timeout_s: float) -> None:
        self._stream.flush()

    def close(self) -> None:
        self._stream.close()


def detach_stdout() -> BinaryIO:
    """Keep the real stdout for JSON-RPC only: hand back a private copy of it and point fd 1 (and
    `sys.stdout`) at stderr, so a stray print or a child process can never corrupt the channel."""
    private = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    return private


def _is_pipe(stream: BinaryIO) -> bool:
    mode = os.fstat(stream.fileno()).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


async def open_pipes(stdin: BinaryIO, stdout: BinaryIO) -> tuple[PipeReader | StdinAsyncReader, PipeWriter]:
    """Pipes (what editors give) as asyncio transports; anything else (a regular file, /dev/null,
    a terminal: epoll refuses some of them, and only later, from a callback) through a reader
    thread and plain writes, so scripted use works too."""
    loop = asyncio.get_running_loop()
    reader: PipeReader | StdinAsyncReader = StdinAsyncReader(stdin)
    if _is_pipe(stdin):
        stream = asyncio.StreamReader(limit=1024 * 1024)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stream), stdin)
        reader = PipeReader(stream)
    if not _is_pipe(stdout):
        return reader, FileWriter(stdout)
    transport, _ = await loop.connect_write_pipe(asyncio.Protocol, stdout)
    return reader, PipeWriter(transport)
