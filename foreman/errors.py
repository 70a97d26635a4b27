"""foreman's error types, each mapped to the HTTP answer an Ollama client expects.

Hierarchy::

    ForemanError                      status_code, message -> {"error": message}
    ├── TargetError                   something went wrong talking to the target
    │   ├── TargetUnreachable   503   refused, DNS failure, connect timeout (+ Retry-After)
    │   ├── TargetTimeout       504   the target went quiet for longer than the idle timeout
    │   ├── TargetBroken        502   the connection broke after it was made
    │   └── TargetStatus        502   an HTTP error status from the target to foreman's own
    │                                 calls (tags, ps, warm-up); a client's calls get the
    │                                 target's answer itself, untouched
    ├── ModelNotFound           404   not in the target's inventory, even after a re-poll
    ├── BodyTooLarge            413   a request body over FOREMAN_MAX_BODY
    └── GateFull                503   too many chats (or bytes) already waiting at the gate,
                                      or foreman's grace period ended while one waited

Classification of transport failures happens once, in :func:`classify`, by exception
type (never by matching error text). HTTP error *statuses* from the target are
not exceptions on the relay path: foreman passes the target's answer through untouched.
"""

from __future__ import annotations

import httpx2

__all__ = [
    "BodyTooLarge",
    "ForemanError",
    "GateFull",
    "ModelNotFound",
    "TargetBroken",
    "TargetError",
    "TargetStatus",
    "TargetTimeout",
    "TargetUnreachable",
    "classify",
]


class ForemanError(Exception):
    """Base class: an error foreman answers itself, as ``{"error": message}``."""

    status_code = 500

    @property
    def message(self) -> str:
        return str(self)


class TargetError(ForemanError):
    """The target could not be used. ``target`` is its base URL."""

    status_code = 502
    template = "ollama target {target}: {detail}"

    def __init__(self, target: str, detail: str) -> None:
        super().__init__(target, detail)
        self.target = target
        self.detail = detail

    def __str__(self) -> str:
        return self.template.format(target=self.target, detail=self.detail)


class TargetUnreachable(TargetError):
    """No connection could be made (refused, DNS, connect timeout). Transient."""

    status_code = 503
    template = "ollama target {target} is unreachable: {detail}"


class TargetTimeout(TargetError):
    """The target sent nothing for longer than the idle timeout."""

    status_code = 504
    template = "ollama target {target} timed out: {detail}"


class TargetBroken(TargetError):
    """The connection failed after it was made (reset, truncated body, protocol error)."""

    status_code = 502
    template = "ollama target {target} broke the connection: {detail}"


class TargetStatus(TargetError):
    """The target answered one of foreman's own calls with an error status (``status``)."""

    status_code = 502
    template = "ollama target {target} answered {detail}"

    def __init__(self, target: str, detail: str, status: int = 0) -> None:
        super().__init__(target, detail)
        self.status = status


class ModelNotFound(ForemanError):
    """Ollama's own 404 for chat/generate: ``model 'NAME' not found`` (NAME as sent)."""

    status_code = 404

    def __init__(self, model: str) -> None:
        super().__init__(f"model '{model}' not found")
        self.model = model


class BodyTooLarge(ForemanError):
    """A request body foreman would have to hold in memory is over ``FOREMAN_MAX_BODY``."""

    status_code = 413

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body too large: the limit is {limit} bytes (FOREMAN_MAX_BODY)")


class GateFull(ForemanError):
    """Ollama's own 503 when its pending queue is full (two spaces after the period)."""

    status_code = 503

    def __init__(self) -> None:
        super().__init__("server busy, please try again.  maximum pending requests exceeded")


def classify(exc: httpx2.HTTPError, target: str) -> TargetError:
    """Turn an httpx transport failure into foreman's error type.

    Args:
        exc: what httpx raised while talking to the target.
        target: the target's base URL, named in the message.

    Returns:
        :class:`TargetUnreachable` for :class:`httpx2.ConnectError` and
        :class:`httpx2.ConnectTimeout`; :class:`TargetTimeout` for the other
        timeouts (read, write, pool); :class:`TargetBroken` for everything else.
    """
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, httpx2.ConnectError | httpx2.ConnectTimeout):
        return TargetUnreachable(target, detail)
    if isinstance(exc, httpx2.TimeoutException):
        return TargetTimeout(target, f"{type(exc).__name__}: {detail}")
    return TargetBroken(target, detail)
