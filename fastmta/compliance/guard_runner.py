"""The send guards at work: fed from the spool, pausing deliveries through ``ops.admin``.

``GuardRunner.tick()`` runs in the supervisor (``supervisor_ops``), at most once a
second, over the active deliveries:

* bounce guard: the spool's KPIs ``attempts`` and ``failed_hard``;
* complaint guard: complaints recorded with :func:`record_complaints` (the interface the
  feedback work's ARF apply step calls), per mailbox provider (``guards.provider_group``
  of the recipient domain), over ``[compliance] complaint_window_s``, against the
  messages the delivery delivered to that provider's domains (the spool's per-domain KPIs
  ``domain/<d>/sent``, sampled into the same window).

A bounce-guard pause is ``Admin.suspend(delivery=...)`` (state ``paused``); a
complaint-guard pause is ``Admin.suspend(delivery=..., provider=P)``: only that
delivery's recipients at provider P are held, the rest of the delivery goes on.  Each is
an admin event by user ``compliance-guard`` with the reason; ``fastmta admin resume
--delivery N`` releases both (``--provider P`` only that one).
After a resume, a guard judges only what happened since its pause (it does not pause
again for the same bounces or complaints).
"""

from __future__ import annotations

import logging
import os
import time

from fastmta.compliance.guards import (
    SlidingCounts,
    bounce_decision,
    complaint_decision,
    provider_group,
)

log = logging.getLogger("fastmta.compliance")

__all__ = ["record_complaints", "GuardRunner", "COMPLAINT_PREFIX", "GUARD_USER"]

COMPLAINT_PREFIX = "complaint/"
#: complaints already taken from the feedback KPIs, per delivery and recipient domain
IMPORTED_PREFIX = "complaint-imported/"
GUARD_USER = "compliance-guard"


def record_complaints(spool, delivery_id: int, domain: str, n: int = 1,
                      ts_ms: int | None = None) -> str:
    """Record ``n`` spam complaints (ARF reports) about ``delivery_id`` from recipients at
    ``domain``; durable, callable from any process holding the spool.  Returns the key."""
    if n < 1:
        raise ValueError("complaint count must be >= 1")
    t = int(time.time() * 1000) if ts_ms is None else int(ts_ms)
    key = (f"{COMPLAINT_PREFIX}{int(delivery_id)}/{provider_group(domain)}/"
           f"{t:015d}-{os.urandom(4).hex()}")
    spool.control_put(key, str(int(n)).encode())
    return key


class GuardRunner:
    """See module docstring.  ``flags``: delivery id -> guard state (dashboard/status)."""

    def __init__(self, spool, cfg, admin, *, clock=time.time) -> None:
        self.spool = spool
        self.c = cfg.compliance
        self.admin = admin
        self.clock = clock
        self.sent = SlidingCounts(self.c.complaint_window_s)
        self._last_sent: dict[str, int] = {}
        self._since: dict[tuple[int, str], tuple[int, int, float]] = {}  # after a pause
        self.flags: dict[int, dict] = {}
        self.pauses = 0

    def _pause(self, did: int, guard: str, reason: str, provider: str | None = None) -> None:
        """Pause the delivery, or with ``provider`` only its traffic to that provider."""
        try:
            self.admin.suspend(delivery=did, provider=provider,
                               reason=f"{guard} guard: {reason}", user=GUARD_USER)
        except Exception as exc:  # never take the supervisor down
            log.error("guard pause of delivery %s failed: %s", did, exc)
            return
        self.pauses += 1
        self.flags.setdefault(did, {})[guard] = {"state": "paused", "reason": reason}
        log.warning("delivery %s paused by the %s guard: %s", did, guard, reason)

    def tick(self) -> None:
        now = self.clock()
        for d in self.spool.deliveries():
            if d.state != "active":
                continue
            kpis = self.spool.kpis(d.id)
            if self.c.bounce_guard:
                self._bounce(d.id, kpis, now)
            if self.c.complaint_guard:
                self._import_feedback(d.id, kpis, now)
                self._complaints(d.id, kpis, now)
                self._released(d.id)

    def _released(self, did: int) -> None:
        """Drop the "paused" flag of a provider pause an operator has resumed."""
        flags = self.flags.get(did)
        if not flags:
            return
        paused = [g for g, f in flags.items()
                  if g.startswith("complaint:") and f.get("state") == "paused"]
        if not paused:
            return
        still = set(self.admin.paused_providers(did))
        for g in paused:
            if g[len("complaint:"):] not in still:
                del flags[g]

    def _import_feedback(self, did: int, kpis: dict, now: float) -> None:
        """ARF complaints applied by the feedback processor (cumulative KPIs
        ``domain/<d>/complaints``) become windowed complaint records; the count already
        taken is kept in the spool, so a supervisor restart never counts one twice."""
        for k, total in kpis.items():
            if not (k.startswith("domain/") and k.endswith("/complaints")):
                continue
            domain = k[len("domain/"):-len("/complaints")]
            key = f"{IMPORTED_PREFIX}{did}/{domain}"
            seen = int(self.spool.controls(key).get(key) or b"0")
            if total > seen:
                record_complaints(self.spool, did, domain, total - seen, int(now * 1000))
                self.spool.control_put(key, str(int(total)).encode())

    def _bounce(self, did: int, kpis: dict, now: float) -> None:
        a0, h0, _ = self._since.get((did, "bounce"), (0, 0, 0.0))
        attempts, hard = kpis.get("attempts", 0), kpis.get("failed_hard", 0)
        dec = bounce_decision(attempts - a0, hard - h0, limit=self.c.bounce_rate_limit,
                              min_attempts=self.c.bounce_min_attempts)
        if dec.action == "pause":
            self._since[(did, "bounce")] = (attempts, hard, now)
            self._pause(did, "bounce", dec.detail)

    def _complaints(self, did: int, kpis: dict, now: float) -> None:
        # delivered per provider: deltas of the cumulative per-domain KPIs into the window
        per_provider: dict[str, int] = {}
        for k, v in kpis.items():
            if k.startswith("domain/") and k.endswith("/sent"):
                p = provider_group(k[7:-5])
                per_provider[p] = per_provider.get(p, 0) + v
        for p, total in per_provider.items():
            key = f"{did}/{p}"
            delta = total - self._last_sent.get(key, 0)
            if delta > 0:
                self.sent.add(key, now, delta)
            self._last_sent[key] = total
        window_start_ms = int((now - self.c.complaint_window_s) * 1000)
        counts: dict[str, int] = {}
        stale = []
        for key, val in self.spool.controls(f"{COMPLAINT_PREFIX}{did}/").items():
            _, _, prov, ts = key.split("/", 3)
            t = int(ts.split("-", 1)[0])
            if t < window_start_ms:
                stale.append(key)
                continue
            since = self._since.get((did, "complaint:" + prov))
            if since is not None and t <= since[2] * 1000:
                continue
            counts[prov] = counts.get(prov, 0) + int(val or b"1")
        for key in stale[:1000]:
            self.spool.control_put(key, None)
        for prov, n in counts.items():
            delivered = self.sent.total(f"{did}/{prov}", now)
            since = self._since.get((did, "complaint:" + prov))
            if since is not None:
                delivered = max(0, delivered - since[0])
            dec = complaint_decision(delivered, n, limit=self.c.complaint_rate_limit,
                                     warn=self.c.complaint_rate_warn,
                                     min_messages=self.c.complaint_min_messages, provider=prov)
            flag = self.flags.setdefault(did, {})
            if dec.action == "pause":
                self._since[(did, "complaint:" + prov)] = (
                    self.sent.total(f"{did}/{prov}", now), n, now)
                self._pause(did, f"complaint:{prov}", dec.detail, provider=prov)
            elif dec.action == "warn" and flag.get(f"complaint:{prov}", {}).get(
                    "state") != "warning":
                flag[f"complaint:{prov}"] = {"state": "warning", "reason": dec.detail,
                                             "rate": round(dec.rate, 5)}
                log.warning("delivery %s: %s", did, dec.detail)
