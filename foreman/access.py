"""Ollama's browser protections, applied by foreman itself.

foreman never forwards a client's ``Host`` or ``Origin`` to the target (a
loopback-bound Ollama would answer 403 to every request that came through a
gateway), so it must make the same two checks Ollama makes, or any web page a
user visits could drive the target (``docs/adr/0007-browser-protections.md``):

* **Origin** (CORS): a request that carries an ``Origin`` header is refused with
  403 and an empty body unless the origin is this very host (same origin), a
  local one (``http(s)://localhost``, ``127.0.0.1`` or ``0.0.0.0``, any port),
  an app or extension scheme (``app://``, ``file://``, ``tauri://``,
  ``vscode-webview://``, ``vscode-file://``, browser extensions), or listed in
  ``FOREMAN_ORIGINS`` (``*`` wildcards, as ``OLLAMA_ORIGINS``). An allowed
  cross-origin request gets ``Access-Control-Allow-Origin``; a preflight
  ``OPTIONS`` gets 204.
* **Host** (DNS rebinding): when foreman listens on a loopback address, a
  request whose ``Host`` is not a loopback, private or unspecified IP,
  ``localhost``, this machine's name, or a name ending in ``.localhost``,
  ``.local`` or ``.internal`` is refused with 403 and an empty body.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import socket
from collections.abc import Iterable

__all__ = ["PREFLIGHT_HEADERS", "Access", "listens_on_loopback"]

_LOCAL_ORIGINS = tuple(
    f"{scheme}://{host}{port}"
    for host in ("localhost", "127.0.0.1", "0.0.0.0")
    for scheme in ("http", "https")
    for port in ("", ":*")
) + ("app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*")
_EXTENSIONS = (
    "chrome-extension://",
    "moz-extension://",
    "safari-extension://",
    "safari-web-extension://",
    "ms-browser-extension://",
)
_HOST_SUFFIXES = (".localhost", ".local", ".internal")
#: Different Host values whose verdict is kept (then the cache starts over).
_HOSTS_KEPT = 256
#: Go's ``netip.Addr.IsPrivate``: RFC 1918 and RFC 4193 (unique local) networks.
_PRIVATE = tuple(
    ipaddress.ip_network(net)
    for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)

#: The answer to an allowed CORS preflight (besides ``Access-Control-Allow-Origin``).
PREFLIGHT_HEADERS = [
    (b"access-control-allow-methods", b"GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS"),
    (
        b"access-control-allow-headers",
        b"Authorization,Content-Type,User-Agent,Accept,X-Requested-With",
    ),
    (b"access-control-max-age", b"43200"),
]


def _host_part(host: str) -> str:
    """The host of a ``Host`` header value, without its port and IPv6 brackets."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_local_ip(text: str) -> bool | None:
    """True/False for a local/non-local IP address, None when ``text`` is not an IP."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    private = any(address in net for net in _PRIVATE if net.version == address.version)
    return address.is_loopback or address.is_unspecified or private


def listens_on_loopback(listen: str) -> bool:
    """Whether ``HOST:PORT`` binds a loopback address (``localhost`` counts)."""
    host = _host_part(listen).lower()
    return host == "localhost" or bool(
        _is_local_ip(host) and ipaddress.ip_address(host).is_loopback
    )


class Access:
    """The Origin and Host checks for one foreman.

    Args:
        origins: extra allowed origins (``FOREMAN_ORIGINS``), ``*`` wildcards.
        check_host: apply the Host check (foreman listens on loopback).
    """

    def __init__(self, origins: Iterable[str], *, check_host: bool) -> None:
        self._origins = tuple(o.lower() for o in (*_LOCAL_ORIGINS, *origins))
        self._check_host = check_host
        self._hostname = socket.gethostname().lower()
        self._hosts: dict[str | None, bool] = {}

    def host_allowed(self, host: str | None) -> bool:
        """Whether a request with this ``Host`` header may be served (answers are kept:
        a client sends the same ``Host`` on every request)."""
        if not self._check_host:
            return True
        allowed = self._hosts.get(host)
        if allowed is None:
            if len(self._hosts) >= _HOSTS_KEPT:
                self._hosts.clear()  # many different Hosts: a scan, not clients; start over
            allowed = self._hosts[host] = self._host_allowed(host)
        return allowed

    def _host_allowed(self, host: str | None) -> bool:
        name = _host_part(host or "").lower()
        local = _is_local_ip(name)
        if local is not None:
            return local
        return name in ("", "localhost", self._hostname) or name.endswith(_HOST_SUFFIXES)

    def origin_allowed(self, origin: str, host: str | None) -> bool:
        """Whether a request with this ``Origin`` header may be served."""
        if self.same_origin(origin, host):
            return True
        origin = origin.lower()
        return origin.startswith(_EXTENSIONS) or any(
            fnmatch.fnmatchcase(origin, pattern) for pattern in self._origins
        )

    @staticmethod
    def same_origin(origin: str, host: str | None) -> bool:
        """Not a cross-origin request at all: the page comes from foreman itself."""
        return host is not None and origin in (f"http://{host}", f"https://{host}")
