"""hypercorn, configured to answer as Ollama's own server (Go's ``net/http``) does.

:func:`serve` runs an ASGI app with hypercorn on trio (ADR 17,
``docs/adr/0017-back-on-hypercorn-and-httpx2.md``); :func:`hypercorn_config` is the one
place its settings are chosen:

* status lines carry the standard reason phrase (``HTTP/1.1 200 OK``) and every answer a
  ``Date`` header, no ``Server`` header, as Ollama's do (see :func:`install_reasons`);
* keep-alive without a request limit; an idle connection waits :data:`KEEP_ALIVE` seconds
  (nginx's default) for its next request;
* a request head over :data:`MAX_HEAD` bytes gets 431, a malformed one 400, and the
  connection closes;
* HTTPS with ``FOREMAN_TLS_CERT``/``FOREMAN_TLS_KEY``, HTTP/1.1 only by ALPN (Ollama speaks
  no HTTP/2);
* graceful shutdown: once the trigger returns, the listeners close, idle connections close,
  answers in progress finish, and after ``FOREMAN_GRACE`` + :data:`GRACE_MARGIN` seconds
  whatever is left is cancelled (foreman's own grace ends them first: :mod:`foreman.service`).

What hypercorn does its own way: ``100 Continue`` goes out as soon as the request head is
read, not when the app first reads the body (RFC 9110 allows both); a body the app left
unread closes the connection (foreman reads it first: :mod:`foreman.dataplane.bodies`); an
error before the app's first message is an empty 500.
"""

from __future__ import annotations

import http
import logging
import sys
import types
from collections.abc import Awaitable, Callable
from typing import Any

import h11
import hypercorn.protocol.h11 as hypercorn_h11
import trio
from hypercorn.config import Config
from hypercorn.trio import serve as hypercorn_serve

from .connections import install_write_timeout, quiet_accept_errors
from .settings import GRACE_MARGIN, Settings

__all__ = ["KEEP_ALIVE", "MAX_HEAD", "hypercorn_config", "install_reasons", "serve"]

#: Seconds a keep-alive connection may wait for its next request.
KEEP_ALIVE = 75.0
#: Bytes of a request head (request line and headers) beyond which the answer is 431.
MAX_HEAD = 64 * 1024
#: Go's ``http.StatusText`` for every status foreman or Ollama sends.
_REASONS = {status.value: status.phrase.encode("ascii") for status in http.HTTPStatus}


class _NoRunningOn(logging.Filter):
    """Drops hypercorn's "Running on <url> (CTRL + C to quit)": foreman logs "serving on
    <url>, target <url>" once every address is bound."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Running on ")


def hypercorn_config(settings: Settings) -> Config:
    """hypercorn's configuration for ``settings``: bind ``listen``, TLS, the grace period."""
    config = Config()
    config.bind = [settings.listen]
    # foreman ends what is left when its own grace is over (a 503, an error line);
    # hypercorn's grace only has to outlast that by the time the last bytes take.
    config.graceful_timeout = settings.grace + GRACE_MARGIN
    config.keep_alive_timeout = KEEP_ALIVE
    config.keep_alive_max_requests = sys.maxsize  # Go's net/http has no such limit
    config.h11_max_incomplete_size = MAX_HEAD
    config.include_server_header = False  # Ollama sends none
    config.accesslog = None  # foreman writes its own (foreman.access)
    config.errorlog = errorlog = logging.getLogger("foreman.server")  # foreman's handlers
    if not any(isinstance(f, _NoRunningOn) for f in errorlog.filters):
        errorlog.addFilter(_NoRunningOn())  # foreman's own "serving on" line says it
    config.alpn_protocols = ["http/1.1"]
    config.write_timeout = settings.client_timeout  # foreman.connections reads it
    if settings.tls_cert:
        config.certfile, config.keyfile = settings.tls_cert, settings.tls_key
    return config


async def serve(
    app: Any,
    config: Config,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the ASGI ``app`` with hypercorn until ``shutdown_trigger`` returns, then drain.

    Supports ``urls = await nursery.start(partial(serve, app, config, shutdown_trigger=...))``:
    ``started()`` gets the bound URLs (``["http://127.0.0.1:41234"]``).

    Raises:
        OSError: the address cannot be bound, or the TLS files cannot be read.
    """
    install_reasons()
    install_write_timeout()
    quiet_accept_errors()
    await hypercorn_serve(app, config, shutdown_trigger=shutdown_trigger, task_status=task_status)


def _with_reason(event: type[Any]) -> Callable[..., Any]:
    """``event`` (h11's ``Response`` or ``InformationalResponse``) with the standard reason."""

    def build(*, status_code: int, headers: Any, reason: bytes = b"", **rest: Any) -> Any:
        # a status without a standard phrase keeps an empty reason
        reason = reason or _REASONS.get(status_code, b"")
        return event(status_code=status_code, headers=headers, reason=reason, **rest)

    return build


def _h11_with_reasons() -> types.ModuleType:
    """h11 as hypercorn's HTTP/1.1 protocol sees it: status lines get their reason.

    A copy of h11's namespace (hypercorn reads ``h11.Data``, ``h11.NEED_DATA``, ... per
    event, so plain attributes, not a ``__getattr__``), with the two events replaced.
    """
    view = types.ModuleType("h11", h11.__doc__)
    view.__dict__.update({k: v for k, v in vars(h11).items() if not k.startswith("__")})
    view.Response = _with_reason(h11.Response)  # type: ignore[attr-defined]
    view.InformationalResponse = _with_reason(h11.InformationalResponse)  # type: ignore[attr-defined]
    view.with_reasons = True  # type: ignore[attr-defined]
    return view


def install_reasons() -> None:
    """Make hypercorn's HTTP/1.1 status lines carry reason phrases (idempotent).

    Go's ``net/http`` writes ``HTTP/1.1 200 OK`` (and ``HTTP/1.1 100 Continue``); hypercorn
    builds h11's ``Response`` without a reason, so h11 writes ``HTTP/1.1 200 `` (valid,
    but not what a byte-for-byte Ollama client, a proxy log or ``curl -i`` shows), and
    hypercorn has no setting for it.
    Only hypercorn's module sees this view of h11 (``http.HTTPStatus`` phrases, the same
    as Go's ``http.StatusText``); h11 itself, and httpx2 on it, are untouched.
    """
    if not getattr(hypercorn_h11.h11, "with_reasons", False):
        hypercorn_h11.h11 = _h11_with_reasons()  # type: ignore[assignment]
