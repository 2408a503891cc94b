"""The operations side of a worker process (hooked into ``worker.py`` by four calls).

- ``on_result(job, result)``: counts outcomes per site/provider, classification counts,
  throttle replies, last error and time in queue per site (sent to the supervisor in
  the heartbeat, where ``metrics`` and the status snapshot use them).
- ``intercept(site, job)``: before a job enters a site queue: applies operator
  suspensions to a new site; fails the job when a bounce order covers its site.
- ``snapshot()``: the heartbeat's ``ops`` part.
- ``run()``: a task that polls the spool's admin controls and logs site state changes
  (suspended, resumed, connection-limit or rate changes) as ``SiteEvent``s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict

from fastmta.compliance.guards import provider_group
from fastmta.engine.shaping import Effect
from fastmta.ops.admin import DELIVERY_PROVIDER, read_controls
from fastmta.records import SiteEvent

log = logging.getLogger("fastmta.ops")

ADMIN_RULE = "admin:suspend"
DNS_SITE = "(dns)"  # recipients that failed before a site was known (resolution)
OTHER_SITE = "(other)"  # sites beyond MAX_SITES in the heartbeat, folded together
MAX_SITES = 1000  # per worker heartbeat (bounded size and metric cardinality)
_LAST_ERRORS = 4  # kept per site


class _SiteOps:
    __slots__ = ("outcomes", "classes", "throttles", "last_error", "queue_ms_sum",
                 "queue_ms_max", "finals", "label", "provider", "state")

    def __init__(self, label: str, provider: str) -> None:
        self.label = label
        self.provider = provider
        self.outcomes: dict[str, int] = defaultdict(int)
        self.classes: dict[str, int] = defaultdict(int)
        self.throttles = 0
        self.last_error: dict | None = None
        self.queue_ms_sum = 0
        self.queue_ms_max = 0
        self.finals = 0
        self.state: tuple = (False, 0, 0.0)  # suspended, limit, rate (last logged)


class WorkerOps:
    """Per-worker operations state (see module docstring)."""

    def __init__(self, worker) -> None:
        self.w = worker
        self.cfg = worker.cfg.ops
        self.sites: dict[str, _SiteOps] = {}
        self.classes: dict[str, int] = defaultdict(int)
        self.created_ms: dict[int, int] = {}
        self.gen = -1
        self.suspensions: dict = {}
        self.bounces: dict = {}
        self.held: set[tuple[int, str]] = set()  # (delivery, provider) paused there
        self._groups: dict[str, str] = {}  # recipient domain -> provider group
        self.applied: dict[str, str] = {}  # site queue key -> suspension key applied
        self.qstate: dict[str, tuple] = {}  # site queue key -> last logged state
        self.events_written = 0
        self.dkim_s = 0.0
        self.dkim_n = 0

    # ------------------------------------------------------------ hot path hooks
    def _site(self, site) -> _SiteOps:
        so = self.sites.get(site.name)
        if so is None:
            prov = site.provider.name if site.provider is not None else ""
            so = self.sites[site.name] = _SiteOps(site.label(), prov)
        return so

    def on_result(self, job, res) -> None:
        """Count one committed-to-be outcome (called for every result)."""
        site = job.site
        key = site.name if site is not None else DNS_SITE  # unresolved: one bucket
        so = self.sites.get(key)
        if so is None:
            if site is not None:
                so = self._site(site)
            else:
                so = self.sites[key] = _SiteOps(key, "")
        outcome = res.outcome
        so.outcomes[outcome] += 1
        if res.bounce_class:
            c = f"{res.bounce_class}/{res.type or '-'}"
            so.classes[c] += 1
            self.classes[c] += 1
        if outcome == "sent":
            return
        if outcome in ("hard", "soft", "expired") and res.code:
            so.last_error = {"ts_ms": res.time_ms, "code": res.code, "enhanced": res.enhanced,
                             "reply": res.reply[:200], "reason": res.reason, "mx": res.mx}
        if outcome in ("hard", "expired", "canceled"):
            self._final(so, job, res)

    def _final(self, so: _SiteOps, job, res) -> None:
        did = job.item.delivery_id
        created = self.created_ms.get(did)
        if created is None:
            try:
                created = self.w.spool.delivery(did).created_ms
            except Exception:  # purged meanwhile
                created = 0
            if len(self.created_ms) > 256:
                self.created_ms.clear()
            self.created_ms[did] = created
        if created and res.time_ms:
            q = res.time_ms - created
            so.queue_ms_sum += q
            so.queue_ms_max = max(so.queue_ms_max, q)
            so.finals += 1

    def observe_dkim(self, seconds: float) -> None:
        """Time spent signing one message (for the DKIM metric)."""
        self.dkim_s += seconds
        self.dkim_n += 1

    def intercept(self, site, job) -> bool:
        """Called before ``enqueue``; True = the job was handled here (bounced, or held
        because its delivery is paused at its mailbox provider)."""
        if self.suspensions:
            self._apply_suspension(site)
            if self.held and self._held(job):
                self.w.scheduler.defer(job, self.cfg.suspend_recheck_s,
                                       reason="paused_at_provider", why="paused_at_provider")
                return True
        if self.bounces:
            order = self.bounces.get(site.name)
            if order is not None and order.active(int(time.time() * 1000)):
                self.w.scheduler._emit(job, "canceled", reason=order.reason)
                return True
        return False

    # ------------------------------------------------------------ heartbeat
    def snapshot(self) -> dict:
        sched = self.w.scheduler
        now = sched.now()
        sites: dict[str, dict] = {}
        items = list(self.sites.items())
        if len(items) > MAX_SITES:
            items.sort(key=lambda kv: -sum(kv[1].outcomes.values()))
            other: dict[str, int] = defaultdict(int)
            for _name, so in items[MAX_SITES - 1:]:
                for k, v in so.outcomes.items():
                    other[k] += v
            items = items[:MAX_SITES - 1]
            sites[OTHER_SITE] = {"label": OTHER_SITE, "provider": "", "outcomes": dict(other),
                                 "classes": {}, "throttles": 0, "last_error": None,
                                 "queue_ms_avg": 0, "queue_ms_max": 0}
        for name, so in items:
            s = sched.sites.get(name)
            row = {
                "label": so.label, "provider": so.provider,
                "outcomes": dict(so.outcomes), "classes": dict(so.classes),
                "throttles": s.throttled if s is not None else so.throttles,
                "last_error": so.last_error,
                "queue_ms_avg": so.queue_ms_sum // so.finals if so.finals else 0,
                "queue_ms_max": so.queue_ms_max,
            }
            if s is not None and s.subs:  # issue #17: the sum of its (site, source) queues
                subs = s.subs
                rates = [x.shaper.msg_rate(now) for x in subs]
                row.update(active=sum(x.active for x in subs),
                           queued=sum(len(x.queue) for x in subs),
                           throttles=sum(x.throttled for x in subs),
                           limit=sum(x.shaper.connection_limit(now) for x in subs),
                           rate=0.0 if None in rates else sum(rates),
                           suspended=s.shaper.suspended(now) or
                           all(x.shaper.suspended(now) for x in subs),
                           admin_suspended=name in self.applied)
            elif s is not None:
                row.update(active=s.active, queued=len(s.queue),
                           limit=s.shaper.connection_limit(now),
                           rate=s.shaper.msg_rate(now) or 0.0,
                           suspended=s.shaper.suspended(now),
                           admin_suspended=name in self.applied)
            sites[name] = row
        return {"sites": sites, "classes": dict(self.classes),
                "events_written": self.events_written,
                "dkim_s": self.dkim_s, "dkim_n": self.dkim_n, "control_gen": self.gen}

    # ------------------------------------------------------------ admin + site events
    def _suspension_for(self, site):
        s = self.suspensions.get(("site", site.name))
        if s is None and site.provider is not None:
            s = self.suspensions.get(("provider", site.provider.name))
        return s

    def _apply_suspension(self, site) -> None:
        s = self._suspension_for(site)
        shaper = site.shaper
        key = site.qkey  # a (site, source) queue has its own entry (issue #17)
        if s is None:
            if key in self.applied:
                del self.applied[key]
                shaper.effects = [e for e in shaper.effects if e.rule != ADMIN_RULE]
                self.w.scheduler.pump(site)
            return
        now = self.w.scheduler.now()
        keep = [e for e in shaper.effects if e.rule != ADMIN_RULE]
        keep.append(Effect(ADMIN_RULE, "suspend", 0.0, now + self.cfg.suspend_recheck_s))
        shaper.effects = keep
        if key not in self.applied:
            self.applied[key] = f"{s.kind}:{s.name}"
            self.w.scheduler._flush_queue(site, self.cfg.suspend_recheck_s)

    def _apply_bounce(self, site, order) -> None:
        sched = self.w.scheduler
        while site.queue:
            job = sched._take(site)
            sched._emit(job, "canceled", reason=order.reason)

    def _held(self, job) -> bool:
        """Is the job's delivery paused at the job's mailbox provider?"""
        it = job.item
        d = it.domain
        prov = self._groups.get(d)
        if prov is None:
            if len(self._groups) > 100_000:
                self._groups.clear()
            prov = self._groups[d] = provider_group(d)
        return (it.delivery_id, prov) in self.held

    def _hold_flight(self, flight: list) -> list:
        """A connection's flight waiting on the rate: the held jobs go back to the spool."""
        out = []
        for group in flight:
            keep = []
            for job in group:
                if self._held(job):
                    self.w.scheduler.defer(job, self.cfg.suspend_recheck_s,
                                           reason="paused_at_provider",
                                           why="paused_at_provider")
                else:
                    keep.append(job)
            if keep:
                out.append(keep)
        return out

    def _hold_queued(self) -> None:
        """Take the held deliveries' jobs out of the site queues (back to the spool)."""
        sched = self.w.scheduler
        for site in list(sched.sites.values()):
            if not site.queue:
                continue
            jobs = [sched._take(site) for _ in range(len(site.queue))]
            keep = []
            for job in jobs:
                if self._held(job):
                    sched.defer(job, self.cfg.suspend_recheck_s, reason="paused_at_provider",
                                why="paused_at_provider")
                else:
                    keep.append(job)
            sched._requeue_front(site, keep)

    def poll_controls(self) -> None:
        spool = self.w.spool
        gen = spool.control_gen()
        if gen != self.gen:
            self.gen = gen
            self.suspensions, self.bounces = read_controls(spool)
        now_ms = int(time.time() * 1000)
        if any(not s.active(now_ms) for s in self.suspensions.values()):  # timed ones end
            self.suspensions = {k: s for k, s in self.suspensions.items() if s.active(now_ms)}
        held = {(int(n.partition("/")[0]), n.partition("/")[2])
                for k, n in self.suspensions if k == DELIVERY_PROVIDER}
        if held != self.held:
            new = held - self.held
            self.held = held
            self.w.scheduler.hold_filter = self._hold_flight if held else None
            if new:
                self._hold_queued()
        sched = self.w.scheduler
        for site in list(sched.sites.values()):
            if self.suspensions or site.qkey in self.applied:
                self._apply_suspension(site)
            order = self.bounces.get(site.name)
            if order is not None and order.active(now_ms) and site.queue:
                self._apply_bounce(site, order)

    def site_events(self) -> list[SiteEvent]:
        """State changes since the last call, one event per changed site."""
        sched = self.w.scheduler
        now = sched.now()
        t = int(time.time() * 1000)
        out = []
        idx = self.w.spec.index
        for qkey, s in sched.sites.items():
            if s.subs:
                continue  # an MX site whose traffic goes through its (site, source) queues
            so = self._site(s)
            name = s.name  # a (site, source) queue reports under its site (issue #17)
            susp = s.shaper.suspended(now)
            limit = s.shaper.connection_limit(now)
            rate = s.shaper.msg_rate(now) or 0.0
            state = self.qstate.get(qkey, so.state)
            old_susp, old_limit, old_rate = state
            if (susp, limit, rate) == state:
                continue
            rate_moved = abs(rate - old_rate) > 0.1 * max(old_rate, rate, 1e-9)
            if susp != old_susp:
                admin = qkey in self.applied
                reason = ("operator" if admin else s.shaper.suspend_reason or
                          ",".join(e.rule for e in s.shaper.effects if e.action == "suspend"))
                until = 0 if admin or not susp else \
                    t + int((s.shaper.resume_at(now) - now) * 1000)
                out.append(SiteEvent(ts_ms=t, site=name, kind="suspended" if susp else "resumed",
                                     provider=so.provider, reason=reason, limit=limit,
                                     rate=rate, until_ms=until, worker=idx))
            elif limit != old_limit or rate_moved:
                out.append(SiteEvent(ts_ms=t, site=name, kind="limit", provider=so.provider,
                                     limit=limit, rate=rate, worker=idx))
            else:
                continue
            so.state = self.qstate[qkey] = (susp, limit, rate)
        return out

    async def run(self) -> None:
        """Poll admin controls and write site events until cancelled."""
        period = max(0.05, self.cfg.admin_poll_s)
        writer = self.w.writer
        while True:
            try:
                self.poll_controls()  # a few short LMDB reads: fine in the loop
                if self.cfg.site_events:
                    evs = self.site_events()
                    if evs:
                        await writer.run(self.w.spool.append_events, evs)
                        self.events_written += len(evs)
            except asyncio.CancelledError:
                raise
            except Exception:  # operations must never take the worker down
                log.exception("ops poll")
            await asyncio.sleep(period)


class NullOps:
    """``[ops] enabled = false``: the hooks do nothing (for overhead measurements)."""

    def on_result(self, job, res) -> None:
        pass

    def intercept(self, site, job) -> bool:
        return False

    def snapshot(self) -> dict:
        return {}

    def observe_dkim(self, seconds: float) -> None:
        pass

    async def run(self) -> None:
        return None


def worker_ops(worker) -> WorkerOps | NullOps:
    """The ops hook object of a worker (per ``[ops] enabled``)."""
    return WorkerOps(worker) if worker.cfg.ops.enabled else NullOps()
