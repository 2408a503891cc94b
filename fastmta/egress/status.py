"""``fastmta egress status``: each source, its warm-up per provider and what each
(site, source) learned, computed from the spool's ``egress`` records.  Pure."""

from __future__ import annotations

from collections.abc import Iterable

from fastmta.config import Config
from fastmta.egress.egress import Egress

#: per-source totals over its provider rows (warm sources too: counted without a cap)
TOTALS = ("used_today", "used_this_hour", "attempts_today", "throttles_today",
          "blocks_today", "deferred_today")


def usage(rows: list[dict]) -> dict:
    """A source's use today over every provider: the totals of ``TOTALS``, the daily and
    hourly allowance (the sum of the rows' caps; None when a row has no cap: warm),
    and the last use (egress time; None before the first message)."""
    out: dict = {k: sum(r[k] for r in rows) for k in TOTALS}
    capped = bool(rows) and all(r["daily_cap"] is not None for r in rows)
    out["daily_allowance"] = sum(r["daily_cap"] for r in rows) if capped else None
    out["hourly_allowance"] = sum(r["hourly_cap"] for r in rows) if capped else None
    out["last_used"] = max((r["last_used"] for r in rows if r["last_used"]), default=None)
    return out


def egress_status(cfg: Config, items: Iterable[tuple[bytes, bytes]], now_wall: float,
                  clock=None) -> dict:
    """The status document (``--json``): ``sources`` (with ``providers`` and their
    totals) and ``learned``.  ``clock``: the egress clock (tests; default: the config's)."""
    eg = Egress(cfg, clock=clock)
    eg.load(items, now_wall)
    warm = eg.status()
    sources = []
    for s in eg.model.sources.values():
        rows = [w for w in warm if w["source"] == s.name]
        sources.append({
            "name": s.name, "source_ip": s.ip or None, "ehlo_name": s.ehlo_name,
            "warmup": s.warmup, "plan": s.plan if s.warmup else None,
            "pools": [p.name for p in eg.model.pools.values()
                      if any(m == s.name and w > 0 for m, w in p.members)],
            "day": max((r["day"] for r in rows), default=0),
            "providers": rows,
            **usage(rows),
        })
    learned = []
    for (site, source), rec in sorted(eg.learned.items()):
        until = rec.suspended_until_wall
        learned.append({
            "site": site, "source": source, "provider": rec.provider,
            "connections": rec.limit, "throttled_at": rec.ceiling,
            "rate_per_s": round(rec.rate, 2) if rec.rate is not None else None,
            "suspended_for_s": round(until - now_wall, 1) if until > now_wall else 0,
            "suspend_reason": rec.suspend_reason if until > now_wall else "",
            "throttles": rec.throttles, "blocks": rec.blocks, "sent": rec.sent,
            "age_s": round(eg.clock.now() - rec.saved_at, 1),
        })
    return {"clock_factor": eg.clock.factor, "egress_time": eg.clock.now(),
            "sources": sources, "learned": learned}
