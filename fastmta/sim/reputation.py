"""Sender reputation of the simulated providers: per source IP allowances that grow.

A provider with ``Behaviour.reputation`` keeps, per sender IP, a reputation on the
world's clock (``WorldSpec.time_factor``/``time_origin``: the same compression as the
engine's egress clock).  An unknown IP may deliver ``rep_cold_daily`` recipients a day
and ``rep_hourly_fraction`` of that per hour; each *clean* day (traffic, and no refusal
for volume) multiplies the allowance by ``rep_growth``.  Past the hourly allowance it
answers Gmail's ``421 4.7.28`` rate text, past the daily one Yahoo's ``421 4.7.0
[TSS04]`` deferral; a burst from a cold IP (more than ``rep_burst_fraction`` of its daily allowance within
60 s of egress time while that allowance is below ``rep_warm_daily``) earns a block of
``rep_block_s`` (``421 4.7.1 [TS03]`` refusals at MAIL) and a dirty day.  IPs in
``rep_warm_ips`` have an established reputation: no allowance.
"""

from __future__ import annotations

from collections import deque

from fastmta.egress.clock import DAY_S, HOUR_S, EgressClock

R_HOURLY = (b"421-4.7.28 [%s] Our system has detected an unusual rate of unsolicited mail\r\n"
            b"421 4.7.28 originating from your IP address; it has been rate limited.\r\n")
R_DAILY = (b"421 4.7.0 [TSS04] Messages from %s temporarily deferred due to unexpected "
           b"volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/"
           b"error-codes\r\n")
R_BLOCKED = (b"421 4.7.1 [TS03] All messages from %s will be permanently deferred; "
             b"Retrying will NOT succeed. See https://postmaster.yahooinc.com/error-codes\r\n")


class IpReputation:
    __slots__ = ("day", "hour", "used_day", "used_hour", "clean_days", "dirty", "recent",
                 "blocked_until", "refused")

    def __init__(self) -> None:
        self.day = -1
        self.hour = -1
        self.used_day = 0
        self.used_hour = 0
        self.clean_days = 0
        self.dirty = False
        self.recent: deque[float] = deque()
        self.blocked_until = 0.0
        self.refused = 0


class Reputation:
    """Reputation of every sender IP at one provider (module docstring)."""

    def __init__(self, beh, clock: EgressClock) -> None:
        self.beh = beh
        self.clock = clock
        self.ips: dict[str, IpReputation] = {}

    def daily(self, r: IpReputation) -> float:
        b = self.beh
        return b.rep_cold_daily * b.rep_growth ** r.clean_days

    def _roll(self, r: IpReputation, now: float) -> None:
        day, hour = int(now // DAY_S), int(now // HOUR_S)
        if day != r.day:
            if r.day >= 0 and r.used_day and not r.dirty:
                r.clean_days += 1
            r.day, r.used_day, r.dirty = day, 0, False
        if hour != r.hour:
            r.hour, r.used_hour = hour, 0

    def check(self, ip: str, real_now: float) -> bytes | None:
        """At MAIL: None = go on, else the refusal."""
        b = self.beh
        if ip in b.rep_warm_ips:
            return None
        r = self.ips.get(ip)
        if r is None:
            r = self.ips[ip] = IpReputation()
        now = self.clock.now()
        self._roll(r, now)
        bip = ip.encode()
        if now < r.blocked_until:
            r.refused += 1
            return R_BLOCKED % bip
        daily = self.daily(r)
        if r.used_day >= daily:
            r.dirty = True
            r.refused += 1
            return R_DAILY % bip
        if r.used_hour >= daily * b.rep_hourly_fraction:
            r.dirty = True
            r.refused += 1
            return R_HOURLY % bip
        if b.rep_burst_fraction and daily < b.rep_warm_daily:
            q = r.recent
            q.append(now)
            while q and q[0] < now - 60.0:
                q.popleft()
            if len(q) > b.rep_burst_fraction * daily:
                r.blocked_until = now + b.rep_block_s
                r.dirty = True
                r.refused += 1
                q.clear()
                return R_BLOCKED % bip
        return None

    def accepted(self, ip: str, n: int) -> int:
        """Count ``n`` accepted recipients; returns the day index they count for."""
        r = self.ips.get(ip)
        if r is None:
            r = self.ips[ip] = IpReputation()
        self._roll(r, self.clock.now())
        r.used_day += n
        r.used_hour += n
        return r.day
