"""The listing routes of the data plane: ``GET /api/tags``, ``GET /v1/models`` and
``GET /v1/models/{model}``.

Each is relayed to the builtin backend as in v1, unless the user can reach more than it:
then foreman answers with its own list (:mod:`.listing`), in Ollama's or OpenAI's shape.
``/api/tags`` falls back to the last inventory while the target is unreachable or slow.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from . import openai as openai_face
from .answers import JSON_HEADERS, respond, user_name
from .bodies import drain
from .errors import ModelNotFound, TargetError
from .intake import read_body
from .listing import reachable_entries, reachable_models

if TYPE_CHECKING:
    from .exchange import Exchange
    from .native import DataPlane

__all__ = ["model", "models", "tags"]

LOGGER = logging.getLogger("foreman.dataplane.native")


async def tags(
    plane: DataPlane, exchange: Exchange, scope: Any, receive: Any, send: Any, extra: Any, key: str
) -> None:
    """``GET /api/tags``: what the user can reach (:func:`~.listing.reachable_models`)
    when that is more than the builtin backend; else relayed, or the last inventory
    while the target is unreachable or slow."""
    gw = plane.gw
    if gw.backends is not None:
        listing = reachable_models(gw.backends, user_name(scope))
        if listing is not None:  # more than the builtin backend: foreman's own list
            await drain(receive)
            await respond(send, 200, listing, headers=JSON_HEADERS + extra)
            return
    inventory = gw.inventory
    if not inventory.degraded.value or inventory.body is None:
        body = await read_body(scope, receive, plane.settings.max_body)
        request = plane.upstream_request(gw.builtin, scope, body)
        try:
            status, headers, body = await gw.target.fetch(
                request, total_timeout=plane.settings.control_timeout
            )
        except TargetError as exc:
            inventory.kick()
            if inventory.body is None:
                raise
            LOGGER.info("answering /api/tags from the last inventory: %s", exc)
        else:
            await respond(send, status, body, headers=headers + extra)
            return
    else:
        inventory.kick()
    assert inventory.body is not None
    await respond(send, 200, inventory.body, headers=JSON_HEADERS + extra)


async def models(
    plane: DataPlane, exchange: Exchange, scope: Any, receive: Any, send: Any, extra: Any, key: str
) -> None:
    """``GET /v1/models``: relayed, or what the user can reach in OpenAI's list shape."""
    if plane.gw.backends is not None:
        entries = reachable_entries(plane.gw.backends, user_name(scope))
        if entries is not None:
            await drain(receive)
            headers = [(b"content-type", b"application/json"), *extra]
            await respond(send, 200, openai_face.models_body(entries), headers=headers)
            return
    await plane.passthrough(exchange, scope, receive, send, extra, key)


async def model(
    plane: DataPlane, exchange: Exchange, scope: Any, receive: Any, send: Any, extra: Any, key: str
) -> None:
    """``GET /v1/models/{model}``: relayed; or, for a user who reaches more than the
    builtin backend, the model of that name among what ``GET /v1/models`` lists them
    (an alias and ``backend/model`` too), else OpenAI's 404."""
    if plane.gw.backends is not None:
        entries = reachable_entries(plane.gw.backends, user_name(scope))
        if entries is not None:
            await drain(receive)
            name = scope["path"].split("/", 3)[3]  # as sent: /v1/models/{name}
            body = openai_face.model_body(entries, name)
            if body is None:
                raise ModelNotFound(name)
            headers = [(b"content-type", b"application/json"), *extra]
            await respond(send, 200, body, headers=headers)
            return
    await plane.passthrough(exchange, scope, receive, send, extra, key)
