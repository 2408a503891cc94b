"""Retry schedule for soft failures: growing, jittered intervals within the validity.  Pure.

Interval after the n-th failed attempt (n >= 1): ``initial * factor**(n-1)``, capped at
``maximum``, then multiplied by a random factor in ``[1 - jitter, 1 + jitter]`` so that
the retries of one burst of deferrals spread out instead of hitting the destination
together again.  When the next attempt would fall after the end of the validity period,
``next_attempt_ms`` returns None: the recipient expires (failed, reason kept).
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Parameters of the schedule (seconds)."""

    initial_s: float = 300.0
    maximum_s: float = 4 * 3600.0
    factor: float = 2.0
    jitter: float = 0.2

    def interval_s(self, attempts: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after ``attempts`` failed attempts (>= 1)."""
        n = max(1, attempts)
        base = min(self.maximum_s, self.initial_s * self.factor ** min(n - 1, 64))
        if self.jitter > 0:
            r = (rng or random).uniform(1.0 - self.jitter, 1.0 + self.jitter)
            base *= r
        return max(0.0, base)


def next_attempt_ms(attempts: int, now_ms: int, expires_ms: int | None,
                    policy: RetryPolicy = RetryPolicy(),
                    rng: random.Random | None = None) -> int | None:
    """Epoch ms of the next attempt after ``attempts`` failures, or None when it would
    be at or past ``expires_ms`` (the end of the validity period)."""
    due = now_ms + int(policy.interval_s(attempts, rng) * 1000)
    if expires_ms is not None and due >= expires_ms:
        return None
    return due


def parse_duration(text: str | float | int) -> float:
    """``"3d"``, ``"12h"``, ``"30m"``, ``"45s"``, ``"1d12h"`` or a number of seconds -> s."""
    if isinstance(text, int | float):
        return float(text)
    s = text.strip().lower()
    if not s:
        raise ValueError("empty duration")
    try:
        return float(s)
    except ValueError:
        pass
    units = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
    total, num = 0.0, ""
    for ch in s:
        if ch.isdigit() or ch == ".":
            num += ch
        elif ch in units and num:
            total += float(num) * units[ch]
            num = ""
        elif ch == " ":
            continue
        else:
            raise ValueError(f"invalid duration {text!r} (use e.g. 3d, 12h, 30m, 45s)")
    if num:
        raise ValueError(f"invalid duration {text!r}: missing unit after {num}")
    return total
