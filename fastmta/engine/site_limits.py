"""The engine side of shared limits: a site's ``SharedBudget`` and the sync loop.

``make_budget`` builds the budget of a new site when the worker has a ``Limits``
backend (node or cluster scope) and starts the site from what the others learned;
``sync`` (every ``SYNC_S`` from the worker) publishes what this worker's shapers learned
(a cut connection limit, a cut rate, a suspension), applies what others published, pumps
sites whose connection request was refused (a slot may have been freed elsewhere), and
lets the backend renew its leases.  See docs/architecture.md ("one site over several
workers") and docs/scale.md.
"""

from __future__ import annotations

import math

from fastmta.engine.limits import Learned, Limits, SharedBudget
from fastmta.engine.shaping import SiteShaper

SYNC_S = 0.1


def make_budget(limits: Limits, name: str, shaper: SiteShaper, provider, batch_s: float
                ) -> SharedBudget:
    budget = SharedBudget(
        limits, name, conn_limit=shaper.connection_limit, msg_rate=shaper.msg_rate,
        msg_burst=shaper.p.msg_burst,
        provider=provider.name if provider is not None else "",
        provider_conns=(provider.provider_max_connections or None) if provider else None,
        provider_rate=(provider.provider_msg_rate_per_s or None) if provider else None,
        batch_s=batch_s)
    shaper.provider = budget
    return budget


def apply(shaper: SiteShaper, learned: Learned, now: float) -> bool:
    """Apply what another worker/node learned; True when the site is now suspended."""
    if learned.limit is not None and learned.limit < shaper.limit:
        shaper.limit = max(shaper.min_limit, learned.limit)
        if shaper.ceiling is None or shaper.ceiling > learned.limit + 1:
            shaper.ceiling = learned.limit + 1
        shaper.ceiling_at = shaper.last_cut = shaper.last_probe = now
        shaper.successes = 0
    if learned.rate is not None and (shaper.rate is None or learned.rate < shaper.rate):
        shaper.rate = learned.rate
        shaper.ceiling_at = shaper.last_cut = shaper.last_rate_step = now
    if learned.suspend_s > 0 and now + learned.suspend_s > shaper.suspended_until:
        shaper.suspended_until = now + learned.suspend_s
        shaper.suspend_reason = shaper.suspend_reason or "suspended by another sender"
        return True
    return False


def _publish(limits: Limits, budget: SharedBudget, shaper: SiteShaper, now: float) -> None:
    limit = shaper.limit
    if budget.seen_limit is not None and limit < budget.seen_limit:
        limits.publish(budget.key, limit=limit)
    budget.seen_limit = limit
    rate = shaper.rate
    if rate is not None and (budget.seen_rate is None or rate < budget.seen_rate * 0.999):
        limits.publish(budget.key, rate=rate)
    budget.seen_rate = rate
    until = shaper.suspended_until
    if until > now and until > budget.seen_suspend + 0.5:
        limits.publish(budget.key, suspend_s=until - now)
    if until != -math.inf:
        budget.seen_suspend = max(budget.seen_suspend, until)


def sync(sched, limits: Limits) -> None:
    """One round of the sync loop over the scheduler's shared sites."""
    now = sched.now()
    by_key = {}
    for site in sched.sites.values():
        budget = site.shaper.provider
        if not isinstance(budget, SharedBudget):
            continue
        by_key[budget.key] = site
        _publish(limits, budget, site.shaper, now)
        budget.share = limits.cap(budget.key, site.shaper.connection_limit(now))
    for key, learned in limits.signals(by_key):
        site = by_key.get(key)
        if site is None:
            continue
        if apply(site.shaper, learned, now):
            site.shaper.provider.seen_suspend = site.shaper.suspended_until
            sched._flush_queue(site, site.shaper.resume_at(now) - now)
        site.shaper.provider.seen_limit = site.shaper.limit
        site.shaper.provider.seen_rate = site.shaper.rate
    for site in by_key.values():
        if site.queue and site.shaper.provider.denied:
            sched.pump(site)
    limits.tick()


def start_from_learned(limits: Limits, budget: SharedBudget, shaper: SiteShaper,
                       now: float) -> None:
    """A new site begins at the levels the others learned (a new node does not start
    from scratch against a provider that already throttled the cluster)."""
    learned = limits.learned(budget.key)
    if learned is not None:
        apply(shaper, learned, now)
    budget.seen_limit = shaper.limit
    budget.seen_rate = shaper.rate
    budget.seen_suspend = shaper.suspended_until
