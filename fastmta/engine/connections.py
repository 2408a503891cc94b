"""The connection tasks of the ``Scheduler``: open, serve flights, turn replies into results.

A connection task opens a connection (MX fallback by preference, equal preferences
round-robin, recently failed hosts skipped: ``sites.mx_candidates``), then takes flights
of transactions from the site's queue (several recipients per transaction when their
rendered message is identical, several transactions pipelined per flight), paced by the
site's and provider's rate limits, until the queue is empty for ``idle_timeout_s``,
``max_msgs_per_conn`` is reached or the limit shrank.  ``ConnectionTasks`` is a mixin of
``scheduler.Scheduler``: it uses the scheduler's queue (``_take``, ``_requeue_front``,
``_flush_queue``, ``pump``) and results (``_emit``, ``soft``, ``defer``).
"""

from __future__ import annotations

import asyncio
import logging

from fastmta.core import Reply
from fastmta.engine.decisions import decide, decide_connect
from fastmta.engine.sites import Job, Site, mx_candidates

log = logging.getLogger("fastmta.engine.scheduler")  # the scheduler's tasks, its logger

MAX_INMEMORY_REQUEUES = 4
FLIGHT = 8  # transactions pipelined per write
# ... and at most about this many body bytes per flight (at least one transaction): a
# flight's bodies stay in memory twice (rendered, and in the protocol's output) until
# the server answers, so 8 x 200 KB on each of hundreds of connections was a worker's
# largest memory (campaign profile: 249 MB private per worker)
FLIGHT_BYTES = 256 * 1024



def _trim(flight: list[list[Job]], n: int) -> tuple[list[list[Job]], list[Job]]:
    """The first ``n`` recipients of ``flight`` (its groups kept) and the others."""
    kept: list[list[Job]] = []
    rest: list[Job] = []
    for group in flight:
        room = n - sum(len(g) for g in kept)
        if room >= len(group):
            kept.append(group)
        elif room > 0:
            kept.append(group[:room])
            rest += group[room:]
        else:
            rest += group
    return kept, rest

class ConnectionTasks:
    """Connection tasks of the scheduler's sites (see module docstring)."""

    async def _open(self, site: Site):
        """Connect with MX fallback.  Returns (conn, host, ip) or raises the last failure."""
        from fastmta.smtp.transport import ConnectFailed

        smtp = self.cfg.smtp
        tls = site.provider.tls if site.provider and site.provider.tls else smtp.tls
        relay, port = site.relay, smtp.port
        if relay is not None:  # a smarthost (engine/relay.py): its port, TLS and AUTH
            port, tls = relay.port, self.cfg.routing.tls or tls
        last: ConnectFailed | None = None
        source_ip = smtp.source_ips[0] if smtp.source_ips else None
        # MTA-STS policy of an mta-sts:<domain> site (bound on the base site of a source)
        sts = getattr(site, "sts", None) or getattr(getattr(site, "base", None), "sts", None)
        ehlo_name = smtp.ehlo_name
        if site.source is not None:  # egress: the (site, source) binds its address
            source_ip = site.source.ip or None
            ehlo_name = site.source.ehlo_for(site.label())
        for host, ip in mx_candidates(site, self.now()):
            try:
                if sts is not None:
                    conn = await sts.connect(self._connect, host, ip, smtp, source_ip)
                else:
                    conn = await self._connect(ip, port, ehlo_name=ehlo_name, tls=tls,
                                               server_hostname=host, source_ip=source_ip,
                                               timeouts=smtp)
                if relay is not None and self.cfg.routing.auth_user:
                    await self._relay_auth(conn)
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

    async def _relay_auth(self, conn) -> None:
        from fastmta.smtp.relay import authenticate

        r = self.cfg.routing
        await authenticate(conn, r.auth_user, r.auth_password, r.auth_mechanism,
                           allow_plaintext_loopback=r.auth_allow_plaintext_loopback)

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
        decision = decide_connect(cls, exc.kind)
        if decision.kind == "throttle":
            site.throttled += 1
            self.stats["throttled"] += 1
            shaper = site.shaper
            shaper.on_reply(text, now)
            if decision.shaper_kind == "connections":
                # level = connections established + this one (others still connecting
                # when it was refused did not cause it)
                shaper.on_throttle(now, "connections",
                                   max(1, site.active - site.connecting))  # jobs stay queued
                return
            shaper.on_connect_failure(now, throttle=True)
        elif decision.kind == "suspend":
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
        return site.active > site.shaper.connection_limit(self.now()) or site.over_share()

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
        nbytes = 0
        while site.queue and len(flight) < min(FLIGHT, max(1, budget)) and \
                (not cells or total < cells) and nbytes < FLIGHT_BYTES:
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
            nbytes += len(first.body)
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
                cells = site.shaper.flight_limit(self.now())
                if cells and n > cells:
                    # the rates were cut since this flight was built (a throttle here or
                    # a limit learned elsewhere; after a rate throttle only a single
                    # probe may go): no more than the new burst can ever conform at once
                    # (held, the flight would wait for ever: the stall of docs/scale.md),
                    # so the rest goes back to the queue
                    flight, rest = _trim(flight, cells)
                    self._requeue_front(site, rest)
                    n = cells
                wait = site.shaper.reserve_send(self.now(), n)
                if wait <= 0:
                    break
                await asyncio.sleep(min(wait, 1.0))
                if self.stopping or self.draining or site.shaper.suspended(self.now()):
                    self._requeue_front(site, [j for g in flight for j in g])
                    return
                if self.hold_filter is not None:  # a delivery paused at a provider
                    flight = self.hold_filter(flight)
                    n = sum(len(g) for g in flight)
                    if not n:
                        break
            if not flight:
                continue
            if site.capped and self.reserve_gate is not None:
                # a cold source: the counters that reserved these messages are written
                # before they go, so a kill -9 cannot hand the same cap out twice
                await self.reserve_gate()
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
            decision = decide(cls, code, cmd, reply.enhanced if reply is not None else None)
            if decision.kind == "requeue_session" and conn is not None and \
                    conn.messages_sent > 0:
                # a per-session message limit, not a throttle: learn it, send again
                n = conn.messages_sent
                site.msgs_cap = n if not site.msgs_cap else min(site.msgs_cap, n)
                requeue.append(job)
                close = True
                continue
            if decision.kind == "requeue_split":
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
            if cls.reason == "not_connected":
                # reset / timeout / connection lost during this transaction: a real
                # (soft) attempt for the recipient (its message may even have arrived:
                # at-least-once).  A throttle signal for the site only when the session
                # delivered nothing and died before the message body: a drop in the
                # middle of one message is a fault of that message.
                if cls.throttle and (conn is None or conn.messages_sent == 0) and \
                        cmd not in ("data", "dot"):
                    site.throttled += 1
                    self.stats["throttled"] += 1
                    shaper.on_throttle(now, "connections")
                self.soft(job, reply, cls, mx, source_ip=source_ip)
                close = True
                continue
            if decision.kind == "defer_recipient":
                # this mailbox receives too fast: only it waits (its own retry backoff);
                # the site keeps its speed and its limits
                self.stats["deferred_recipient"] = self.stats.get("deferred_recipient", 0) + 1
                answered = True
                self.soft(job, reply, cls, mx, source_ip=source_ip)
                close = close or decision.close
                continue
            if decision.kind == "throttle":
                site.throttled += 1
                self.stats["throttled"] += 1
                shaper.on_throttle(now, decision.shaper_kind, site.in_use())
                close = close or decision.close
                if job.requeues < MAX_INMEMORY_REQUEUES and not shaper.suspended(now):
                    job.requeues += 1
                    requeue.append(job)
                else:
                    self.defer(job, self.rng.uniform(5, 15), reason=cls.reason,
                               why="throttled")
                continue
            close = close or decision.close
            if cls.reason != "not_connected":
                answered = True
            if decision.kind == "suspend" and collateral:
                # an earlier transaction of the same flight was blocked and suspended
                # the site: this one is collateral, not a new attempt of the recipient
                requeue.append(job)
                continue
            if decision.kind == "suspend":
                if cls.throttle:
                    site.throttled += 1
                    self.stats["throttled"] += 1
                resume = shaper.on_block(now, cls.reason or "blocked")
                # with a source, only that source waits: the retry may take another
                not_before = 0 if site.source is not None else \
                    self.now_ms() + int((resume - now) * 1000)
                self.soft(job, reply, cls, mx, not_before, source_ip)
                close = True
                continue
            if decision.kind == "hard":
                self._emit(job, "hard", reply=reply, cls=cls, mx=mx, source_ip=source_ip)
                continue
            self.soft(job, reply, cls, mx, source_ip=source_ip)
            if cls.reason == "not_connected":
                close = True
        if sent:
            before = shaper.limit
            shaper.on_success(now, sent, site.in_use())
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
