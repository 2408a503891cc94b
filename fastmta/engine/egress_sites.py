"""The scheduler's egress seam: one ready queue and shaper per (site, source).

``Scheduler.site_for(mx)`` returns the *base* site of an MX site (hosts, provider,
admin controls); ``enqueue`` asks ``Egress`` for a source of the message's pool and puts
the job on the (site, source) site (``Site.source`` set), created on first use with its
own ``SiteShaper`` -- so a block or a throttle at one source slows that source, not the
pool (KumoMTA keeps a ready queue per (site, source) the same way).  A new (site,
source) starts from its persisted record (``egress.memory``), and ``egress_flush``
returns what changed for the worker to write to the spool.
"""

from __future__ import annotations

import time

import msgspec

from fastmta.egress.memory import restore, snapshot
from fastmta.engine.providers import site_rules
from fastmta.engine.rates import ProviderBudget
from fastmta.engine.shaping import SiteShaper
from fastmta.engine.sites import Job, Site


class EgressSites:
    """Mixin of ``Scheduler`` (see module docstring)."""

    def _source_site(self, base: Site, name: str) -> Site:
        key = base.name + "\x00" + name
        site = self.sites.get(key)
        if site is not None:
            return site
        eg = self.egress
        src = eg.source(name)
        group = base.label()
        params = base.params
        o = src.overrides.get(group)
        if o is not None and (o.max_connections or o.msg_rate_per_s):
            params = msgspec.structs.replace(
                params, max_connections=o.max_connections or params.max_connections,
                msg_rate_per_s=o.msg_rate_per_s or params.msg_rate_per_s)
        budget = None
        prov = base.provider
        if prov is not None and (prov.provider_max_connections or prov.provider_msg_rate_per_s):
            bkey = prov.name + "\x00" + name  # providers count per sender IP
            budget = self.budgets.get(bkey)
            if budget is None:
                budget = self.budgets[bkey] = ProviderBudget(
                    prov.name, prov.provider_max_connections, prov.provider_msg_rate_per_s)
        if self.limits is not None:  # node/cluster limits: every source shares the site's
            budget = base.shaper.provider
        now = self.now()
        shaper = SiteShaper(params, site_rules(self.cfg.shaping, prov), budget, now)
        site = Site(base.name, base.hosts, shaper, params, prov)
        site.source = src
        site.capped = eg.capped(name, group)
        site.qkey = key
        site.base = base
        site.relay = base.relay
        base.subs.append(site)
        rec = eg.recall(base.name, name) if eg.eg.memory else None
        if rec is not None and restore(shaper, rec, now_mono=now, now_egress=eg.clock.now(),
                                       now_wall=time.time(),
                                       half_life_s=eg.eg.memory_half_life_s,
                                       forget_s=eg.eg.memory_forget_s):
            site.memory = rec
            site.msgs_cap, site.rcpts_cap = rec.msgs_cap, rec.rcpts_cap
            self.stats["memory_restored"] = self.stats.get("memory_restored", 0) + 1
        self.sites[key] = site
        return site

    def _route(self, base: Site, job: Job) -> Site | None:
        """The (site, source) site for a job, or None when it was deferred."""
        eg = self.egress
        item = job.item
        try:
            pool = eg.pool_for(item.mail_from, self.pool_of(item.delivery_id))
        except Exception as exc:  # an unknown pool: never lose the recipient
            self.defer(job, 300, reason=str(exc)[:200], why="no_pool")
            return None
        now = self.now()
        group = base.label()
        choice = eg.select(pool, group,
                           lambda n: not self._source_site(base, n).shaper.suspended(now),
                           item.key)
        if choice.source is None:
            if choice.capped is not None:  # warm-up cap: wait until it frees
                delay = eg.wait_s(choice.capped, group) + self.rng.uniform(0.0, 2.0)
                self.defer(job, delay, why="warmup_cap")
            else:  # every source of the pool is suspended at this site
                ends = [self._source_site(base, n).shaper.resume_at(now)
                        for n, w in pool.members if w > 0]
                self.defer(job, min(ends) - now + self.rng.uniform(0, 5), why="suspended")
            return None
        if choice.overflowed:
            self.stats["egress_overflowed"] = self.stats.get("egress_overflowed", 0) + 1
        job.egress = (choice.source, group)
        return self._source_site(base, choice.source)

    def _release(self, job: Job) -> None:
        """A job that was given a source is deferred: its warm-up room goes back."""
        src, group = job.egress
        job.egress = None
        self.egress.give_back(src, group)

    def _reroute(self, site: Site) -> None:
        """The source of ``site`` is suspended: its queued jobs are selected again (the
        suspended source is not eligible; when none is, they are deferred)."""
        while site.queue:
            job = self._take(site)
            if job.egress is not None:
                self._release(job)
            job.site = None
            self.enqueue(site.base, job)

    def egress_flush(self, final: bool = False) -> dict[bytes, bytes | None]:
        """Records of the (site, source) sites that changed, and the warm-up counters."""
        eg = self.egress
        if eg is None:
            return {}
        now, now_e, now_w = self.now(), eg.clock.now(), time.time()
        for site in self.sites.values():
            src = site.source
            if src is None:
                continue
            sh = site.shaper
            mark = (site.attempts, site.throttled, sh.blocks, sh.limit, sh.rate,
                    sh.suspended_until)
            if mark == site.flushed:
                continue
            prev = site.flushed
            site.flushed = mark
            d_att = site.attempts - (prev[0] if prev else 0)
            d_thr = site.throttled - (prev[1] if prev else 0)
            d_blk = sh.blocks - (prev[2] if prev else 0)
            eg.feedback(src.name, site.label(), d_att + d_thr, d_thr, d_blk)
            if eg.eg.memory:
                eg.remember(snapshot(sh, site=site.name, source=src.name,
                                     provider=site.label(), now_mono=now, now_egress=now_e,
                                     now_wall=now_w, msgs_cap=site.msgs_cap,
                                     rcpts_cap=site.rcpts_cap, base=site.memory))
        return eg.dirty()
