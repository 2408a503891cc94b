"""Per-site scheduling inside one worker: ready queues, connection pools, outcomes.

A *site* is the sorted set of a domain's MX hosts (``routing.site_of``).  Each site has a
bounded ready queue of jobs, a ``SiteShaper`` (connection limit, rates, suspension,
provider rules) and a pool of connection tasks.  A connection task opens a connection
(MX fallback by preference, equal preferences round-robin, recently failed hosts
skipped), then takes flights of transactions from the queue (several recipients per
transaction when their rendered message is identical, several transactions pipelined
per flight), paced by the site's and provider's rate limits, until the queue is empty
for ``idle_timeout_s``, ``max_msgs_per_conn`` is reached or the limit shrank.

Every recipient outcome becomes a ``Result`` handed to ``on_result`` (the worker commits
it to the spool): ``sent``; ``hard`` (failed + quarantine); ``soft`` (counted attempt,
next attempt from the retry schedule, ``expired`` once past the validity); ``defer``
(our own shaping: site suspended, queue full, throttled by the destination, draining --
not counted as a recipient failure).
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastmta.config import Config, ProviderConfig
from fastmta.core import Reply
from fastmta.engine.retry import RetryPolicy, next_attempt_ms
from fastmta.engine.routing import match_provider
from fastmta.engine.shaping import ProviderBudget, SiteShaper, site_params, site_rules
from fastmta.records import Result, WorkItem

log = logging.getLogger("fastmta.engine.scheduler")

_CONN_THROTTLE = re.compile(r"too many (concurrent |simultaneous )?(connections|sessions)|"
                            r"concurrent (server )?connections|connection (limit|rate)",
                            re.IGNORECASE)
_SESSION_LIMIT = re.compile(r"too many (messages|mails) (for|in|per) this (session|connection)|"
                            r"(messages|mails) per (session|connection)", re.IGNORECASE)
_TOO_MANY_RCPTS = re.compile(r"too many recipients", re.IGNORECASE)
MAX_INMEMORY_REQUEUES = 4
FLIGHT = 8  # transactions pipelined per write


class Job:
    """A leased recipient in a site queue."""

    __slots__ = ("item", "body", "requeues", "site", "done")

    def __init__(self, item: WorkItem) -> None:
        self.item = item
        self.body: bytes | None = None
        self.requeues = 0
        self.site: Site | None = None
        self.done = False


class Site:
    """Queue, shaper and connection bookkeeping of one MX site."""

    def __init__(self, name: str, hosts: list, shaper: SiteShaper, params,
                 provider: ProviderConfig | None) -> None:
        self.name = name
        self.hosts = hosts  # [MxHost(name, preference, addresses)] in preference order
        self.shaper = shaper
        self.params = params
        self.provider = provider
        self.queue: deque[Job] = deque()
        self.active = 0  # connection tasks (connecting or connected)
        self.connecting = 0
        self.waiting = 0  # idle connections waiting for work
        self.wakeup = asyncio.Event()
        self.rr = 0
        self.host_down: dict[str, float] = {}
        self.timer: asyncio.TimerHandle | None = None
        self.attempts = 0
        self.throttled = 0
        self.msgs_cap = 0  # learned: the server ends sessions after this many messages
        self.rcpts_cap = 0  # learned: the server takes at most this many RCPTs

    def label(self) -> str:
        return self.provider.name if self.provider else self.name


class Scheduler:
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
    ) -> None:
        self.cfg = cfg
        self.providers = list(providers)
        self.on_result = on_result
        self.render = render
        self.is_static = is_static or (lambda did: False)
        self.commit_gate = commit_gate  # waits while too many results are not durable
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
            return site
        provider = match_provider([h.name for h in mx.hosts], self.providers)
        params = site_params(self.cfg.shaping, provider)
        budget = None
        if provider is not None and (provider.provider_max_connections
                                     or provider.provider_msg_rate_per_s):
            budget = self.budgets.get(provider.name)
            if budget is None:
                budget = ProviderBudget(provider.name, provider.provider_max_connections,
                                        provider.provider_msg_rate_per_s)
                self.budgets[provider.name] = budget
        shaper = SiteShaper(params, site_rules(self.cfg.shaping, provider), budget, self.now())
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

    # ------------------------------------------------------------------ connections
    def _candidates(self, site: Site) -> list[tuple[str, str]]:
        """(host, ip) in MX preference order, equal preferences rotated, down hosts last."""
        now = self.now()
        groups: list[list[tuple[str, str]]] = []
        last_pref = None
        for h in site.hosts:
            pairs = [(h.name, ip) for ip in h.addresses]
            if not pairs:
                continue
            if last_pref is not None and h.preference == last_pref:
                groups[-1].extend(pairs)
            else:
                groups.append(pairs)
            last_pref = h.preference
        out: list[tuple[str, str]] = []
        site.rr += 1
        for g in groups:
            k = site.rr % len(g)
            out.extend(g[k:] + g[:k])
        up = [c for c in out if site.host_down.get(c[1], 0.0) <= now]
        down = [c for c in out if site.host_down.get(c[1], 0.0) > now]
        return up + down

    async def _open(self, site: Site):
        """Connect with MX fallback.  Returns (conn, host, ip) or raises the last failure."""
        from fastmta.smtp.transport import ConnectFailed

        smtp = self.cfg.smtp
        tls = site.provider.tls if site.provider and site.provider.tls else smtp.tls
        last: ConnectFailed | None = None
        source_ip = smtp.source_ips[0] if smtp.source_ips else None
        for host, ip in self._candidates(site):
            try:
                conn = await self._connect(ip, smtp.port, ehlo_name=smtp.ehlo_name, tls=tls,
                                           server_hostname=host, source_ip=source_ip,
                                           timeouts=smtp)
                return conn, host, ip
            except ConnectFailed as exc:
                last = exc
                cls = exc.classification
                if exc.kind in ("connect_failed", "connect_timeout"):
                    site.host_down[ip] = self.now() + 30.0
                    continue
                if cls.throttle:
                    raise  # the site says slow down: do not hammer its other hosts
                continue  # 5xx greeting, EHLO refused, TLS: next MX
        if last is None:
            from fastmta.classify.outcome import local

            reply, cls = local("connect_failed", "connect", "no address for any MX host")
            raise ConnectFailed("connect_failed", reply, cls)
        raise last

    async def _connection(self, site: Site) -> None:
        from fastmta.smtp.transport import ConnectFailed

        shaper = site.shaper
        conn = None
        try:
            try:
                conn, host, ip = await self._open(site)
            except ConnectFailed as exc:
                site.connecting -= 1
                self._connect_failed(site, exc)
                return
            site.connecting -= 1
            self.stats["connections"] += 1
            shaper.on_connected(self.now())
            await self._serve(site, conn, host, ip)
        except asyncio.CancelledError:
            if conn is not None:
                conn.abort()
            raise
        except Exception:  # a bug must not kill the worker: log, give the jobs back
            log.exception("connection task for site %s failed", site.name)
        finally:
            if conn is not None and not self.stopping:
                # the server counts this connection until it is closed: keep it counted
                # here too, or the next one would exceed a per-IP connection limit
                try:
                    await conn.quit(timeout_s=2.0)
                except BaseException:
                    conn.abort()
            site.active -= 1
            shaper.on_close()
            self.pump(site)

    def _connect_failed(self, site: Site, exc) -> None:
        now = self.now()
        cls = exc.classification
        self.stats["connect_failed"] += 1
        text = exc.reply.raw if exc.reply is not None else ""
        if cls.throttle or _CONN_THROTTLE.search(text):
            site.throttled += 1
            self.stats["throttled"] += 1
            shaper = site.shaper
            shaper.on_reply(text, now)
            if exc.kind == "greeting" or _CONN_THROTTLE.search(text):
                # level = connections established + this one (others still connecting
                # when it was refused did not cause it)
                shaper.on_throttle(now, "connections",
                                   max(1, site.active - site.connecting))  # jobs stay queued
                return
            shaper.on_connect_failure(now, throttle=True)
        elif cls.action == "suspend_site":
            site.shaper.on_reply(text, now)
            site.shaper.on_block(now, cls.reason or "blocked")
        else:
            site.shaper.on_reply(text, now)
            site.shaper.on_connect_failure(now)
        if site.shaper.suspended(now):
            self._flush_queue(site, site.shaper.resume_at(now) - now)
            return
        if site.active == 0 and site.queue:
            # nobody can deliver this site now: count an attempt for one transaction's
            # worth of recipients so unreachable sites progress towards expiry
            n = max(1, self.cfg.smtp.max_rcpts_per_txn)
            for _ in range(min(n, len(site.queue))):
                job = self._take(site)
                self.soft(job, exc.reply, cls)

    def _limit_exceeded(self, site: Site) -> bool:
        return site.active > site.shaper.connection_limit(self.now())

    async def _next_flight(self, site: Site, conn, idle_s: float) -> list[list[Job]] | None:
        """Up to FLIGHT transactions of jobs (identical bodies grouped); None = close."""
        while not site.queue:
            if self.draining or self.stopping:
                return None
            site.waiting += 1
            site.wakeup.clear()
            try:
                await asyncio.wait_for(site.wakeup.wait(), idle_s)
            except TimeoutError:
                return None
            finally:
                site.waiting -= 1
            if site.queue and not await conn.probe():
                return None
        if self._limit_exceeded(site) or site.shaper.suspended(self.now()):
            return None
        max_rcpts = max(1, site.rcpts_cap or self.cfg.smtp.max_rcpts_per_txn)
        budget = max(1, self._max_msgs(site)) - conn.messages_sent
        cells = site.shaper.flight_limit(self.now())  # recipients the rates allow at once
        if cells:
            max_rcpts = min(max_rcpts, cells)
        flight: list[list[Job]] = []
        now_ms = self.now_ms()
        total = 0
        while site.queue and len(flight) < min(FLIGHT, max(1, budget)) and \
                (not cells or total < cells):
            first = self._take(site)
            if first.item.expires_ms and now_ms >= first.item.expires_ms:
                # the validity ended while it waited in memory: never send it late
                self._emit(first, "expired", reason=first.item.last_reason or "expired")
                continue
            if first.body is None:
                first.body = self.render(first.item)
            group = [first]
            static = self.is_static(first.item.delivery_id)
            room = min(max_rcpts, cells - total) if cells else max_rcpts
            while site.queue and len(group) < room:
                nxt = site.queue[0]
                if nxt.item.expires_ms and now_ms >= nxt.item.expires_ms:
                    break
                if nxt.item.delivery_id != first.item.delivery_id or \
                        nxt.item.domain != first.item.domain:
                    break
                if static:
                    nxt.body = first.body
                elif nxt.body is None:
                    nxt.body = self.render(nxt.item)
                if nxt.body != first.body:
                    break
                group.append(self._take(site))
            flight.append(group)
            total += len(group)
        return flight

    def _max_msgs(self, site: Site) -> int:
        configured = site.params.max_msgs_per_conn or self.cfg.smtp.max_msgs_per_conn
        return min(configured, site.msgs_cap) if site.msgs_cap else configured

    async def _serve(self, site: Site, conn, host: str, ip: str) -> None:
        from fastmta.smtp.messages import Envelope

        smtp = self.cfg.smtp
        idle_s = site.params.idle_timeout_s or smtp.idle_timeout_s
        mx = f"{host} [{ip}]"
        source_ip = conn.local_address[0] if getattr(conn, "local_address", None) else ""
        while not self.stopping:
            flight = await self._next_flight(site, conn, idle_s)
            if flight is None:
                return
            if not flight:
                continue  # everything taken had expired: look again
            n = sum(len(g) for g in flight)
            while True:
                if n > 1 and site.shaper.probe_pending:
                    # a rate throttle arrived since this flight was built: only a single
                    # probe message may go; the rest waits in the queue for its answer
                    # (held here, every connection would wait for a probe none sends)
                    self._requeue_front(site, [j for g in flight for j in g][1:])
                    flight, n = [flight[0][:1]], 1
                wait = site.shaper.reserve_send(self.now(), n)
                if wait <= 0:
                    break
                await asyncio.sleep(min(wait, 1.0))
                if self.stopping or self.draining or site.shaper.suspended(self.now()):
                    self._requeue_front(site, [j for g in flight for j in g])
                    return
            if self.commit_gate is not None:
                # bound the results accepted by servers but not yet durable (the
                # duplicate window after a crash): wait for the spool to catch up
                await self.commit_gate()
            envelopes = []
            for group in flight:
                it = group[0].item
                envelopes.append(Envelope(it.mail_from, [j.item.email for j in group],
                                          group[0].body, smtputf8=it.smtputf8))
            try:
                results = await conn.send_many(envelopes)
                site.attempts += len(envelopes)
                self.stats["attempts"] += n
                stop = False
                for group, res in zip(flight, results, strict=True):
                    blocked = site.shaper.suspended(self.now())
                    if self._handle(site, group, res, mx, source_ip, after_close=stop,
                                    conn=conn, collateral=blocked):
                        stop = True
            except BaseException:
                # cancelled (stop) or a bug: whatever has no outcome yet goes back to
                # the spool (at-least-once: a message already past the dot may repeat)
                for group in flight:
                    for job in group:
                        if not job.done and job.site is site:
                            self.defer(job, 0, why="aborted")
                raise
            if stop or not conn.usable or conn.messages_sent >= self._max_msgs(site):
                return

    def _handle(self, site: Site, group: list[Job], res, mx: str, source_ip: str,
                after_close: bool = False, conn=None, collateral: bool = False) -> bool:
        """Turn one transaction's outcomes into results.  True = close the connection.

        ``after_close``: an earlier transaction of the same pipelined flight already
        ended the session (throttle, 421): a ``not_connected`` outcome here means the
        transaction never ran, so its recipients are queued again, not failed.
        ``collateral``: the site was suspended by an earlier transaction of the flight."""
        now = self.now()
        shaper = site.shaper
        close = False
        requeue: list[Job] = []
        sent = 0
        answered = False
        info = conn.tls_info if conn is not None else None
        tls_desc = " ".join(x for x in info if x) if info else ""  # reported per recipient
        if res.unknown_fate:
            # the body went out but the reply to the dot never came: the message may
            # have been delivered; it is retried (at-least-once) and counted here as a
            # possible duplicate
            self.stats["possible_duplicates"] = self.stats.get("possible_duplicates", 0) \
                + len(group)
        for job, (_rcpt, reply, cls) in zip(group, res.outcomes, strict=True):
            if res.unknown_fate and reply is not None and reply.code >= 400:
                # say so in the recipient's history (attempt log): it may have arrived
                reply = Reply(reply.code, reply.enhanced, reply.lines,
                              f"{reply.raw} (fate unknown: possible duplicate)",
                              reply.command)
            code = reply.code if reply is not None else 0
            if 200 <= code < 300:
                sent += 1
                self._emit(job, "sent", reply=reply, cls=cls, mx=mx, source_ip=source_ip,
                           tls=tls_desc)
                continue
            if after_close and cls.reason == "not_connected" and not res.unknown_fate:
                requeue.append(job)
                close = True
                continue
            text = reply.raw if reply is not None else ""
            cmd = reply.command if reply is not None else None
            if code == 421 and cmd == "mail" and conn is not None and \
                    conn.messages_sent > 0 and _SESSION_LIMIT.search(text):
                # a per-session message limit, not a throttle: learn it, send again
                n = conn.messages_sent
                site.msgs_cap = n if not site.msgs_cap else min(site.msgs_cap, n)
                requeue.append(job)
                close = True
                continue
            if 400 <= code < 500 and cmd == "rcpt" and (
                    reply.enhanced == "4.5.3" or _TOO_MANY_RCPTS.search(text)):
                # RFC 5321 4.5.3.1.10: too many recipients -- the rest go in a new
                # transaction; learn the server's cap
                accepted = sum(1 for r in res.rcpt_replies if r is not None and r.code < 300)
                if accepted:
                    site.rcpts_cap = accepted if not site.rcpts_cap \
                        else min(site.rcpts_cap, accepted)
                    requeue.append(job)
                    continue
            effects = shaper.on_reply(text, now)
            bounce = next((e for e in effects if e.action == "bounce"), None)
            if bounce is not None:
                self._bounce_by_rule(job, bounce.rule)
                close = True
                continue
            if cls.throttle:
                site.throttled += 1
                self.stats["throttled"] += 1
                kind = "connections" if cmd in ("connect", "ehlo", "helo") or \
                    _CONN_THROTTLE.search(text) else "rate"
                if cls.reason == "not_connected":
                    # reset / timeout / connection lost during this transaction: a real
                    # (soft) attempt for the recipient (its message may even have
                    # arrived: at-least-once).  A throttle signal for the site only when
                    # the session delivered nothing and died before the message body: a
                    # drop in the middle of one message is a fault of that message.
                    if (conn is None or conn.messages_sent == 0) and \
                            cmd not in ("data", "dot"):
                        shaper.on_throttle(now, "connections")
                    self.soft(job, reply, cls, mx, source_ip=source_ip)
                    close = True
                    continue
                shaper.on_throttle(now, kind, site.active)
                if code == 421:
                    close = True
                if job.requeues < MAX_INMEMORY_REQUEUES and not shaper.suspended(now):
                    job.requeues += 1
                    requeue.append(job)
                else:
                    self.defer(job, self.rng.uniform(5, 15), reason=cls.reason,
                               why="throttled")
                continue
            if cls.reason != "not_connected":
                answered = True
            if cls.action == "suspend_site" and collateral:
                # an earlier transaction of the same flight was blocked and suspended
                # the site: this one is collateral, not a new attempt of the recipient
                requeue.append(job)
                continue
            if cls.action == "suspend_site":
                resume = shaper.on_block(now, cls.reason or "blocked")
                not_before = self.now_ms() + int((resume - now) * 1000)
                self.soft(job, reply, cls, mx, not_before, source_ip)
                close = True
                continue
            if cls.type == "hard" or cls.action == "bounce":
                self._emit(job, "hard", reply=reply, cls=cls, mx=mx, source_ip=source_ip)
                continue
            self.soft(job, reply, cls, mx, source_ip=source_ip)
            if cls.reason == "not_connected":
                close = True
        if sent:
            before = shaper.limit
            shaper.on_success(now, sent, site.active)
            if shaper.limit > before:
                self.pump(site)  # the limit grew: open the next connection now
        elif answered:
            shaper.on_answer(now)
        if requeue:
            self._requeue_front(site, requeue)
        if shaper.suspended(now):
            self._flush_queue(site, shaper.resume_at(now) - now)
            close = True
        return close

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
            out[s.label() if s.provider else s.name] = st
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
