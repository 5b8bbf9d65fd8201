"""Batch webhooks: signatures, the SSRF guard and retrying delivery to a real socket."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import random
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import h11
import httpx
import pytest

from promptgate.batches.webhooks.delivery import (
    EVENT_HEADER,
    USER_AGENT,
    DeliveryAttempt,
    WebhookSender,
)
from promptgate.batches.webhooks.guard import CallbackGuard, UnresolvableCallbackHost
from promptgate.batches.webhooks.signing import SIGNATURE_HEADER, encode_body, sign, verify
from promptgate.errors import InvalidArgument

NOW = 1_800_000_000.0
SECRET = "whsec_test_secret"
PAYLOAD: dict[str, Any] = {
    "batch": "batches/b-123",
    "state": "COMPLETED",
    "counts": {"succeeded": 3, "failed": 1},
    "note": "héllo",
}


# ---------------------------------------------------------------------- a webhook receiver


@dataclass(frozen=True)
class Reply:
    """What the receiver answers to one request."""

    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0


@dataclass
class Received:
    """One request the receiver got."""

    method: str
    target: str
    headers: dict[str, str]
    """Header names in lower case."""
    body: bytes


@dataclass
class Receiver:
    """An HTTP/1.1 server (asyncio + h11) on 127.0.0.1 answering a scripted list of replies.

    Each request takes the next reply of ``script``; once it is used up every
    request gets 200.
    """

    script: list[Reply] = field(default_factory=list)
    port: int = 0
    requests: list[Received] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    errors: list[BaseException] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _connections: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/batch"

    async def wait_for_request(self) -> None:
        """Wait until a request has arrived (wrap it in a timeout)."""
        await self.arrived.wait()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request: h11.Request | None = None
                body = bytearray()
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await reader.read(65536))
                    elif isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    else:  # the client closed the connection
                        return
                assert request is not None
                self.requests.append(
                    Received(
                        method=request.method.decode(),
                        target=request.target.decode(),
                        headers={k.decode(): v.decode() for k, v in request.headers},
                        body=bytes(body),
                    )
                )
                self.arrived.set()
                reply = self.script.pop(0) if self.script else Reply()
                if reply.delay:
                    await asyncio.sleep(reply.delay)
                content = f"status {reply.status}".encode()
                headers = [("content-length", str(len(content))), *reply.headers]
                for event in (
                    h11.Response(status_code=reply.status, headers=headers),
                    h11.Data(data=content),
                    h11.EndOfMessage(),
                ):
                    writer.write(conn.send(event) or b"")
                await writer.drain()
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (ConnectionError, h11.ProtocolError):
            pass
        except Exception as exc:  # a bug in the receiver: the tests check it stays empty
            self.errors.append(exc)
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = Receiver()
    await server.start()
    yield server
    await server.close()
    assert server.errors == []


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as http:
        yield http


class UpperBound(random.Random):
    """Jitter that always picks the largest delay allowed: backoff made predictable."""

    def uniform(self, a: float, b: float) -> float:
        return b


class Sleeps:
    """An injected ``sleep`` that records the delays instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


class Attempts:
    """An ``on_attempt`` that keeps every attempt."""

    def __init__(self) -> None:
        self.seen: list[DeliveryAttempt] = []

    async def __call__(self, attempt: DeliveryAttempt) -> None:
        self.seen.append(attempt)


def local_guard(**kwargs: Any) -> CallbackGuard:
    """A guard that lets callbacks reach 127.0.0.1 (where the receiver is)."""
    return CallbackGuard(allow_private_networks=True, **kwargs)


def make_sender(
    client: httpx.AsyncClient,
    guard: CallbackGuard | None = None,
    sleeps: Sleeps | None = None,
    **kwargs: Any,
) -> WebhookSender:
    options: dict[str, Any] = {
        "sleep": sleeps or Sleeps(),
        "clock": lambda: NOW,
        "rng": UpperBound(),
        "timeout_s": 5.0,
    }
    options.update(kwargs)
    return WebhookSender(client, guard or local_guard(), **options)


def free_port() -> int:
    """A port nothing listens on (connecting to it is refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def refusal(exc: pytest.ExceptionInfo[Any]) -> str:
    """The description of a guard refusal, after checking its shape."""
    error = exc.value
    assert error.reason == "INVALID_CALLBACK_URL"
    assert [v.field for v in error.violations] == ["callback_url"]
    return error.violations[0].description


def static_resolver(*addresses: str) -> Any:
    """A resolver answering ``addresses`` for every name, and recording the names."""
    calls: list[tuple[str, int]] = []

    async def resolve(host: str, port: int) -> Sequence[str]:
        calls.append((host, port))
        return list(addresses)

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


async def no_dns(host: str, port: int) -> Sequence[str]:
    raise AssertionError(f"unexpected DNS lookup of {host}")


# ---------------------------------------------------------------------- signing


def test_sign_is_hmac_sha256_over_timestamp_dot_body() -> None:
    body = encode_body(PAYLOAD)
    header = sign(SECRET, 1_700_000_000, body)
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"


def test_body_is_compact_json_with_sorted_keys() -> None:
    body = encode_body({"b": 1, "a": {"d": [1, 2], "c": "é"}})
    assert body == '{"a":{"c":"é","d":[1,2]},"b":1}'.encode()
    with pytest.raises(ValueError):
        encode_body({"x": float("nan")})


def test_verify_accepts_the_secret_and_refuses_forgeries() -> None:
    body = encode_body(PAYLOAD)
    header = sign(SECRET, int(NOW), body)
    assert verify(SECRET, header, body, now=NOW)
    assert verify(SECRET, header, body, now=NOW + 300)  # at the edge of the tolerance
    assert not verify("whsec_other", header, body, now=NOW)
    assert not verify(SECRET, header, body.replace(b"COMPLETED", b"FAILED"), now=NOW)
    assert not verify(SECRET, header, body + b" ", now=NOW)


def test_verify_refuses_stale_and_future_timestamps() -> None:
    body = encode_body(PAYLOAD)
    header = sign(SECRET, int(NOW), body)
    assert not verify(SECRET, header, body, now=NOW + 301)
    assert not verify(SECRET, header, body, now=NOW - 301)
    assert verify(SECRET, header, body, now=NOW + 3000, tolerance_s=3600)
    # The timestamp is signed: moving it forward breaks the MAC.
    mac = header.split("v1=")[1]
    assert not verify(SECRET, f"t={int(NOW) + 1000},v1={mac}", body, now=NOW + 1000)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "garbage",
        "v1=" + "0" * 64,
        "t=1800000000",
        "t=abc,v1=" + "0" * 64,
        "t=1800000000,v1=zz",
        "t=1800000000,t=1800000000,v1=" + "0" * 64,
        "t=1800000000,v1=é" + "0" * 63,
    ],
)
def test_verify_refuses_malformed_headers_without_raising(header: str) -> None:
    assert verify(SECRET, header, b"{}", now=NOW) is False


def test_verify_accepts_any_matching_v1_entry() -> None:
    body = b'{"a":1}'
    good = sign(SECRET, int(NOW), body).split(",v1=")[1]
    rotated = sign("whsec_old", int(NOW), body).split(",v1=")[1]
    assert verify(SECRET, f"t={int(NOW)},v1={rotated},v1={good}", body, now=NOW)
    assert not verify(SECRET, f"t={int(NOW)},v1={rotated}", body, now=NOW)


# ---------------------------------------------------------------------- the guard: shape


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("file:///etc/passwd", "http:// or https://"),
        ("ftp://example.com/hook", "http:// or https://"),
        ("gopher://example.com/", "http:// or https://"),
        ("example.com/hook", "http:// or https://"),
        ("http://user:pass@example.com/hook", "user info"),
        ("http://user@example.com/hook", "user info"),
        ("http://@example.com/hook", "user info"),
        ("http:///hook", "host"),
        ("http://example.com:0/hook", "port"),
        ("http://example.com:70000/hook", "port"),
        ("http://example.com/" + "a" * 2048, "2048"),
        ("http://example.com\\@169.254.169.254/", "backslash"),
        ("http://exa mple.com/", "whitespace"),
        ("http://example.com/\r\nX-Injected: 1", "whitespace"),
        ("", "empty"),
        ("http://metadata.google.internal/computeMetadata/v1/", "metadata"),
        ("http://METADATA.google.internal./", "metadata"),
        ("http://metadata/", "metadata"),
        ("http://instance-data/latest/", "metadata"),
    ],
)
async def test_check_url_refuses(url: str, fragment: str) -> None:
    guard = CallbackGuard(allow_private_networks=True, resolver=no_dns)
    with pytest.raises(InvalidArgument) as exc:
        guard.check_url(url)
    assert fragment in refusal(exc)
    # check_destination checks the shape first: it refuses before any DNS lookup.
    with pytest.raises(InvalidArgument) as exc:
        await guard.check_destination(url)
    assert fragment in refusal(exc)


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/promptgate",
        "http://hooks.example.com:8080/p?x=1",
        "HTTPS://Hooks.Example.COM/",
        "https://[2606:4700::1111]/hook",
        "https://example.com/" + "a" * 2000,
    ],
)
def test_check_url_accepts_plain_http_and_https_urls(url: str) -> None:
    CallbackGuard(allow_private_networks=False, resolver=no_dns).check_url(url)


# ---------------------------------------------------------------------- the guard: addresses


ALWAYS_REFUSED = [
    ("http://169.254.169.254/latest/meta-data/", "metadata"),
    ("http://169.254.10.1/", "link-local"),
    ("http://[fd00:ec2::254]/latest/meta-data/", "metadata"),
    ("http://[fe80::1]/", "link-local"),
    ("http://[::ffff:169.254.169.254]/", "embedded"),
    ("http://[::ffff:a9fe:a9fe]/", "169.254.169.254"),
    ("http://[2002:a9fe:a9fe::1]/", "169.254.169.254"),  # 6to4
    ("http://[64:ff9b::a9fe:a9fe]/", "169.254.169.254"),  # NAT64
    ("http://0.0.0.0:8080/", "unspecified"),
    ("http://[::]/", "unspecified"),
    ("http://0.1.2.3/", "this network"),
    ("http://224.0.0.1/", "multicast"),
    ("http://[ff02::1]/", "multicast"),
    ("http://240.0.0.1/", "reserved"),
    ("http://255.255.255.255/", "reserved"),
    ("http://100.100.100.200/", "metadata"),
]

PRIVATE = [
    ("http://127.0.0.1:8080/", "loopback"),
    ("http://127.8.9.10/", "loopback"),
    ("http://[::1]/", "loopback"),
    ("http://[::ffff:127.0.0.1]/", "loopback"),
    ("http://10.1.2.3/", "private"),
    ("http://172.16.0.1/", "private"),
    ("http://192.168.1.1/", "private"),
    ("http://[fd12:3456::1]/", "private"),
    ("http://100.64.0.1/", "carrier-grade NAT"),
    ("http://[fec0::1]/", "site-local"),
    ("http://192.0.2.10/", "private"),  # documentation (TEST-NET-1)
]


@pytest.mark.parametrize(("url", "fragment"), ALWAYS_REFUSED + PRIVATE)
async def test_public_only_guard_refuses(url: str, fragment: str) -> None:
    guard = CallbackGuard(allow_private_networks=False, resolver=no_dns)
    with pytest.raises(InvalidArgument) as exc:
        await guard.check_destination(url)
    assert fragment in refusal(exc)


@pytest.mark.parametrize(("url", "fragment"), ALWAYS_REFUSED)
async def test_metadata_and_link_local_stay_refused_with_private_networks(
    url: str, fragment: str
) -> None:
    guard = CallbackGuard(allow_private_networks=True, resolver=no_dns)
    with pytest.raises(InvalidArgument) as exc:
        await guard.check_destination(url)
    assert fragment in refusal(exc)


@pytest.mark.parametrize(("url", "fragment"), PRIVATE)
async def test_private_networks_can_be_allowed(url: str, fragment: str) -> None:
    guard = CallbackGuard(allow_private_networks=True, resolver=no_dns)
    addresses = await guard.check_destination(url)
    assert len(addresses) == 1


async def test_public_addresses_are_allowed_and_returned() -> None:
    resolver = static_resolver("93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c")
    guard = CallbackGuard(allow_private_networks=False, resolver=resolver)
    addresses = await guard.check_destination("https://hooks.example.com/promptgate")
    assert [str(a) for a in addresses] == [
        "93.184.215.14",
        "2606:2800:21f:cb07:6820:80da:af6b:8b2c",
    ]
    assert resolver.calls == [("hooks.example.com", 443)]
    literal = await guard.check_destination("http://8.8.8.8:8080/")
    assert [str(a) for a in literal] == ["8.8.8.8"]


async def test_a_name_resolving_to_a_forbidden_address_is_refused() -> None:
    guard = CallbackGuard(allow_private_networks=False, resolver=static_resolver("10.0.0.7"))
    with pytest.raises(InvalidArgument) as exc:
        await guard.check_destination("https://innocent.example.com/hook")
    description = refusal(exc)
    assert "innocent.example.com" in description
    assert "10.0.0.7" in description
    assert "private" in description


async def test_any_forbidden_address_among_several_refuses() -> None:
    resolver = static_resolver("93.184.215.14", "169.254.169.254")
    for allow in (False, True):
        guard = CallbackGuard(allow_private_networks=allow, resolver=resolver)
        with pytest.raises(InvalidArgument) as exc:
            await guard.check_destination("http://mixed.example.com/")
        assert "169.254.169.254" in refusal(exc)


async def test_localhost_resolved_by_the_system_is_refused() -> None:
    guard = CallbackGuard(allow_private_networks=False)  # the event loop's getaddrinfo
    with pytest.raises(InvalidArgument) as exc:
        await guard.check_destination("http://localhost:8080/hook")
    assert "loopback" in refusal(exc)
    allowed = await CallbackGuard(allow_private_networks=True).check_destination(
        "http://localhost:8080/hook"
    )
    assert allowed and all(a.is_loopback for a in allowed)


async def test_unresolvable_host_is_an_invalid_argument_of_its_own_kind() -> None:
    async def fail(host: str, port: int) -> Sequence[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    guard = CallbackGuard(allow_private_networks=False, resolver=fail)
    with pytest.raises(UnresolvableCallbackHost) as exc:
        await guard.check_destination("https://nowhere.example.com/")
    assert "does not resolve" in refusal(exc)
    assert isinstance(exc.value, InvalidArgument)

    empty = CallbackGuard(allow_private_networks=False, resolver=static_resolver())
    with pytest.raises(UnresolvableCallbackHost):
        await empty.check_destination("https://nowhere.example.com/")


async def test_own_listen_address_is_refused_even_with_private_networks(
    receiver: Receiver,
) -> None:
    grpc_port = free_port()
    guard = CallbackGuard(
        allow_private_networks=True,
        listen_addresses=[("127.0.0.1", grpc_port)],
        resolver=static_resolver("127.0.0.1"),
    )
    for url in (
        f"http://127.0.0.1:{grpc_port}/",
        f"https://127.0.0.1:{grpc_port}/",
        f"http://[::ffff:127.0.0.1]:{grpc_port}/",
        f"http://its-me.example.com:{grpc_port}/",
    ):
        with pytest.raises(InvalidArgument) as exc:
            await guard.check_destination(url)
        assert "own listening address" in refusal(exc), url
    # The same host on another port (the receiver) is fine.
    assert [str(a) for a in await guard.check_destination(receiver.url)] == ["127.0.0.1"]


@pytest.mark.parametrize("wildcard", ["0.0.0.0", "::", "[::]", ""])
async def test_wildcard_listen_address_covers_every_local_address(
    wildcard: str, receiver: Receiver
) -> None:
    grpc_port = free_port()
    guard = CallbackGuard(
        allow_private_networks=True, listen_addresses=[(wildcard, grpc_port)], resolver=no_dns
    )
    for host in ("127.0.0.1", "127.0.0.2", "[::1]"):
        with pytest.raises(InvalidArgument) as exc:
            await guard.check_destination(f"http://{host}:{grpc_port}/")
        assert "own listening address" in refusal(exc)
    # A private address that is not this machine's, on the same port, is someone else.
    await guard.check_destination(f"http://10.255.255.1:{grpc_port}/")
    await guard.check_destination(receiver.url)


async def test_named_listen_address_is_resolved() -> None:
    guard = CallbackGuard(
        allow_private_networks=True, listen_addresses=[("localhost", 50051)], resolver=None
    )
    with pytest.raises(InvalidArgument) as exc:
        await guard.check_destination("http://127.0.0.1:50051/")
    assert "own listening address" in refusal(exc)
    await guard.check_destination("http://127.0.0.1:50052/")


# ---------------------------------------------------------------------- delivery


def check_request(request: Received, *, event: str = "batch.completed") -> None:
    """The request carries the documented headers and a valid signature of its body."""
    assert request.method == "POST"
    assert request.target == "/hooks/batch"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == USER_AGENT
    assert request.headers[EVENT_HEADER.lower()] == event
    assert request.body == encode_body(PAYLOAD)
    assert json.loads(request.body) == PAYLOAD
    signature = request.headers[SIGNATURE_HEADER.lower()]
    assert signature.startswith(f"t={int(NOW)},v1=")
    assert verify(SECRET, signature, request.body, now=NOW)
    assert not verify("whsec_wrong", signature, request.body, now=NOW)


async def test_delivers_a_signed_post_on_the_first_try(
    receiver: Receiver, client: httpx.AsyncClient
) -> None:
    sleeps, attempts = Sleeps(), Attempts()
    sender = make_sender(client, sleeps=sleeps)
    result = await sender.deliver(
        receiver.url, "batch.completed", PAYLOAD, SECRET, on_attempt=attempts
    )
    assert result.delivered
    assert (result.attempts, result.last_status, result.last_error) == (1, 200, "")
    assert len(receiver.requests) == 1
    check_request(receiver.requests[0])
    assert sleeps.delays == []
    [attempt] = attempts.seen
    assert (attempt.attempt, attempt.status_code, attempt.error) == (1, 200, "")
    assert attempt.next_retry_in_s is None
    assert attempt.delivered
    assert attempt.at == datetime.fromtimestamp(NOW, UTC)
    assert 0 <= attempt.duration_s < 5


async def test_the_event_name_comes_from_the_caller(
    receiver: Receiver, client: httpx.AsyncClient
) -> None:
    result = await make_sender(client).deliver(receiver.url, "batch.failed", PAYLOAD, SECRET)
    assert result.delivered
    check_request(receiver.requests[0], event="batch.failed")


async def test_retries_server_errors_honouring_retry_after_then_succeeds(
    receiver: Receiver, client: httpx.AsyncClient
) -> None:
    receiver.script = [Reply(500), Reply(503, (("retry-after", "7"),)), Reply(200)]
    sleeps, attempts = Sleeps(), Attempts()
    sender = make_sender(client, sleeps=sleeps, backoff_base_s=1.0)
    result = await sender.deliver(
        receiver.url, "batch.completed", PAYLOAD, SECRET, on_attempt=attempts
    )
    assert result.delivered
    assert result.attempts == 3
    assert result.last_status == 200
    assert len(receiver.requests) == 3
    for request in receiver.requests:
        check_request(request)
    # 500: backoff (ceiling base * 2**0 = 1); 503: its Retry-After, not the backoff (2).
    assert sleeps.delays == [1.0, 7.0]
    assert [a.status_code for a in attempts.seen] == [500, 503, 200]
    assert [a.next_retry_in_s for a in attempts.seen] == [1.0, 7.0, None]
    assert attempts.seen[0].error == "HTTP 500 Internal Server Error"
    assert attempts.seen[1].error == "HTTP 503 Service Unavailable"
    assert attempts.seen[2].error == ""


async def test_retry_after_as_an_http_date_and_its_cap(
    receiver: Receiver, client: httpx.AsyncClient
) -> None:
    in_30s = format_datetime(datetime.fromtimestamp(NOW + 30, UTC), usegmt=True)
    receiver.script = [
        Reply(429, (("retry-after", in_30s),)),
        Reply(429, (("retry-after", "86400"),)),
        Reply(408),
        Reply(204),
    ]
    sleeps = Sleeps()
    sender = make_sender(client, sleeps=sleeps, backoff_max_s=60.0, backoff_base_s=0.5)
    result = await sender.deliver(receiver.url, "batch.completed", PAYLOAD, SECRET)
    assert result.delivered
    assert result.last_status == 204
    assert len(receiver.requests) == 4
    # HTTP date: 30 s from the injected clock; a day: capped at backoff_max_s;
    # 408 without Retry-After: backoff, ceiling 0.5 * 2**2.
    assert sleeps.delays == [30.0, 60.0, 2.0]


async def test_gives_up_after_max_attempts_reporting_every_one(
    receiver: Receiver, client: httpx.AsyncClient
) -> None:
    receiver.script = [Reply(502)] * 5
    sleeps, attempts = Sleeps(), Attempts()
    sender = make_sender(client, sleeps=sleeps, max_attempts=5, backoff_max_s=5.0)
    result = await sender.deliver(
        receiver.url, "batch.completed", PAYLOAD, SECRET, on_attempt=attempts
    )
    assert not result.delivered
    assert result.attempts == 5
    assert result.last_status == 502
    assert result.last_error == "HTTP 502 Bad Gateway"
    assert len(receiver.requests) == 5
    # The backoff ceiling doubles each time, up to backoff_max_s.
    assert sleeps.delays == [1.0, 2.0, 4.0, 5.0]
    assert [a.attempt for a in attempts.seen] == [1, 2, 3, 4, 5]
    assert [a.next_retry_in_s for a in attempts.seen] == [1.0, 2.0, 4.0, 5.0, None]
    assert all(a.status_code == 502 and not a.delivered for a in attempts.seen)
    # Every attempt is signed afresh (same clock here, so the same signature).
    assert all(verify(SECRET, r.headers["x-promptgate-signature"], r.body, now=NOW)
               for r in receiver.requests)  # fmt: skip


async def test_backoff_has_full_jitter(receiver: Receiver, client: httpx.AsyncClient) -> None:
    receiver.script = [Reply(500)] * 8
    sleeps = Sleeps()
    sender = make_sender(
        client, sleeps=sleeps, max_attempts=9, backoff_base_s=1.0, rng=random.Random(1234)
    )
    result = await sender.deliver(receiver.url, "batch.completed", PAYLOAD, SECRET)
    assert result.delivered and result.attempts == 9
    ceilings = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]
    assert len(sleeps.delays) == 8
    assert all(0.0 <= d <= c for d, c in zip(sleeps.delays, ceilings, strict=True))
    assert sleeps.delays != ceilings  # jittered, not the ceilings themselves
    assert len(set(sleeps.delays)) == 8


@pytest.mark.parametrize("status", [400, 401, 404, 410, 422])
async def test_client_errors_are_not_retried(
    status: int, receiver: Receiver, client: httpx.AsyncClient
) -> None:
    receiver.script = [Reply(status), Reply(200)]
    sleeps, attempts = Sleeps(), Attempts()
    result = await make_sender(client, sleeps=sleeps).deliver(
        receiver.url, "batch.completed", PAYLOAD, SECRET, on_attempt=attempts
    )
    assert not result.delivered
    assert result.attempts == 1
    assert result.last_status == status
    assert result.last_error.startswith(f"HTTP {status}")
    assert len(receiver.requests) == 1
    assert sleeps.delays == []
    assert [a.next_retry_in_s for a in attempts.seen] == [None]


async def test_redirects_are_not_followed(receiver: Receiver, client: httpx.AsyncClient) -> None:
    receiver.script = [Reply(307, (("location", receiver.url + "/elsewhere"),))]
    sleeps = Sleeps()
    async with httpx.AsyncClient(trust_env=False, follow_redirects=True) as following:
        result = await make_sender(following, sleeps=sleeps).deliver(
            receiver.url, "batch.completed", PAYLOAD, SECRET
        )
    assert not result.delivered
    assert result.attempts == 1
    assert result.last_status == 307
    assert "redirects are not followed" in result.last_error
    assert [r.target for r in receiver.requests] == ["/hooks/batch"]
    assert sleeps.delays == []


async def test_connection_refused_is_retried(client: httpx.AsyncClient) -> None:
    port = free_port()
    late = Receiver(port=port)
    started: list[int] = []

    async def sleep_then_start(delay: float) -> None:
        sleeps.delays.append(delay)
        if len(sleeps.delays) == 2:  # the receiver comes up after two refusals
            await late.start()
            started.append(late.port)

    sleeps = Sleeps()
    attempts = Attempts()
    sender = make_sender(client, sleep=sleep_then_start, max_attempts=4)
    try:
        result = await sender.deliver(
            f"http://127.0.0.1:{port}/hooks/batch",
            "batch.completed",
            PAYLOAD,
            SECRET,
            on_attempt=attempts,
        )
    finally:
        await late.close()
    assert started == [port]
    assert result.delivered
    assert result.attempts == 3
    assert [a.status_code for a in attempts.seen] == [0, 0, 200]
    assert all("ConnectError" in a.error for a in attempts.seen[:2])
    assert sleeps.delays == [1.0, 2.0]
    assert len(late.requests) == 1
    check_request(late.requests[0])


async def test_connection_refused_until_the_end_is_a_failure(client: httpx.AsyncClient) -> None:
    sleeps = Sleeps()
    result = await make_sender(client, sleeps=sleeps, max_attempts=3).deliver(
        f"http://127.0.0.1:{free_port()}/", "batch.completed", PAYLOAD, SECRET
    )
    assert not result.delivered
    assert (result.attempts, result.last_status) == (3, 0)
    assert "ConnectError" in result.last_error
    assert len(sleeps.delays) == 2


async def test_a_slow_receiver_times_out_and_is_retried(
    receiver: Receiver, client: httpx.AsyncClient
) -> None:
    receiver.script = [Reply(200, delay=2.0), Reply(200)]
    sleeps, attempts = Sleeps(), Attempts()
    sender = make_sender(client, sleeps=sleeps, timeout_s=0.3)
    result = await sender.deliver(
        receiver.url, "batch.completed", PAYLOAD, SECRET, on_attempt=attempts
    )
    assert result.delivered
    assert result.attempts == 2
    first = attempts.seen[0]
    assert first.status_code == 0
    assert "timed out" in first.error.lower() or "Timeout" in first.error
    assert first.duration_s < 1.5
    assert sleeps.delays == [1.0]


async def test_a_refused_destination_is_final_and_never_contacted(
    client: httpx.AsyncClient,
) -> None:
    sleeps, attempts = Sleeps(), Attempts()
    sender = make_sender(client, CallbackGuard(allow_private_networks=False), sleeps=sleeps)
    result = await sender.deliver(
        "http://169.254.169.254/latest/meta-data/",
        "batch.completed",
        PAYLOAD,
        SECRET,
        on_attempt=attempts,
    )
    assert not result.delivered
    assert result.attempts == 1
    assert result.last_status == 0
    assert result.last_error.startswith("refused: callback_url:")
    assert "metadata" in result.last_error
    assert sleeps.delays == []
    assert [a.next_retry_in_s for a in attempts.seen] == [None]


async def test_each_attempt_rechecks_the_destination(
    receiver: Receiver, client: httpx.AsyncClient
) -> None:
    """DNS rebinding: the name turns into the metadata address after the first attempt."""
    answers = [["127.0.0.1"], ["169.254.169.254"]]

    async def rebinding(host: str, port: int) -> Sequence[str]:
        return answers.pop(0) if len(answers) > 1 else answers[0]

    receiver.script = [Reply(503)]
    sleeps = Sleeps()
    sender = make_sender(client, local_guard(resolver=rebinding), sleeps=sleeps)
    result = await sender.deliver(
        f"http://rebind.example.test:{receiver.port}/hooks/batch",
        "batch.completed",
        PAYLOAD,
        SECRET,
    )
    assert not result.delivered
    assert result.attempts == 2
    assert "169.254.169.254" in result.last_error
    assert len(receiver.requests) == 1  # the second attempt never left
    assert sleeps.delays == [1.0]


async def test_http_connects_to_the_checked_address_keeping_the_host_name(
    receiver: Receiver, client: httpx.AsyncClient
) -> None:
    """No second DNS lookup: ``.test`` names do not resolve, yet the POST arrives."""
    resolver = static_resolver("127.0.0.1")
    sender = make_sender(client, local_guard(resolver=resolver))
    url = f"http://hooks.example.test:{receiver.port}/hooks/batch"
    result = await sender.deliver(url, "batch.completed", PAYLOAD, SECRET)
    assert result.delivered, result.last_error
    [request] = receiver.requests
    assert request.headers["host"] == f"hooks.example.test:{receiver.port}"
    check_request(request)
    assert resolver.calls == [("hooks.example.test", receiver.port)]


async def test_unresolvable_host_is_retried(client: httpx.AsyncClient) -> None:
    lookups: list[str] = []

    async def fail(host: str, port: int) -> Sequence[str]:
        lookups.append(host)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    sleeps = Sleeps()
    sender = make_sender(client, local_guard(resolver=fail), sleeps=sleeps, max_attempts=3)
    result = await sender.deliver("https://flaky-dns.example.com/", "e", PAYLOAD, SECRET)
    assert not result.delivered
    assert result.attempts == 3
    assert "does not resolve" in result.last_error
    assert lookups == ["flaky-dns.example.com"] * 3
    assert len(sleeps.delays) == 2


async def test_cancellation_propagates(receiver: Receiver, client: httpx.AsyncClient) -> None:
    receiver.script = [Reply(200, delay=30.0)]
    sender = make_sender(client, timeout_s=60.0)
    task = asyncio.create_task(sender.deliver(receiver.url, "batch.completed", PAYLOAD, SECRET))
    await asyncio.wait_for(receiver.wait_for_request(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def test_cancellation_during_the_backoff_propagates(
    receiver: Receiver, client: httpx.AsyncClient
) -> None:
    receiver.script = [Reply(500)]
    sender = WebhookSender(
        client, local_guard(), backoff_base_s=30.0, rng=UpperBound(), timeout_s=5.0
    )
    task = asyncio.create_task(sender.deliver(receiver.url, "batch.completed", PAYLOAD, SECRET))
    await asyncio.wait_for(receiver.wait_for_request(), 5)
    await asyncio.sleep(0.2)
    assert not task.done()  # waiting out the (real) 30 s backoff
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(receiver.requests) == 1


async def test_a_failing_on_attempt_does_not_stop_delivery(
    receiver: Receiver, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    receiver.script = [Reply(500), Reply(200)]
    calls: list[int] = []

    async def broken(attempt: DeliveryAttempt) -> None:
        calls.append(attempt.attempt)
        raise RuntimeError("database is down")

    with caplog.at_level(logging.ERROR, logger="promptgate.batches.webhooks"):
        result = await make_sender(client).deliver(
            receiver.url, "batch.completed", PAYLOAD, SECRET, on_attempt=broken
        )
    assert result.delivered and result.attempts == 2
    assert calls == [1, 2]
    assert sum("on_attempt failed" in r.getMessage() for r in caplog.records) == 2


async def test_a_payload_that_is_not_json_fails_without_raising(
    receiver: Receiver, client: httpx.AsyncClient
) -> None:
    attempts = Attempts()
    result = await make_sender(client).deliver(
        receiver.url, "batch.completed", {"when": datetime.now(UTC)}, SECRET, on_attempt=attempts
    )
    assert not result.delivered
    assert result.attempts == 0
    assert "not JSON" in result.last_error
    assert receiver.requests == []
    assert attempts.seen == []


async def test_unexpected_errors_do_not_escape(receiver: Receiver) -> None:
    class Exploding(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            raise RuntimeError("boom")

    sleeps = Sleeps()
    async with httpx.AsyncClient(transport=Exploding()) as exploding:
        result = await make_sender(exploding, sleeps=sleeps).deliver(
            receiver.url, "batch.completed", PAYLOAD, SECRET
        )
    assert not result.delivered
    assert result.attempts == 1
    assert "RuntimeError: boom" in result.last_error
    assert sleeps.delays == []


async def test_constructor_rejects_nonsense(client: httpx.AsyncClient) -> None:
    guard = local_guard()
    with pytest.raises(ValueError):
        WebhookSender(client, guard, max_attempts=0)
    with pytest.raises(ValueError):
        WebhookSender(client, guard, timeout_s=0)
    with pytest.raises(ValueError):
        WebhookSender(client, guard, backoff_base_s=-1)
