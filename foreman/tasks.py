"""Long-running tasks of the root nursery that no stored row or store fault can end."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from .store import Store, StoreUnavailable

__all__ = ["supervised"]

LOGGER = logging.getLogger("foreman")

#: Seconds before a task that failed is started again: doubling from 1 up to this.
MAX_RESTART_DELAY = 60.0


async def supervised(name: str, fn: Callable[[], Awaitable[None]], store: Store) -> None:
    """Run ``fn()``; whenever it raises, start it again instead of stopping foreman.

    A :class:`StoreUnavailable` restarts it once the store works again (one log line);
    any other error is logged with its traceback and restarts it after a delay
    (1 s, doubling up to :data:`MAX_RESTART_DELAY`). Returns when ``fn`` returns.
    """
    delay = 1.0
    while True:
        try:
            await fn()
            return
        except Exception as exc:
            fault = _store_fault(exc)
            if fault is not None:
                LOGGER.warning("%s waits for the store: %s", name, fault)
                await store.wait_working()
                continue
            LOGGER.exception("%s failed; started again in %gs", name, delay)
            await trio.sleep(delay)
            delay = min(2 * delay, MAX_RESTART_DELAY)


def _store_fault(exc: BaseException) -> StoreUnavailable | None:
    """``exc`` if it is a :class:`StoreUnavailable`, or a group of nothing else (from a
    nursery): one of them; else None."""
    if isinstance(exc, StoreUnavailable):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        match, rest = exc.split(StoreUnavailable)
        if match is not None and rest is None:
            return _store_fault(match.exceptions[0])
    return None
