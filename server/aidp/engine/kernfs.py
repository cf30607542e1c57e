"""Reading the kernel's small text files (/proc, the cgroup tree) without Python's file objects.

Several are read for every workstream that ends (its start time, its cgroup's CPU time and whether
anything is left in it): `Path.read_text` costs an `fstat`, an `ioctl`, an `lseek` and a buffered
text wrapper around each, about 2.5x the time of the `open`/`read`/`close` done here (bench:
overhead). These files report a size of 0, so they are read until the end, not by their size.
"""

from __future__ import annotations

import os
from pathlib import Path

CHUNK = 64 * 1024


def read_text(path: Path | str) -> str:
    """The whole file as text; raises what `open` raises (FileNotFoundError, PermissionError,
    ProcessLookupError for a /proc entry of a process that just went)."""
    return read_bytes(path).decode(errors="replace")


def read_bytes(path: Path | str) -> bytes:
    """The whole file; raises as `read_text` does."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, CHUNK):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)
