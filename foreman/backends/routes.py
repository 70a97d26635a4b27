"""``/admin/api/backends`` and ``/admin/api/preferences`` (control plane, Quart).

* ``GET /admin/api/backends`` → ``{"backends": [backend, ...]}``: the ones the caller may
  see (an admin: all; a user: the shared ones and their own). A backend is
  :meth:`~.registry.BackendRecord.shown` (the API key masked) plus ``"status"``;
* ``POST /admin/api/backends`` ``{"name", "type", "endpoint", "api_key", "is_default",
  "is_active"}`` → 201, the backend (started at once). A user's backend is their own;
  an admin's is shared unless ``"owner"`` names a user;
* ``PATCH /admin/api/backends/{id}`` (any of those fields) → the backend, restarted;
* ``DELETE /admin/api/backends/{id}`` → 204, its tasks cancelled;
* ``POST /admin/api/backends/{id}/test`` → ``{"ok", "status", "models": [name, ...],
  "error"}``: a check now;
* ``GET /admin/api/backends/{id}/models[?refresh=true]`` → ``{"models": [{"name",
  "size_bytes", "is_selected", "last_seen_at", "available"}]}``;
* ``POST /admin/api/backends/{id}/select-model`` ``{"model"}`` (or ``{"modelName"}``) →
  the backend;
* ``GET /admin/api/backends/status`` → ``{"backends": [{"id", "name", "type", "status"}]}``;
* ``GET /admin/api/preferences`` / ``PUT`` ``{"default_backend_id", "fallback_to_claude",
  "aliases"}`` → the caller's preferences.

``status`` is ``{"state": "connecting" | "connected" | "unreachable" | "unauthorized" |
"inactive", "healthy", "last_ping" (RFC 3339), "last_ping_age_seconds", "last_error",
"model_count"}``. Only an admin changes shared backends; a user changes their own.
Errors use Ollama's shape, ``{"error": "..."}``; a bad field is a 422 that names it
(``"field"``); another user's backend is a 404.
"""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, request

from ..control.responses import json_response, parse_json
from ..users import USER_SCOPE_KEY, User
from .manage import Manager
from .registry import FieldError

__all__ = ["backend_routes"]


async def _body() -> Any:
    try:
        return parse_json(await request.get_data())
    except ValueError:
        return None


def _user() -> User:
    user = request.scope.get(USER_SCOPE_KEY)
    assert user is not None, "the front authenticates every /admin/api request"
    return user


def backend_routes(manager: Manager) -> Blueprint:
    """The ``/admin/api/backends`` and ``/admin/api/preferences`` blueprint.

    Every rule is :class:`~.manage.Manager`'s; its ``ForemanError``\\ s are answered by the
    control app's error handler, a :class:`~.registry.FieldError` here (422 with ``field``).
    """
    routes = Blueprint("backends", __name__)

    @routes.errorhandler(FieldError)
    async def field_error(exc: FieldError) -> Response:
        return json_response({"error": str(exc), "field": exc.field}, 422)

    @routes.get("/admin/api/backends")
    async def listing() -> Response:
        return json_response({"backends": [manager.shown(r) for r in manager.seen(_user())]})

    @routes.get("/admin/api/backends/status")
    async def statuses() -> Response:
        shown = [
            {"id": r.id, "name": r.name, "type": r.type, "status": manager.status(r.id)}
            for r in manager.seen(_user())
        ]
        return json_response({"backends": shown})

    @routes.post("/admin/api/backends")
    async def create() -> Response:
        record = await manager.create(_user(), await _body())
        return json_response(manager.shown(record), 201)

    @routes.patch("/admin/api/backends/<int:backend_id>")
    async def update(backend_id: int) -> Response:
        record = await manager.update(_user(), backend_id, await _body())
        return json_response(manager.shown(record))

    @routes.delete("/admin/api/backends/<int:backend_id>")
    async def delete(backend_id: int) -> Response:
        await manager.delete(_user(), backend_id)
        return Response(b"", status=204)

    @routes.post("/admin/api/backends/<int:backend_id>/test")
    async def test(backend_id: int) -> Response:
        return json_response(await manager.test(_user(), backend_id))

    @routes.get("/admin/api/backends/<int:backend_id>/models")
    async def models(backend_id: int) -> Response:
        refresh = request.args.get("refresh") in ("true", "1")
        return json_response({"models": await manager.models(_user(), backend_id, refresh=refresh)})

    @routes.post("/admin/api/backends/<int:backend_id>/select-model")
    async def select(backend_id: int) -> Response:
        body = await _body()
        model = None
        if isinstance(body, dict):  # ``modelName``: the name the briefing's API gives it
            model = body["model"] if "model" in body else body.get("modelName")
        record = await manager.select(_user(), backend_id, model)
        return json_response(manager.shown(record))

    @routes.get("/admin/api/preferences")
    async def preferences() -> Response:
        return json_response(manager.preferences(_user()))

    @routes.put("/admin/api/preferences")
    async def put_preferences() -> Response:
        return json_response(await manager.put_preferences(_user(), await _body()))

    return routes
