"""Send guards as pure policy: decisions from counts (no spool, no clock of their own).

* ``bounce_decision``: a delivery whose hard-bounce rate is above ``bounce_rate_limit``
  after at least ``bounce_min_attempts`` attempts is paused (the list needs cleaning
  before it hurts the IPs' reputation).
* ``complaint_decision``: the complaint rate (ARF reports / messages delivered) of one
  delivery at one mailbox provider over a sliding window: above ``complaint_rate_warn``
  a warning, above ``complaint_rate_limit`` a pause (Gmail: keep it under 0.1%, never
  reach 0.3%).
* ``SlidingCounts``: per-key counts in time buckets, summed over the window.
* ``provider_group``: the mailbox provider of a recipient domain (the big consumer
  providers' domains grouped, any other domain its own group).
"""

from __future__ import annotations

from collections import deque

import msgspec

__all__ = ["Decision", "bounce_decision", "complaint_decision", "SlidingCounts",
           "provider_group", "PROVIDER_DOMAINS"]

PROVIDER_DOMAINS: dict[str, tuple[str, ...]] = {
    "google": ("gmail.com", "googlemail.com"),
    "yahoo": ("yahoo.com", "ymail.com", "rocketmail.com", "aol.com", "yahoo.co.uk",
              "yahoo.fr", "yahoo.de", "yahoo.co.jp", "aim.com"),
    "microsoft": ("outlook.com", "hotmail.com", "live.com", "msn.com", "hotmail.co.uk",
                  "hotmail.fr", "live.fr"),
    "apple": ("icloud.com", "me.com", "mac.com"),
}
_GROUP = {d: p for p, ds in PROVIDER_DOMAINS.items() for d in ds}


def provider_group(domain: str) -> str:
    d = domain.lower().rstrip(".")
    return _GROUP.get(d, d)


class Decision(msgspec.Struct, frozen=True):
    """``ok``, ``warn`` or ``pause``, the rate that decided, and a sentence for the event."""

    action: str
    rate: float = 0.0
    detail: str = ""


def bounce_decision(attempts: int, hard: int, *, limit: float = 0.05,
                    min_attempts: int = 1000) -> Decision:
    if attempts < min_attempts or attempts <= 0:
        return Decision("ok", hard / attempts if attempts else 0.0)
    rate = hard / attempts
    if rate > limit:
        return Decision("pause", rate,
                        f"hard-bounce rate {rate:.2%} ({hard} of {attempts} attempts) is above "
                        f"{limit:.2%}: the list needs cleaning before it hurts the sending "
                        "IPs; remove the bad addresses, then `fastmta admin resume`")
    return Decision("ok", rate)


def complaint_decision(delivered: int, complaints: int, *, limit: float = 0.003,
                       warn: float = 0.001, min_messages: int = 1000,
                       provider: str = "") -> Decision:
    if delivered <= 0:
        return Decision("ok")
    rate = complaints / delivered
    at = f" at {provider}" if provider else ""
    if delivered < min_messages:
        return Decision("ok", rate)
    if rate >= limit:
        return Decision("pause", rate,
                        f"complaint rate{at} {rate:.2%} ({complaints} complaints for "
                        f"{delivered} delivered) reached {limit:.2%}: providers junk or "
                        "block above this; fix the targeting, then `fastmta admin resume`")
    if rate >= warn:
        return Decision("warn", rate,
                        f"complaint rate{at} {rate:.2%} ({complaints} for {delivered}) is "
                        f"above {warn:.2%} (Gmail's recommended ceiling)")
    return Decision("ok", rate)


class SlidingCounts:
    """Counts per key in ``bucket_s`` buckets; ``total(key, now)`` over ``window_s``."""

    def __init__(self, window_s: float, bucket_s: float = 60.0) -> None:
        self.window_s = window_s
        self.bucket_s = max(1e-3, min(bucket_s, window_s))
        self._b: dict[str, deque[list]] = {}

    def add(self, key: str, now: float, n: int = 1) -> None:
        q = self._b.setdefault(key, deque())
        start = now - (now % self.bucket_s)
        if q and q[-1][0] == start:
            q[-1][1] += n
        else:
            q.append([start, n])
        self._trim(q, now)

    def _trim(self, q: deque, now: float) -> None:
        while q and q[0][0] + self.bucket_s <= now - self.window_s:
            q.popleft()

    def total(self, key: str, now: float) -> int:
        q = self._b.get(key)
        if not q:
            return 0
        self._trim(q, now)
        return sum(n for _, n in q)

    def keys(self) -> list[str]:
        return list(self._b)
