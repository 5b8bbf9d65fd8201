"""Batch webhooks: signed callbacks, an SSRF guard and retrying delivery.

When a batch ends, promptgate POSTs a JSON document to the caller's
``callback_url``. Three parts:

- **Signing.** The body is compact JSON with sorted keys (``encode_body``). It
  is signed with the batch's workspace's secret (``workspace_secret``, derived
  from the server's): the ``X-Promptgate-Signature`` header is
  ``t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``. Receivers
  check it with ``verify`` (or its few lines in their language), which also
  refuses timestamps more than ``tolerance_s`` away from now, so a captured
  request cannot be replayed later. Every attempt is signed afresh.
- **The SSRF guard.** A callback URL is chosen by the caller but fetched from
  inside our network, so ``CallbackGuard`` refuses URLs that would reach what
  the caller could not: cloud metadata services (169.254.169.254,
  fd00:ec2::254, ``metadata.google.internal``, ...), link-local, unspecified,
  multicast and reserved addresses, the server's own gRPC port and, unless
  ``allow_private_networks``, loopback, private (RFC 1918, fc00::/7) and shared
  (100.64.0.0/10) addresses. ``check_url`` checks the URL's shape (cheap, for
  request validation); ``check_destination`` resolves the host and checks
  every address it resolves to. IPv4 addresses embedded in IPv6 ones
  (``::ffff:a.b.c.d``, 6to4, NAT64, Teredo) are checked as IPv4. Refusals are
  ``InvalidArgument`` on the ``callback_url`` field, reason
  ``INVALID_CALLBACK_URL``.
- **Delivery.** ``WebhookSender.deliver`` POSTs with retries: connection
  errors, timeouts, 408, 429 and 5xx are retried after ``Retry-After`` (capped)
  or an exponential backoff with full jitter; any 2xx is success; redirects and
  other 4xx are final, as is a guard refusal. Each attempt re-checks the
  destination, so a host whose DNS changed to a forbidden address since the
  batch was accepted is refused. ``deliver`` never raises (but for
  cancellation): it returns a ``DeliveryResult`` and reports every attempt to
  ``on_attempt``.

DNS rebinding. A check that resolves the name, followed by a connection that
resolves it again, can be beaten by a DNS server that answers differently
each time. For ``http://`` callbacks the sender therefore connects to the
very address the guard checked (the URL's host is replaced by that address
and the ``Host`` header keeps the name). For ``https://`` the name is kept, so
that TLS verifies the certificate against it; a rebound address would have to
present a valid certificate for the caller's host name, so the clients given
to ``WebhookSender`` must verify certificates (httpx's default).

The ``httpx.AsyncClient`` belongs to the caller, who creates and closes it.
Redirects are never followed, whatever the client's own setting.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import random
import re
import socket
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final, TypeAlias

import httpx

from promptgate.errors import InvalidArgument

__all__ = [
    "EVENT_HEADER",
    "MAX_URL_LENGTH",
    "SIGNATURE_HEADER",
    "USER_AGENT",
    "CallbackGuard",
    "DeliveryAttempt",
    "DeliveryResult",
    "IPAddress",
    "Resolver",
    "UnresolvableCallbackHost",
    "WebhookSender",
    "encode_body",
    "sign",
    "verify",
]

log = logging.getLogger(__name__)

SIGNATURE_HEADER: Final = "X-Promptgate-Signature"
EVENT_HEADER: Final = "X-Promptgate-Event"
USER_AGENT: Final = "promptgate-webhooks/1"
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

_SIGNATURE_TIMESTAMP: Final = re.compile(r"^[0-9]{1,15}$")
_SIGNATURE_HEX: Final = re.compile(r"^[0-9a-f]{64}$")

# The exponent of the backoff is capped so that base * 2**n stays a float.
_MAX_BACKOFF_EXPONENT: Final = 62


# ---------------------------------------------------------------------- signing


def encode_body(payload: dict[str, Any]) -> bytes:
    """The request body for ``payload``: compact UTF-8 JSON with sorted keys.

    Raises ``TypeError``/``ValueError`` if ``payload`` is not JSON (NaN and
    infinities included: they are not JSON).
    """
    return json.dumps(
        payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _mac(secret: str, timestamp: int, body: bytes) -> str:
    message = f"{timestamp}.".encode("ascii") + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def workspace_secret(server_secret: str, workspace: str) -> str:
    """The signing secret of one workspace's webhooks, derived from the server's.

    Each workspace verifies with its own secret (AdminService.GetWebhookSecret),
    so a receiver of one workspace cannot forge callbacks for another.
    """
    mac = hmac.new(
        server_secret.encode("utf-8"), b"promptgate-webhook/" + workspace.encode(), hashlib.sha256
    )
    return "whsec_" + mac.hexdigest()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Promptgate-Signature`` value: ``t=<timestamp>,v1=<hex HMAC-SHA256>``.

    The MAC is over ``f"{timestamp}."`` followed by the exact body bytes.
    """
    return f"t={timestamp},v1={_mac(secret, timestamp, body)}"


def verify(secret: str, header: str, body: bytes, *, now: float, tolerance_s: float = 300) -> bool:
    """Whether ``header`` is a valid signature of ``body`` made at most ``tolerance_s`` ago.

    Timestamps further than ``tolerance_s`` from ``now`` (in the past or the
    future) are refused. Several ``v1=`` entries are allowed (any one may
    match: secret rotation). A malformed header is False, never an exception.
    The MAC is compared in constant time.
    """
    timestamp: int | None = None
    candidates: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            if timestamp is not None or not _SIGNATURE_TIMESTAMP.match(value):
                return False
            timestamp = int(value)
        elif key == "v1" and _SIGNATURE_HEX.match(value):
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    if not math.isfinite(now) or abs(now - timestamp) > tolerance_s:
        return False
    expected = _mac(secret, timestamp, body).encode("ascii")
    matched = False
    for candidate in candidates:  # no early exit: every candidate costs the same
        matched |= hmac.compare_digest(expected, candidate.encode("ascii"))
    return matched


# ---------------------------------------------------------------------- SSRF guard


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


# ---------------------------------------------------------------------- delivery


@dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    """One POST of a webhook, as reported to ``on_attempt``."""

    attempt: int
    """1 for the first attempt."""
    status_code: int
    """The HTTP status answered; 0 when there was no answer."""
    error: str
    """Why the attempt failed; "" when it succeeded."""
    duration_s: float
    """From the start of the attempt (the destination check) to its end."""
    next_retry_in_s: float | None
    """The delay before the next attempt; None when there is none."""
    at: datetime
    """When the attempt started (UTC)."""

    @property
    def delivered(self) -> bool:
        """Whether this attempt delivered the webhook (a 2xx answer)."""
        return 200 <= self.status_code < 300


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """How a delivery ended."""

    delivered: bool
    attempts: int
    """How many attempts were made (0 if the payload could not be encoded)."""
    last_status: int
    """The last HTTP status answered; 0 if the last attempt had none."""
    last_error: str
    """Why the last attempt failed; "" when delivered."""


@dataclass(frozen=True, slots=True)
class _Outcome:
    status: int = 0
    error: str = ""
    retryable: bool = False
    retry_after: float | None = None


def _retry_after(value: str | None, now: float) -> float | None:
    """Seconds from ``Retry-After`` (delta-seconds or an HTTP date); None if unusable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, when.timestamp() - now)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class WebhookSender:
    """Delivers signed webhooks with retries, through a ``CallbackGuard``.

    ``client`` is shared and belongs to the caller (it must verify TLS
    certificates; see the module's notes on DNS rebinding). ``max_attempts``
    counts every POST, the first included. Between attempts the sender waits
    the answer's ``Retry-After`` (capped at ``backoff_max_s``) or, without one,
    a random delay in ``[0, min(backoff_max_s, backoff_base_s * 2**(n-1))]``
    after the n-th attempt (exponential backoff, full jitter). ``timeout_s``
    bounds each attempt as a whole (DNS, connection, request, answer headers).
    ``sleep``, ``clock`` (wall-clock Unix seconds: signature timestamps,
    ``DeliveryAttempt.at``, HTTP-date ``Retry-After``) and ``rng`` (the jitter)
    are injectable for tests.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        guard: CallbackGuard,
        *,
        max_attempts: int = 6,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 300.0,
        timeout_s: float = 10.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if backoff_base_s < 0 or backoff_max_s < 0:
            raise ValueError("backoff delays must not be negative")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self._client = client
        self._guard = guard
        self._max_attempts = max_attempts
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self._timeout_s = timeout_s
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()

    async def deliver(
        self,
        url: str,
        event: str,
        payload: dict[str, Any],
        secret: str,
        *,
        on_attempt: Callable[[DeliveryAttempt], Awaitable[None]] | None = None,
    ) -> DeliveryResult:
        """POST ``payload`` as ``event`` to ``url`` until it is delivered or given up.

        ``on_attempt`` is awaited after every attempt (before the wait for the
        next one); if it raises, the error is logged and delivery goes on.
        Never raises but ``asyncio.CancelledError``: cancelling stops at once.
        """
        try:
            body = encode_body(payload)
        except (TypeError, ValueError) as exc:
            return DeliveryResult(
                delivered=False,
                attempts=0,
                last_status=0,
                last_error=f"the payload is not JSON: {exc}",
            )
        outcome = _Outcome()
        for number in range(1, self._max_attempts + 1):
            at = datetime.fromtimestamp(self._clock(), UTC)
            started = time.monotonic()
            outcome = await self._attempt(url, event, body, secret)
            duration = time.monotonic() - started
            delivered = 200 <= outcome.status < 300
            delay: float | None = None
            if not delivered and outcome.retryable and number < self._max_attempts:
                delay = self._delay(number, outcome.retry_after)
            attempt = DeliveryAttempt(
                attempt=number,
                status_code=outcome.status,
                error=outcome.error,
                duration_s=duration,
                next_retry_in_s=delay,
                at=at,
            )
            await self._report(on_attempt, attempt, url)
            if delivered:
                return DeliveryResult(
                    delivered=True, attempts=number, last_status=outcome.status, last_error=""
                )
            if delay is None:
                return DeliveryResult(
                    delivered=False,
                    attempts=number,
                    last_status=outcome.status,
                    last_error=outcome.error,
                )
            await self._sleep(delay)
        raise AssertionError("unreachable: the last attempt always returns")  # pragma: no cover

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self._backoff_max_s)
        exponent = min(attempt - 1, _MAX_BACKOFF_EXPONENT)
        ceiling = min(self._backoff_max_s, self._backoff_base_s * 2.0**exponent)
        return self._rng.uniform(0.0, ceiling)

    @staticmethod
    async def _report(
        on_attempt: Callable[[DeliveryAttempt], Awaitable[None]] | None,
        attempt: DeliveryAttempt,
        url: str,
    ) -> None:
        if on_attempt is None:
            return
        try:
            await on_attempt(attempt)
        except Exception:
            log.exception("on_attempt failed for webhook attempt %d to %s", attempt.attempt, url)

    async def _attempt(self, url: str, event: str, body: bytes, secret: str) -> _Outcome:
        try:
            async with asyncio.timeout(self._timeout_s):
                addresses = await self._guard.check_destination(url)
                headers = {
                    "Content-Type": "application/json",
                    "User-Agent": USER_AGENT,
                    EVENT_HEADER: event,
                    SIGNATURE_HEADER: sign(secret, int(self._clock()), body),
                }
                return await self._post(url, addresses, headers, body)
        except UnresolvableCallbackHost as exc:
            return _Outcome(error=exc.message, retryable=True)
        except InvalidArgument as exc:
            return _Outcome(error=f"refused: {exc.message}")
        except TimeoutError:
            return _Outcome(error=f"timed out after {self._timeout_s:g}s", retryable=True)
        except httpx.TimeoutException as exc:
            return _Outcome(error=_describe(exc), retryable=True)
        except (httpx.UnsupportedProtocol, httpx.LocalProtocolError) as exc:
            return _Outcome(error=_describe(exc))
        except httpx.TransportError as exc:
            return _Outcome(error=_describe(exc), retryable=True)
        except Exception as exc:
            log.exception("unexpected error delivering a webhook to %s", url)
            return _Outcome(error=f"unexpected error: {_describe(exc)}")

    async def _post(
        self, url: str, addresses: list[IPAddress], headers: dict[str, str], body: bytes
    ) -> _Outcome:
        parsed = httpx.URL(url)
        # http: connect to the addresses just checked (no second DNS lookup
        # to rebind); https: keep the name for certificate verification.
        pinned: list[IPAddress | None] = (
            list(addresses) if parsed.scheme == "http" and addresses else [None]
        )
        for index, address in enumerate(pinned):
            target = parsed
            request_headers = headers
            if address is not None:
                target = parsed.copy_with(host=str(address))
                request_headers = {**headers, "Host": parsed.netloc.decode("ascii")}
            try:
                async with self._client.stream(
                    "POST",
                    target,
                    content=body,
                    headers=request_headers,
                    timeout=self._timeout_s,
                    follow_redirects=False,
                ) as response:
                    return self._classify(response)
            except httpx.ConnectError:
                if index == len(pinned) - 1:
                    raise
        raise AssertionError("unreachable: the last address returns or raises")  # pragma: no cover

    def _classify(self, response: httpx.Response) -> _Outcome:
        status = response.status_code
        reason = response.reason_phrase or httpx.codes.get_reason_phrase(status)
        phrase = f"HTTP {status} {reason}".rstrip()
        if 200 <= status < 300:
            return _Outcome(status=status)
        if status in (408, 429) or 500 <= status < 600:
            retry_after = _retry_after(response.headers.get("retry-after"), self._clock())
            return _Outcome(status=status, error=phrase, retryable=True, retry_after=retry_after)
        if 300 <= status < 400:
            return _Outcome(status=status, error=f"{phrase} (redirects are not followed)")
        return _Outcome(status=status, error=phrase)
