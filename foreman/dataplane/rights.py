"""Who may manage models: the rule for Ollama's routes that change what a server holds.

``/api/pull``, ``/api/push``, ``/api/delete``, ``/api/copy``, ``/api/create`` and
``/api/blobs/*`` (any method) change the models of a shared Ollama server for everyone,
so they need the ``admin`` role (``FOREMAN_TOKEN``, or a user made an admin). While
foreman is open (no token, no user) everyone is an admin, as in v1. With
``FOREMAN_MODEL_MANAGEMENT=users`` every user with a key may manage models again.
"""

from __future__ import annotations

from typing import Any

from ..settings import Settings
from ..users import USER_SCOPE_KEY
from .errors import ForemanError

__all__ = ["MODEL_MANAGEMENT", "ModelManagementForbidden", "check_model_management"]

#: The routes (keys of :func:`~foreman.dataplane.native.route_key`) that manage models,
#: besides everything under ``/api/blobs/``.
MODEL_MANAGEMENT = frozenset({"/api/pull", "/api/push", "/api/delete", "/api/copy", "/api/create"})


class ModelManagementForbidden(ForemanError):
    """403 in Ollama's error shape: the caller may not manage models."""

    status_code = 403


def is_model_management(key: str) -> bool:
    """Whether route ``key`` (lower-cased, no trailing slash) manages models."""
    return key in MODEL_MANAGEMENT or key.startswith("/api/blobs/")


def check_model_management(settings: Settings, scope: dict[str, Any], key: str) -> None:
    """Let the request of ``scope`` on route ``key`` pass, or refuse it.

    Raises:
        ModelManagementForbidden: ``key`` manages models, the caller is no admin and
            ``FOREMAN_MODEL_MANAGEMENT`` is ``admins`` (the default).
    """
    if not is_model_management(key) or settings.model_management == "users":
        return
    user = scope.get(USER_SCOPE_KEY)
    if user is None or not user.is_admin:
        raise ModelManagementForbidden(
            "managing models needs the admin role (FOREMAN_MODEL_MANAGEMENT=admins)"
        )
