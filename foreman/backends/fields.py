"""What a backend's fields may be: names, types, endpoints, keys, and the limits on what
one user stores (:class:`Limits`). A wrong field is a :class:`FieldError` (a 422 naming it).

Pure checks, no store: :mod:`.registry` stores what passes them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "ALIAS",
    "DEFAULT_LIMITS",
    "NAME",
    "TYPES",
    "FieldError",
    "Limits",
    "complete",
    "validate",
]

TYPES = ("ollama", "anthropic", "openai")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
ALIAS = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")


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
        complete(checked["type"], checked.get("endpoint"), checked.get("api_key"))
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


def complete(kind: str, endpoint: str | None, api_key: str | None) -> None:
    """What a backend of ``kind`` cannot run without."""
    if kind == "ollama" and not endpoint:
        raise FieldError("endpoint", "required for an ollama backend")
    if kind == "anthropic" and not api_key:
        raise FieldError("api_key", "required for an anthropic backend")
