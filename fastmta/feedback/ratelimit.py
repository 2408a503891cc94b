"""Per-client rate limits of the inbound listener: token buckets keyed by client address
(messages per second and new connections per second, each with a burst).

Pure: the caller passes the clock (``time.monotonic()`` seconds), so the policy is tested
without sockets.  Memory is bounded: at most ``max_clients`` buckets; when full, the
buckets that have refilled completely (idle clients: forgetting them changes nothing)
are dropped first, then the oldest.
"""

from __future__ import annotations


class Buckets:
    """``allow(key, now)``: True and one token taken, or False (over the rate)."""

    __slots__ = ("rate", "burst", "max_clients", "_b")

    def __init__(self, rate: float, burst: float = 0.0, *, max_clients: int = 100_000) -> None:
        if rate < 0 or burst < 0:
            raise ValueError("rate and burst must be >= 0")
        self.rate = float(rate)
        # a burst below one token would refuse everything
        self.burst = max(1.0, float(burst) if burst else 2.0 * self.rate)
        self.max_clients = max_clients
        self._b: dict[str, list[float]] = {}  # key -> [tokens, last refill time]

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def allow(self, key: str, now: float) -> bool:
        if self.rate <= 0:
            return True
        b = self._b.get(key)
        if b is None:
            if len(self._b) >= self.max_clients:
                self._prune(now)
            b = self._b[key] = [self.burst, now]
        else:
            b[0] = min(self.burst, b[0] + (now - b[1]) * self.rate)
            b[1] = now
        if b[0] >= 1.0:
            b[0] -= 1.0
            return True
        return False

    def retry_after(self, key: str) -> float:
        """Seconds until ``key`` has one token again (0 when it has one now)."""
        b = self._b.get(key)
        if b is None or self.rate <= 0 or b[0] >= 1.0:
            return 0.0
        return (1.0 - b[0]) / self.rate

    def _prune(self, now: float) -> None:
        full = [k for k, (tok, t) in self._b.items()
                if tok + (now - t) * self.rate >= self.burst]
        for k in full:
            del self._b[k]
        while len(self._b) >= self.max_clients:  # all busy: drop the oldest entries
            del self._b[next(iter(self._b))]

    def __len__(self) -> int:
        return len(self._b)
