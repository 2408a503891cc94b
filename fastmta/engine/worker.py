"""A worker process: its own event loop, spool handle, resolver and scheduler.

Started by the supervisor with ``multiprocessing`` *spawn* (never fork: LMDB and asyncio
do not survive a fork).  It owns a set of shards: it leases due recipients of those
shards from the spool in bounded batches (never more than ``max_inflight`` leased and
not yet committed), resolves each domain's MX (cached), queues the recipients on their
site, and commits every outcome through the spool's ``ResultWriter`` (group commit).

Control: the supervisor talks over a pipe.  The worker sends a heartbeat (msgpack dict:
counters and the sites being shaped) every ``heartbeat_s``; it accepts ``drain`` (stop
leasing, finish in-flight transactions, give queued recipients back, commit, exit) and
``stop`` (abort connections now, give everything back, commit, exit) and
``shards:1,5,9`` (the shards it owns from now on: the supervisor only ever adds).  SIGINT is ignored
(a Ctrl-C in the terminal goes to the supervisor, which decides), SIGTERM means drain.
If the supervisor disappears (kill -9), the worker stops on its own.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import random
import signal
import time
from pathlib import Path

import msgspec

from fastmta.config import Config
from fastmta.engine.heap import HeapTrimmer
from fastmta.engine.providers import load_providers
from fastmta.engine.scheduler import Scheduler
from fastmta.engine.sites import Job
from fastmta.records import WorkItem
from fastmta.spool.errors import SpoolFullError

log = logging.getLogger("fastmta.engine.worker")

WORKERS_LOCK = "workers.lock"
MX_MEMO_S = 2.0  # reuse a domain's MxResult for this long across lease batches


class WorkerSpec(msgspec.Struct, kw_only=True):
    """Everything a spawned worker needs (sent through the spawn pickle)."""

    index: int
    shards: list[int]
    config: dict  # msgspec.to_builtins(Config)
    spool_path: str
    parent_pid: int
    heartbeat_s: float = 1.0
    max_inflight: int = 10_000
    lease_batch: int = 1000
    poll_s: float = 0.25
    drain_timeout_s: float = 30.0
    node_table: str = ""  # shared-memory table of the node's limits (spread sites)


def owner_name(index: int, pid: int) -> str:
    """The lease owner of a worker process (the supervisor derives it from the pid)."""
    return f"worker-{index}-{pid}"


class Worker:
    """The asyncio side of a worker process."""

    def __init__(self, spec: WorkerSpec, pipe=None, lock=None, limits_factory=None) -> None:
        self.spec = spec
        self.pipe = pipe
        self.node_lock = lock  # guards the node's limits table (with spec.node_table)
        self.limits_factory = limits_factory  # (cfg, node Limits | None) -> Limits
        self.limits = None
        self.cfg: Config = msgspec.convert(spec.config, Config)
        self.owner = owner_name(spec.index, os.getpid())
        self.inflight = 0
        self.per_shard: dict[int, int] = dict.fromkeys(spec.shards, 0)
        # one shard (one big, slow site) may hold at most this many recipients in
        # memory, so it cannot take the whole budget and starve the other shards
        self.shard_cap = max(spec.lease_batch, spec.max_inflight // 4)
        self.draining = False
        self.stop_now = False
        self._room = asyncio.Event()
        self._done = asyncio.Event()
        self._settled = asyncio.Event()  # set when no result waits for its commit
        self._heap = HeapTrimmer()
        # results accepted by a server but not yet durable are the only ones a crash
        # can duplicate: keep them bounded (flights wait at the gate beyond this)
        self.max_uncommitted = 2 * self.cfg.spool.commit_batch
        self._below = asyncio.Event()
        self._templates: dict[int, bytes] = {}
        self.rng = random.Random()
        self.started = time.monotonic()
        self.commit_errors = 0
        self._mx_memo: dict[str, tuple[float, object]] = {}
        self._outbox: list[tuple[int, object]] = []
        self._uncommitted = 0  # results submitted to the writer, not yet durable
        self.fb_tokens = None  # fastmta.feedback.tokens.Tokens when [feedback] enabled

    # ----------------------------------------------------------------- spool glue
    def _open(self) -> None:
        from fastmta.dns.resolver import Resolver
        from fastmta.spool import ResultWriter, Spool

        self.spool = Spool.open(self.spec.spool_path, self.cfg.spool)
        self.writer = ResultWriter(self.spool).start()
        self.resolver = Resolver(self.cfg.dns, self.cfg.smtp)
        providers = load_providers(self.cfg.providers,
                                   shipped=self.cfg.shaping.use_provider_defaults)
        from fastmta.egress.egress import Egress

        self.egress = Egress(self.cfg)  # sources, pools, warm-up, memory (issue #17)
        self.egress.load(self.spool.egress_items(), time.time())
        self._pools: dict[int, str] = {}
        from fastmta.engine.relay import Relays

        self.relays = Relays(self.cfg.routing)  # [routing] smarthost(s)
        self._reserve_lock = asyncio.Lock()
        self._relay_sites: dict[str, object] = {}
        self.limits = self._open_limits()
        self.scheduler = Scheduler(self.cfg, providers, self._on_result, self._render,
                                   rng=self.rng, is_static=self._is_static,
                                   commit_gate=self._commit_gate, egress=self.egress,
                                   pool_of=self._pool_of, limits=self.limits)
        self.scheduler.reserve_gate = self._reserve_gate  # warm-up counters first
        from fastmta.engine.worker_ops import worker_ops

        self.ops = worker_ops(self)  # ops hook: counters, admin requests, site events
        from fastmta.engine.unknown_replies import UnknownReplyLoop

        self.unknown_replies = UnknownReplyLoop(self.cfg.classify.rules_file)  # rules, unknown replies
        self.scheduler.unknown = self.unknown_replies.unknown
        self._open_dkim()
        self._open_feedback()
        self._open_sts()

    def _open_feedback(self) -> None:
        """VERP return path, token Message-ID, List-Unsubscribe (docs/feedback.md)."""
        self.fb_tokens = None
        fb = self.cfg.feedback
        if fb.enabled and fb.bounce_domain:
            from fastmta.feedback.tokens import Tokens

            self.fb_tokens = Tokens(self.spool.feedback_key(), fb.bounce_domain,
                                    bounce_prefix=fb.bounce_prefix,
                                    unsubscribe_url=fb.unsubscribe_url)

    def _open_sts(self) -> None:
        """The MTA-STS gate (RFC 8461): engine/mta_sts_gate.py."""
        self.sts = None
        if self.cfg.compliance.mta_sts:
            from fastmta.engine.mta_sts_gate import StsGate

            try:
                self.sts = StsGate(self.cfg, self.spec.spool_path)
            except ValueError as exc:
                log.warning("MTA-STS disabled: %s", exc)

    def _open_limits(self):
        """The node's shared limits (spread sites) and/or the cluster's (injected)."""
        node = None
        if self.spec.node_table and self.node_lock is not None:
            from fastmta.engine.node_limits import NodeTable, ShmLimits

            node = ShmLimits(NodeTable.attach(self.spec.node_table), self.node_lock,
                             self.spec.index)
        if self.limits_factory is not None:
            return self.limits_factory(self.cfg, node)
        return node

    async def _limits_loop(self) -> None:
        from fastmta.engine.site_limits import SYNC_S, sync

        while not self._done.is_set():
            try:
                sync(self.scheduler, self.limits)
            except Exception:  # pragma: no cover - the next round tries again
                log.exception("syncing shared limits")
            await asyncio.sleep(SYNC_S)

    def _open_dkim(self) -> None:
        """Load the DKIM keys once; messages are signed at send time (docs/dkim.md)."""
        from fastmta.dkim import BodyHashCache, SignerSet

        self.signers = SignerSet.from_config(self.cfg.dkim)
        self._body_hashes = BodyHashCache(maxsize=64)

    async def _commit_gate(self) -> None:
        # results (not groups) sent but not yet durable, queued ones included
        while self._uncommitted + len(self._outbox) >= self.max_uncommitted:
            self._below.clear()
            await self._below.wait()

    def _template(self, did: int):
        from fastmta.delivery import Template

        tpl = self._templates.get(did)
        if tpl is None:
            tpl = Template(self.spool.template(did))
            if len(self._templates) > 64:
                self._templates.clear()
            self._templates[did] = tpl
        return tpl

    def _pool_of(self, did: int) -> str:
        pool = self._pools.get(did)
        if pool is None:
            pool = self._pools[did] = self.spool.delivery(did).pool
        return pool

    async def _egress_flush(self) -> None:
        """Write the learned (site, source) state and warm-up counters that changed."""
        if self.writer.paused or self.spool.full:
            return  # the spool is full: results first; the state is written after
        eg = self.egress
        seq = eg.reserved if eg is not None else 0
        try:
            recs = self.scheduler.egress_flush()
            if recs:
                await self.writer.run(self.spool.egress_put, recs)
        except Exception:  # pragma: no cover - the next beat tries again
            log.exception("writing the egress state")
            return
        if eg is not None and seq > eg.durable:
            eg.durable = seq  # the writer thread is FIFO: every earlier batch is written

    async def _reserve_gate(self) -> None:
        """Wait until every warm-up reservation made so far is durable (flushing now
        rather than at the next beat; concurrent callers share one flush)."""
        eg = self.egress
        while eg.durable < eg.reserved and not self.stop_now:
            if self._reserve_lock.locked():
                async with self._reserve_lock:
                    continue
            async with self._reserve_lock:
                before = eg.durable
                await self._egress_flush()
                if eg.durable == before:  # not written (spool full): do not spin
                    await asyncio.sleep(0.2)

    def _is_static(self, did: int) -> bool:
        """True when the message has no personalisation: one body serves every
        recipient, so recipients can share transactions."""
        if self.fb_tokens is not None:  # a return path per recipient
            return False
        tpl = self._template(did)
        return not (tpl.header_fields or tpl.body_fields)

    def _render(self, item: WorkItem) -> bytes:
        fields = dict(item.fields)
        fields["email"] = item.email
        tpl = self._template(item.delivery_id)
        fbt = self.fb_tokens
        if fbt is not None:
            tok = fbt.token(item.delivery_id, item.rcpt_id)
            item.mail_from = fbt.return_path(tok)
            message = tpl.render(fields, message_id=fbt.message_id(tok),
                                 extra_headers=fbt.unsubscribe_headers(tok))
        else:
            message = tpl.render(fields)
        if len(self.signers):
            message = self._sign(item.delivery_id, tpl, message)
        return message

    def _sign(self, did: int, tpl, message: bytes) -> bytes:
        """Prepend the DKIM signatures of the From domain's keys (none: unchanged).

        A body without personalisation is hashed once per delivery and reused for
        every recipient (the cache checks the bytes are identical).
        """
        from fastmta.dkim import body_of

        t0 = time.perf_counter()
        bh = None
        if not tpl.body_fields:
            bh = self._body_hashes.get(did, body_of(message))
        fields = self.signers.sign_message(message, body_hash=bh)
        self.ops.observe_dkim(time.perf_counter() - t0)
        return fields + message

    def _on_result(self, job: Job, result) -> None:
        self.ops.on_result(job, result)  # ops hook
        # results of one loop iteration go to the writer as one group: one task per
        # group instead of one per result (~4% of a worker's CPU at 5,000 msgs/s)
        self._outbox.append((job.item.shard, result))
        if len(self._outbox) == 1:
            asyncio.get_running_loop().call_soon(self._flush_outbox)

    def _flush_outbox(self) -> None:
        batch, self._outbox = self._outbox, []
        if not batch:
            return
        # one callback per group, no future or task (the writer calls it once the
        # transaction holding the group is durable)
        self._uncommitted += len(batch)
        shards = [s for s, _ in batch]
        self.writer.hand([r for _, r in batch], lambda exc: self._committed(exc, shards))

    def _committed(self, exc: BaseException | None, shards: list[int]) -> None:
        self._uncommitted -= len(shards)
        if self._uncommitted < self.max_uncommitted:
            self._below.set()
            if not self._uncommitted:
                self._settled.set()
        self.inflight -= len(shards)
        for shard in shards:
            self.per_shard[shard] -= 1
        if exc is not None:
            # not durable: the lease stays; recovery gives the recipient back later
            self.commit_errors += len(shards)
            log.error("commit failed: %s", exc)
        self._room.set()

    # ----------------------------------------------------------------- loops
    async def _fetch_loop(self) -> None:
        while not self.draining:
            try:
                await self._fetch()
                return
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug or a spool error: log, back off, go on leasing
                log.exception("fetching work")
                await asyncio.sleep(1.0)

    async def _fetch(self) -> None:
        spec = self.spec
        while not self.draining:
            room = spec.max_inflight - self.inflight
            shards = [s for s in spec.shards if self.per_shard[s] < self.shard_cap]
            if room < max(1, spec.lease_batch // 4) or not shards:
                # no room in memory (or every shard at its cap): wait for results
                self._room.clear()
                try:
                    await asyncio.wait_for(self._room.wait(), spec.poll_s)
                except TimeoutError:
                    pass
                continue
            try:
                items = await self.writer.run(self.spool.lease, shards, self.owner,
                                              min(room, spec.lease_batch))
            except SpoolFullError:
                # map or disk full (logged once by the spool): lease nothing new, let
                # results drain, and try again
                await asyncio.sleep(self.spool.cfg.full_retry_s)
                continue
            if not items:
                await asyncio.sleep(spec.poll_s)
                continue
            self.inflight += len(items)
            for it in items:
                self.per_shard[it.shard] = self.per_shard.get(it.shard, 0) + 1
            await self._dispatch(items)

    async def _dispatch(self, items: list[WorkItem]) -> None:
        # MX results are memoised for MX_MEMO_S: a lease batch touches hundreds of
        # domains, and going through the resolver (cached, but one task, name parsing
        # and a shuffle per domain) cost ~8% of a worker's CPU at 5,000 msgs/s (py-spy)
        now = time.monotonic()
        memo = self._mx_memo
        resolved = {}
        todo = set()
        for it in items:
            d = it.domain
            if d in resolved or d in todo:
                continue
            if self.relays.active and self._relayed(d, resolved):
                continue
            hit = memo.get(d)
            if hit is not None and hit[0] > now:
                resolved[d] = hit[1]
            else:
                todo.add(d)
        if todo:
            sem = asyncio.Semaphore(64)

            async def resolve(d: str):
                async with sem:
                    try:
                        return d, await self.resolver.resolve_mx(d)
                    except Exception as exc:  # never lose the batch: soft, retried later
                        from fastmta.dns.resolver import MxResult, dns_failure

                        log.exception("resolving %s", d)
                        return d, MxResult(domain=d, error=dns_failure("servfail", str(exc)))

            fresh = dict(await asyncio.gather(*(resolve(d) for d in todo)))
            if len(memo) > 50_000:
                memo.clear()
            until = time.monotonic() + MX_MEMO_S
            for d, mx in fresh.items():
                memo[d] = (until, mx)
            resolved.update(fresh)
        sts = self.sts
        if sts is not None:
            resolved = await sts.adjust(resolved)
        sched = self.scheduler
        for it in items:
            job = Job(it)
            mx = resolved[it.domain]
            if mx.error is not None:
                sched.fail_resolution(job, mx.error)
                continue
            if self.relays.active and mx.site and not mx.site.startswith("relay:"):
                mx = self._relay_by_provider(mx)
            site = sched.site_for(mx)
            if sts is not None:
                sts.bind(site, it.domain, mx)
            if site.relay is None and mx.site.startswith("relay:"):
                site.relay = self._relay_sites[mx.site]
            if not self.ops.intercept(site, job):  # ops hook: admin suspend / bounce
                sched.enqueue(site, job)

    def _relayed(self, domain: str, resolved: dict) -> bool:
        """A domain routed to a smarthost without MX lookup (decided by its name)."""
        decided, relay = self.relays.for_domain(domain)
        if not decided and any("." not in k for k in self.relays.by_name):
            return False  # a per-provider relay may apply: look the MX up first
        if relay is None:
            return False
        self._relay_sites[relay.site] = relay
        resolved[domain] = self.relays.mx(domain, relay)
        return True

    def _relay_by_provider(self, mx):
        decided, relay = self.relays.for_provider(mx.provider)
        if relay is None or (not decided and self.relays.for_domain(mx.domain)[0]):
            return mx
        self._relay_sites[relay.site] = relay
        return self.relays.mx(mx.domain, relay)

    def heartbeat(self) -> dict:
        sched = self.scheduler
        return {
            "index": self.spec.index,
            "pid": os.getpid(),
            "owner": self.owner,
            "inflight": self.inflight,
            "queued": sched.queued,
            "stats": dict(sched.stats),
            "sites": sched.status(),
            "commit_errors": self.commit_errors,
            # the spool's map or disk is full: delivery paused (issue #9)
            "spool_full": self.writer.paused or self.spool.full or "",
            "draining": self.draining,
            "ops": self.ops.snapshot(),  # ops hook
            "limits": self._limits_status(),
        }

    def _limits_status(self) -> dict:
        if self.limits is None:
            return {}
        st = self.limits.status()
        st["round_trips"] = st.get("round_trips", st.get("ops", 0))
        return st

    async def _heartbeat_loop(self) -> None:
        enc = msgspec.msgpack.Encoder()
        renew_every = max(1.0, self.cfg.spool.lease_s / 3)
        last_renew = time.monotonic()
        while not self._done.is_set():
            self.unknown_replies.check_rules()
            try:
                await self.unknown_replies.flush(self.writer, self.spool)
            except Exception:  # pragma: no cover - a full spool: the next beat tries again
                log.exception("recording unknown replies")
            if time.monotonic() - last_renew >= renew_every and not self.stop_now:
                # recipients held in memory (a paused site) keep their leases
                last_renew = time.monotonic()
                try:
                    await self.writer.run(self.spool.renew_leases, self.owner)
                except Exception:  # pragma: no cover - the next beat tries again
                    log.exception("renewing leases")
            if not self.stop_now:
                await self._egress_flush()
            self._heap.maybe()  # freed C-heap memory back to the system (engine/heap.py)
            if os.getppid() != self.spec.parent_pid:
                log.warning("supervisor gone: stopping")
                self.request("stop")
            if self.pipe is not None:
                try:
                    self.pipe.send_bytes(enc.encode(self.heartbeat()))
                except (BrokenPipeError, OSError):
                    self.request("stop")
            try:
                await asyncio.wait_for(self._done.wait(), self.spec.heartbeat_s)
            except TimeoutError:
                pass

    def _on_pipe(self) -> None:
        try:
            while self.pipe.poll():
                msg = self.pipe.recv_bytes()
                self.request(msg.decode())
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(self.pipe.fileno())
            self.request("stop")

    def request(self, what: str) -> None:
        """``drain``, ``stop`` (idempotent; ``stop`` overrides ``drain``) or
        ``shards:<list>`` (the worker's shards from now on)."""
        if what.startswith("shards:"):
            self.set_shards([int(x) for x in what[7:].split(",") if x])
            return
        if what == "stop":
            self.stop_now = True
            self.draining = True
        elif what == "drain":
            self.draining = True
        self._wake.set()

    def set_shards(self, shards: list[int]) -> None:
        """Own ``shards`` from now on and lease from them at once."""
        self.spec.shards = list(shards)
        for s in shards:
            self.per_shard.setdefault(s, 0)
        self._room.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._open()
        if self.pipe is not None:
            loop.add_reader(self.pipe.fileno(), self._on_pipe)
        try:
            loop.add_signal_handler(signal.SIGTERM, self.request, "drain")
        except (NotImplementedError, RuntimeError):
            pass
        hb = loop.create_task(self._heartbeat_loop())
        fetch = loop.create_task(self._fetch_loop())
        ops = loop.create_task(self.ops.run())  # ops hook
        lim = loop.create_task(self._limits_loop()) if self.limits is not None else None
        try:
            while not self.draining:
                await self._wake.wait()
                self._wake.clear()
            sched = self.scheduler
            sched.drain_queues()
            if not self.stop_now:
                deadline = time.monotonic() + self.spec.drain_timeout_s
                while sched.tasks and not self.stop_now and time.monotonic() < deadline:
                    self._wake.clear()
                    waiter = loop.create_task(self._wake.wait())
                    await asyncio.wait({waiter, *sched.tasks}, timeout=0.5,
                                       return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
            await asyncio.wait_for(fetch, 30.0)
            await sched.stop()
            self._flush_outbox()
            if self._uncommitted:
                self._settled.clear()
                try:
                    await asyncio.wait_for(self._settled.wait(), 30.0)
                except TimeoutError:
                    log.error("%d results still not committed at exit", self._uncommitted)
        finally:
            fetch.cancel()
            ops.cancel()
            if lim is not None:
                lim.cancel()
            self._done.set()
            await asyncio.gather(hb, return_exceptions=True)
            await self._close()

    async def _close(self) -> None:
        await self._egress_flush()
        try:
            await self.unknown_replies.flush(self.writer, self.spool)
        except Exception:  # pragma: no cover - best effort at exit
            log.exception("recording unknown replies")
        if self.limits is not None:
            try:
                self.limits.close()  # every lease still held goes back
            except Exception:  # pragma: no cover - leases expire by themselves
                log.exception("releasing shared limits")
        try:
            await self.writer.close()
        except Exception:  # pragma: no cover - best effort at exit
            log.exception("closing the result writer")
        try:
            # anything still leased by us (e.g. a result that failed to commit)
            self.spool.recover_leases(owner=self.owner)
        except Exception:  # pragma: no cover
            log.exception("returning leases")
        if self.pipe is not None:
            try:
                self.pipe.send_bytes(msgspec.msgpack.encode({"exit": True,
                                                             **self.heartbeat()}))
            except OSError:
                pass


def worker_main(spec: WorkerSpec, pipe=None, lock=None, limits_factory=None) -> None:
    """Entry point of a spawned worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        from setproctitle import setproctitle

        setproctitle(f"fastmta: worker {spec.index}")
    except ImportError:  # pragma: no cover
        pass
    logging.basicConfig(level=os.environ.get("FASTMTA_LOG_LEVEL", "WARNING"),
                        format=f"%(asctime)s worker {spec.index} %(levelname)s %(message)s")
    # a shared lock tells a restarted supervisor that workers of a dead one still run
    workers_lock = open(Path(spec.spool_path) / WORKERS_LOCK, "a+")  # noqa: SIM115
    fcntl.flock(workers_lock, fcntl.LOCK_SH)
    from fastmta.runtime import run

    prof_dir = os.environ.get("FASTMTA_PROFILE_DIR")  # developer aid: cProfile per worker
    try:
        if prof_dir:
            import cProfile

            prof = cProfile.Profile()
            try:
                prof.runcall(run, Worker(spec, pipe, lock, limits_factory).run())
            finally:
                prof.dump_stats(str(Path(prof_dir) / f"worker-{spec.index}-{os.getpid()}.prof"))
        else:
            run(Worker(spec, pipe, lock, limits_factory).run())
    finally:
        workers_lock.close()
