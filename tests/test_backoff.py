"""The shared backoff and Retry-After arithmetic: pure functions, hostile inputs."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from promptgate.backoff import (
    MAX_DELAY_S,
    full_jitter,
    parse_seconds,
    retry_after_delay,
    sane_delay,
)

NOW = 1_800_000_000.0


def http_date(unix: float) -> str:
    return format_datetime(datetime.fromtimestamp(unix, UTC), usegmt=True)


class UpperBound(random.Random):
    """Jitter that always picks the largest delay allowed."""

    def uniform(self, a: float, b: float) -> float:
        return b


# ---------------------------------------------------------------------- Retry-After


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("7", 7.0),
        ("  7  ", 7.0),
        ("0", 0.0),
        ("0.25", 0.25),
        ("120", 120.0),
    ],
)
def test_retry_after_delta_seconds(value: str, expected: float) -> None:
    assert retry_after_delay(value, now=NOW) == expected


def test_retry_after_http_date_in_the_future_and_the_past() -> None:
    assert retry_after_delay(http_date(NOW + 30), now=NOW) == 30.0
    assert retry_after_delay(http_date(NOW - 3600), now=NOW) == 0.0
    # RFC 850 and asctime forms are HTTP-dates too; asctime has no zone: UTC.
    assert retry_after_delay("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412420.0) == 60.0
    assert retry_after_delay("Wed Oct 21 07:28:00 2015", now=1445412420.0) == 60.0


@pytest.mark.parametrize(
    "value",
    [
        "99999999999",
        "1e300",
        "9" * 400,  # too large for a float: a huge delay, not none
        "Fri, 31 Dec 9999 23:59:59 GMT",
        http_date(NOW + 10 * 86_400),
    ],
)
def test_retry_after_beyond_the_cap_is_the_cap(value: str) -> None:
    assert retry_after_delay(value, now=NOW) == MAX_DELAY_S
    assert retry_after_delay(value, now=NOW, cap_s=60.0) == 60.0


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "soon",
        "NaN",
        "nan",
        "inf",
        "-Infinity",
        "-3",
        "-0.5",
        "7 seconds",
        "Wed, 32 Oct 2015 07:28:00 GMT",
        "Mon, 01 Jan 10000 00:00:00 GMT",
        "\x00",
        "é",
    ],
)
def test_garbage_retry_after_is_no_delay(value: str | None) -> None:
    assert retry_after_delay(value, now=NOW) is None


@given(st.text(max_size=60))
def test_any_retry_after_is_none_or_within_the_cap(value: str) -> None:
    delay = retry_after_delay(value, now=NOW, cap_s=300.0)
    assert delay is None or 0.0 <= delay <= 300.0


def test_parse_seconds_is_uncapped_and_refuses_words() -> None:
    assert parse_seconds("250") == 250.0
    assert parse_seconds("9" * 400) == math.inf
    assert parse_seconds("inf") is None
    assert parse_seconds("-1") is None
    assert parse_seconds(None) is None


# ---------------------------------------------------------------------- sane_delay


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (None, None),
        (math.nan, None),
        (-1.0, None),
        (0.0, 0.0),
        (2.5, 2.5),
        (1e300, MAX_DELAY_S),
        (math.inf, MAX_DELAY_S),
        (10**400, None),  # float() cannot hold it
    ],
)
def test_sane_delay(seconds: float | None, expected: float | None) -> None:
    assert sane_delay(seconds) == expected


def test_sane_delay_with_its_own_cap() -> None:
    assert sane_delay(500.0, cap_s=300.0) == 300.0
    assert sane_delay(299.0, cap_s=300.0) == 299.0


# ---------------------------------------------------------------------- full jitter


def test_full_jitter_ceiling_doubles_up_to_the_cap() -> None:
    ceilings = [full_jitter(n, base_s=0.5, cap_s=3.0, rng=UpperBound()) for n in range(1, 7)]
    assert ceilings == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_full_jitter_stays_within_bounds_and_is_random() -> None:
    rng = random.Random(7)
    for attempt in range(1, 12):
        ceiling = min(8.0, 0.5 * 2 ** (attempt - 1))
        delays = [full_jitter(attempt, base_s=0.5, cap_s=8.0, rng=rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 100  # jittered, not a fixed delay
    # Full jitter: the whole range is used, small delays included.
    many = [full_jitter(10, base_s=1.0, cap_s=100.0, rng=rng) for _ in range(1000)]
    assert min(many) < 10.0 and max(many) > 90.0


@pytest.mark.parametrize("attempt", [64, 1025, 10**9])
def test_full_jitter_never_overflows_and_never_passes_the_cap(attempt: int) -> None:
    assert full_jitter(attempt, base_s=1.0, cap_s=300.0, rng=UpperBound()) == 300.0
    delay = full_jitter(attempt, base_s=1.0, cap_s=300.0, rng=random.Random(attempt))
    assert 0.0 <= delay <= 300.0


@pytest.mark.parametrize(
    ("base_s", "cap_s", "ceiling"),
    [
        (0.0, 10.0, 0.0),
        (1.0, 0.0, 0.0),
        (-1.0, 10.0, 0.0),
        (math.nan, 10.0, 10.0),  # min(10, nan) is 10: the cap still holds
        (1.0, math.nan, 0.0),
        (math.inf, math.inf, MAX_DELAY_S),
    ],
)
def test_full_jitter_with_degenerate_settings(base_s: float, cap_s: float, ceiling: float) -> None:
    assert full_jitter(3, base_s=base_s, cap_s=cap_s, rng=UpperBound()) == ceiling
