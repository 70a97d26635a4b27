"""foreman's error types, each mapped to the HTTP answer an Ollama client expects.

Hierarchy::

    ForemanError                      status_code, message -> {"error": message}
    ├── TargetError                   something went wrong talking to the target (or to
    │   │                             another backend: ``kind`` names it, e.g.
    │   │                             ``anthropic backend``)
    │   ├── TargetUnreachable   503   refused, DNS failure, connect timeout (+ Retry-After)
    │   ├── TargetTimeout       504   the target went quiet for longer than the idle timeout
    │   ├── TargetBroken        502   the connection broke after it was made
    │   ├── TargetUnauthorized  502   the backend refused foreman's API key (401, 403)
    │   ├── TargetBusy          503   the backend is overloaded or rate-limited (429, 529)
    │   └── TargetStatus        502   an HTTP error status from the target to foreman's own
    │                                 calls (tags, ps, warm-up); a client's calls get the
    │                                 target's answer itself, untouched
    ├── ModelNotFound           404   not in the target's inventory, even after a re-poll
    ├── BodyTooLarge            413   a request body over FOREMAN_MAX_BODY
    ├── CannotEmbed             400   an embed routed to a backend without embeddings
    ├── WrongFace               400   a route of a face the routed backend does not speak
    ├── GateFull                503   too many chats (or bytes) already waiting at the gate,
    │                                 or foreman's grace period ended while one waited
    └── GateLost                503   the cluster's gate: the database session holding the
                                      slot was lost mid-chat, so the chat was ended

Classification of transport failures happens once, in :func:`classify`, by exception
type (never by matching error text). HTTP error *statuses* from the target are
not exceptions on the relay path: foreman passes the target's answer through untouched.
"""

from __future__ import annotations

import httpx2

__all__ = [
    "BodyTooLarge",
    "CannotEmbed",
    "ForemanError",
    "GateFull",
    "GateLost",
    "ModelNotFound",
    "TargetBroken",
    "TargetError",
    "TargetBusy",
    "TargetStatus",
    "TargetTimeout",
    "TargetUnauthorized",
    "TargetUnreachable",
    "WrongFace",
    "classify",
]


class ForemanError(Exception):
    """Base class: an error foreman answers itself, as ``{"error": message}``."""

    status_code = 500

    @property
    def message(self) -> str:
        return str(self)


class TargetError(ForemanError):
    """The target could not be used. ``target`` is its base URL (or a backend's name);
    ``kind`` says what it is: ``ollama target`` (v1's words), ``anthropic backend``, ..."""

    status_code = 502
    template = "{kind} {target}: {detail}"
    #: The HTTP status the target answered, when it answered one (0: none).
    status = 0

    def __init__(self, target: str, detail: str, *, kind: str = "ollama target") -> None:
        super().__init__(target, detail)
        self.target = target
        self.detail = detail
        self.kind = kind

    def __str__(self) -> str:
        return self.template.format(kind=self.kind, target=self.target, detail=self.detail)


class TargetUnreachable(TargetError):
    """No connection could be made (refused, DNS, connect timeout). Transient."""

    status_code = 503
    template = "{kind} {target} is unreachable: {detail}"


class TargetTimeout(TargetError):
    """The target sent nothing for longer than the idle timeout."""

    status_code = 504
    template = "{kind} {target} timed out: {detail}"


class TargetBroken(TargetError):
    """The connection failed after it was made (reset, truncated body, protocol error)."""

    status_code = 502
    template = "{kind} {target} broke the connection: {detail}"


class TargetStatus(TargetError):
    """The target answered one of foreman's own calls with an error status (``status``)."""

    status_code = 502
    template = "{kind} {target} answered {detail}"

    def __init__(
        self, target: str, detail: str, status: int = 0, *, kind: str = "ollama target"
    ) -> None:
        super().__init__(target, detail, kind=kind)
        self.status = status


class TargetUnauthorized(TargetError):
    """The backend refused foreman's API key (its 401 or 403): a setting to fix, not transient."""

    status_code = 502
    template = "{kind} {target} refused foreman's API key: {detail}"


class TargetBusy(TargetError):
    """The backend is overloaded or rate-limits foreman (429, Anthropic's 529). Transient."""

    status_code = 503
    template = "{kind} {target} is busy: {detail}"


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


class CannotEmbed(ForemanError):
    """An embed routed (by alias or ``backend/model``) to a backend with no embeddings API."""

    status_code = 400

    def __init__(self, backend: str, kind: str) -> None:
        super().__init__(f"backend {backend!r} ({kind}) has no embeddings API")


class WrongFace(ForemanError):
    """A route routed to a backend that does not speak its face (``/v1/messages`` to an
    OpenAI-compatible backend, ``/v1/chat/completions`` to Claude, ...)."""

    status_code = 400

    SPEAKS = {
        "anthropic": "Anthropic's /v1/messages, and Ollama's /api/chat and /api/generate",
        "openai": "OpenAI's /v1/chat/completions, /v1/completions, /v1/responses and"
        " /v1/embeddings, and Ollama's /api/chat and /api/generate",
    }

    def __init__(self, backend: str, kind: str, route: str) -> None:
        speaks = self.SPEAKS.get(kind, "Ollama's routes")
        super().__init__(f"backend {backend!r} ({kind}) does not serve {route}: it speaks {speaks}")


class GateFull(ForemanError):
    """Ollama's own 503 when its pending queue is full (two spaces after the period)."""

    status_code = 503

    def __init__(self) -> None:
        super().__init__("server busy, please try again.  maximum pending requests exceeded")


class GateLost(ForemanError):
    """503: the cluster's gate (several replicas, ADR 21) lost the database session that
    held the slot while the chat ran, so foreman ended the chat before another replica
    could start one on the same Ollama server. ``reason`` says how it was lost."""

    status_code = 503

    def __init__(self, reason: str = "") -> None:
        super().__init__(
            "foreman lost the gate's database session during the chat, please try again"
            + (f" ({reason})" if reason else "")
        )
        self.reason = reason


def classify(exc: httpx2.HTTPError, target: str, *, kind: str = "ollama target") -> TargetError:
    """Turn an httpx transport failure into foreman's error type.

    Args:
        exc: what httpx raised while talking to the target.
        target: the target's base URL (or the backend's name), named in the message.
        kind: what ``target`` is, for the message (``ollama target``, ``anthropic backend``).

    Returns:
        :class:`TargetUnreachable` for :class:`httpx2.ConnectError` and
        :class:`httpx2.ConnectTimeout`; :class:`TargetTimeout` for the other
        timeouts (read, write, pool); :class:`TargetBroken` for everything else.
    """
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, httpx2.ConnectError | httpx2.ConnectTimeout):
        return TargetUnreachable(target, detail, kind=kind)
    if isinstance(exc, httpx2.TimeoutException):
        return TargetTimeout(target, f"{type(exc).__name__}: {detail}", kind=kind)
    return TargetBroken(target, detail, kind=kind)
