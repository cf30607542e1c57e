"""Requests for the same answer, coalesced: a client may pipeline thousands of `aidp/wsList`, and
each list costs git commands per workstream (its change summary). Requests that arrive while one
is being computed share the next computation, which starts after all of them arrived, so every
answer is at least as new as its request, and a burst costs a few computations, not one each."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Coalesced(Generic[T]):
    def __init__(self) -> None:
        self._lock = asyncio.Lock()  # one computation at a time, waiters in arrival order
        self._asked = 0  # tickets handed out, one per request
        self._last: tuple[int, T] | None = None  # the last result, and the last ticket it answers

    async def get(self, compute: Callable[[], Awaitable[T]]) -> T:
        """`compute()`'s result, from a computation that started after this call. A failure is
        not shared: the next waiter computes again."""
        self._asked += 1
        ticket = self._asked
        async with self._lock:
            if self._last is not None and self._last[0] >= ticket:
                return self._last[1]
            started = self._asked
            result = await compute()
            self._last = (started, result)
            return result
