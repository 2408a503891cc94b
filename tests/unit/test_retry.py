from __future__ import annotations

import random

import pytest

from fastmta.engine.retry import RetryPolicy, next_attempt_ms, parse_duration


def test_intervals_grow_and_are_capped():
    p = RetryPolicy(initial_s=60, maximum_s=600, factor=2, jitter=0)
    assert [p.interval_s(n) for n in range(1, 7)] == [60, 120, 240, 480, 600, 600]


def test_jitter_spreads_within_bounds():
    p = RetryPolicy(initial_s=100, maximum_s=1000, jitter=0.2)
    rng = random.Random(1)
    values = [p.interval_s(1, rng) for _ in range(200)]
    assert min(values) >= 80 and max(values) <= 120
    assert len({round(v, 3) for v in values}) > 150


def test_next_attempt_bounded_by_validity():
    p = RetryPolicy(initial_s=60, maximum_s=600, jitter=0)
    assert next_attempt_ms(1, 1_000_000, 2_000_000, p) == 1_060_000
    assert next_attempt_ms(5, 1_000_000, 1_500_000, p) is None  # 600 s > validity left
    assert next_attempt_ms(5, 1_000_000, None, p) == 1_600_000


def test_parse_duration():
    assert parse_duration("3d") == 3 * 86400
    assert parse_duration("1d12h") == 1.5 * 86400
    assert parse_duration("90") == 90
    assert parse_duration("30m") == 1800
    for bad in ("", "3x", "12"[:0], "5 days", "3d4"):
        with pytest.raises(ValueError):
            parse_duration(bad)
