"""Routing: how a request's ``model`` becomes (backend, model).

In this order, for the backends a user may use (shared ones and their own):

1. an **alias** from the user's preferences (``code`` → ``ollama/qwen2.5-coder:32b``,
   ``research`` → ``claude``): its value is routed by the rules below, and a value
   that is just a backend's name means that backend's selected model;
2. an explicit **``backend/model``** whose prefix names a backend (unless the
   default Ollama backend knows the whole name: Ollama's own names have slashes,
   ``hf.co/org/model``), or a bare **``backend``** name: that backend's selected model
   (unless the default Ollama backend has a model of that name);
3. otherwise the user's **default backend** (``default_backend_id``, else the shared
   default), with the model as given: v1's behaviour, byte for byte.

**Fallback**: a chat or generate routed to an Ollama backend that is unhealthy
(unreachable, or no successful poll for 60 s) goes to the user's Claude backend
(their own first, then a shared one) and its selected model, when the user's
``fallback_to_claude`` is on (by default it is, whenever a Claude backend exists).
Embeds never fall back: Anthropic has no embeddings API.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..backends import Backend, Backends
from ..backends.choices import Preferences
from .jsonwire import dumps

__all__ = ["Route", "fallback", "resolve"]


@dataclass(frozen=True)
class Route:
    """Where one request goes. ``model`` is the backend's own name for the model;
    ``fell_back_from`` names the unhealthy backend a fallback route replaced."""

    backend: Backend
    model: str
    fell_back_from: str | None = None
    asked: str | None = None  # the request's own ``model``, when it differs from ``model``

    @property
    def label(self) -> str:
        """``backend/model``: the ``X-Foreman-Backend`` header and the access log's."""
        return f"{self.backend.name}/{self.model}"

    @property
    def echo(self) -> tuple[bytes, bytes] | None:
        """How an Ollama answer's first field is renamed so that it echoes the name the
        client asked for, as Ollama echoes it: ``({"model":"<model>",``,
        ``{"model":"<asked>",``); None when the names are the same."""
        if self.asked is None or self.asked == self.model:
            return None
        start = b'{"model":'
        return start + dumps(self.model) + b",", start + dumps(self.asked) + b","


def resolve(backends: Backends, user_name: str, model: str, *, chat: bool) -> Route:
    """The route for ``model`` as ``user_name`` asked for it (see the module docstring).

    Args:
        model: the request's ``model`` field ("" when it has none).
        chat: a chat or generate (these may fall back; embeds may not).
    """
    preferences = backends.preferences_of(user_name)
    visible = backends.visible(user_name)
    default = _default(backends, preferences, visible)
    aliased = (preferences.aliases or {}).get(model) if model else None
    if aliased is not None:
        route = _named(backends, aliased, visible, default, alias=True) or Route(default, aliased)
    else:
        route = _named(backends, model, visible, default, alias=False) or Route(default, model)
    if route.model != model:
        route = replace(route, asked=model)
    if chat and route.backend.type == "ollama" and not route.backend.healthy():
        return fallback(backends, user_name, route) or route
    return route


def fallback(backends: Backends, user_name: str, route: Route) -> Route | None:
    """The Claude route replacing ``route`` (whose Ollama backend failed), or None when
    the user's preferences say no, or there is no Claude backend with a model."""
    preferences = backends.preferences_of(user_name)
    if preferences.fallback_to_claude is False:
        return None
    claudes = [b for b in backends.visible(user_name).values() if b.type == "anthropic"]
    claudes.sort(key=lambda b: b.record.owner is None)  # the user's own first
    for claude in claudes:
        model = backends.selected.get(claude.record.id)
        if model:
            return Route(claude, model, fell_back_from=route.backend.name)
    return None


def _default(backends: Backends, preferences: Preferences, visible: dict[str, Backend]) -> Backend:
    chosen = backends.running.get(preferences.default_backend_id or -1)
    if chosen is not None and chosen.name in visible:
        return chosen
    for backend in visible.values():
        if backend.record.is_default and backend.record.owner is None:
            return backend
    return backends.builtin


def _named(
    backends: Backends, name: str, visible: dict[str, Backend], default: Backend, *, alias: bool
) -> Route | None:
    """``backend/model``, or a bare ``backend`` (its selected model), as a route."""
    prefix, slash, rest = name.partition("/")
    backend = visible.get(prefix)
    if backend is None:
        return None
    selected = backends.selected.get(backend.record.id)
    if not slash and not alias and not selected:
        return None  # a bare name of a backend with no model: the default backend's model
    if (slash or not alias) and default.type == "ollama" and default.inventory.knows(name):
        return None  # an Ollama name (``hf.co/org/model``, ``llama3.2``) the default has
    return Route(backend, rest or selected or "")
