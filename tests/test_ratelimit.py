"""The token bucket capping what the gateway samples per second."""

from __future__ import annotations

import math

import pytest

from gateway.ratelimit import TokenBucket


def taken(bucket: TokenBucket, times: list[float]) -> int:
    return sum(bucket.take(t) for t in times)


def test_a_new_bucket_allows_one_seconds_worth_at_once_then_refuses() -> None:
    bucket = TokenBucket(10, now=0.0)
    assert taken(bucket, [0.0] * 25) == 10
    assert not bucket.take(0.05)  # half a token back


@pytest.mark.parametrize("rate", [0.5, 3.0, 10.0, 250.0])
def test_steady_traffic_gets_the_rate(rate: float) -> None:
    """1,000 events a second for 60 s: about ``rate`` a second pass, plus the first burst."""
    bucket = TokenBucket(rate, now=0.0)
    n = taken(bucket, [i / 1000 for i in range(60_000)])
    assert max(1.0, rate) + rate * 60 - 1 <= n <= max(1.0, rate) + rate * 60 + 1


def test_idle_time_refills_up_to_one_second_only() -> None:
    bucket = TokenBucket(4, now=0.0)
    assert taken(bucket, [0.0] * 4) == 4
    assert taken(bucket, [100.0] * 10) == 4  # a long pause buys no bigger burst


def test_a_rate_below_one_still_allows_single_events() -> None:
    bucket = TokenBucket(0.5, now=0.0)
    assert bucket.take(0.0)
    assert not bucket.take(1.0)
    assert bucket.take(2.0)


def test_time_going_backwards_adds_nothing() -> None:
    bucket = TokenBucket(2, now=10.0)
    assert taken(bucket, [10.0, 10.0]) == 2
    assert not bucket.take(5.0)
    assert not bucket.take(10.0)
    assert bucket.take(10.5)


@pytest.mark.parametrize("rate", [0.0, -1.0, math.inf, math.nan])
def test_a_rate_must_be_positive_and_finite(rate: float) -> None:
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(rate, now=0.0)
