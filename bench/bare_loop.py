"""The reference point for "what Python's asyncio costs anyway": N workers pulling directories from a
list, each spawning COMMAND with that directory as cwd and waiting for it. No state, no logs, no
events; this is the floor any asyncio-based runner stands on.

Usage: python bare_loop.py MAX_CONCURRENT COMMAND... < NUL-separated directories
"""

from __future__ import annotations

import asyncio
import subprocess
import sys


async def main(limit: int, argv: list[str]) -> None:
    pending = [p for p in sys.stdin.buffer.read().split(b"\0") if p]
    pending.reverse()

    async def worker() -> None:
        while pending:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=pending.pop(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            await proc.wait()

    await asyncio.gather(*(worker() for _ in range(limit)))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2:]))
