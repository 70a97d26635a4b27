"""The backend registry in the store: the backends' rows and their API keys.

Their discovered models and users' preferences are in :mod:`foreman.backends.choices`;
what their fields may be (the checks and limits) in :mod:`foreman.backends.fields`.

Every function here takes the store's connection first and runs in the store's thread
(``await store.call(fn, ...)``). API keys are kept encrypted (:class:`Sealer`, Fernet)
and leave this module only decrypted for the backend's own client, or masked
(``…wxyz``) for everyone else.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..dataplane.jsonwire import rfc3339
from .fields import ALIAS, DEFAULT_LIMITS, NAME, TYPES, FieldError, Limits, complete, validate
from .sealing import Sealer

__all__ = [
    "ALIAS",
    "DEFAULT_LIMITS",
    "NAME",
    "TYPES",
    "BackendRecord",
    "FieldError",
    "Limits",
    "Sealer",
    "delete_backend",
    "ensure_builtin",
    "insert_backend",
    "list_backends",
    "update_backend",
    "validate",
]

#: The name of the backend FOREMAN_OLLAMA_URL names.
BUILTIN_NAME = "ollama"


@dataclass(frozen=True)
class BackendRecord:
    """One row of ``backends``. Times are Unix seconds; ``api_key`` is decrypted."""

    id: int
    name: str
    type: str
    endpoint: str | None
    api_key: str | None
    owner: str | None  # a user's name; None: shared
    is_default: bool
    is_active: bool
    builtin: bool
    created_at: float
    updated_at: float
    selected_model: str | None
    key_unreadable: bool = False  # a key is stored but cannot be decrypted

    def shown(self) -> dict[str, Any]:
        """What the API shows: ``{"id", "name", "type", "endpoint", "api_key" (masked or
        None), "owner", "is_default", "is_active", "builtin", "selected_model",
        "created_at", "updated_at"}`` (times RFC 3339 UTC)."""
        return {
            "id": self.id,
            "name": self.name,
            "type": self.type,
            "endpoint": self.endpoint,
            "api_key": _masked(self.api_key, self.key_unreadable),
            "owner": self.owner,
            "is_default": self.is_default,
            "is_active": self.is_active,
            "builtin": self.builtin,
            "selected_model": self.selected_model,
            "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.updated_at),
        }


def _masked(api_key: str | None, unreadable: bool) -> str | None:
    if unreadable:
        return "<unreadable: FOREMAN_SECRET_KEY changed?>"
    if not api_key:
        return None
    return "…" + api_key[-4:] if len(api_key) >= 12 else "…"


def _record(row: sqlite3.Row, sealer: Sealer) -> BackendRecord:
    api_key = sealer.open(row["api_key"])
    return BackendRecord(
        id=row["id"],
        name=row["name"],
        type=row["type"],
        endpoint=row["endpoint"],
        api_key=api_key,
        owner=row["owner"],
        is_default=bool(row["is_default"]),
        is_active=bool(row["is_active"]),
        builtin=bool(row["builtin"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        selected_model=row["selected_model"],
        key_unreadable=row["api_key"] is not None and api_key is None,
    )


_SELECT = """
    SELECT b.*, (SELECT model_name FROM backend_models m
                 WHERE m.backend_id = b.id AND m.is_selected = 1) AS selected_model
    FROM backends b
"""


def list_backends(db: sqlite3.Connection, sealer: Sealer) -> list[BackendRecord]:
    """Every backend, oldest first."""
    return [_record(row, sealer) for row in db.execute(_SELECT + " ORDER BY b.id")]


def get_backend(db: sqlite3.Connection, sealer: Sealer, backend_id: int) -> BackendRecord | None:
    row = db.execute(_SELECT + " WHERE b.id = ?", (backend_id,)).fetchone()
    return None if row is None else _record(row, sealer)


def ensure_builtin(db: sqlite3.Connection, sealer: Sealer, endpoint: str) -> BackendRecord:
    """The backend ``FOREMAN_OLLAMA_URL`` names, created on the first start and its
    endpoint brought up to date on every start. The first one is the shared default."""
    now = time.time()
    row = db.execute("SELECT id FROM backends WHERE builtin = 1").fetchone()
    if row is None:
        taken = db.execute("SELECT 1 FROM backends WHERE name = ?", (BUILTIN_NAME,)).fetchone()
        is_default = not db.execute("SELECT 1 FROM backends WHERE is_default = 1").fetchone()
        # Replicas starting together on one new database race to this insert: the
        # loser's conflicts on the name, does nothing, and reads the winner's row.
        inserted = db.execute(
            "INSERT INTO backends (name, type, endpoint, is_default, builtin, created_at,"
            " updated_at) VALUES (?, 'ollama', ?, ?, 1, ?, ?) ON CONFLICT DO NOTHING RETURNING id",
            (BUILTIN_NAME + ("-builtin" if taken else ""), endpoint, is_default, now, now),
        ).fetchone()
        if inserted is None:
            inserted = db.execute("SELECT id FROM backends WHERE builtin = 1").fetchone()
        if inserted is None:
            raise RuntimeError(f"a backend is already named {BUILTIN_NAME}-builtin")
        backend_id = inserted[0]
    else:
        backend_id = row["id"]
        db.execute(
            "UPDATE backends SET endpoint = ?, updated_at = ? WHERE id = ? AND endpoint != ?",
            (endpoint, now, backend_id, endpoint),
        )
    record = get_backend(db, sealer, backend_id)
    assert record is not None
    return record


def _origin(endpoint: str | None) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of an endpoint (None: the API's default one)."""
    if endpoint is None:
        return None
    parts = urlsplit(endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, (parts.hostname or "").lower(), port


def insert_backend(
    db: sqlite3.Connection, sealer: Sealer, checked: dict[str, Any], owner: str | None
) -> BackendRecord:
    """Add a backend from :func:`validate`'d fields, owned by ``owner`` (None: shared).

    Raises:
        FieldError: the name is taken.
    """
    if checked.get("is_default") and owner is not None:
        raise FieldError("is_default", "only a shared backend is the shared default")
    _check_name_free(db, checked["name"], owner)
    now = time.time()
    try:
        cursor = db.execute(
            "INSERT INTO backends (name, type, endpoint, api_key, owner, is_active,"
            " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (
                checked["name"],
                checked["type"],
                checked.get("endpoint"),
                sealer.seal(checked.get("api_key")),
                owner,
                checked.get("is_active", True),
                now,
                now,
            ),
        )
    except sqlite3.IntegrityError:
        raise FieldError("name", f"a backend {checked['name']!r} exists already") from None
    backend_id = cursor.fetchone()[0]
    if checked.get("is_default"):
        _make_default(db, backend_id)
    record = get_backend(db, sealer, backend_id)
    assert record is not None
    return record


def update_backend(
    db: sqlite3.Connection, sealer: Sealer, backend_id: int, checked: dict[str, Any]
) -> BackendRecord | None:
    """Change a backend's fields (None: no such backend).

    The builtin backend's name, type and endpoint come from foreman's settings. A new
    scheme, host or port clears the stored API key unless ``checked`` gives one: a key
    is never sent to a server it was not given for.

    Raises:
        FieldError: a change the builtin backend cannot take, or a name taken.
    """
    record = get_backend(db, sealer, backend_id)
    if record is None:
        return None
    if record.builtin:
        for fixed in ("name", "type", "endpoint", "api_key", "owner"):
            if fixed in checked:
                raise FieldError(fixed, "set by FOREMAN_OLLAMA_URL/TOKEN for this backend")
        if checked.get("is_active") is False:
            raise FieldError("is_active", "the backend of FOREMAN_OLLAMA_URL is always active")
    if (
        "endpoint" in checked
        and "api_key" not in checked
        and _origin(checked["endpoint"]) != _origin(record.endpoint)
    ):
        checked = {**checked, "api_key": None}  # a key never follows a new endpoint
    complete(
        checked.get("type", record.type),
        checked.get("endpoint", record.endpoint),
        checked.get("api_key", record.api_key),
    )
    owner = checked.get("owner", record.owner)
    if owner is not None and checked.get("is_default", record.is_default):
        raise FieldError("is_default", "only a shared backend is the shared default")
    if "name" in checked or "owner" in checked:
        _check_name_free(db, checked.get("name", record.name), owner, backend_id)
    columns = {k: v for k, v in checked.items() if k not in ("is_default", "api_key")}
    if "api_key" in checked:
        columns["api_key"] = sealer.seal(checked["api_key"])
    if columns:
        assignments = ", ".join(f"{column} = ?" for column in columns)
        try:
            db.execute(
                f"UPDATE backends SET {assignments}, updated_at = ? WHERE id = ?",
                (*columns.values(), time.time(), backend_id),
            )
        except sqlite3.IntegrityError:
            raise FieldError("name", f"a backend {checked['name']!r} exists already") from None
    if checked.get("is_default"):
        _make_default(db, backend_id)
    elif checked.get("is_default") is False:
        db.execute("UPDATE backends SET is_default = 0 WHERE id = ?", (backend_id,))
    return get_backend(db, sealer, backend_id)


def _check_name_free(
    db: sqlite3.Connection, name: str, owner: str | None, backend_id: int | None = None
) -> None:
    """A backend's name must be free where it will be seen: a user's among the shared
    backends and their own (another user's private names are theirs, and never shown);
    a shared one's among all, since every user sees it.

    Raises:
        FieldError: the name is taken (naming only a backend the owner can see).
    """
    scope = "" if owner is None else " AND (owner IS NULL OR owner = ?)"
    args = (name, -1 if backend_id is None else backend_id) + (() if owner is None else (owner,))
    if db.execute(f"SELECT 1 FROM backends WHERE name = ? AND id != ?{scope}", args).fetchone():
        raise FieldError("name", f"a backend {name!r} exists already")


def _make_default(db: sqlite3.Connection, backend_id: int) -> None:
    db.execute("UPDATE backends SET is_default = CASE WHEN id = ? THEN 1 ELSE 0 END", (backend_id,))


def delete_backend(db: sqlite3.Connection, backend_id: int) -> bool:
    """Delete a backend and its models; False if there is none.

    Raises:
        FieldError: it is the builtin backend (remove FOREMAN_OLLAMA_URL instead).
    """
    row = db.execute("SELECT builtin FROM backends WHERE id = ?", (backend_id,)).fetchone()
    if row is None:
        return False
    if row["builtin"]:
        raise FieldError("id", "the backend of FOREMAN_OLLAMA_URL cannot be deleted")
    db.execute("DELETE FROM backends WHERE id = ?", (backend_id,))
    return True
