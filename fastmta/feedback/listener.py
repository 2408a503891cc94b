"""The inbound listener: an SMTP server for the bounce/feedback domains only, never a
relay (it has no outbound queue at all).

- RCPT: the domain must be one of ``[feedback] domains`` (else ``550 5.7.1`` relaying
  denied); the local part must be a valid signed token (``b-``/``u-``) or one of the
  fixed report addresses (``postmaster``, ``abuse``, ``fbl``, ``arf``); a token that does
  not verify gets ``550 5.7.1`` (forged).
- Limits with their standard replies: message size (``552 5.3.4``), recipients per
  transaction (``452 4.5.3``), connections in total and per client address
  (``421 4.7.0`` at connect), per-client rates of new connections and of messages
  (token buckets, ``421 4.7.0`` and the connection closed), command/idle timeout (``421 4.4.2``), line length
  (``500 5.5.2``), no AUTH; STARTTLS when a certificate is configured.
- DATA is durable (parsed, matched, applied and stored in the spool by a group commit)
  before the ``250``.
- The protocol itself (one ``asyncio.Protocol`` per connection) is ``session.py``.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import ssl
import threading
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor

import msgspec

from fastmta import core
from fastmta.config import Config
from fastmta.feedback.apply import Processor
from fastmta.feedback.parse import parse
from fastmta.feedback.ratelimit import Buckets
from fastmta.feedback.session import BUSY, SmtpSession
from fastmta.feedback.tokens import verify
from fastmta.feedback.workers import Workers, share

log = logging.getLogger("fastmta.feedback")
FIXED_LOCAL_PARTS = frozenset({"postmaster", "abuse", "fbl", "arf", "feedback"})


class GroupCommitter:
    """Prepares and commits inbound items in groups on one thread (one fsync per
    group); ``submit`` returns when the item is durable."""

    def __init__(self, proc: Processor, max_group: int = 256) -> None:
        self.proc = proc
        self.max_group = max_group
        self._q: list[tuple[dict, asyncio.Future, asyncio.AbstractEventLoop]] = []
        self._cv = threading.Condition()
        self._stop = False
        self._pool: ProcessPoolExecutor | None = None
        self._t = threading.Thread(target=self._run, name="inbound-commit", daemon=True)
        self._t.start()
        self.groups = 0

    def start_parsers(self, n: int) -> None:
        """Parse in ``n`` processes (spawned, warmed up now) instead of the commit thread."""
        if n > 0:
            ctx = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(n, mp_context=ctx)
            for f in [self._pool.submit(parse, b"") for _ in range(n)]:
                f.result(timeout=60)

    async def submit(self, raw: bytes, **meta) -> object:
        loop = asyncio.get_running_loop()
        if self._pool is not None and raw:
            meta["report"] = await loop.run_in_executor(
                self._pool, parse, raw, self.proc.parse_limits)
        fut = loop.create_future()
        with self._cv:
            self._q.append(({"raw": raw, **meta}, fut, loop))
            self._cv.notify()
        return await fut

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._q and not self._stop:
                    self._cv.wait()
                if self._stop and not self._q:
                    return
                batch, self._q = self._q[: self.max_group], self._q[self.max_group:]
            try:
                now = time.time_ns() // 1_000_000
                items = [self.proc.prepare(m.pop("raw"), now_ms=now, **m) for m, _, _ in batch]
                recs = self.proc.commit(items)
                self.groups += 1
                _wake([(fut, loop, rec, None) for (_, fut, loop), rec
                       in zip(batch, recs, strict=True)])
            except BaseException as exc:  # the clients get a 451: nothing is lost
                log.exception("inbound commit failed")
                _wake([(fut, loop, None, exc) for _, fut, loop in batch])

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._t.join(timeout=10)


def _wake(done: list[tuple[asyncio.Future, asyncio.AbstractEventLoop, object,
                           BaseException | None]]) -> None:
    """Resolve a group's futures: one wake-up per event loop, not one per message."""
    by_loop: dict[asyncio.AbstractEventLoop, list] = {}
    for fut, loop, value, exc in done:
        by_loop.setdefault(loop, []).append((fut, value, exc))
    for loop, items in by_loop.items():
        loop.call_soon_threadsafe(_set_all, items)


def _set_all(items: list[tuple[asyncio.Future, object, BaseException | None]]) -> None:
    for fut, value, exc in items:
        if fut.done():
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)


class InboundServer:
    """``await InboundServer(cfg, spool).start(host, port)``; ``close()`` to stop."""

    def __init__(self, cfg: Config, spool, *, hostname: str = "", processes: int | None = None,
                 spawned: bool = False) -> None:
        self.cfg = cfg
        self.n = max(1, processes if processes is not None else cfg.feedback.listen_processes)
        self.spawned = spawned  # one of the others (workers.py): no purge loop, no spawning
        f = cfg.feedback
        if self.n > 1:  # the limits are shared out between the listener processes
            n = self.n
            f = msgspec.structs.replace(
                f, max_connections=share(f.max_connections, n, whole=True),
                max_connections_per_ip=share(f.max_connections_per_ip, n, whole=True),
                max_messages_per_s_per_ip=share(f.max_messages_per_s_per_ip, n),
                messages_burst_per_ip=share(f.messages_burst_per_ip, n),
                max_connections_per_s_per_ip=share(f.max_connections_per_s_per_ip, n),
                connections_burst_per_ip=share(f.connections_burst_per_ip, n))
        self.f = f
        self.workers: Workers | None = None
        self.worker_cpu_s = 0.0  # user + system CPU of the spawned listeners (after close)
        self.worker_stats: list[dict[str, int]] = []  # their own counters (after close)
        self.domains = {d.lower().rstrip(".") for d in self.f.domains} or \
            ({self.f.bounce_domain} if self.f.bounce_domain else set())
        self.proc = Processor(spool, cfg)
        self.committer = GroupCommitter(self.proc)
        self.key = self.proc.key
        self.hostname = hostname or cfg.smtp.ehlo_name or "localhost"
        self.per_ip: dict[str, int] = defaultdict(int)
        self.msg_rate = Buckets(self.f.max_messages_per_s_per_ip, self.f.messages_burst_per_ip)
        self.conn_rate = Buckets(self.f.max_connections_per_s_per_ip,
                                 self.f.connections_burst_per_ip)
        self.total = 0
        self.stats: dict[str, int] = defaultdict(int)
        self.latencies: list[float] = []  # end of DATA -> durable and applied (seconds)
        self.server: asyncio.AbstractServer | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.sessions: set[SmtpSession] = set()
        self._purger: asyncio.Task | None = None
        self._sweeper: asyncio.Task | None = None
        self.on_close: list = []  # coroutine functions awaited by close() (e.g. the HTTP side)
        self.tls: ssl.SSLContext | None = None
        if self.f.tls_cert and self.f.tls_key:
            self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.tls.load_cert_chain(self.f.tls_cert, self.f.tls_key)

    async def start(self, host: str, port: int) -> tuple[str, int]:
        # the classifier compiles its rules on first use (~0.1 s): not on the first mail
        await asyncio.get_running_loop().run_in_executor(None, core.classify, "", None)
        if self.f.parse_processes > 0 and self.committer._pool is None:
            await asyncio.get_running_loop().run_in_executor(
                None, self.committer.start_parsers, self.f.parse_processes)
        self.loop = loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: SmtpSession(self), host, port,
                                               backlog=512, reuse_port=self.n > 1 or None)
        self._sweeper = loop.create_task(self._sweep())
        sock = self.server.sockets[0].getsockname()
        if self.n > 1 and not self.spawned:
            self.workers = Workers(self.cfg, self.proc.spool.path, self.hostname, self.n)
            try:
                await asyncio.get_running_loop().run_in_executor(
                    None, self.workers.start, sock[0], sock[1])
            except BaseException:
                self.server.close()
                raise
        if not self.spawned:
            self._purger = asyncio.get_running_loop().create_task(self._purge_loop())
        return sock[0], sock[1]

    async def _purge_loop(self) -> None:
        """Drop raw copies older than ``keep_raw_days`` (the records stay), hourly."""
        spool = self.proc.spool
        while True:
            cutoff = time.time_ns() // 1_000_000 - int(self.f.keep_raw_days * 86400_000)
            try:
                await asyncio.get_running_loop().run_in_executor(
                    None, spool.inbound_purge_raw, cutoff)
            except Exception:
                log.exception("purging old inbound copies failed")
            await asyncio.sleep(3600)

    async def _sweep(self) -> None:
        """The idle bound of every session: one pass every tenth of it (at most 1 s)."""
        step = min(1.0, self.f.command_timeout_s / 10)
        while True:
            await asyncio.sleep(step)
            now = self.loop.time()
            for s in list(self.sessions):
                s.idle(now)

    async def close(self) -> None:
        for fn in self.on_close:
            await fn()
        if self._purger is not None:
            self._purger.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        for s in list(self.sessions):  # a session waiting for its commit gets its reply
            if s.state != BUSY:
                s._close(b"421 4.3.2 Service shutting down\r\n")
        if self.workers is not None:  # their counters join ours
            for rep in await asyncio.get_running_loop().run_in_executor(None, self.workers.stop):
                self.worker_stats.append(rep["stats"])
                for k, v in rep["stats"].items():
                    self.stats[k] += v
                self.latencies.extend(rep["latencies"])
                self.committer.groups += rep["groups"]
                self.worker_cpu_s += rep["cpu_user_s"] + rep["cpu_sys_s"]
            self.workers = None
        await asyncio.get_running_loop().run_in_executor(None, self.committer.close)

    # ------------------------------------------------------------------ policy
    def check_rcpt(self, addr: str) -> tuple[int, str]:
        """The reply to ``RCPT TO:<addr>`` (pure policy)."""
        local, at, dom = addr.rpartition("@")
        if not at or not local:
            return 501, "5.1.3 Bad recipient address syntax"
        if dom.lower().rstrip(".") not in self.domains:
            self.stats["relay_denied"] += 1
            return 550, "5.7.1 Relaying denied: this server only receives feedback mail"
        if local.lower() in FIXED_LOCAL_PARTS:
            return 250, "2.1.5 OK"
        pre = self.f.bounce_prefix
        for prefix in {pre, "u-"}:
            if prefix and local.startswith(prefix):
                if verify(self.key, local[len(prefix):]) is not None:
                    return 250, "2.1.5 OK"
                self.stats["forged"] += 1
                return 550, "5.7.1 Invalid return-path token"
        return 550, "5.1.1 No such mailbox here"
