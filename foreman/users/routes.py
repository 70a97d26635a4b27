"""``/admin/api/users`` (control plane, Quart): admins create, list and revoke users.

* ``GET /admin/api/users`` → ``{"users": [{"name", "role", "key_prefix", "created_at",
  "revoked_at"}, ...]}``;
* ``POST /admin/api/users`` ``{"name": "...", "role": "user"|"admin"}`` → 201, the user
  and ``"key"``: the only time the key is shown;
* ``DELETE /admin/api/users/{name}`` → the user, revoked (404 if there is none).

Only an admin (``FOREMAN_TOKEN``, or a user with the ``admin`` role) gets past 403.
Errors use Ollama's shape, ``{"error": "..."}``; a bad field is a 422 naming it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any

from quart import Blueprint, Response, request

from ..control.responses import error_response, json_response, parse_json
from . import USER_SCOPE_KEY, Users, create_user, list_users, revoke_user

__all__ = ["user_routes"]


def _admins_only(
    handler: Callable[..., Awaitable[Response]],
) -> Callable[..., Awaitable[Response]]:
    @wraps(handler)
    async def checked(*args: Any, **kwargs: Any) -> Response:
        user = request.scope.get(USER_SCOPE_KEY)
        if user is None or not user.is_admin:
            return error_response("admins only", 403)
        return await handler(*args, **kwargs)

    return checked


def user_routes(users: Users) -> Blueprint:
    """The ``/admin/api/users`` blueprint for ``users``."""
    routes = Blueprint("users", __name__)

    @routes.get("/admin/api/users")
    @_admins_only
    async def listing() -> Response:
        return json_response({"users": await users.store.call(list_users)})

    @routes.post("/admin/api/users")
    @_admins_only
    async def create() -> Response:
        try:
            body = parse_json(await request.get_data())
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return error_response("the body must be a JSON object", 400)
        try:
            user, key = await users.store.call(
                create_user, body.get("name"), body.get("role", "user")
            )
        except ValueError as exc:
            return error_response(str(exc), 422)
        await users.reload()
        return json_response({**user, "key": key}, 201)

    @routes.delete("/admin/api/users/<name>")
    @_admins_only
    async def revoke(name: str) -> Response:
        user = await users.store.call(revoke_user, name)
        if user is None:
            return error_response(f"user {name!r} not found", 404)
        await users.reload()
        return json_response(user)

    return routes
