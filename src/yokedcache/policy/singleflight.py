"""In-process single flight: concurrent misses of one key run the computation once.

Async flights are per event loop (a future cannot be awaited from another loop); sync flights are shared by
threads. The map only holds keys being computed right now, so it cannot grow without bound.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


class LeaderGone(Exception):
    """The computing caller was cancelled; a waiter should compute for itself."""


class _SyncFlight:
    __slots__ = ("error", "event", "result")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class SingleFlight:
    def __init__(self) -> None:
        self._async: dict[tuple[asyncio.AbstractEventLoop, str], asyncio.Future[Any]] = {}
        self._sync: dict[str, _SyncFlight] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._async) + len(self._sync)

    async def arun(self, key: str, compute: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """Return ``(result, joined)``; ``joined`` is True when another caller computed it."""
        loop = asyncio.get_running_loop()
        slot = (loop, key)
        while True:
            pending = self._async.get(slot)
            if pending is None:
                break
            try:
                return await asyncio.shield(pending), True
            except LeaderGone:
                continue
        future: asyncio.Future[Any] = loop.create_future()
        self._async[slot] = future
        try:
            result = await compute()
        except asyncio.CancelledError:
            future.set_exception(LeaderGone())
            raise
        except BaseException as exc:
            future.set_exception(exc)
            raise
        else:
            future.set_result(result)
            return result, False
        finally:
            del self._async[slot]
            if future.done() and not future.cancelled():
                future.exception()  # marks it retrieved: a failure nobody joined must not be logged as lost

    def run(self, key: str, compute: Callable[[], T]) -> tuple[T, bool]:
        with self._lock:
            flight = self._sync.get(key)
            leader = flight is None
            if flight is None:
                flight = self._sync[key] = _SyncFlight()
        if not leader:
            flight.event.wait()
            if flight.error is not None:
                raise flight.error
            return flight.result, True
        try:
            flight.result = compute()
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                del self._sync[key]
            flight.event.set()
        return flight.result, False
