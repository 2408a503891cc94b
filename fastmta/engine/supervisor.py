"""The supervisor: starts, watches and stops the worker processes.

- N workers (default: one per core) started with ``multiprocessing`` *spawn*.  Shards go
  to workers by weight (``engine/shard_plan.py``): a shard, the first time it has a
  backlog, goes to the worker with the least backlog on its shards (heaviest first) and
  stays there for the run; the worker is told its new list over the pipe.
- Watches them: a heartbeat over a pipe every second.  A worker that exits unexpectedly
  or misses heartbeats for ``heartbeat_timeout_s`` is killed if needed, its leases are
  returned to the ready queue (``spool.recover_leases(owner)``) and it is restarted
  (with a growing back-off when it keeps crashing).
- One supervisor per spool (``supervisor.lock``).  At start it waits until the workers
  of a previous, killed supervisor have gone (they hold ``workers.lock`` shared and stop
  by themselves when their parent dies), then recovers every lease.
- SIGTERM / SIGINT: drain (workers finish in-flight transactions, give queued recipients
  back, commit, exit).  A second signal: stop at once (connections aborted, everything
  not acknowledged goes back to the spool; nothing is lost, a message whose 250 was not
  yet committed may be sent again later: at-least-once).
- ``until_done``: exit once every recipient of the given deliveries is final.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from fastmta.config import Config
from fastmta.engine.shard_plan import ShardPlan
from fastmta.engine.worker import WORKERS_LOCK, WorkerSpec, owner_name, worker_main
from fastmta.errors import FastMTAError

log = logging.getLogger("fastmta.engine.supervisor")

SUPERVISOR_LOCK = "supervisor.lock"


class SupervisorBusy(FastMTAError):
    """Another supervisor runs on this spool."""


@dataclass
class _Slot:
    index: int
    shards: list[int]
    proc: mp.process.BaseProcess | None = None
    pipe: object | None = None
    owner: str = ""
    last_beat: float = 0.0
    beat: dict = field(default_factory=dict)
    restarts: int = 0
    next_start: float = 0.0
    exited: bool = False


@dataclass
class Progress:
    """What the supervisor reports to its caller's progress callback."""

    elapsed_s: float
    kpis: dict  # delivery id -> spool KPIs
    workers: list[dict]
    restarts: int
    draining: bool


def engine_running(spool_path: str | os.PathLike) -> bool:
    """True when a supervisor holds the spool's lock (an engine runs on it)."""
    path = Path(spool_path) / SUPERVISOR_LOCK
    if not path.exists():
        return False
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover
        return max(1, os.cpu_count() or 1)


def _is_final(spool, did: int, kpis: dict) -> bool:
    """Nothing more will happen to the delivery without an operator: every recipient
    final, or the delivery paused / cancelled."""
    state = spool.delivery(did).state
    if state in ("paused", "cancelled"):
        return True
    return kpis.get("pending", 0) == 0 and state != "injecting"


class Supervisor:
    """Runs the worker pool on one spool (see module docstring)."""

    def __init__(self, cfg: Config, spool_path: str | os.PathLike, *,
                 workers: int | None = None, heartbeat_timeout_s: float = 30.0,
                 progress: Callable[[Progress], None] | None = None,
                 progress_s: float = 0.5, title: bool = True,
                 worker_target: Callable | None = None) -> None:
        self.cfg = cfg
        self.spool_path = str(spool_path)
        n = workers or cfg.engine.workers or default_workers()
        self.n = max(1, min(n, cfg.engine.shards))
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.progress = progress
        self.progress_s = progress_s
        self.maintenance_s = 5.0
        self.title = title
        self.ctx = mp.get_context("spawn")
        # spread sites: every worker leases every shard, a site's limits are held for the
        # node in shared memory (engine/node_limits.py); a cluster target injects Redis
        self.worker_target = worker_target or worker_main
        self.spread = cfg.engine.spread_sites and (self.n > 1 or worker_target is not None)
        self.node_table = None
        self.node_lock = None
        self.plan: ShardPlan | None = None
        if self.spread:
            from fastmta.engine.node_limits import MAX_WORKERS, NodeTable

            self.n = min(self.n, MAX_WORKERS)
            self.node_table = NodeTable.create()
            self.node_lock = self.ctx.Lock()
            shards = list(range(cfg.engine.shards))
            self.slots = [_Slot(i, shards) for i in range(self.n)]
        else:  # shards are given by weight as their backlog appears (_plan_shards)
            self.plan = ShardPlan(cfg.engine.shards, self.n)
            self.slots = [_Slot(i, self.plan.shards_of(i)) for i in range(self.n)]
        self.draining = False
        self.stopping = False
        self.restarts = 0
        self._signals = 0
        self._wake: asyncio.Event | None = None
        self._lock_file = None
        self.spool = None
        self.ops = None  # ops hook: SupervisorOps (metrics, status, exports, sweeps)

    # ---------------------------------------------------------------- locking
    def _lock(self) -> None:
        path = Path(self.spool_path)
        path.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(path / SUPERVISOR_LOCK, "a+")  # noqa: SIM115
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise SupervisorBusy(f"another fastmta supervisor runs on {path}") from None

    async def _wait_orphans(self, timeout_s: float = 60.0) -> None:
        """Wait until no worker of a previous supervisor holds the workers lock."""
        with open(Path(self.spool_path) / WORKERS_LOCK, "a+") as f:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.flock(f, fcntl.LOCK_UN)
                    return
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise FastMTAError("workers of a previous supervisor are still "
                                           "running on this spool") from None
                    await asyncio.sleep(0.1)

    # ---------------------------------------------------------------- workers
    def _spec(self, slot: _Slot) -> WorkerSpec:
        return WorkerSpec(index=slot.index, shards=slot.shards,
                          config=msgspec.to_builtins(self.cfg),
                          spool_path=self.spool_path, parent_pid=os.getpid(),
                          drain_timeout_s=30.0,
                          node_table=self.node_table.name if self.node_table else "")

    def _start(self, slot: _Slot) -> None:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=self.worker_target,
                                args=(self._spec(slot), child, self.node_lock),
                                name=f"fastmta-worker-{slot.index}", daemon=False)
        proc.start()
        child.close()
        slot.proc, slot.pipe = proc, parent
        slot.owner = owner_name(slot.index, proc.pid)
        slot.last_beat = time.monotonic()
        slot.exited = False
        asyncio.get_running_loop().add_reader(parent.fileno(), self._on_beat, slot)
        log.info("started worker %d (pid %d, %d shards)", slot.index, proc.pid,
                 len(slot.shards))

    def _on_beat(self, slot: _Slot) -> None:
        pipe = slot.pipe
        try:
            # the event loop may have made the fd non-blocking: a heartbeat that arrives
            # in two parts would then fail with EAGAIN and detach a healthy worker
            os.set_blocking(pipe.fileno(), True)
            while pipe.poll():
                beat = msgspec.msgpack.decode(pipe.recv_bytes())
                slot.beat = beat
                slot.last_beat = time.monotonic()
                if beat.get("exit"):
                    slot.exited = True
        except (EOFError, OSError):
            self._detach(slot)

    def _detach(self, slot: _Slot) -> None:
        if slot.pipe is not None:
            try:
                asyncio.get_running_loop().remove_reader(slot.pipe.fileno())
            except (ValueError, OSError):
                pass
            try:
                slot.pipe.close()
            except OSError:
                pass
        slot.pipe = None

    def _send(self, slot: _Slot, what: str) -> None:
        if slot.pipe is not None:
            try:
                slot.pipe.send_bytes(what.encode())
            except OSError:
                pass

    def _plan_shards(self) -> None:
        """Give the shards that now have a backlog to workers (balanced by weight);
        a shard already given never moves.  Cheap once every shard has its worker."""
        plan = self.plan
        if plan is None or plan.complete:
            return
        try:
            backlog = self.spool.shard_backlog(range(plan.shards))
        except Exception:  # pragma: no cover - the next round tries again
            log.exception("reading the shards' backlog")
            return
        for w in sorted(plan.add(backlog)):
            slot = self.slots[w]
            slot.shards = plan.shards_of(w)
            # a worker being (re)started gets the list in its spec
            self._send(slot, "shards:" + ",".join(map(str, slot.shards)))

    def _reap(self, slot: _Slot) -> None:
        """A worker died: return its leases and schedule a restart."""
        proc = slot.proc
        code = proc.exitcode if proc is not None else None
        self._detach(slot)
        if self.node_table is not None:  # its connections no longer count for the node
            self.node_table.reclaim(slot.index, self.node_lock)
        try:
            n = self.spool.recover_leases(owner=slot.owner)
        except Exception:  # pragma: no cover
            log.exception("recovering leases of %s", slot.owner)
            n = None
        slot.proc = None
        if self.draining:
            return
        slot.restarts += 1
        self.restarts += 1
        backoff = min(30.0, 0.5 * 2 ** min(slot.restarts - 1, 6))
        slot.next_start = time.monotonic() + backoff
        log.warning("worker %d (%s) exited with %s; %s leases recovered; restart in %.1fs",
                    slot.index, slot.owner, code, n, backoff)

    def _check(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            proc = slot.proc
            if proc is None:
                if not self.draining and now >= slot.next_start:
                    self._start(slot)
                continue
            if not proc.is_alive():
                proc.join(0)
                self._reap(slot)
            elif not self.draining and now - slot.last_beat > self.heartbeat_timeout_s:
                log.error("worker %d missed heartbeats: killing it", slot.index)
                proc.kill()

    # ---------------------------------------------------------------- signals
    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals == 1:
            log.warning("signal %d: draining (send again to stop at once)", signum)
            self.drain()
        else:
            log.warning("signal %d: stopping now", signum)
            self.stop()

    def drain(self) -> None:
        """Finish in-flight work, give the rest back, then exit."""
        self.draining = True
        for slot in self.slots:
            self._send(slot, "drain")
        if self._wake is not None:
            self._wake.set()

    def stop(self) -> None:
        """Abort connections now; everything unacknowledged goes back to the spool."""
        self.draining = True
        self.stopping = True
        for slot in self.slots:
            self._send(slot, "stop")
        if self._wake is not None:
            self._wake.set()

    # ---------------------------------------------------------------- main loop
    def workers_status(self) -> list[dict]:
        return [dict(slot.beat, alive=slot.proc is not None and slot.proc.is_alive())
                for slot in self.slots]

    async def run(self, until_done: Sequence[int] = (), *, forever: bool = False) -> int:
        """Run until the deliveries in ``until_done`` are final (or a signal, or, with
        ``forever``, only a signal).  Returns the number of worker restarts."""
        from fastmta.egress.egress import Egress
        from fastmta.engine.relay import Relays
        from fastmta.spool import Spool

        Egress(self.cfg)  # issue #17: a bad [egress]/[routing] fails here, not in workers
        Relays(self.cfg.routing)
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._lock()
        if self.title:
            try:
                from setproctitle import setproctitle

                setproctitle("fastmta: supervisor")
            except ImportError:  # pragma: no cover
                pass
        installed = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
                installed.append(sig)
            except (NotImplementedError, RuntimeError):  # not the main thread
                pass
        started = time.monotonic()
        try:
            await self._wait_orphans()
            self.spool = Spool.open(self.spool_path, self.cfg.spool)
            self.spool.recover_leases(owner=None)
            from fastmta.engine.supervisor_ops import SupervisorOps

            self.ops = SupervisorOps(self)  # ops hook
            self.ops.start()
            self._plan_shards()  # the backlog left in the spool, before any worker
            for slot in self.slots:
                self._start(slot)
            last_progress = last_kpis = 0.0
            last_maint = last_trim = time.monotonic()
            while True:
                self._check()
                self._plan_shards()
                self.ops.tick()  # ops hook
                now = time.monotonic()
                if now - last_trim >= 2.0:
                    # the KPI pages move with every commit (copy-on-write): without this
                    # the pages read accumulate in RSS (page cache, but alarming; #9)
                    last_trim = now
                    self.spool.trim_rss()
                if now - last_maint >= self.maintenance_s and not self.draining:
                    # dead/expired leases back, validity sweep, quarantine release
                    last_maint = now
                    try:
                        self.spool.maintenance()
                    except Exception:  # pragma: no cover - next round tries again
                        log.exception("spool maintenance")
                done = False
                if until_done and not forever and now - last_kpis >= min(self.progress_s, 0.5):
                    # the KPI counters include one per domain: read them at most 2x/s
                    last_kpis = now
                    kpis = {did: self.spool.kpis(did) for did in until_done}
                    done = all(_is_final(self.spool, d, k) for d, k in kpis.items())
                    if self.progress is not None and (now - last_progress >= self.progress_s
                                                      or done):
                        last_progress = now
                        self.progress(Progress(now - started, kpis, self.workers_status(),
                                               self.restarts, self.draining))
                elif (forever or not until_done) and self.progress is not None and \
                        now - last_progress >= self.progress_s:
                    last_progress = now
                    self.progress(Progress(now - started, {}, self.workers_status(),
                                           self.restarts, self.draining))
                if done and not self.draining:
                    self.drain()
                if self.draining and all(s.proc is None for s in self.slots):
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), 0.1)
                except TimeoutError:
                    pass
        finally:
            await self._shutdown()
            for sig in installed:
                loop.remove_signal_handler(sig)
        return self.restarts

    async def _shutdown(self) -> None:
        if not self.draining:
            self.stop()
        deadline = time.monotonic() + 60.0
        while any(s.proc is not None for s in self.slots):
            for slot in self.slots:
                proc = slot.proc
                if proc is None:
                    continue
                if not proc.is_alive():
                    proc.join(0)
                    self._reap(slot)
                elif time.monotonic() > deadline:
                    proc.kill()
            await asyncio.sleep(0.05)
        if self.spool is not None:
            self.spool.recover_leases(owner=None)
        if self.ops is not None:
            self.ops.stop()  # ops hook: final status, exporters caught up
        if self.node_table is not None:
            self.node_table.close()
            self.node_table = None
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None
