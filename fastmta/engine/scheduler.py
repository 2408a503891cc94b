"""Per-site scheduling inside one worker: ready queues, connection pools, outcomes.

A *site* is the sorted set of a domain's MX hosts (``routing.site_of``).  Each site
(``sites.Site``) has a bounded ready queue of jobs, a ``SiteShaper`` (connection limit,
rates, suspension, provider rules) and a pool of connection tasks.  This module keeps the
queues and the pool (``pump`` opens connections while the limits allow); the connection
tasks themselves (open with MX fallback, serve flights of transactions, handle replies)
are ``connections.ConnectionTasks``, a mixin of ``Scheduler``.

Every recipient outcome becomes a ``Result`` handed to ``on_result`` (the worker commits
it to the spool): ``sent``; ``hard`` (failed + quarantine); ``soft`` (counted attempt,
next attempt from the retry schedule, ``expired`` once past the validity); ``defer``
(our own shaping: site suspended, queue full, throttled by the destination, draining --
not counted as a recipient failure).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastmta.config import Config, ProviderConfig
from fastmta.engine.connections import ConnectionTasks
from fastmta.engine.egress_sites import EgressSites
from fastmta.engine.limits import Limits
from fastmta.engine.providers import site_params, site_rules
from fastmta.engine.rates import ProviderBudget
from fastmta.engine.retry import RetryPolicy, next_attempt_ms
from fastmta.engine.routing import match_provider
from fastmta.engine.shaping import SiteShaper
from fastmta.engine.site_limits import make_budget, start_from_learned
from fastmta.engine.sites import Job, Site
from fastmta.records import Result, WorkItem


class Scheduler(ConnectionTasks, EgressSites):
    """Runs the sites of one worker (see module docstring)."""

    def __init__(
        self,
        cfg: Config,
        providers: Sequence[ProviderConfig],
        on_result: Callable[[Job, Result], None],
        render: Callable[[WorkItem], bytes],
        *,
        connect: Callable[..., Awaitable[Any]] | None = None,
        rng: random.Random | None = None,
        is_static: Callable[[int], bool] | None = None,
        commit_gate: Callable[[], Awaitable[None]] | None = None,
        egress=None,
        pool_of: Callable[[int], str] | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.cfg = cfg
        self.providers = list(providers)
        self.on_result = on_result
        self.render = render
        self.is_static = is_static or (lambda did: False)
        self.commit_gate = commit_gate  # waits while too many results are not durable
        self.egress = egress  # fastmta.egress.egress.Egress: sources per (site, source)
        self.pool_of = pool_of or (lambda did: "")  # a delivery's explicit pool
        self.limits = limits  # node/cluster scope limits (engine/limits.py); None = own
        self.rng = rng or random.Random()
        if connect is None:
            from fastmta.smtp.transport import Connection

            connect = Connection.open
        self._connect = connect
        self.retry = RetryPolicy(initial_s=cfg.delivery.retry_initial_s,
                                 maximum_s=cfg.delivery.retry_max_s)
        self.sites: dict[str, Site] = {}
        self.budgets: dict[str, ProviderBudget] = {}
        self.tasks: set[asyncio.Task] = set()
        self.queued = 0
        self.draining = False
        self.stopping = False
        self.loop = asyncio.get_running_loop()
        self.unknown = None  # templates.UnknownReplies: replies no rule recognised (issue #16)
        # flight -> flight without the jobs of deliveries paused at their provider (which
        # it defers); set by the ops hook only while such a pause exists
        self.hold_filter = None
        # awaited before a capped (site, source) sends: its warm-up counters are durable
        self.reserve_gate = None
        self.stats = {"sent": 0, "hard": 0, "soft": 0, "defer": 0, "expired": 0,
                      "attempts": 0, "throttled": 0, "connections": 0, "connect_failed": 0}

    # ------------------------------------------------------------------ clock
    def now(self) -> float:
        return self.loop.time()

    @staticmethod
    def now_ms() -> int:
        return int(time.time() * 1000)

    # ------------------------------------------------------------------ sites
    def site_for(self, mx) -> Site:
        """The site of a resolved ``MxResult`` (created on first use)."""
        site = self.sites.get(mx.site)
        if site is not None:
            if mx.hosts:
                site.hosts = list(mx.hosts)
                for sub in site.subs:
                    sub.hosts = site.hosts
            return site
        provider = match_provider([h.name for h in mx.hosts], self.providers)
        params = site_params(self.cfg.shaping, provider)
        budget = None
        if self.limits is not None:
            # the site's (and provider's) limits are held above this worker
            shaper = SiteShaper(params, site_rules(self.cfg.shaping, provider), None,
                                self.now())
            shared = make_budget(self.limits, mx.site, shaper, provider,
                                 self.cfg.cluster.token_batch_s)
            start_from_learned(self.limits, shared, shaper, self.now())
        elif provider is not None and (provider.provider_max_connections
                                     or provider.provider_msg_rate_per_s):
            budget = self.budgets.get(provider.name)
            if budget is None:
                budget = ProviderBudget(provider.name, provider.provider_max_connections,
                                        provider.provider_msg_rate_per_s)
                self.budgets[provider.name] = budget
        if self.limits is None:
            shaper = SiteShaper(params, site_rules(self.cfg.shaping, provider), budget,
                                self.now())
        site = Site(mx.site, list(mx.hosts), shaper, params, provider)
        self.sites[mx.site] = site
        return site

    # ------------------------------------------------------------------ results
    def _emit(self, job: Job, outcome: str, *, reply=None, cls=None, mx: str = "",
              next_ms: int = 0, reason: str = "", source_ip: str = "", tls: str = "") -> None:
        item = job.item
        code = reply.code if reply is not None else 0
        enhanced = (reply.enhanced or "") if reply is not None else ""
        text = reply.raw.replace("\r\n", " ")[:500] if reply is not None else ""
        if cls is not None:
            reason = reason or cls.reason
        res = Result(key=item.key, outcome=outcome, code=code, enhanced=enhanced,
                     bounce_class=cls.bounce_class if cls is not None else 0,
                     type=cls.type if cls is not None else "", reason=reason, reply=text,
                     mx=mx, source_ip=source_ip, next_attempt_ms=next_ms,
                     time_ms=self.now_ms(), tls=tls)
        self.stats[outcome] = self.stats.get(outcome, 0) + 1
        if self.unknown is not None and cls is not None and reply is not None:
            self.unknown.observe(reply.raw, reply.command, job.site.name if job.site else "",
                                 cls, res.time_ms)
        if job.egress is not None and outcome in ("defer", "expired"):
            self._release(job)  # it did not go: its warm-up room goes back
        job.done = True
        self.on_result(job, res)

    def defer(self, job: Job, delay_s: float, reason: str = "", why: str = "") -> None:
        """Give a job back to the spool for later, without counting an attempt."""
        if why:
            self.stats["defer_" + why] = self.stats.get("defer_" + why, 0) + 1
        now_ms = self.now_ms()
        due = now_ms + int(max(0.0, delay_s) * 1000)
        exp = job.item.expires_ms
        if exp and due >= exp - 1000 and exp - now_ms > 2000:
            # our own shaping must not push a recipient to its expiry: try again before
            due = now_ms + (exp - now_ms) // 2
        self._emit(job, "defer", next_ms=due, reason=reason or job.item.last_reason)

    def soft(self, job: Job, reply, cls, mx: str = "", not_before_ms: int = 0,
             source_ip: str = "") -> None:
        """A counted soft failure: next attempt per the retry schedule, or expired."""
        item = job.item
        now_ms = self.now_ms()
        due = next_attempt_ms(item.attempts + 1, now_ms, item.expires_ms or None,
                              self.retry, self.rng)
        if due is not None and not_before_ms and due < not_before_ms:
            due = not_before_ms if (not item.expires_ms or not_before_ms < item.expires_ms) \
                else None
        if due is None:
            # no retry fits in the validity: count this attempt (its reason is kept)
            # and let the spool expire the recipient when the validity ends
            self._emit(job, "soft", reply=reply, cls=cls, mx=mx,
                       next_ms=item.expires_ms or now_ms, source_ip=source_ip)
        else:
            self._emit(job, "soft", reply=reply, cls=cls, mx=mx, next_ms=due,
                       source_ip=source_ip)

    def fail_resolution(self, job: Job, cls) -> None:
        """The domain did not resolve: hard (NXDOMAIN, null MX) or soft (SERVFAIL)."""
        from fastmta.core import parse_reply

        code = cls.code or (550 if cls.type == "hard" else 451)
        reply = parse_reply(f"{code} {cls.enhanced or ''} {cls.reason}".replace("  ", " "),
                            "connect")
        if cls.type == "hard":
            self._emit(job, "hard", reply=reply, cls=cls)
        else:
            self.soft(job, reply, cls)

    # ------------------------------------------------------------------ queueing
    def enqueue(self, site: Site, job: Job) -> None:
        """Put a job in its site's ready queue (or defer it when the site cannot take it)."""
        now = self.now()
        item = job.item
        if item.expires_ms and self.now_ms() >= item.expires_ms:
            self._emit(job, "expired", reason=item.last_reason or "expired")
            return
        if self.draining:
            self.defer(job, 0, why="draining")
            return
        bounce = site.shaper.bouncing(now)
        if bounce is not None:
            self._bounce_by_rule(job, bounce.rule)
            return
        if site.shaper.suspended(now):
            self.defer(job, site.shaper.resume_at(now) - now + self.rng.uniform(0, 5),
                       why="suspended")
            return
        if self.egress is not None and site.source is None:
            site = self._route(site, job)  # the (site, source) site, or deferred
            if site is None:
                return
            bounce = site.shaper.bouncing(now)
            if bounce is not None:  # a provider rule fired at this source
                self._bounce_by_rule(job, bounce.rule)
                return
        if len(site.queue) >= max(1, site.params.ready_queue_size):
            # come back about when the queue has drained at the site's current pace
            pace = site.shaper.observed_rate(now)
            delay = min(120.0, max(1.0, len(site.queue) / pace)) if pace > 1.0 else 3.0
            self.defer(job, delay * self.rng.uniform(1.0, 1.5), why="queue_full")
            return
        job.site = site
        site.queue.append(job)
        self.queued += 1
        self.pump(site)

    def _bounce_by_rule(self, job: Job, rule: str) -> None:
        from fastmta.classify.outcome import Classification
        from fastmta.core import parse_reply

        reply = parse_reply(f"554 5.7.1 bounced by shaping rule {rule}", "rcpt")
        cls = Classification(code=554, enhanced="5.7.1", bounce_class=50, type="hard",
                             reason="refused", action="bounce")
        self._emit(job, "hard", reply=reply, cls=cls)

    def _take(self, site: Site) -> Job | None:
        if not site.queue:
            return None
        self.queued -= 1
        return site.queue.popleft()

    def _requeue_front(self, site: Site, jobs: Sequence[Job]) -> None:
        for job in reversed(jobs):
            site.queue.appendleft(job)
            self.queued += 1

    def _flush_queue(self, site: Site, delay_s: float) -> None:
        """Defer everything queued for a site (suspended, or draining)."""
        if site.source is not None and not self.draining:
            self._reroute(site)  # a suspended source: the pool's others take its queue
            return
        while site.queue:
            job = self._take(site)
            self.defer(job, delay_s + self.rng.uniform(0, min(5.0, delay_s / 10 + 0.01)),
                       why="flushed")

    # ------------------------------------------------------------------ pumping
    def pump(self, site: Site) -> None:
        """Open connections while the site has queued work and its limits allow."""
        if self.stopping:
            return
        now = self.now()
        if not site.queue:
            return
        if site.shaper.suspended(now):
            self._flush_queue(site, site.shaper.resume_at(now) - now)
            return
        if site.waiting:
            site.wakeup.set()
            return
        while len(site.queue) > site.connecting * 4:
            delay = site.shaper.open_delay(now, site.active)
            if delay is None:
                return  # at the limit: a closing connection pumps again
            if delay > 0:
                self._pump_later(site, delay)
                return
            site.shaper.on_open(now)
            site.active += 1
            site.connecting += 1
            task = self.loop.create_task(self._connection(site))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def _pump_later(self, site: Site, delay: float) -> None:
        if site.timer is not None:
            return

        def fire():
            site.timer = None
            self.pump(site)

        site.timer = self.loop.call_later(min(delay, 60.0), fire)

    # ------------------------------------------------------------------ shutdown
    def status(self, top: int = 20) -> dict:
        """Snapshot of the ``top`` sites most affected by shaping (suspended, throttled)
        or busiest (heartbeats stay small with many thousands of sites)."""
        now = self.now()
        busy = [s for s in self.sites.values()
                if s.active or s.queue or s.throttled or s.shaper.suspended(now)]
        busy.sort(key=lambda s: (not s.shaper.suspended(now), -s.throttled, -len(s.queue)))
        out = {}
        for s in busy[:top]:
            st = s.shaper.status(now)
            st.update(active=s.active, queued=len(s.queue), throttled=s.throttled)
            out[s.key() if s.provider or s.source else s.name] = st
        return out

    def drain_queues(self) -> None:
        """Stop starting new transactions; give queued jobs back to the spool."""
        self.draining = True
        for site in self.sites.values():
            self._flush_queue(site, 0)
            site.wakeup.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait for the connection tasks to finish (True) or the timeout (False)."""
        if not self.tasks:
            return True
        done, pending = await asyncio.wait(set(self.tasks), timeout=timeout_s)
        return not pending

    async def stop(self) -> None:
        """Abort every connection now (their unfinished jobs are deferred)."""
        self.stopping = True
        self.draining = True
        for site in self.sites.values():
            if site.timer is not None:
                site.timer.cancel()
            site.wakeup.set()
        for t in list(self.tasks):
            t.cancel()
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=5.0)
        for site in self.sites.values():
            self._flush_queue(site, 0)
