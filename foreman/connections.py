"""What one client can hold at the server level: writes, descriptors, the accept loop.

hypercorn (:mod:`foreman.serving`) has no write timeout, leaves the descriptor limit as it
finds it and lets trio log every failed ``accept`` with a traceback, ten a second. This
module closes those gaps, each in one place:

* :func:`install_write_timeout`: a write to a client that makes no progress for
  ``FOREMAN_CLIENT_TIMEOUT`` seconds closes its connection. The app then sees
  ``http.disconnect``, as when a client goes away: the target's generation is aborted
  and the gate freed (hypercorn shields its socket writes from cancellation, so a
  timeout around the app's ``send`` alone could never end one);
* :func:`raise_fd_limit`: the soft ``RLIMIT_NOFILE`` goes up to the hard limit at start
  (systemd's default soft limit is 1,024; ``deploy/foreman.service`` sets ``LimitNOFILE``);
* :func:`quiet_accept_errors`: while ``accept`` fails (``EMFILE``: out of descriptors) trio
  backs off 100 ms a try; the log gets one line per :data:`ACCEPT_LOG_INTERVAL` seconds;
* :func:`return_big_buffers`: request bodies of many MiB go back to the system once freed
  (glibc would otherwise raise its mmap threshold after the first and keep later ones in
  the heap, where RSS stays high after the bodies are long gone).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import math
import resource
import time
from typing import Any

import trio
from hypercorn.events import Closed, RawData
from hypercorn.trio import tcp_server

__all__ = [
    "ACCEPT_LOG_INTERVAL",
    "install_write_timeout",
    "quiet_accept_errors",
    "raise_fd_limit",
    "return_big_buffers",
    "trim_memory",
]

LOGGER = logging.getLogger("foreman.server")

#: Seconds between two log lines about ``accept`` failing (out of file descriptors).
ACCEPT_LOG_INTERVAL = 10.0
#: The soft descriptor limit asked for when the hard one is unlimited.
UNLIMITED_FDS = 1 << 20

_original_send = tcp_server.TCPServer.protocol_send


async def _protocol_send(self: Any, event: Any) -> None:
    """hypercorn's ``TCPServer.protocol_send``, with ``config.write_timeout`` on writes."""
    timeout = getattr(self.config, "write_timeout", None)
    if not isinstance(event, RawData) or not timeout:
        await _original_send(self, event)
        return
    async with self.send_lock:
        try:
            # shielded, as hypercorn's own: an app cancelled mid-write must not cut a
            # frame in two; the deadline is the scope's own, so it still applies
            with trio.CancelScope(shield=True, deadline=trio.current_time() + timeout) as scope:
                await self.stream.send_all(event.data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            # Busy: hypercorn's _close() is sending EOF on a connection the client closed
            # (outside the send lock); the answer has nowhere to go either way
            await self.protocol.handle(Closed())
            return
        if not scope.cancelled_caught:
            return
    LOGGER.info(
        "a client read nothing for %gs (FOREMAN_CLIENT_TIMEOUT): its connection is closed",
        timeout,
    )
    with trio.CancelScope(shield=True):
        await self.stream.aclose()  # a cut write leaves the stream unusable
        await self.protocol.handle(Closed())  # the app gets http.disconnect


def install_write_timeout() -> None:
    """Make hypercorn's trio server honour ``config.write_timeout`` (seconds; idempotent)."""
    tcp_server.TCPServer.protocol_send = _protocol_send  # type: ignore[method-assign]


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; returns ``(soft, hard)`` now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = UNLIMITED_FDS if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (OSError, ValueError) as exc:
            LOGGER.warning("cannot raise the file descriptor limit to %d: %s", wanted, exc)
    return soft, hard


class _OneLinePerInterval(logging.Filter):
    """Lets one ``accept`` failure through per interval, on one line, with a count."""

    def __init__(self, interval: float) -> None:
        super().__init__()
        self.interval = interval
        self.last = -math.inf
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now - self.last < self.interval:
            self.dropped += 1
            return False
        record.msg = (
            "cannot accept connections: %s; new clients wait (%d failures not logged in the last"
            " %gs): raise the file descriptor limit (LimitNOFILE) or look for stuck clients"
        )
        reason = f"{record.args[0]} ({record.args[1]})" if record.args else "?"  # type: ignore[index]
        record.args = (reason, self.dropped, self.interval)
        record.exc_info = record.exc_text = None
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        self.last, self.dropped = now, 0
        return True


def quiet_accept_errors(interval: float = ACCEPT_LOG_INTERVAL) -> None:
    """One log line per ``interval`` while trio's accept loop fails (idempotent)."""
    logger = logging.getLogger("trio.serve_listeners")
    if not any(isinstance(f, _OneLinePerInterval) for f in logger.filters):
        logger.addFilter(_OneLinePerInterval(interval))


#: glibc's ``mallopt`` parameter and the size from which allocations are their own mappings.
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 20


def return_big_buffers() -> bool:
    """Fix glibc's mmap threshold at 1 MiB, so that every buffer from 1 MiB up is its own
    mapping, returned to the system when freed; True if it could (glibc only)."""
    mallopt = getattr(_load_libc(), "mallopt", None)
    return mallopt is not None and bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))


_libc: Any = None


def _load_libc() -> Any:
    """The C library (loaded once: finding it runs ``ldconfig``), or False."""
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        try:
            _libc = ctypes.CDLL(name) if name else False
        except OSError:
            _libc = False
    return _libc


def trim_memory() -> None:
    """Free what only reference cycles still hold (an error's traceback keeps the frame
    that held a body), then give the heap's free pages back to the system (glibc's
    ``malloc_trim``; elsewhere only the collection). Bodies arrive in 64 KiB pieces, below
    the mmap threshold: once a large one is freed its pages sit free inside the heap."""
    gc.collect()
    trim = getattr(_load_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)
