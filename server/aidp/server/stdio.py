"""stdin/stdout as asyncio pipes for pygls.

pygls's own stdio writer flushes synchronously, so a client that stops reading would freeze the
event loop, and its stdin reader is a pool thread that can keep the process from exiting. Pipe
transports never block, and the write transport's buffer size tells the server when the client
falls behind, so live output can be dropped instead of piling up in memory. stdin feeds a
`FrameReader` (wire.py), which pauses it while the server is not taking messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import stat
import threading
from typing import BinaryIO

from aidp.server.wire import READ_CHUNK, FrameReader

# The output pipe's size (Linux's default limit for it; 64 KiB otherwise): a list of 10,000
# workstreams is 6 MB, which crosses in 6 turns of both processes rather than 90.
PIPE_SIZE = 1 << 20

# Past this much unread by the client, the server stops reading requests until it catches up.
WRITE_HIGH_WATER = 1024 * 1024


class _PipeInput(asyncio.Protocol):
    """stdin as a pipe transport feeding a FrameReader, paused while the server is behind."""

    def __init__(self, frames: FrameReader) -> None:
        self._frames = frames
        self._transport: asyncio.ReadTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.ReadTransport)
        self._transport = transport
        self._frames.attach(self._pause)

    def _pause(self, paused: bool) -> None:
        if self._transport is not None and not self._transport.is_closing():
            if paused:
                self._transport.pause_reading()
            else:
                self._transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self._frames.feed(data)

    def eof_received(self) -> bool:
        self._frames.feed_eof()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._frames.feed_eof()


def _read_in_thread(stdin: BinaryIO, frames: FrameReader) -> None:
    """stdin that asyncio cannot watch (a regular file, /dev/null, a terminal), read by a daemon
    thread, which never keeps the process from exiting while it waits for a terminal's input."""
    loop = asyncio.get_running_loop()
    going = threading.Event()
    going.set()
    frames.attach(lambda paused: going.clear() if paused else going.set())

    def pump() -> None:
        while True:
            going.wait()
            try:
                data = os.read(stdin.fileno(), READ_CHUNK)
            except OSError:  # a terminal that went away
                data = b""
            try:
                if not data:
                    loop.call_soon_threadsafe(frames.feed_eof)
                    return
                loop.call_soon_threadsafe(frames.feed, data)
            except RuntimeError:  # the loop is closed: the server is gone
                return

    threading.Thread(target=pump, name="aidp-stdin", daemon=True).start()


class _WriteFlow(asyncio.Protocol):
    """Tells when the client has taken enough of what was written to send it more."""

    def __init__(self) -> None:
        self.writable = asyncio.Event()
        self.writable.set()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.writable.set()  # nothing will ever be taken: nobody should wait for it


class PipeWriter:
    def __init__(self, transport: asyncio.WriteTransport, flow: _WriteFlow) -> None:
        self._transport = transport
        self._flow = flow
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)

    def write(self, data: bytes) -> None:
        if not self._transport.is_closing():
            self._transport.write(data)

    @property
    def backlog(self) -> int:
        """Bytes written but not yet taken by the client."""
        return self._transport.get_write_buffer_size()

    async def writable(self) -> None:
        """Wait while the client has more than WRITE_HIGH_WATER unread (until it is down to a quarter)."""
        await self._flow.writable.wait()

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

    async def writable(self) -> None:
        return

    async def drain(self, timeout_s: float) -> None:
        self._stream.flush()

    def close(self) -> None:
        self._stream.close()


def _is_pipe(stream: BinaryIO) -> bool:
    mode = os.fstat(stream.fileno()).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


async def open_pipes(stdin: BinaryIO, stdout: BinaryIO, frames: FrameReader) -> PipeWriter:
    """Pipes (what editors give) as asyncio transports; anything else (a regular file, /dev/null,
    a terminal: epoll refuses some of them, and only later, from a callback) through a reader
    thread and plain writes, so scripted use works too. stdin feeds `frames`."""
    loop = asyncio.get_running_loop()
    if _is_pipe(stdin):
        await loop.connect_read_pipe(lambda: _PipeInput(frames), stdin)
    else:
        _read_in_thread(stdin, frames)
    if not _is_pipe(stdout):
        return FileWriter(stdout)
    with contextlib.suppress(OSError):  # a socket, or the user's pipe pages used up: as it is
        fcntl.fcntl(stdout.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    transport, flow = await loop.connect_write_pipe(_WriteFlow, stdout)
    return PipeWriter(transport, flow)
