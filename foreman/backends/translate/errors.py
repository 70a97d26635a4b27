"""The other API's failures, as foreman's :class:`~foreman.dataplane.errors.TargetError` types."""

from __future__ import annotations

from ...dataplane.errors import (
    ModelNotFound,
    TargetBroken,
    TargetBusy,
    TargetError,
    TargetStatus,
    TargetUnauthorized,
)

__all__ = ["IncompleteStream", "StreamError", "status_error"]


# --- errors ----------------------------------------------------------------------------


class IncompleteStream(Exception):
    """The backend's stream ended before the answer was complete (no stop reason)."""

    def __init__(self) -> None:
        super().__init__("the stream ended before the answer was complete")


class StreamError(Exception):
    """An error the backend sent inside its stream, with the HTTP status it stands for
    (None when it names none)."""

    def __init__(self, message: str, status: int | None) -> None:
        super().__init__(message)
        self.message, self.status = message, status


def status_error(
    name: str, kind: str, status: int, message: str, model: str | None
) -> TargetError | ModelNotFound:
    """foreman's error for an HTTP error status from a backend's API.

    401, 403: :class:`TargetUnauthorized`; 429, 503, 529 (Anthropic's "overloaded"):
    :class:`TargetBusy`; 404 on an inference call (``model`` given):
    :class:`ModelNotFound` naming the backend's model id; any other 4xx:
    :class:`TargetStatus` (``"<status>: <message>"``); 5xx: :class:`TargetBroken`.
    """
    detail = f"{status}: {message}"
    if status in (401, 403):
        return TargetUnauthorized(name, detail, kind=kind)
    if status in (429, 503, 529):
        return TargetBusy(name, detail, kind=kind)
    if status == 404 and model is not None:
        return ModelNotFound(model)
    if 400 <= status < 500:
        return TargetStatus(name, detail, status, kind=kind)
    return TargetBroken(name, detail, kind=kind)
