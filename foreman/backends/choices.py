"""What is chosen among the backends, in the store: each backend's discovered models
(and its selected one) and each user's routing preferences.

Every function here takes the store's connection first and runs in the store's thread
(``await store.call(fn, ...)``); the backends' own rows are in
:mod:`foreman.backends.registry`.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from ..dataplane.jsonwire import rfc3339
from .registry import ALIAS, DEFAULT_LIMITS, FieldError, Limits

__all__ = [
    "Preferences",
    "all_preferences",
    "check_preferences",
    "get_preferences",
    "list_models",
    "put_preferences",
    "record_models",
    "select_model",
]


# --- models ----------------------------------------------------------------------------


def record_models(
    db: sqlite3.Connection, backend_id: int, models: list[tuple[str, int | None]], now: float
) -> str | None:
    """Store what a discovery found: each model's size and ``last_seen_at = now``.

    Models not found keep their rows and their old ``last_seen_at``. The first model
    ever found on a backend becomes its selected one. Returns the selected model.
    """
    db.executemany(
        "INSERT INTO backend_models (backend_id, model_name, size_bytes, last_seen_at)"
        " VALUES (?, ?, ?, ?) ON CONFLICT (backend_id, model_name) DO UPDATE SET"
        " size_bytes = excluded.size_bytes, last_seen_at = excluded.last_seen_at",
        [(backend_id, name, size, now) for name, size in models],
    )
    if (
        models
        and not db.execute(
            "SELECT 1 FROM backend_models WHERE backend_id = ? AND is_selected = 1", (backend_id,)
        ).fetchone()
    ):
        select_model(db, backend_id, models[0][0])
    row = db.execute(
        "SELECT model_name FROM backend_models WHERE backend_id = ? AND is_selected = 1",
        (backend_id,),
    ).fetchone()
    return None if row is None else row[0]


def list_models(db: sqlite3.Connection, backend_id: int, seen_since: float) -> list[dict[str, Any]]:
    """A backend's models by name: ``[{"name", "size_bytes", "is_selected", "last_seen_at",
    "available"}]``; ``available`` is whether the last discovery (at ``seen_since`` or
    later) found it."""
    rows = db.execute(
        "SELECT * FROM backend_models WHERE backend_id = ? ORDER BY model_name", (backend_id,)
    )
    return [
        {
            "name": row["model_name"],
            "size_bytes": row["size_bytes"],
            "is_selected": bool(row["is_selected"]),
            "last_seen_at": rfc3339(row["last_seen_at"]),
            "available": row["last_seen_at"] >= seen_since,
        }
        for row in rows
    ]


def select_model(db: sqlite3.Connection, backend_id: int, model: str) -> bool:
    """Make ``model`` the backend's selected one; False if the backend never had it."""
    if not db.execute(
        "SELECT 1 FROM backend_models WHERE backend_id = ? AND model_name = ?",
        (backend_id, model),
    ).fetchone():
        return False
    db.execute(
        "UPDATE backend_models SET is_selected = CASE WHEN model_name = ? THEN 1 ELSE 0 END"
        " WHERE backend_id = ?",
        (model, backend_id),
    )
    return True


# --- preferences -----------------------------------------------------------------------


@dataclass(frozen=True)
class Preferences:
    """One user's routing preferences.

    ``default_backend_id``: None means the shared default. ``fallback_to_claude``:
    None means on when a Claude backend exists. ``aliases``: alias → ``backend/model``,
    ``backend`` (its selected model) or a model of the default backend.
    """

    default_backend_id: int | None = None
    fallback_to_claude: bool | None = None
    aliases: dict[str, str] | None = None

    def shown(self) -> dict[str, Any]:
        return {
            "default_backend_id": self.default_backend_id,
            "fallback_to_claude": self.fallback_to_claude,
            "aliases": dict(self.aliases or {}),
        }


def get_preferences(db: sqlite3.Connection, user_name: str) -> Preferences:
    row = db.execute("SELECT * FROM preferences WHERE user_name = ?", (user_name,)).fetchone()
    if row is None:
        return Preferences()
    fallback = row["fallback_to_claude"]
    return Preferences(
        row["default_backend_id"],
        None if fallback is None else bool(fallback),
        json.loads(row["aliases"]),
    )


def all_preferences(db: sqlite3.Connection) -> dict[str, Preferences]:
    """Every user's preferences, by user name."""
    names = [row[0] for row in db.execute("SELECT user_name FROM preferences")]
    return {name: get_preferences(db, name) for name in names}


def check_preferences(
    fields: Any,
    visible: set[int],
    limits: Limits = DEFAULT_LIMITS,
) -> Preferences:
    """The checked preferences of a ``PUT`` (every field; an absent one is reset).

    Args:
        visible: the ids of the backends the user may route to.
        limits: how many aliases, and how long.

    Raises:
        FieldError: the first wrong field.
    """
    if not isinstance(fields, dict):
        raise FieldError("body", "must be a JSON object")
    for key in fields:
        if key not in ("default_backend_id", "fallback_to_claude", "aliases"):
            raise FieldError(key, "unknown field")
    default = fields.get("default_backend_id")
    if default is not None and (
        not isinstance(default, int) or isinstance(default, bool) or default not in visible
    ):
        raise FieldError("default_backend_id", "the id of a backend you can use, or null")
    fallback = fields.get("fallback_to_claude")
    if fallback is not None and not isinstance(fallback, bool):
        raise FieldError("fallback_to_claude", "true, false or null (on if Claude exists)")
    aliases = fields.get("aliases") or {}
    if not isinstance(aliases, dict):
        raise FieldError("aliases", 'an object {"alias": "backend/model"}')
    if len(aliases) > limits.aliases:
        raise FieldError("aliases", f"at most {limits.aliases} aliases")
    for alias, value in aliases.items():
        if len(alias) > limits.alias:
            raise FieldError("aliases", f"an alias has at most {limits.alias} characters")
        if not ALIAS.fullmatch(alias) or "/" in alias:
            raise FieldError("aliases", f"{alias!r} is not a valid alias name")
        if not isinstance(value, str) or not value.strip():
            raise FieldError("aliases", f"{alias!r} must name a model")
        if len(value) > limits.alias:
            raise FieldError("aliases", f"{alias!r}: at most {limits.alias} characters")
    return Preferences(default, fallback, aliases)


def put_preferences(db: sqlite3.Connection, user_name: str, preferences: Preferences) -> None:
    db.execute(
        "INSERT INTO preferences (user_name, default_backend_id, fallback_to_claude, aliases)"
        " VALUES (?, ?, ?, ?) ON CONFLICT (user_name) DO UPDATE SET"
        " default_backend_id = excluded.default_backend_id,"
        " fallback_to_claude = excluded.fallback_to_claude, aliases = excluded.aliases",
        (
            user_name,
            preferences.default_backend_id,
            preferences.fallback_to_claude,
            json.dumps(preferences.aliases or {}),
        ),
    )
