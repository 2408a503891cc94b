"""``fastmta egress status``: each source, its warm-up per provider and what each
(site, source) learned, computed from the spool's ``egress`` records.  Pure."""

from __future__ import annotations

from collections.abc import Iterable

from fastmta.config import Config
from fastmta.egress.egress import Egress


def egress_status(cfg: Config, items: Iterable[tuple[bytes, bytes]], now_wall: float) -> dict:
    """The status document (``--json``): ``sources`` (with ``providers``) and ``learned``."""
    eg = Egress(cfg)
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
