"""The outbound address policy: where foreman connects on an ordinary user's behalf.

A user's backend (heartbeat, discovery, Test, relay) and a user's webhook make foreman
open connections to a URL the user chose. Without a wall, ``http://127.0.0.1:<port>``,
``http://169.254.169.254/`` or foreman's own port would let any user read services only
foreman's machine can reach. So, for ordinary users, every connection is checked on the
**address it is about to connect to**, after resolution (ADR 0018):

* allowed: public (globally routable) unicast addresses;
* refused: loopback, link-local, private, unspecified, multicast, reserved and shared
  (CGNAT) addresses, and foreman's own listen addresses;
* unless ``FOREMAN_USER_NETWORKS`` allows them: CIDRs (``192.168.1.0/24``) match the
  resolved address, host names (``ollama.lan``) the name in the URL. foreman's own listen
  address stays refused whatever the list says.

The check lives in an httpcore2 network backend (:class:`PolicyBackend`) under an
:class:`httpx2.AsyncHTTPTransport`: it resolves the host once, checks each address and
connects to an allowed *address*, never to the name again, so a name that resolves to a
public address for the check and to ``127.0.0.1`` a moment later (DNS rebinding) cannot
slip past. A refusal is :class:`httpx2.ConnectError` with the fixed text
:data:`REFUSED` ("refused: private address"). Admin-owned (and shared) backends are not
policed: an admin may point foreman anywhere.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpcore2
import httpx2
import trio

from .dataplane.errors import (
    TargetBroken,
    TargetBusy,
    TargetError,
    TargetStatus,
    TargetTimeout,
    TargetUnauthorized,
    TargetUnreachable,
)

__all__ = [
    "REFUSED",
    "AddressPolicy",
    "AddressRefused",
    "PolicyBackend",
    "Resolver",
    "policed_transport",
    "resolve",
    "server_key",
    "short_reason",
]

#: What a refused connection says, and all it says.
REFUSED = "refused: private address"

#: ``await resolver(host, port)`` → the host's addresses, as strings, in preference order.
Resolver = Callable[[str, int], Awaitable[list[str]]]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


async def resolve(host: str, port: int) -> list[str]:
    """The addresses of ``host`` (a name or an address literal), as the system resolves them.

    Raises:
        OSError: the name cannot be resolved.
    """
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class AddressRefused(httpcore2.ConnectError):
    """The policy refused every address of the host (httpx2 turns it into its ConnectError)."""


def _address(text: str) -> Address:
    address = ipaddress.ip_address(text.split("%", 1)[0])  # an IPv6 scope id is no part of it
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    return address


def _listen_addresses(listen: str) -> tuple[int, frozenset[Address]]:
    """foreman's own port and addresses from ``FOREMAN_LISTEN`` (all of this host's
    addresses when it listens on all of them); resolved once, at start."""
    host, _, port_text = listen.rpartition(":")
    port = int(port_text) if port_text.isdigit() else 0
    names, own = [host.strip("[]")], set()
    while names:
        try:
            infos = socket.getaddrinfo(names.pop(), port, type=socket.SOCK_STREAM)
        except OSError:
            continue
        for info in infos:
            address = _address(str(info[4][0]))
            if address.is_unspecified and not own:
                names.append(socket.gethostname())
            own.add(address)
    return port, frozenset(own)


@dataclass(frozen=True)
class AddressPolicy:
    """Which addresses an ordinary user's connections may reach.

    Args:
        networks: CIDRs allowed besides public addresses (``FOREMAN_USER_NETWORKS``).
        hosts: host names allowed whatever they resolve to (lower-case, no final dot).
        own_port, own: foreman's own listen port and addresses: always refused, and so
            are loopback and unspecified addresses on that port.
    """

    networks: tuple[Network, ...] = ()
    hosts: frozenset[str] = frozenset()
    own_port: int = 0
    own: frozenset[Address] = field(default_factory=frozenset)

    @classmethod
    def of(cls, settings: Any) -> AddressPolicy:
        """The policy of foreman's settings (``user_networks``, ``listen``)."""
        networks, hosts = [], set()
        for entry in settings.user_networks:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry.lower().rstrip("."))
        return cls(tuple(networks), frozenset(hosts), *_listen_addresses(settings.listen))

    def host_allowed(self, host: str) -> bool:
        """Whether ``host`` (as the URL names it) is allowed by name."""
        return host.lower().rstrip(".") in self.hosts

    def allows(self, text: str, port: int) -> bool:
        """Whether a connection to address ``text``, ``port`` is allowed."""
        try:
            address = _address(text)
        except ValueError:
            return False
        if port == self.own_port and (
            address in self.own or address.is_loopback or address.is_unspecified
        ):
            return False  # foreman itself
        if any(address in network for network in self.networks):
            return True
        return address.is_global and not address.is_multicast


class PolicyBackend(httpcore2.AsyncNetworkBackend):
    """An httpcore2 network backend that connects only where ``policy`` allows.

    Args:
        policy: the rules.
        resolver: resolves host names (tests inject one).
        inner: the network backend that really connects (default: trio's).
    """

    def __init__(
        self,
        policy: AddressPolicy,
        *,
        resolver: Resolver = resolve,
        inner: httpcore2.AsyncNetworkBackend | None = None,
    ) -> None:
        self.policy = policy
        self.resolver = resolver
        self.inner = inner or httpcore2.TrioBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore2's signature)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        """Resolve ``host``, keep the allowed addresses and connect to the first that
        answers (to the address itself: the name is not resolved again).

        Raises:
            AddressRefused: no address of ``host`` is allowed.
            httpcore2.ConnectError, httpcore2.ConnectTimeout: as connecting does.
        """
        options = {"timeout": timeout, "local_address": local_address}
        options["socket_options"] = socket_options
        if self.policy.host_allowed(host):
            return await self.inner.connect_tcp(host, port, **options)
        with trio.move_on_after(timeout if timeout is not None else float("inf")) as scope:
            try:
                addresses = await self.resolver(host, port)
            except OSError as exc:
                raise httpcore2.ConnectError(f"cannot resolve {host!r}") from exc
        if scope.cancelled_caught:
            raise httpcore2.ConnectTimeout(f"cannot resolve {host!r} in time")
        allowed = [address for address in addresses if self.policy.allows(address, port)]
        if not allowed:
            raise AddressRefused(REFUSED)
        for address in allowed[:-1]:
            try:
                return await self.inner.connect_tcp(address, port, **options)
            except httpcore2.ConnectError:
                continue  # the next address, as a resolver's client does
        return await self.inner.connect_tcp(allowed[-1], port, **options)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore2's signature)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        raise AddressRefused(REFUSED)  # a local socket is never a user's to reach

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def policed_transport(
    network: httpcore2.AsyncNetworkBackend, **options: Any
) -> httpx2.AsyncHTTPTransport:
    """httpx2's own :class:`httpx2.AsyncHTTPTransport` whose connection pool connects
    through ``network`` (a :class:`PolicyBackend`; tests pass others) instead of trio's
    sockets. The one place foreman hands httpx2 a network backend: its transport takes
    none, so it goes to the pool it made (httpcore2's ``AsyncConnectionPool``, before any
    connection exists).

    Proxy variables from the environment are always ignored (a proxy would connect for
    foreman, past the policy).

    Args:
        network: httpcore2's ``AsyncNetworkBackend`` that opens every connection.
        options: more :class:`httpx2.AsyncHTTPTransport` arguments (``limits``,
            ``socket_options``, ``verify``, ...); httpx2's defaults otherwise (100
            connections, 20 kept alive for 5 s).
    """
    transport = httpx2.AsyncHTTPTransport(**{**options, "trust_env": False})
    transport._pool._network_backend = network  # type: ignore[attr-defined]
    return transport


def short_reason(exc: TargetError) -> str:
    """A short, fixed description of a failed check ("refused: private address",
    "HTTP 500", "unreachable"): what Test and discovery show, never a foreign body."""
    if isinstance(exc, TargetUnreachable):
        return REFUSED if exc.detail == REFUSED else "unreachable"
    if isinstance(exc, TargetUnauthorized):
        return "refused foreman's API key"
    if isinstance(exc, TargetStatus | TargetBroken) and exc.status not in (0, 200):
        return f"HTTP {exc.status}"
    if isinstance(exc, TargetStatus):
        return "an unreadable answer"  # a 200 that is not what was asked for
    if isinstance(exc, TargetTimeout):
        return "timed out"
    if isinstance(exc, TargetBusy):
        return "busy"
    if isinstance(exc, TargetBroken):
        return "a broken connection or an unreadable answer"
    return "failed"


#: This host's own addresses (looked up once, by the first :func:`server_key`).
_LOCAL: set[Address] = set()


async def _this_host() -> set[Address]:
    if not _LOCAL:
        try:
            _LOCAL.update(_address(text) for text in await resolve(socket.gethostname(), 0))
        except (OSError, ValueError):
            pass
        _LOCAL.add(ipaddress.ip_address("127.0.0.1"))  # looked up: never again
    return _LOCAL


async def server_key(endpoint: str, resolver: Resolver = resolve) -> str:
    """The machine behind an HTTP(S) ``endpoint``, as ``address:port``: ``localhost``,
    ``127.0.0.1``, ``[::1]``, ``0.0.0.0`` and this host's names all give ``local:PORT``;
    another host its lowest resolved address. A name that cannot be resolved is its own
    key (lower-cased): one gate per spelling then, until it resolves."""
    url = httpx2.URL(endpoint)
    host = url.host.lower()
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        addresses = [_address(text) for text in await resolver(host, port)]
    except (OSError, ValueError):
        addresses = []
    if not addresses:
        return f"{host}:{port}"
    this_host = await _this_host()
    if any(a.is_loopback or a.is_unspecified or a in this_host for a in addresses):
        return f"local:{port}"
    return f"{min(addresses, key=lambda a: (a.version, int(a)))}:{port}"
