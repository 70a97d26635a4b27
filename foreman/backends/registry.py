"""The backend registry in the store: the backends' rows, their checks and their API keys.

Their discovered models and users' preferences are in :mod:`foreman.backends.choices`.

Every function here takes the store's connection first and runs in the store's thread
(``await store.call(fn, ...)``). API keys are kept encrypted (:class:`Sealer`, Fernet)
and leave this module only decrypted for the backend's own client, or masked
(``…wxyz``) for everyone else.
"""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..dataplane.jsonwire import rfc3339
from .sealing import Sealer

__all__ = [
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
]

TYPES = ("ollama", "anthropic", "openai")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
ALIAS = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")
#: The name of the backend FOREMAN_OLLAMA_URL names.
BUILTIN_NAME = "ollama"


@dataclass(frozen=True)
class Limits:
    """How large what a user stores may be (``FOREMAN_MAX_*``; see :mod:`foreman.settings`).

    Lengths are in characters; a value beyond one is a :class:`FieldError` naming its field.
    """

    backends: int = 20  # backends one user owns
    aliases: int = 100  # aliases one user keeps
    name: int = 64  # a backend's name
    endpoint: int = 2048  # a backend's endpoint URL
    key: int = 1024  # a backend's API key
    alias: int = 200  # an alias, and the model it names

    @classmethod
    def of(cls, settings: Any) -> Limits:
        """The limits of foreman's :class:`~foreman.settings.Settings`."""
        return cls(
            backends=settings.max_backends_per_user,
            aliases=settings.max_aliases_per_user,
            name=settings.max_name_length,
            endpoint=settings.max_endpoint_length,
            key=settings.max_key_length,
            alias=settings.max_alias_length,
        )


DEFAULT_LIMITS = Limits()


class FieldError(ValueError):
    """A field of a request is wrong: a 422 naming ``field``."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field, self.problem = field, problem


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
        cursor = db.execute(
            "INSERT INTO backends (name, type, endpoint, is_default, builtin, created_at,"
            " updated_at) VALUES (?, 'ollama', ?, ?, 1, ?, ?) RETURNING id",
            (BUILTIN_NAME + ("-builtin" if taken else ""), endpoint, is_default, now, now),
        )
        backend_id = cursor.fetchone()[0]
    else:
        backend_id = row["id"]
        db.execute(
            "UPDATE backends SET endpoint = ?, updated_at = ? WHERE id = ? AND endpoint != ?",
            (endpoint, now, backend_id, endpoint),
        )
    record = get_backend(db, sealer, backend_id)
    assert record is not None
    return record


def validate(fields: Any, *, creating: bool, limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """The checked columns of a create (all required ones) or an update (any subset).

    Takes the request's JSON object: ``name``, ``type``, ``endpoint``, ``api_key``,
    ``is_default``, ``is_active`` and, for admins, ``owner``; lengths within ``limits``.

    Raises:
        FieldError: the first wrong field (unknown fields are wrong too).
    """
    if not isinstance(fields, dict):
        raise FieldError("body", "must be a JSON object")
    known = {"name", "type", "endpoint", "api_key", "is_default", "is_active", "owner"}
    for key in fields:
        if key not in known:
            raise FieldError(key, "unknown field")
    checked: dict[str, Any] = {}
    if "name" in fields or creating:
        name = fields.get("name")
        if not isinstance(name, str) or not NAME.fullmatch(name) or len(name) > limits.name:
            raise FieldError(
                "name", f"1 to {limits.name} of A-Z a-z 0-9 . _ -, starting with a letter or digit"
            )
        checked["name"] = name
    if "type" in fields or creating:
        if fields.get("type") not in TYPES:
            raise FieldError("type", f"one of {', '.join(TYPES)}")
        checked["type"] = fields["type"]
    if "endpoint" in fields:
        endpoint = fields["endpoint"]
        if isinstance(endpoint, str) and len(endpoint) > limits.endpoint:
            raise FieldError("endpoint", f"at most {limits.endpoint} characters")
        if endpoint is not None:
            endpoint = _endpoint(endpoint)
        checked["endpoint"] = endpoint
    if "api_key" in fields:
        api_key = fields["api_key"]
        if api_key is not None and (not isinstance(api_key, str) or not api_key.strip()):
            raise FieldError("api_key", "a non-empty string, or null for none")
        if api_key is not None and len(api_key) > limits.key:
            raise FieldError("api_key", f"at most {limits.key} characters")
        checked["api_key"] = api_key.strip() if api_key else None
    for flag in ("is_default", "is_active"):
        if flag in fields:
            if not isinstance(fields[flag], bool):
                raise FieldError(flag, "true or false")
            checked[flag] = fields[flag]
    if "owner" in fields:
        owner = fields["owner"]
        if owner is not None and not isinstance(owner, str):
            raise FieldError("owner", "a user's name, or null for shared")
        checked["owner"] = owner
    if creating:
        _complete(checked["type"], checked.get("endpoint"), checked.get("api_key"))
    return checked


def _endpoint(value: Any) -> str:
    """A backend's base URL, checked: http(s), a host, a numeric port, no credentials."""
    try:
        parts = urlsplit(value) if isinstance(value, str) else None
        port_ok = parts is not None and (parts.port or 0) >= 0  # .port raises on "h:abc"
    except ValueError:
        parts, port_ok = None, False
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise FieldError("endpoint", "an http:// or https:// URL")
    if not port_ok:
        raise FieldError("endpoint", "the port must be a number")
    if parts.username is not None or parts.password is not None:
        raise FieldError("endpoint", "no credentials in the URL: use api_key")
    return value.rstrip("/")


def _origin(endpoint: str | None) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of an endpoint (None: the API's default one)."""
    if endpoint is None:
        return None
    parts = urlsplit(endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, (parts.hostname or "").lower(), port


def _complete(kind: str, endpoint: str | None, api_key: str | None) -> None:
    """What a backend of ``kind`` cannot run without."""
    if kind == "ollama" and not endpoint:
        raise FieldError("endpoint", "required for an ollama backend")
    if kind == "anthropic" and not api_key:
        raise FieldError("api_key", "required for an anthropic backend")


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
    _complete(
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
