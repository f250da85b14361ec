"""The sliding-window counter behind the rate limits (pure: times are passed in)."""

from __future__ import annotations

from territoire_data.api.security import SlidingWindowCounter


def test_allows_up_to_the_limit_then_tells_when_to_retry() -> None:
    counter = SlidingWindowCounter(60)
    assert [counter.hit("ip:a", 3, now=600.0 + i) for i in range(3)] == [0, 0, 0]
    retry = counter.hit("ip:a", 3, now=610.0)
    assert 1 <= retry <= 50  # the rest of the current minute
    assert counter.hit("ip:b", 3, now=610.0) == 0  # identities are counted apart


def test_the_previous_minute_weighs_by_the_share_still_in_the_window() -> None:
    counter = SlidingWindowCounter(60)
    for i in range(10):
        assert counter.hit("k", 10, now=660.0 - 10 + i * 0.1) == 0
    # 6 s into the next minute, 90 % of last minute's 10 requests still count (9): one more is allowed
    assert counter.hit("k", 10, now=666.0) == 0
    assert counter.hit("k", 10, now=666.0) == 54
    # half-way through, 5 of the previous minute + 1 of this one count: 4 more are allowed
    assert [counter.hit("k", 10, now=690.0) for _ in range(5)] == [0, 0, 0, 0, 30]


def test_counts_older_than_the_previous_minute_are_forgotten() -> None:
    counter = SlidingWindowCounter(60)
    for _ in range(5):
        counter.hit("k", 5, now=60.0)
    assert counter.hit("k", 5, now=61.0) > 0
    assert counter.hit("k", 5, now=60.0 * 3 + 1) == 0  # two windows later: nothing left
