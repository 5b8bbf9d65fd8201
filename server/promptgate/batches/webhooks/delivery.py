"""Webhook delivery: signed POSTs with retries, through the SSRF guard.

``WebhookSender.deliver`` POSTs with retries: connection errors, timeouts, 408,
429 and 5xx are retried after ``Retry-After`` (capped) or an exponential
backoff with full jitter (both from ``promptgate.backoff``); any 2xx is
success; redirects and other 4xx are final, as is a guard refusal. Each
attempt re-checks the destination, so a host whose DNS changed to a forbidden
address since the batch was accepted is refused. ``deliver`` never raises (but
for cancellation): it returns a ``DeliveryResult`` and reports every attempt
to ``on_attempt``.

DNS rebinding. For ``http://`` callbacks the sender connects to the very
address the guard checked (the URL's host is replaced by that address and the
``Host`` header keeps the name). For ``https://`` the name is kept, so that
TLS verifies the certificate against it; a rebound address would have to
present a valid certificate for the caller's host name, so the clients given
to ``WebhookSender`` must verify certificates (httpx's default).

The ``httpx.AsyncClient`` belongs to the caller, who creates and closes it.
Redirects are never followed, whatever the client's own setting.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import httpx

from promptgate.backoff import full_jitter, retry_after_delay
from promptgate.batches.webhooks.guard import CallbackGuard, IPAddress, UnresolvableCallbackHost
from promptgate.batches.webhooks.signing import SIGNATURE_HEADER, encode_body, sign
from promptgate.errors import InvalidArgument

__all__ = [
    "EVENT_HEADER",
    "USER_AGENT",
    "DeliveryAttempt",
    "DeliveryResult",
    "WebhookSender",
]

log = logging.getLogger(__name__)

EVENT_HEADER: Final = "X-Promptgate-Event"
USER_AGENT: Final = "promptgate-webhooks/1"


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
        if retry_after is not None:  # already capped at backoff_max_s by _classify
            return retry_after
        return full_jitter(
            attempt, base_s=self._backoff_base_s, cap_s=self._backoff_max_s, rng=self._rng
        )

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
            retry_after = retry_after_delay(
                response.headers.get("retry-after"), now=self._clock(), cap_s=self._backoff_max_s
            )
            return _Outcome(status=status, error=phrase, retryable=True, retry_after=retry_after)
        if 300 <= status < 400:
            return _Outcome(status=status, error=f"{phrase} (redirects are not followed)")
        return _Outcome(status=status, error=phrase)
