"""The bytes under JSON-RPC: LSP framing read incrementally, and one body decoded into a message.

pygls's own loop trusts `Content-Length`: one wrong value made it read the rest of the stream out
of step, or wait for bytes that never come, and a body it could not decode went unanswered. Here a
frame is checked as it arrives. When the stream no longer splits into messages the reader raises
`FramingError`, and the server ends the connection (an editor restarts a server that exits)
instead of guessing where the next message starts. A body that cannot be decoded gets the JSON-RPC
error the specification names for it.

The reader also holds back its source (`pause`) while the server is not taking messages, so a client
that pipelines thousands of requests waits in its own pipe rather than in the server's memory.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

READ_CHUNK = 64 * 1024
MAX_BODY = 8 * 1024 * 1024
MAX_HEADER = 8 * 1024
# The source is paused while this much is buffered beyond what the frame being read needs.
HIGH_WATER = 1024 * 1024

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
INVALID_PARAMS = -32602

_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]"
_HEADER_LINE = re.compile(rb"(" + _TOKEN + rb"+):[ \t]*(.*?)[ \t]*")
_NAME_SO_FAR = re.compile(_TOKEN + rb"*")
_HEADERS_END = b"\r\n\r\n"


class FramingError(Exception):
    """The byte stream no longer splits into messages: client and server disagree on where one ends."""


class FrameReader:
    """Message bodies from a byte stream in LSP framing (`Content-Length: N\\r\\n\\r\\n` + N bytes).

    A source feeds bytes (`feed`, `feed_eof`) and is told to pause or resume through the callback
    given to `attach`. Blank lines between messages are tolerated. What cannot be a header (a
    header line that is not `Name: value`, no or a non-numeric `Content-Length`, a body over
    MAX_BODY) raises `FramingError` as soon as its bytes arrive. So does a body that already holds
    a whole JSON value when its declared length is not yet reached and nothing more has come:
    `Content-Length` was too long, and waiting would wait for bytes that never come.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._length: int | None = None  # of the body being read, once its headers are parsed
        self._eof = False
        self._arrived: asyncio.Event | None = None  # made by `next_body`: `read_first` runs before asyncio is loaded
        self._pause: Callable[[bool], None] = lambda paused: None
        self._paused = False

    def attach(self, pause: Callable[[bool], None]) -> None:
        """`pause(True)`: stop delivering bytes for now; `pause(False)`: go on."""
        self._pause = pause

    def feed(self, data: bytes) -> None:
        self._buf += data
        if self._arrived is not None:
            self._arrived.set()
        self._flow()

    def feed_eof(self) -> None:
        self._eof = True
        if self._arrived is not None:
            self._arrived.set()

    def take(self) -> bytes | None:
        """The next message body if it has arrived whole, else None (also at the end of input)."""
        body = self._take()
        self._flow()
        if body is None and self._eof and (self._buf.strip() or self._length is not None):
            raise FramingError("the input ended inside a message")
        return body

    async def next_body(self) -> bytes | None:
        """The next message body, or None at the end of input."""
        import asyncio  # not at the top: `read_first` reads the first message before asyncio is loaded

        if self._arrived is None:
            self._arrived = asyncio.Event()
        while (body := self.take()) is None and not self._eof:
            self._arrived.clear()
            await self._arrived.wait()
        return body

    def _flow(self) -> None:
        """Pause the source while enough is buffered for the frame being read, and more."""
        paused = len(self._buf) >= max(HIGH_WATER, self._length or 0)
        if paused != self._paused:
            self._paused = paused
            self._pause(paused)

    def _take(self) -> bytes | None:
        if self._length is None:
            self._length = self._headers()
            if self._length is None:
                return None
        if len(self._buf) < self._length:
            self._check_not_overlong(self._length)
            return None
        body = bytes(self._buf[: self._length])
        del self._buf[: self._length]
        self._length = None
        return body

    def _headers(self) -> int | None:
        """The body length once a whole header block has arrived (consumed), else None."""
        blank = 0  # counted, not lstrip()ed: that would copy the whole buffer for every message
        while blank < len(self._buf) and self._buf[blank] in b"\r\n":
            blank += 1
        del self._buf[:blank]
        end = self._buf.find(_HEADERS_END)
        if end < 0:
            self._check_partial_header()
            return None
        block = bytes(self._buf[:end])
        del self._buf[: end + len(_HEADERS_END)]
        length: int | None = None
        for line in block.split(b"\r\n"):
            match = _HEADER_LINE.fullmatch(line)
            if match is None:
                raise FramingError(f"not a header line: {line[:80]!r}")
            name, value = match.groups()
            if name.lower() != b"content-length":
                continue  # Content-Type, or a header this server has no use for
            if not value.isdigit() or (length is not None and int(value) != length):
                raise FramingError(f"bad Content-Length: {value[:40]!r}")
            length = int(value)
        if length is None:
            raise FramingError("a header without Content-Length")
        if length > MAX_BODY:
            raise FramingError(f"Content-Length {length} is over the limit of {MAX_BODY} bytes")
        return length

    def _check_partial_header(self) -> None:
        """Fail as soon as the bytes so far cannot start a header block, rather than wait for a
        line end: after a too-short `Content-Length` the rest of the body ends in `}`, no newline."""
        if len(self._buf) > MAX_HEADER:
            raise FramingError(f"a header block longer than {MAX_HEADER} bytes")
        *lines, last = bytes(self._buf).split(b"\r\n")
        for line in lines:
            if _HEADER_LINE.fullmatch(line) is None:
                raise FramingError(f"not a header line: {line[:80]!r}")
        name, colon, _ = last.removesuffix(b"\r").partition(b":")
        if _NAME_SO_FAR.fullmatch(name) is None or (colon and not name):
            raise FramingError(f"not a header line: {last[:80]!r}")

    def _check_not_overlong(self, length: int) -> None:
        """Everything that has arrived is shorter than the declared body. If it already holds a
        whole JSON value (and maybe the next message behind it), the length was too long."""
        last = len(self._buf)
        while last and self._buf[last - 1] in b" \t\r\n":
            last -= 1
        if not last or self._buf[last - 1] != ord("}"):  # JSON-RPC messages are objects: rule out the rest
            return
        try:
            _, end = json.JSONDecoder().raw_decode(self._buf[:last].decode())
        except (ValueError, RecursionError):  # still incomplete (or undecodable: the body's business)
            return
        raise FramingError(f"Content-Length {length} is longer than the message, which ended after {end} bytes")


def read_first(fd: int, frames: FrameReader) -> bytes | None:
    """The first message body, read with blocking reads before there is an event loop (None: the
    input ended first). What arrived after it stays in `frames` for `next_body`."""
    while (body := frames.take()) is None and not frames._eof:
        data = os.read(fd, READ_CHUNK)
        if data:
            frames.feed(data)
        else:
            frames.feed_eof()
    return body


def frame(message: dict[str, Any]) -> bytes:
    """One message in LSP framing, as pygls writes it (JSON in ASCII, so characters = bytes)."""
    body = json.dumps(message).encode()
    return header(len(body)) + body


def header(length: int) -> bytes:
    """The LSP header of a body of `length` bytes (UTF-8: `Content-Length` counts bytes)."""
    return b"Content-Length: %d\r\n\r\n" % length


# -- one body -> one message ------------------------------------------------------------------------


@dataclass(frozen=True)
class Rejected:
    """A body that is no JSON-RPC message: the error to answer (to `msg_id`, JSON null if None),
    unless `answer` is False (a broken notification or response has nobody waiting for it)."""

    code: int
    message: str
    msg_id: int | str | None = None
    answer: bool = True


def decode(body: bytes) -> dict[str, Any] | Rejected:
    """The message object of a body, or what to answer instead (JSON-RPC 2.0, section 5.1)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejected(PARSE_ERROR, f"parse error: the message is not UTF-8 ({exc.reason} at byte {exc.start})")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return Rejected(PARSE_ERROR, f"parse error: the message is not JSON ({exc})")
    except RecursionError:
        return _too_deep(text)
    if not isinstance(data, dict):
        return Rejected(INVALID_REQUEST, "invalid request: a message must be a JSON object")
    return _check_envelope(data)


def _check_envelope(data: dict[str, Any]) -> dict[str, Any] | Rejected:
    msg_id = data.get("id")
    valid_id = msg_id is None or (isinstance(msg_id, int | str) and not isinstance(msg_id, bool))
    is_request = "method" in data and "id" in data
    reply_to = msg_id if is_request and valid_id else None
    if data.get("jsonrpc") != "2.0":
        return Rejected(INVALID_REQUEST, 'invalid request: "jsonrpc" must be "2.0"', reply_to, "method" in data)
    if "method" in data and not isinstance(data["method"], str):
        return Rejected(INVALID_REQUEST, 'invalid request: "method" must be a string', reply_to)
    if not valid_id:
        return Rejected(INVALID_REQUEST, 'invalid request: "id" must be a number or a string', None, is_request)
    if "method" not in data and ("id" not in data or ("result" in data) == ("error" in data)):
        return Rejected(INVALID_REQUEST, "invalid message: neither a request, a notification nor a response")
    return data


# A JSON token for `_too_deep`: a string, a bracket, or a run of anything else.
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]|[^"\[\]{}]+', re.DOTALL)


def _too_deep(text: str) -> Rejected:
    """JSON nested deeper than the decoder goes. Keep only the top level (every inner container
    becomes null) to find the request's id, and say what was wrong with it."""
    kept: list[str] = []
    depth = 0
    for match in _JSON_TOKEN.finditer(text):
        token = match.group()
        if token in ("[", "{"):
            depth += 1
            if depth == 2:
                kept.append("null")
        elif token in ("]", "}"):
            depth -= 1
        if depth <= 1 and not (depth == 1 and token in ("]", "}")):
            kept.append(token)
    try:
        top = json.loads("".join(kept))
    except ValueError:
        top = None
    if not isinstance(top, dict):
        return Rejected(PARSE_ERROR, "parse error: the message is nested too deeply to decode")
    envelope = _check_envelope(top)
    if isinstance(envelope, Rejected):
        return envelope
    is_request = "method" in envelope and "id" in envelope
    return Rejected(INVALID_PARAMS, "invalid params: nested too deeply to decode", envelope.get("id"), is_request)
