"""How long to wait before retrying: exponential backoff and ``Retry-After``.

Provider calls (``execution.router``), their error answers
(``providers.http``, ``errors.ProviderError``) and webhook deliveries
(``batches.webhooks.delivery``) all wait before trying again. What they share:

- ``full_jitter``: exponential backoff with full jitter ("Exponential Backoff
  And Jitter", AWS Architecture Blog): after the n-th failed attempt, a random
  delay in ``[0, min(cap, base * 2**(n-1))]``.
- ``retry_after_delay``: a ``Retry-After`` header value, delta-seconds (``7``)
  or an HTTP-date (``Wed, 21 Oct 2015 07:28:00 GMT``), as a delay in seconds.
- ``sane_delay``: a delay from outside promptgate as a number of seconds that
  is safe to compute with and to wait: never NaN, never negative, never more
  than a cap (a day by default).

The remote end of a retry is not trusted: ``Retry-After: 99999999999``, a date
in the year 9999, ``1e300``, ``NaN`` or garbage must neither crash the caller
nor make it wait for ever. Every function here returns either None ("no usable
delay": the caller falls back to its backoff) or a finite delay within
``[0, cap]``. Everything is pure (the clock and the random source are
arguments), so nothing here blocks or sleeps.
"""

from __future__ import annotations

import asyncio
import math
import random
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Final

__all__ = ["MAX_DELAY_S", "full_jitter", "parse_seconds", "retry_after_delay", "sane_delay"]

MAX_DELAY_S: Final = 86_400.0
"""The longest delay taken from outside promptgate: a day."""

# base * 2**n must stay a float: past 2**62 every sane cap is long reached.
_MAX_EXPONENT: Final = 62


def full_jitter(attempt: int, *, base_s: float, cap_s: float, rng: random.Random) -> float:
    """The delay after the ``attempt``-th failure (1 for the first): exponential, full jitter.

    A random delay in ``[0, min(cap_s, base_s * 2**(attempt - 1))]``. The
    ceiling is computed without overflow for any ``attempt``; a NaN or negative
    ceiling counts as 0 and an infinite one (an infinite ``cap_s`` and
    ``base_s``) as ``MAX_DELAY_S``. ``rng.uniform`` is called exactly once.
    """
    exponent = min(max(attempt - 1, 0), _MAX_EXPONENT)
    ceiling = min(cap_s, base_s * 2.0**exponent)
    if math.isnan(ceiling) or ceiling < 0:
        ceiling = 0.0
    elif math.isinf(ceiling):
        ceiling = MAX_DELAY_S
    return rng.uniform(0.0, ceiling)


def sane_delay(seconds: float | None, *, cap_s: float = MAX_DELAY_S) -> float | None:
    """``seconds`` as a delay in ``[0, cap_s]``; None unless it is a non-negative number.

    Anything ``float()`` accepts counts as a number; NaN, negative numbers and
    what ``float()`` refuses (or cannot hold) are None. Larger delays,
    infinity included, are ``cap_s``.
    """
    if seconds is None:
        return None
    try:
        value = float(seconds)  # providers' values are not always the floats they claim
    except (TypeError, ValueError, OverflowError):
        return None
    if math.isnan(value) or value < 0:
        return None
    return min(value, cap_s)


def parse_seconds(text: str | None) -> float | None:
    """A non-negative number of seconds written as text (``"7"``, ``"0.25"``), uncapped.

    None for anything else: no digits (``inf``, ``NaN``), a negative number,
    garbage. A number too large for a float (a very long string of digits) is
    ``math.inf``: a huge delay rather than none; callers cap it.
    """
    if text is None:
        return None
    text = text.strip()
    if not any("0" <= char <= "9" for char in text):
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return None if math.isnan(value) or value < 0 else value


def retry_after_delay(value: str | None, *, now: float, cap_s: float = MAX_DELAY_S) -> float | None:
    """The delay a ``Retry-After`` value asks for, in ``[0, cap_s]``; None if unusable.

    ``value`` is delta-seconds or an HTTP-date, counted from ``now`` (Unix
    seconds); a date in the past is 0, a date without a zone is UTC. Longer
    delays (``99999999999``, ``Fri, 31 Dec 9999 23:59:59 GMT``, ``1e300``)
    are ``cap_s``; garbage, ``NaN`` and negative numbers are None.
    """
    if value is None:
        return None
    seconds = parse_seconds(value)
    if seconds is None:
        try:
            when = parsedate_to_datetime(value.strip())
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            seconds = max(0.0, when.timestamp() - now)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return sane_delay(seconds, cap_s=cap_s)


class Backoff:
    """Delays for retrying one piece of work until it succeeds: ``base_s`` doubling up
    to ``cap_s``, each drawn from its upper half (never near zero, so a failing
    store is not hammered)."""

    def __init__(self, base_s: float = 0.1, cap_s: float = 2.0) -> None:
        self._base = base_s
        self._cap = cap_s
        self._next = base_s

    def reset(self) -> None:
        """Start again from the shortest delay (the last try worked)."""
        self._next = self._base

    def next_delay(self) -> float:
        """The next delay (and double the one after)."""
        delay = self._next
        self._next = min(self._cap, self._next * 2)
        return delay * random.uniform(0.5, 1.0)

    async def sleep(self) -> None:
        """Wait the next delay."""
        await asyncio.sleep(self.next_delay())
