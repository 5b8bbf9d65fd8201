"""Provider HTTP on aiohttp: the one place a request to a model API is sent.

``UpstreamClient`` holds one aiohttp ``ClientSession`` per server, opened on
the running loop at start-up (``UpstreamClient.open``) and closed at shutdown,
shared by every provider adapter and every workspace. ``send`` makes one HTTP
attempt; the ``UpstreamResponse`` it returns ends it (read to its end, which
returns the connection to the pool, or closed).

- TLS: certificates are verified against the system's CAs (OpenSSL's default
  paths, which honour ``SSL_CERT_FILE`` and ``SSL_CERT_DIR``), or against the
  PEM bundle at ``UpstreamSettings.ca_bundle`` alone when it is set.
- Proxies: ``HTTPS_PROXY`` / ``HTTP_PROXY`` (either case) and ``NO_PROXY`` are
  read from the environment once, when the client opens, with Python's own
  rules (``urllib.request``, which aiohttp's ``trust_env`` applies too, but
  per request and on a thread). An ``https://`` URL is tunnelled through the
  proxy with ``CONNECT`` (TLS runs end to end); credentials in the proxy URL
  are sent as ``Proxy-Authorization``.
- Pool: at most ``max_connections`` open connections, at most
  ``max_connections_per_host`` to one host (0: no limit but the total); an
  idle connection is closed after ``keepalive_s`` seconds.
- A request is sent once. A POST whose kept-alive connection dies before the
  answer is an error (``DISCONNECTED``), never sent again: aiohttp resends
  only idempotent methods, and this client sends only POSTs. Retries are the
  router's decision, so every request the upstream sees is an attempt in the
  execution's attempt log.
- Header names must be HTTP tokens and values must hold no control character
  but tab (no CR, LF or NUL): they go onto connections shared by every
  workspace. A bad one is refused before anything is sent (aiohttp would
  refuse it as well, but only after connecting).
- Redirects are not followed: a 3xx is the answer.
- Every failure of the exchange is an ``UpstreamError`` whose ``kind`` says
  what went wrong; ``promptgate.providers.http`` turns it into a
  ``ProviderError``. ``asyncio.CancelledError`` is never caught: a call
  cancelled while it waits or reads closes its connection, so the upstream
  sees the disconnect.
"""

from __future__ import annotations

import asyncio
import enum
import re
import ssl
import sys
import urllib.request
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Final

import aiohttp
from aiohttp.http_exceptions import ContentEncodingError
from yarl import URL

__all__ = [
    "UpstreamClient",
    "UpstreamError",
    "UpstreamErrorKind",
    "UpstreamResponse",
    "UpstreamSettings",
    "header_problem",
]

_TOKEN: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BAD_VALUE: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_MAX_CACHED: Final = 1024
# CPython before 3.12.8 (and 3.13.0) can leak a TLS connection whose peer never
# finishes the TLS shutdown; aiohttp then aborts it after 2 s (it warns when set
# on a fixed version). Cancelled streams close TLS connections all the time.
_CLEANUP_CLOSED: Final = sys.version_info < (3, 12, 8) or (3, 13) <= sys.version_info < (3, 13, 1)


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    """How the client connects (see the module docstring)."""

    connect_timeout_s: float = 10.0
    max_connections: int = 1000
    max_connections_per_host: int = 0
    keepalive_s: float = 4.0
    ca_bundle: str | None = None


class UpstreamErrorKind(enum.Enum):
    """What went wrong with an HTTP exchange."""

    TIMEOUT = "timeout"
    """Connecting took longer than ``connect_timeout_s``."""
    UNREACHABLE = "unreachable"
    """No connection: refused, unknown host, or the proxy is down or refused the tunnel."""
    TLS = "tls"
    """The TLS handshake failed (e.g. a certificate that is not trusted)."""
    INVALID_REQUEST = "invalid_request"
    """The request cannot be sent as it is (URL, header)."""
    DISCONNECTED = "disconnected"
    """The connection broke or closed before the answer ended."""
    BAD_RESPONSE = "bad_response"
    """The answer is not valid HTTP, or its body cannot be decoded."""


class UpstreamError(Exception):
    """A failed HTTP exchange; ``kind`` says how."""

    def __init__(self, kind: UpstreamErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def header_problem(name: str, value: str) -> str:
    """What is wrong with a header ("" if nothing); never quotes the value."""
    if not _TOKEN.fullmatch(name):
        return "the header name is not an HTTP token"
    if _BAD_VALUE.search(value):
        return f"the value of header {name!r} holds a control character (CR, LF, NUL, ...)"
    return ""


class UpstreamResponse:
    """An answer whose body may still be on the wire.

    Read it to its end (``aread``, or ``aiter_bytes`` until it stops) or
    ``close`` it; closing an answer that was not read to its end closes its
    connection.
    """

    __slots__ = ("_response", "content", "headers", "status_code")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status_code = response.status
        self.headers: Mapping[str, str] = response.headers
        self.content = b""
        """The body, once ``aread`` returned it (``send(..., stream=False)`` does)."""

    @property
    def is_success(self) -> bool:
        """Whether the status is 2xx."""
        return 200 <= self.status_code < 300

    async def aread(self) -> bytes:
        """The whole body."""
        try:
            self.content = await self._response.read()
        except aiohttp.ClientError as exc:
            raise _upstream_error(exc) from exc
        return self.content

    async def aiter_bytes(self) -> AsyncGenerator[bytes, None]:
        """The body's bytes as they arrive."""
        content = self._response.content
        while True:
            try:
                chunk = await content.readany()
            except aiohttp.ClientError as exc:
                raise _upstream_error(exc) from exc
            if not chunk:
                return
            yield chunk

    def close(self) -> None:
        """Done with the answer: a body not read to its end closes the connection."""
        self._response.close()


class UpstreamClient:
    """The provider adapters' shared HTTP client; see the module docstring."""

    def __init__(self, session: aiohttp.ClientSession, proxies: Mapping[str, str]) -> None:
        self._session = session
        self._env_proxies = dict(proxies)
        self._proxies = {
            scheme: URL(url)
            for scheme, url in proxies.items()
            if scheme in ("http", "https") and url
        }
        # Parsing a URL costs more than the rest of preparing a request; the
        # adapters send to a handful of URLs, through a handful of origins.
        self._urls: dict[str, URL] = {}
        self._proxy_by_origin: dict[tuple[str, str], URL | None] = {}

    @classmethod
    async def open(
        cls, settings: UpstreamSettings, *, ssl_context: ssl.SSLContext | None = None
    ) -> UpstreamClient:
        """A client on the running loop.

        CA certificates load on a thread, from ``settings.ca_bundle`` (or the
        system's), unless a ready ``ssl_context`` is given.
        """
        if ssl_context is None:
            ssl_context = await asyncio.to_thread(_ssl_context, settings.ca_bundle)
        connector = aiohttp.TCPConnector(
            limit=settings.max_connections,
            limit_per_host=settings.max_connections_per_host,
            keepalive_timeout=settings.keepalive_s,
            ssl=ssl_context,
            enable_cleanup_closed=_CLEANUP_CLOSED,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=settings.connect_timeout_s),
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,  # proxies are read once below, not per request
        )
        return cls(session, urllib.request.getproxies_environment())

    @property
    def closed(self) -> bool:
        """Whether ``aclose`` was called."""
        return self._session.closed

    async def aclose(self) -> None:
        """Close every connection."""
        await self._session.close()

    def proxy_for(self, url: str) -> str | None:
        """The proxy a request to ``url`` goes through (None: direct)."""
        proxy = self._proxy(self._url(url))
        return None if proxy is None else str(proxy)

    async def send(
        self, url: str, body: bytes, headers: Mapping[str, str], *, stream: bool
    ) -> UpstreamResponse:
        """``POST body`` to ``url``, once; the answer's body is read unless ``stream``.

        Raises ``UpstreamError`` (nothing is sent for a bad header or URL).
        """
        for name, value in headers.items():
            if problem := header_problem(name, value):
                raise UpstreamError(UpstreamErrorKind.INVALID_REQUEST, problem)
        try:
            target = self._url(url)
        except ValueError as exc:
            raise UpstreamError(UpstreamErrorKind.INVALID_REQUEST, f"invalid URL: {exc}") from exc
        if target.scheme not in ("http", "https") or not target.host:
            raise UpstreamError(
                UpstreamErrorKind.INVALID_REQUEST, f"not an http(s) URL: {url[:200]!r}"
            )
        try:
            response = await self._session.post(
                target,
                data=body,
                headers=headers,
                proxy=self._proxy(target),
                allow_redirects=False,
            )
        except aiohttp.ClientError as exc:
            raise _upstream_error(exc) from exc
        except ValueError as exc:  # aiohttp's own header and URL checks
            raise UpstreamError(UpstreamErrorKind.INVALID_REQUEST, str(exc)) from exc
        answer = UpstreamResponse(response)
        if not stream:
            try:
                await answer.aread()
            finally:
                answer.close()
        return answer

    def _url(self, url: str) -> URL:
        parsed = self._urls.get(url)
        if parsed is None:
            if len(self._urls) >= _MAX_CACHED:
                self._urls.clear()
            parsed = self._urls[url] = URL(url)
        return parsed

    def _proxy(self, url: URL) -> URL | None:
        if not self._proxies:
            return None
        origin = (url.scheme, url.host or "")
        try:
            return self._proxy_by_origin[origin]
        except KeyError:
            pass
        proxy = self._proxies.get(url.scheme)
        if proxy is not None and urllib.request.proxy_bypass(origin[1], self._env_proxies):
            proxy = None
        if len(self._proxy_by_origin) >= _MAX_CACHED:
            self._proxy_by_origin.clear()
        self._proxy_by_origin[origin] = proxy
        return proxy


def _ssl_context(ca_bundle: str | None) -> ssl.SSLContext:
    """A verifying client context: the system's CAs, or the bundle's alone."""
    try:
        context = ssl.create_default_context(cafile=ca_bundle or None)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load the CA bundle {ca_bundle!r}: {exc}") from exc
    context.set_alpn_protocols(["http/1.1"])
    return context


def _upstream_error(exc: aiohttp.ClientError) -> UpstreamError:
    """The ``UpstreamError`` for one of aiohttp's."""
    text = str(exc) or type(exc).__name__
    kind = UpstreamErrorKind.DISCONNECTED
    if isinstance(exc, aiohttp.ClientSSLError):
        kind = UpstreamErrorKind.TLS
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            text = f"the server's TLS certificate is not trusted: {exc.certificate_error}"
    elif isinstance(exc, aiohttp.ServerTimeoutError):
        kind = UpstreamErrorKind.TIMEOUT
    elif isinstance(exc, aiohttp.ClientHttpProxyError):
        kind = UpstreamErrorKind.UNREACHABLE
        text = f"the proxy refused the tunnel: HTTP {exc.status} {exc.message}"
    elif isinstance(exc, aiohttp.ClientProxyConnectionError):
        kind = UpstreamErrorKind.UNREACHABLE
        text = f"cannot connect to the proxy: {text}"
    elif isinstance(exc, aiohttp.ClientConnectorError):
        kind = UpstreamErrorKind.UNREACHABLE
    elif isinstance(exc, aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        kind = UpstreamErrorKind.INVALID_REQUEST
    elif isinstance(exc, aiohttp.ClientResponseError):
        kind = UpstreamErrorKind.BAD_RESPONSE
        text = f"invalid HTTP answer: {exc.message}"
    elif isinstance(exc, aiohttp.ClientPayloadError):
        if isinstance(exc.__cause__, ContentEncodingError):
            kind = UpstreamErrorKind.BAD_RESPONSE
            text = "cannot decode the body (its content-encoding)"
    return UpstreamError(kind, f"{type(exc).__name__}: {text}")
