"""``GET /api/tags`` when a user can reach more than the builtin backend.

The answer keeps Ollama's shape, ``{"models": [{"name", "model", "modified_at",
"size", "digest", "details"}, ...]}``, and lists what the user's requests can name:

* the default backend's models as they are (for an Ollama backend, its own
  ``/api/tags`` entries, untouched);
* the user's aliases (``details.family`` is ``"alias"``, ``details.parent_model`` the
  alias's value);
* every other backend's models as ``backend/model``.

With only the builtin backend and no aliases there is nothing to add, and
:func:`reachable_models` returns None: ``/api/tags`` then stays the target's own
answer, byte for byte, as in v1.
"""

from __future__ import annotations

import json
from typing import Any

from ..backends import Backend, Backends
from .jsonwire import dumps
from .routing import resolve

__all__ = ["reachable_entries", "reachable_models"]

_EPOCH = "1970-01-01T00:00:00Z"


def reachable_models(backends: Backends, user_name: str) -> bytes | None:
    """The ``/api/tags`` body for ``user_name``, or None when v1's answer stands."""
    entries = reachable_entries(backends, user_name)
    return None if entries is None else dumps({"models": entries})


def reachable_entries(backends: Backends, user_name: str) -> list[dict[str, Any]] | None:
    """The ``/api/tags`` entries for ``user_name`` (also ``GET /v1/models``'s), or None
    when only the builtin backend's own answer is to be relayed."""
    visible = backends.visible(user_name)
    aliases = backends.preferences_of(user_name).aliases or {}
    default = resolve(backends, user_name, "", chat=False).backend
    if not aliases and list(visible.values()) == [backends.builtin] and default is backends.builtin:
        return None
    entries = _entries(default, "")
    for alias, value in sorted(aliases.items()):
        entries.append(_entry(alias, None, family="alias", parent=value))
    for name, backend in sorted(visible.items()):
        if backend is not default:
            entries.extend(_entries(backend, name + "/"))
    return entries


def _entries(backend: Backend, prefix: str) -> list[dict[str, Any]]:
    if backend.type == "ollama":
        body = backend.inventory.body  # type: ignore[union-attr]
        try:
            listed = json.loads(body)["models"] if body else []
        except (ValueError, KeyError, TypeError):
            listed = []
        if not prefix:
            return list(listed)
        return [
            {**entry, "name": prefix + entry["name"], "model": prefix + entry.get("model", "")}
            for entry in listed
            if isinstance(entry, dict) and "name" in entry
        ]
    models = backend.models  # type: ignore[union-attr]
    return [_entry(prefix + name, size, family=backend.type) for name, size in models]


def _entry(name: str, size: int | None, *, family: str, parent: str = "") -> dict[str, Any]:
    return {
        "name": name,
        "model": name,
        "modified_at": _EPOCH,
        "size": size or 0,
        "digest": "",
        "details": {
            "parent_model": parent,
            "format": "",
            "family": family,
            "families": None,
            "parameter_size": "",
            "quantization_level": "",
        },
    }
