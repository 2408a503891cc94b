"""The delivery memory: what a (site, source) learned, saved and restored.  Pure.

A record (``Learned``) keeps the adaptive connection limit, the level that last throttled
(the ceiling), the learned message rate, the suspension and its end (wall clock), the
growing suspension length, the server limits learned from replies, and counters.  The
engine writes the records of its busy sites every ``[egress] flush_s`` and when it stops;
a new run restores a site's record when it first sends there.

Decay (documented in docs/egress.md): a record of age ``a`` (egress clock) weighs
``w = 0.5 ** (a / memory_half_life_s)``; the restored connection limit is
``start + (learned - start) * w`` (start = ``initial_connections``), the restored rate is
``learned_rate * w`` (old knowledge is used more cautiously, never more boldly), the
ceiling is kept while ``w >= 0.25`` (two half-lives) and is not probed above for
``PROBE_HOLD`` probe intervals after the restart; a record older than
``memory_forget_s`` is ignored.  A suspension whose end has not passed is restored as is
(its remaining wall-clock time), whatever the age: a block survives a restart.
"""

from __future__ import annotations

from typing import Any

import msgspec

KEEP_CEILING_WEIGHT = 0.25
PROBE_HOLD = 4  # probe intervals before the first probe above a restored ceiling


class Learned(msgspec.Struct, kw_only=True):
    """The persisted state of one (site, source)."""

    site: str
    source: str
    provider: str = ""
    saved_at: float = 0.0  # egress clock (age and decay)
    saved_wall: float = 0.0  # wall clock (suspension ends)
    limit: int = 0
    ceiling: int | None = None
    rate: float | None = None
    suspended_until_wall: float = 0.0
    suspend_reason: str = ""
    suspend_s: float = 0.0
    msgs_cap: int = 0
    rcpts_cap: int = 0
    throttles: int = 0
    blocks: int = 0
    sent: int = 0


def snapshot(shaper: Any, *, site: str, source: str, provider: str, now_mono: float,
             now_egress: float, now_wall: float, msgs_cap: int = 0,
             rcpts_cap: int = 0, base: Learned | None = None) -> Learned:
    """The record of a live ``SiteShaper`` (duck-typed: the engine's shaper).
    ``base``: the record it was restored from (its counters carry on)."""
    until = shaper.suspended_until
    susp_wall = now_wall + (until - now_mono) if until > now_mono else 0.0
    prev = base or Learned(site=site, source=source)
    return Learned(site=site, source=source, provider=provider, saved_at=now_egress,
                   saved_wall=now_wall, limit=shaper.limit, ceiling=shaper.ceiling,
                   rate=shaper.rate, suspended_until_wall=susp_wall,
                   suspend_reason=shaper.suspend_reason if susp_wall else "",
                   suspend_s=shaper.suspend_s, msgs_cap=msgs_cap, rcpts_cap=rcpts_cap,
                   throttles=prev.throttles + shaper.throttles,
                   blocks=prev.blocks + shaper.blocks, sent=prev.sent + shaper.sent)


def weight(age_s: float, half_life_s: float) -> float:
    """How much a record of this age counts (1 = fresh)."""
    if half_life_s <= 0:
        return 1.0
    return 0.5 ** (max(0.0, age_s) / half_life_s)


def restore(shaper: Any, rec: Learned, *, now_mono: float, now_egress: float,
            now_wall: float, half_life_s: float, forget_s: float) -> bool:
    """Apply a record to a fresh shaper (module docstring).  False = too old, ignored."""
    age = now_egress - rec.saved_at
    if forget_s > 0 and age > forget_s:
        return False
    w = weight(age, half_life_s)
    start = shaper.limit
    if rec.limit:
        limit = round(start + (rec.limit - start) * w)
        shaper.limit = max(shaper.min_limit, min(shaper.max_limit, limit))
    if rec.ceiling is not None and w >= KEEP_CEILING_WEIGHT:
        shaper.ceiling = rec.ceiling
        shaper.limit = min(shaper.limit, max(shaper.min_limit, rec.ceiling - 1))
        # a ceiling found by the previous run is trusted for a while: the first probe
        # above it waits PROBE_HOLD probe intervals (then probing goes on as usual)
        shaper.last_probe = now_mono + (PROBE_HOLD - 1) * shaper.p.probe_interval_s
    if rec.rate is not None and shaper.p.adaptive_rate:
        shaper.rate = max(0.5, rec.rate * w)
        shaper.last_rate_step = now_mono
    shaper.ceiling_at = now_mono
    if rec.suspended_until_wall > now_wall:
        shaper.suspended_until = now_mono + (rec.suspended_until_wall - now_wall)
        shaper.suspend_reason = rec.suspend_reason or "blocked"
        if rec.suspend_s:
            shaper.suspend_s = rec.suspend_s
    return True
