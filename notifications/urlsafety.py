"""Webhook URLs that cannot be turned against us (docs/design.md#notifications, URL safety).

An endpoint must be `https` and every address its host resolves to public: no loopback,
private, link-local, shared, reserved or multicast address, so that registering an endpoint
cannot make the worker call our own network (SSRF). The URL is checked when registered, and
again at each delivery on the address the worker actually connects to: the connection is
made to an address checked a moment before, not to whatever a second DNS lookup answers
(DNS can change between the two). `WEBHOOK_ALLOW_INSECURE=true` lifts all of it, for
development and tests.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

import requests
from django.conf import settings
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import NewConnectionError


class UnsafeURL(ValueError):
    """A webhook URL we will not call; its message says why."""


def check_url(url: str) -> None:
    """Raise `UnsafeURL` unless `url` is one the worker may call."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise UnsafeURL("Enter an http(s) URL with a host.")
    if parts.username or parts.password:
        raise UnsafeURL("A webhook URL may not carry a user name or password.")
    if settings.WEBHOOK_ALLOW_INSECURE:
        return
    if parts.scheme != "https":
        raise UnsafeURL("Webhook URLs must use https.")
    try:
        port = parts.port or 443
    except ValueError:
        raise UnsafeURL("The URL's port is not a number from 0 to 65535.") from None
    public_addresses(parts.hostname, port)


def public_addresses(host: str, port: int) -> list[tuple[int, tuple]]:
    """Every address `host` resolves to, as (family, sockaddr); `UnsafeURL` if it resolves to
    none, or to any that is not public (one bad answer among good ones is refused too)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise UnsafeURL(f"The host {host} does not resolve: {error}.") from None
    addresses = []
    for family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(sockaddr[0].split("%")[0])
        for inside in (*_embedded_ipv4(address), address):
            if not inside.is_global or inside.is_multicast:
                raise UnsafeURL(f"The host {host} resolves to {inside}, which is not a public address.")
        addresses.append((family, sockaddr))
    if not addresses:
        raise UnsafeURL(f"The host {host} has no address.")
    return addresses


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_ipv4(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address reaches through a translator (mapped, 6to4, Teredo,
    NAT64): each must be public too."""
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    embedded = [address.ipv4_mapped, address.sixtofour, *(address.teredo or ())]
    if address in _NAT64:
        embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return [inside for inside in embedded if inside is not None]


class _CheckedConnect:
    """Connect only to addresses checked just now (urllib3's `_new_conn`, with the check)."""

    def _new_conn(self) -> socket.socket:
        try:
            addresses = public_addresses(self._dns_host, self.port)
        except UnsafeURL as error:
            raise NewConnectionError(self, str(error)) from None
        failure: OSError | None = None
        for family, sockaddr in addresses:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                for option in self.socket_options or ():
                    sock.setsockopt(*option)
                if isinstance(self.timeout, int | float):
                    sock.settimeout(self.timeout)
                sock.connect(sockaddr)
                return sock
            except OSError as error:
                failure = error
                sock.close()
        raise NewConnectionError(self, f"Failed to connect to {self._dns_host}: {failure}")


class _CheckedHTTPConnection(_CheckedConnect, HTTPConnection):
    pass


class _CheckedHTTPSConnection(_CheckedConnect, HTTPSConnection):
    pass


class _CheckedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _CheckedHTTPConnection


class _CheckedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _CheckedHTTPSConnection


class _CheckedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _CheckedHTTPPool, "https": _CheckedHTTPSPool}


def webhook_session() -> requests.Session:
    """A session for deliveries: addresses checked at each connection (unless insecure URLs
    are allowed), no proxy from the environment (it would connect for us, unchecked)."""
    session = requests.Session()
    session.trust_env = False
    if not settings.WEBHOOK_ALLOW_INSECURE:
        adapter = _CheckedAdapter()
        session.mount("https://", adapter)
        session.mount("http://", adapter)
    return session
