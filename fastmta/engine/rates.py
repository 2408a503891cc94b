"""Rate limiters of the shaping policy.  Pure: no clock of their own (callers pass ``now``).

- ``Gcra``: generic cell rate algorithm (a token bucket without a timer).
- ``ProviderBudget``: connection and message-rate caps summed over a provider's sites.
"""

from __future__ import annotations

import math

INF = math.inf


class Gcra:
    """GCRA rate limiter: ``rate_per_s`` sustained, up to ``burst`` back to back."""

    __slots__ = ("interval", "tolerance", "tat")

    def __init__(self, rate_per_s: float, burst: int = 1) -> None:
        self.tat = -INF
        self.interval = 0.0
        self.tolerance = 0.0
        self.set_rate(rate_per_s, burst)

    def set_rate(self, rate_per_s: float, burst: int = 1) -> None:
        """Change the rate; the theoretical arrival time is kept (no burst on change)."""
        if rate_per_s <= 0:
            raise ValueError("rate must be positive")
        self.interval = 1.0 / rate_per_s
        self.tolerance = self.interval * (max(1, burst) - 1)

    def delay(self, now: float, n: int = 1) -> float:
        """Seconds until ``n`` cells conform (0.0 = now)."""
        tat = max(self.tat, now)
        wait = tat + self.interval * (n - 1) - self.tolerance - now
        return wait if wait > 1e-9 else 0.0

    def take(self, now: float, n: int = 1) -> float:
        """Consume ``n`` cells if they conform now and return 0.0; else return the delay."""
        wait = self.delay(now, n)
        if wait > 0.0:
            return wait
        self.tat = max(self.tat, now) + self.interval * n
        return 0.0


def burst_for(rate: float, configured: int) -> int:
    """The burst of a limiter: ``configured`` when set, else about 0.1 s of the rate."""
    return configured if configured > 0 else max(1, int(rate * 0.1))


class ProviderBudget:
    """Caps summed over all sites of one provider (one per provider per worker)."""

    def __init__(self, name: str, max_connections: int | None = None,
                 msg_rate_per_s: float | None = None) -> None:
        self.name = name
        self.max_connections = max_connections
        self.active = 0
        self.rate = Gcra(msg_rate_per_s, burst_for(msg_rate_per_s, 0)) if msg_rate_per_s else None

    def may_open(self) -> bool:
        return self.max_connections is None or self.active < self.max_connections

    def acquire(self) -> None:
        self.active += 1

    def release(self) -> None:
        self.active = max(0, self.active - 1)
