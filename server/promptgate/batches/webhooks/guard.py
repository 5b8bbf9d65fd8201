"""The SSRF guard: callback URLs that would reach what the caller could not.

A callback URL is chosen by the caller but fetched from inside our network, so
``CallbackGuard`` refuses URLs that would reach what the caller could not:
cloud metadata services (169.254.169.254, fd00:ec2::254,
``metadata.google.internal``, ...), link-local, unspecified, multicast and
reserved addresses, the server's own gRPC port and, unless
``allow_private_networks``, loopback, private (RFC 1918, fc00::/7) and shared
(100.64.0.0/10) addresses. ``check_url`` checks the URL's shape (cheap, for
request validation); ``check_destination`` resolves the host and checks every
address it resolves to. IPv4 addresses embedded in IPv6 ones
(``::ffff:a.b.c.d``, 6to4, NAT64, Teredo) are checked as IPv4. Refusals are
``InvalidArgument`` on the ``callback_url`` field, reason
``INVALID_CALLBACK_URL``.

DNS rebinding. A check that resolves the name, followed by a connection that
resolves it again, can be beaten by a DNS server that answers differently each
time. ``check_destination`` therefore returns the addresses it checked, and
the sender (``delivery``) connects to them for ``http://`` callbacks; for
``https://`` it keeps the name so that TLS verifies the certificate against it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

import httpx

from promptgate.errors import InvalidArgument

__all__ = [
    "MAX_URL_LENGTH",
    "CallbackGuard",
    "IPAddress",
    "Resolver",
    "UnresolvableCallbackHost",
]

MAX_URL_LENGTH: Final = 2048

FIELD: Final = "callback_url"
REASON: Final = "INVALID_CALLBACK_URL"

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver: TypeAlias = Callable[[str, int], Awaitable[Sequence[str]]]
"""``resolver(host, port)``: the addresses ``host`` resolves to, as text.

Raises ``OSError`` (``socket.gaierror``) when the name does not resolve."""

_SCHEMES: Final = {"http": 80, "https": 443}

# Names of cloud metadata services, refused whatever they resolve to.
_METADATA_HOSTS: Final = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
    }
)
# Metadata addresses outside the ranges refused anyway (link-local), refused
# even when private networks are allowed.
_METADATA_ADDRESSES: Final = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, ... (link-local anyway)
        ipaddress.ip_address("fd00:ec2::254"),  # AWS IMDS over IPv6
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
        ipaddress.ip_address("192.0.0.192"),  # Oracle Cloud
    }
)
_THIS_NETWORK: Final = ipaddress.ip_network("0.0.0.0/8")
_SHARED_ADDRESS_SPACE: Final = ipaddress.ip_network("100.64.0.0/10")  # RFC 6598, CGNAT
_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")

# Characters that have no business in a callback URL: whitespace, controls and
# the backslash (which URL parsers disagree about).
_BAD_URL_CHARS: Final = re.compile(r"[\x00-\x20\x7f\\]")


class UnresolvableCallbackHost(InvalidArgument):
    """The callback URL's host did not resolve.

    An ``InvalidArgument`` like every refusal, but deliveries retry it: a DNS
    failure may be temporary.
    """


def _refused(description: str) -> InvalidArgument:
    return InvalidArgument.field(FIELD, description, reason=REASON)


@dataclass(frozen=True, slots=True)
class _Target:
    url: httpx.URL
    host: str
    """The host as it is resolved: IDNA-encoded, IPv6 without brackets."""
    port: int
    """The port connected to (the scheme's default when the URL has none)."""


async def _getaddrinfo(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [str(info[4][0]) for info in infos]


def _parse_address(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(urllib.parse.unquote(text))
    except ValueError:
        return None


def _checked_forms(address: IPAddress) -> list[IPAddress]:
    """The addresses that decide whether ``address`` is allowed.

    IPv4 addresses inside IPv6 ones are checked as IPv4: ``::ffff:a.b.c.d``
    (mapped) and ``64:ff9b::a.b.c.d`` (NAT64) by the IPv4 address alone (their
    IPv6 prefixes are "reserved" only as a notation); 6to4 and Teredo by both
    the IPv6 address and the IPv4 addresses they lead to.
    """
    if isinstance(address, ipaddress.IPv4Address):
        return [address]
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address in _NAT64:
        return [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]
    forms: list[IPAddress] = [address]
    if address.sixtofour is not None:
        forms.append(address.sixtofour)
    if address.teredo is not None:
        forms.extend(address.teredo)
    return forms


def _unwrap(address: IPAddress) -> IPAddress:
    """``::ffff:a.b.c.d`` as ``a.b.c.d``; any other address as itself."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _always_refused(address: IPAddress) -> str | None:
    """Why ``address`` is refused whatever the settings; None if it is not."""
    if address in _METADATA_ADDRESSES:
        return "a cloud metadata address"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if isinstance(address, ipaddress.IPv4Address) and address in _THIS_NETWORK:
        return "a 'this network' address (0.0.0.0/8)"
    if address.is_reserved and not address.is_loopback:  # ::1 lies in IPv6's reserved ::/8
        return "a reserved address"
    return None


def _private(address: IPAddress) -> str | None:
    """Why ``address`` is refused unless private networks are allowed; None if public."""
    if address.is_loopback:
        return "a loopback address"
    if isinstance(address, ipaddress.IPv4Address) and address in _SHARED_ADDRESS_SPACE:
        return "a shared (carrier-grade NAT) address"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "a site-local address"
    if address.is_private:
        return "a private address"
    if not address.is_global:
        return "not a globally routable address"
    return None


def _is_local_address(address: IPAddress) -> bool:
    """Whether ``address`` belongs to this host (it can be bound to)."""
    if address.is_loopback or address.is_unspecified:
        return True
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((str(address), 0))
    except OSError:
        return False
    return True


class CallbackGuard:
    """Refuses callback URLs that would let a caller reach what it should not.

    ``allow_private_networks`` lets callbacks reach loopback, private, shared
    and other non-global addresses (for deployments whose receivers live on
    the internal network); metadata, link-local, unspecified, multicast and
    reserved addresses stay refused. ``listen_addresses`` are the server's own
    listening ``(host, port)`` pairs (the gRPC port, ...), refused even when
    private networks are allowed; a wildcard host (``0.0.0.0``, ``::`` or
    ``""``) stands for every address of this machine. ``resolver`` replaces
    DNS (tests); by default the event loop's ``getaddrinfo`` resolves, without
    blocking the loop.
    """

    def __init__(
        self,
        *,
        allow_private_networks: bool = False,
        listen_addresses: Iterable[tuple[str, int]] = (),
        resolver: Resolver | None = None,
    ) -> None:
        self.allow_private_networks = allow_private_networks
        self._resolve: Resolver = resolver or _getaddrinfo
        self._wildcard_ports: set[int] = set()
        self._listen: set[tuple[IPAddress, int]] = set()
        self._listen_names: set[tuple[str, int]] = set()
        for host, port in listen_addresses:
            bare = host.strip().strip("[]")
            address = _parse_address(bare)
            if bare in ("", "*") or (address is not None and address.is_unspecified):
                self._wildcard_ports.add(port)
            elif address is not None:
                self._listen.add((_unwrap(address), port))
            else:
                self._listen_names.add((bare.lower().rstrip("."), port))

    # ------------------------------------------------------------------ shape

    def check_url(self, url: str) -> None:
        """Refuse ``url`` unless it is a plausible callback URL (no DNS).

        http or https, a host, no user info, a port in 1..65535, at most
        2048 characters, no whitespace, control characters or backslashes;
        metadata host names are refused here already.
        """
        self._target(url)

    def _target(self, url: str) -> _Target:
        if not url:
            raise _refused("must not be empty")
        if len(url) > MAX_URL_LENGTH:
            raise _refused(f"must be at most {MAX_URL_LENGTH} characters")
        if _BAD_URL_CHARS.search(url):
            raise _refused("must not contain whitespace, control characters or backslashes")
        try:
            split = urllib.parse.urlsplit(url)
            parsed = httpx.URL(url)
        except (ValueError, httpx.InvalidURL) as exc:
            raise _refused(f"is not a valid URL ({exc})") from exc
        scheme = parsed.scheme.lower()
        if scheme not in _SCHEMES or split.scheme.lower() != scheme:
            raise _refused("must be an http:// or https:// URL")
        if "@" in split.netloc or parsed.userinfo:
            raise _refused("must not contain user info (user:password@)")
        host = parsed.raw_host.decode("ascii")
        if not host:
            raise _refused("must name a host")
        port = parsed.port if parsed.port is not None else _SCHEMES[scheme]
        if not 1 <= port <= 65535:
            raise _refused("port must be between 1 and 65535")
        if host.lower().rstrip(".") in _METADATA_HOSTS:
            raise _refused(f"host {host!r} is a cloud metadata service")
        return _Target(url=parsed, host=host, port=port)

    # ------------------------------------------------------------------ destination

    async def check_destination(self, url: str) -> list[IPAddress]:
        """The addresses ``url`` leads to, once every one of them is allowed.

        Checks the shape (``check_url``), resolves the host (an IP literal is
        taken as it is) and refuses if ANY address is forbidden. Raises
        ``InvalidArgument`` (``UnresolvableCallbackHost`` when the host does
        not resolve).
        """
        target = self._target(url)
        addresses = await self._addresses(target.host, target.port)
        for address in addresses:
            await self._check_address(address, target)
        return addresses

    async def _addresses(self, host: str, port: int) -> list[IPAddress]:
        literal = _parse_address(host)
        if literal is not None:
            return [literal]
        try:
            resolved = await self._resolve(host, port)
        except (OSError, UnicodeError) as exc:
            raise UnresolvableCallbackHost.field(
                FIELD, f"host {host!r} does not resolve ({exc})", reason=REASON
            ) from exc
        addresses: list[IPAddress] = []
        for text in resolved:
            address = _parse_address(text.partition("%")[0])
            if address is None:
                raise _refused(f"host {host!r} resolves to something that is not an address")
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise UnresolvableCallbackHost.field(
                FIELD, f"host {host!r} resolves to no address", reason=REASON
            )
        return addresses

    async def _check_address(self, address: IPAddress, target: _Target) -> None:
        # "127.0.0.1 is ..." for a literal; "host 'x' resolves to 127.0.0.1, ..." for a name.
        named = _parse_address(target.host) is None
        prefix = f"host {target.host!r} resolves to " if named else ""
        for candidate in _checked_forms(address):
            why = _always_refused(candidate)
            if why is None and not self.allow_private_networks:
                why = _private(candidate)
            if why is not None:
                if candidate != address:
                    why = f"{why} ({candidate}, embedded in {address})"
                raise _refused(f"{prefix}{address}{', ' if named else ' is '}{why}")
        if await self._is_own_listener(_unwrap(address), target.port):
            raise _refused(
                f"{prefix}{address}{', ' if named else ' '}port {target.port}"
                f"{', which' if named else ''} is this server's own listening address"
            )

    async def _is_own_listener(self, address: IPAddress, port: int) -> bool:
        if (address, port) in self._listen:
            return True
        if port in self._wildcard_ports and _is_local_address(address):
            return True
        for name, listen_port in self._listen_names:
            if listen_port != port:
                continue
            try:
                resolved = await self._resolve(name, port)
            except (OSError, UnicodeError):
                continue
            for text in resolved:
                own = _parse_address(text.partition("%")[0])
                if own is not None and _unwrap(own) == address:
                    return True
        return False
