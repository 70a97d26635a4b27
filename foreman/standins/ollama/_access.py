"""Who may talk to a loopback-bound Ollama: its Host check and CORS origin list.

Mirrors ``allowedHostsMiddleware`` and the gin-contrib/cors setup in Ollama's
``server/routes.go`` with the default ``OLLAMA_ORIGINS``: a
request whose ``Host`` is not local, or whose ``Origin`` is not allowed, gets
**403 with an empty body**. The stand-in always behaves as if bound to loopback.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Final

__all__ = [
    "CORS_HEADERS",
    "host_allowed",
    "is_host_name_allowed",
    "origin_allowed",
    "same_origin",
]

_PRIVATE: Final = tuple(
    ipaddress.ip_network(net)
    for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)
_ORIGINS: Final = tuple(
    pattern
    for host in ("localhost", "127.0.0.1", "0.0.0.0")
    for pattern in (f"http://{host}", f"https://{host}", f"http://{host}:*", f"https://{host}:*")
) + ("app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*")
_EXTENSION_SCHEMES: Final = (
    "chrome-extension://",
    "safari-extension://",
    "moz-extension://",
    "ms-browser-extension://",
)
CORS_HEADERS: Final = {
    "access-control-allow-methods": "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS",
    "access-control-allow-headers": (
        "Authorization,Content-Type,User-Agent,Accept,X-Requested-With"
    ),
    "access-control-max-age": "43200",
}
"""Headers of a CORS preflight answer (204)."""


def _split_host_port(host: str) -> str:
    """Go's ``net.SplitHostPort`` host part, or the whole string when it fails."""
    if host.startswith("["):
        end = host.find("]")
        if end != -1 and host[end + 1 : end + 2] == ":" and host.count("]") == 1:
            return host[1:end]
        return host
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


def is_host_name_allowed(host: str) -> bool:
    """Ollama's ``allowedHost``: localhost, the machine's name, ``*.localhost/.local/.internal``."""
    host = host.lower()
    if host in ("", "localhost", socket.gethostname().lower()):
        return True
    return host.endswith((".localhost", ".local", ".internal"))


def host_allowed(host_header: str | None) -> tuple[bool, bool]:
    """Check a ``Host`` header as loopback-bound Ollama does.

    Returns:
        ``(allowed, by_name)``: ``by_name`` is True when a host *name* (not an IP)
        passed; Ollama then answers ``OPTIONS`` itself with 204.
    """
    host = _split_host_port(host_header or "")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        allowed = is_host_name_allowed(host)
        return allowed, allowed
    local = (
        address.is_loopback
        or address.is_unspecified
        or any(address in net for net in _PRIVATE if net.version == address.version)
    )
    return local, False


def same_origin(origin: str, host_header: str | None) -> bool:
    """gin-contrib/cors's "not a CORS request": the origin is this very host."""
    host = host_header or ""
    return origin in (f"http://{host}", f"https://{host}")


def origin_allowed(origin: str, host_header: str | None) -> bool:
    """True when gin-contrib/cors would let ``origin`` through (same origin counts)."""
    if same_origin(origin, host_header):
        return True
    origin = origin.lower()
    if origin.startswith(_EXTENSION_SCHEMES):
        return True
    for pattern in _ORIGINS:
        if pattern.endswith("*"):
            if origin.startswith(pattern[:-1]):
                return True
        elif origin == pattern:
            return True
    return False
