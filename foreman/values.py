"""The checks of settings' values, and :class:`Option`, the row of the settings' table.

Each parser turns the string of an environment variable or flag into its value, or
raises ``ValueError`` saying what was expected; :data:`foreman.options.OPTIONS` names
one for every setting, and ``--help`` shows its :attr:`Option.metavar`.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx2

from .dataplane.names import normalize

__all__ = [
    "Option",
    "count",
    "database_url",
    "duration",
    "file",
    "flag",
    "level",
    "listen",
    "log_format",
    "management",
    "model",
    "networks",
    "origins",
    "path",
    "seconds",
    "secret",
    "size",
    "url",
]


def url(value: str) -> str:
    try:
        parsed = httpx2.URL(value)
    except httpx2.InvalidURL as exc:
        raise ValueError(str(exc)) from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError("expected an http:// or https:// URL with a host")
    return str(parsed).rstrip("/")


def seconds(value: str) -> float:
    try:
        parsed = float(value)
    except ValueError:
        raise ValueError("expected a number of seconds") from None
    if not parsed > 0 or parsed == float("inf"):
        raise ValueError("expected a positive, finite number of seconds")
    return parsed


def count(value: str) -> int:
    try:
        parsed = int(value)
    except ValueError:
        raise ValueError("expected a whole number") from None
    if parsed < 0:
        raise ValueError("expected zero or more")
    return parsed


def listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080")
    return value


def model(value: str) -> str:
    if normalize(value) is None:
        raise ValueError("not a valid Ollama model name")
    return value


def secret(value: str) -> str:
    if not value.strip() or any(c.isspace() for c in value):
        raise ValueError("a bearer token must be non-empty and contain no spaces")
    return value


_SIZE = re.compile(r"\s*(\d+)\s*([kmg]i?b?|b)?\s*", re.IGNORECASE)


def database_url(value: str) -> str:
    scheme, sep, rest = value.partition("://")
    if scheme not in ("postgresql", "postgres") or not sep or not rest.strip("/"):
        raise ValueError("expected a postgresql://USER:PASSWORD@HOST:PORT/DATABASE URL")
    return value


def size(value: str) -> int:
    """Bytes, with an optional binary unit: ``104857600``, ``100MiB``, ``100M``, ``1GiB``."""
    match = _SIZE.fullmatch(value)
    if match is None or int(match[1]) == 0:
        raise ValueError("expected a positive size in bytes, e.g. 104857600, 100MiB or 1GiB")
    unit = (match[2] or "b")[0].lower()
    return int(match[1]) << {"b": 0, "k": 10, "m": 20, "g": 30}[unit]


def origins(value: str) -> tuple[str, ...]:
    parsed = tuple(o.strip() for o in value.split(",") if o.strip())
    for origin in parsed:
        if "://" not in origin and origin != "*":
            raise ValueError(f"{origin!r} is not an origin (scheme://host[:port], * wildcards)")
    return parsed


def log_format(value: str) -> str:
    if value.lower() not in ("text", "json"):
        raise ValueError("expected text or json")
    return value.lower()


def flag(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected 1 or 0 (true/false, yes/no, on/off)")


def path(value: str) -> str:
    if not value.strip():
        raise ValueError("expected a path")
    return os.path.abspath(os.path.expanduser(value))


def file(value: str) -> str:
    found = path(value)
    if not os.path.isfile(found):
        raise ValueError("no such file")
    return found


_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", re.IGNORECASE)


def duration(value: str) -> float:
    """Seconds, or a number with a unit: ``3600``, ``90s``, ``30m``, ``12h``, ``7d``."""
    match = _DURATION.fullmatch(value)
    if match is None or float(match[1]) <= 0:
        raise ValueError("expected a positive duration: seconds, or 90s, 30m, 12h, 7d")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2].lower()]


def management(value: str) -> str:
    if value.lower() not in ("admins", "users"):
        raise ValueError("expected admins or users")
    return value.lower()


_HOST = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*\.?", re.IGNORECASE)


def networks(value: str) -> tuple[str, ...]:
    """CIDRs (``192.168.1.0/24``, ``fd00::/8``), addresses and host names, comma-separated."""
    entries = tuple(entry.strip().lower() for entry in value.split(",") if entry.strip())
    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            if not _HOST.fullmatch(entry):
                raise ValueError(f"{entry!r} is neither a CIDR nor a host name") from None
    return entries


def level(value: str) -> str:
    parsed = value.upper()
    if parsed not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("expected debug, info, warning or error")
    return parsed


@dataclass(frozen=True)
class Option:
    """One setting: its field on :class:`Settings`, variable, flag, default and parser."""

    field: str
    env: str
    flag: str
    default: str | None
    parse: Callable[[str], Any]
    help: str
    secret: bool = False

    @property
    def metavar(self) -> str:
        """What ``--help`` shows for the value, by its parser."""
        return _METAVARS[self.parse]


_METAVARS: dict[Callable[[str], Any], str] = {
    url: "URL",
    database_url: "URL",
    secret: "TOKEN",
    model: "MODEL",
    seconds: "SECONDS",
    listen: "HOST:PORT",
    count: "N",
    level: "LEVEL",
    size: "SIZE",
    origins: "ORIGINS",
    log_format: "FORMAT",
    flag: "0|1",
    path: "DIR",
    file: "FILE",
    duration: "DURATION",
    management: "WHO",
    networks: "NETWORKS",
}
