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
* ``POST /admin/api/backends/{id}/select-model`` ``{"model"}`` → the backend;
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

import json
import math
import time
from typing import Any

from quart import Blueprint, Response, request

from ..errors import TargetError
from ..jsonwire import rfc3339
from ..responses import error_response, json_response
from ..users import USER_SCOPE_KEY, User
from . import Backends, registry
from .registry import BackendRecord, FieldError

__all__ = ["backend_routes"]


def _field_error(exc: FieldError) -> Response:
    return json_response({"error": str(exc), "field": exc.field}, 422)


async def _body() -> Any:
    try:
        return json.loads(await request.get_data())
    except ValueError:
        return None


def _user() -> User:
    user = request.scope.get(USER_SCOPE_KEY)
    assert user is not None, "the front authenticates every /admin request"
    return user


def backend_routes(backends: Backends) -> Blueprint:
    """The ``/admin/api/backends`` and ``/admin/api/preferences`` blueprint."""
    routes = Blueprint("backends", __name__)
    store, sealer = backends.store, backends.sealer

    def status(backend_id: int) -> dict[str, Any]:
        state = backends.status(backend_id)
        backend = backends.running.get(backend_id)
        return {
            "state": state.state,
            "healthy": backend is not None and backend.healthy(),
            "last_ping": rfc3339(state.last_ping),
            "last_ping_age_seconds": None
            if state.last_ping is None
            else round(time.time() - state.last_ping, 3),
            "last_error": state.last_error,
            "model_count": state.model_count,
        }

    def shown(record: BackendRecord) -> dict[str, Any]:
        return {
            **record.shown(),
            "selected_model": backends.selected.get(record.id),
            "status": status(record.id),
        }

    def seen(user: User) -> list[BackendRecord]:
        return [
            r
            for r in backends.records.values()
            if user.is_admin or r.owner is None or r.owner == user.name
        ]

    def find(backend_id: int, *, change: bool) -> BackendRecord | Response:
        """The backend the caller may see (and, with ``change``, change), or the error."""
        user = _user()
        record = backends.records.get(backend_id)
        if record is None or record not in seen(user):
            return error_response(f"backend {backend_id} not found", 404)
        if change and not user.is_admin and record.owner != user.name:
            return error_response("only an admin changes a shared backend", 403)
        return record

    @routes.get("/admin/api/backends")
    async def listing() -> Response:
        return json_response({"backends": [shown(r) for r in seen(_user())]})

    @routes.get("/admin/api/backends/status")
    async def statuses() -> Response:
        return json_response(
            {
                "backends": [
                    {"id": r.id, "name": r.name, "type": r.type, "status": status(r.id)}
                    for r in seen(_user())
                ]
            }
        )

    @routes.post("/admin/api/backends")
    async def create() -> Response:
        user = _user()
        try:
            checked = registry.validate(await _body(), creating=True)
            owner = checked.pop("owner", None) if user.is_admin else user.name
            if "owner" in checked:
                raise FieldError("owner", "only an admin sets a backend's owner")
            if checked.get("is_default") and not user.is_admin:
                raise FieldError("is_default", "only an admin sets the shared default")
            record = await store.call(registry.insert_backend, sealer, checked, owner)
        except FieldError as exc:
            return _field_error(exc)
        await backends.changed(record.id)
        if record.is_default:  # the others lost the flag
            for other in list(backends.records):
                if other != record.id:
                    await backends.changed(other)
        return json_response(shown(backends.records[record.id]), 201)

    @routes.patch("/admin/api/backends/<int:backend_id>")
    async def update(backend_id: int) -> Response:
        found = find(backend_id, change=True)
        if isinstance(found, Response):
            return found
        user = _user()
        try:
            checked = registry.validate(await _body(), creating=False)
            if not user.is_admin and ("owner" in checked or "is_default" in checked):
                field = "owner" if "owner" in checked else "is_default"
                raise FieldError(field, "only an admin changes it")
            record = await store.call(registry.update_backend, sealer, backend_id, checked)
        except FieldError as exc:
            return _field_error(exc)
        assert record is not None
        for changed in list(backends.records) if "is_default" in checked else [backend_id]:
            await backends.changed(changed)
        return json_response(shown(backends.records[record.id]))

    @routes.delete("/admin/api/backends/<int:backend_id>")
    async def delete(backend_id: int) -> Response:
        found = find(backend_id, change=True)
        if isinstance(found, Response):
            return found
        try:
            await store.call(registry.delete_backend, backend_id)
        except FieldError as exc:
            return _field_error(exc)
        await backends.changed(backend_id)
        return Response(b"", status=204)

    @routes.post("/admin/api/backends/<int:backend_id>/test")
    async def test(backend_id: int) -> Response:
        found = find(backend_id, change=False)
        if isinstance(found, Response):
            return found
        backend = backends.running.get(backend_id)
        if backend is None:
            return error_response(f"backend {found.name!r} is not active", 409)
        try:
            models = await backend.check()
        except TargetError as exc:
            return json_response(
                {"ok": False, "status": status(backend_id), "models": [], "error": str(exc)}
            )
        await backends.record(backend_id, models)
        names = sorted(name for name, _ in models)
        return json_response({"ok": True, "status": status(backend_id), "models": names})

    @routes.get("/admin/api/backends/<int:backend_id>/models")
    async def models(backend_id: int) -> Response:
        found = find(backend_id, change=False)
        if isinstance(found, Response):
            return found
        backend = backends.running.get(backend_id)
        if request.args.get("refresh") in ("true", "1") and backend is not None:
            try:
                await backends.record(backend_id, await backend.check())
            except TargetError as exc:
                return error_response(str(exc), exc.status_code)
        since = backends.status(backend_id).last_success
        listed = await store.call(
            registry.list_models, backend_id, math.inf if since is None else since
        )
        return json_response({"models": listed})

    @routes.post("/admin/api/backends/<int:backend_id>/select-model")
    async def select(backend_id: int) -> Response:
        found = find(backend_id, change=True)
        if isinstance(found, Response):
            return found
        body = await _body()
        model = body.get("model") if isinstance(body, dict) else None
        if not isinstance(model, str) or not await store.call(
            registry.select_model, backend_id, model
        ):
            error = FieldError("model", f"not a model of backend {found.name!r}")
            return _field_error(error)
        backends.selected[backend_id] = model
        return json_response(shown(found))

    @routes.get("/admin/api/preferences")
    async def preferences() -> Response:
        return json_response(backends.preferences_of(_user().name).shown())

    @routes.put("/admin/api/preferences")
    async def put_preferences() -> Response:
        user = _user()
        visible = {b.record.id for b in backends.visible(user.name).values()}
        try:
            chosen = registry.check_preferences(await _body(), visible)
        except FieldError as exc:
            return _field_error(exc)
        await store.call(registry.put_preferences, user.name, chosen)
        backends.preferences[user.name] = chosen
        return json_response(chosen.shown())

    return routes
