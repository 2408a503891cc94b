"""The embeddable Python API: ``WorkerPool`` (threads) and ``AsyncWorkerPool`` (asyncio).

A pool owns one spool directory.  ``start()`` runs the supervisor (which spawns the
worker processes) on its own event loop in a background thread of the calling process;
``stop(drain=True)`` lets in-flight transactions finish and gives everything else back to
the spool, where a later pool picks it up.  Deliveries are submitted while the pool runs
(or before: they wait in the spool)::

    from fastmta import WorkerPool, load_config

    with WorkerPool(load_config("fastmta.toml"), spool="/var/spool/fastmta") as pool:
        h = pool.submit("recipients.csv", open("message.eml", "rb").read())
        h.wait(timeout_s=3600)
        print(h.report()["success_pct"])

Everything the CLI does goes through here, the engine (``fastmta.engine.entry``), the spool,
``fastmta.ops.admin`` and ``fastmta.ops.events``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from fastmta.config import Config, load_config
from fastmta.errors import FastMTAError
from fastmta.ops import admin as A
from fastmta.ops import events as E

Recipients = str | os.PathLike | Iterable[str] | Iterable[dict[str, Any]]


class PoolError(FastMTAError):
    """The pool is not running, or failed."""


def _config(config: Config | str | os.PathLike | None) -> Config:
    if config is None:
        return Config()
    if isinstance(config, Config):
        return config
    return load_config(config)


def _message_bytes(message: bytes | str | os.PathLike) -> bytes:
    if isinstance(message, bytes):
        return message
    if isinstance(message, Path):
        return message.read_bytes()
    if isinstance(message, str) and "\n" not in message and os.path.isfile(message):
        return Path(message).read_bytes()
    if isinstance(message, str):
        return message.encode("utf-8")
    return Path(message).read_bytes()


class DeliveryHandle:
    """A submitted delivery: ``status()``, ``report()``, ``wait()``, ``cancel()``,
    ``events()``."""

    def __init__(self, pool: WorkerPool, delivery_id: int, analysis=None) -> None:
        self.pool = pool
        self.id = delivery_id
        self.analysis = analysis
        self.compliance: list = []  # pre-flight findings (compliance.CheckResult)

    def __repr__(self) -> str:
        return f"<DeliveryHandle {self.id}>"

    def status(self) -> dict:
        """Counts by status and the delivery's state (cheap: KPI counters)."""
        from fastmta.engine.entry import summary

        s = summary(self.pool.spool, self.id)
        d = self.pool.spool.delivery(self.id)
        return {"delivery_id": self.id, "state": d.state, "recipients": s["recipients"],
                "to_deliver": s["to_deliver"], "sent": s["sent"], "failed": s["failed"],
                "pending": s["pending"], "excluded": s["excluded"],
                "success_pct": s["success_pct"], "done": self.done()}

    def report(self) -> dict:
        """The full report (KPIs by reason, class and domain)."""
        from fastmta.ops.report import build_report

        return build_report(self.pool.spool, self.id)

    def done(self) -> bool:
        """True when every recipient is final (sent or failed)."""
        sp = self.pool.spool
        return sp.kpis(self.id).get("pending", 0) <= 0 and sp.delivery(self.id).state != \
            "injecting"

    def wait(self, timeout_s: float | None = None, poll_s: float = 0.1) -> dict:
        """Block until ``done()`` (raises ``TimeoutError``); returns ``status()``."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self.done():
            self.pool._check_alive()
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"delivery {self.id} not finished after {timeout_s}s")
            time.sleep(poll_s)
        return self.status()

    def cancel(self, reason: str = "delivery_canceled") -> int:
        """Fail every remaining recipient with ``reason`` (see ``Admin.cancel``)."""
        return self.pool.admin.cancel(self.id, reason)

    def suspend(self, reason: str = "") -> None:
        """Pause the delivery (workers stop taking its recipients)."""
        self.pool.admin.suspend(delivery=self.id, reason=reason)

    def resume(self) -> None:
        self.pool.admin.resume(delivery=self.id)

    def events(self, types: Iterable[str] | None = None, *, follow: bool = False,
               timeout_s: float | None = None) -> Iterator[E.OpsEvent]:
        """This delivery's events (from the start); ``follow`` until it is done."""
        reader = E.EventReader(self.pool.spool, 0, types=types, delivery_id=self.id)
        if not follow:
            while True:
                got = reader.poll()
                if not got and reader.seq >= self.pool.spool.last_event_seq():
                    return
                yield from got
        yield from reader.follow(stop=self.done, timeout_s=timeout_s)


class WorkerPool:
    """Runs fastmta's supervisor and workers inside the calling program (see module doc).

    ``config``: a ``Config``, a TOML path, or None (defaults).  ``spool``: the spool
    directory (default ``[spool] path``).  ``workers``: worker processes (default
    ``[engine] workers`` or one per core).  ``on_event(event)``: called from a pool
    thread for every event of ``event_types`` (default: delivery, bounce, transient,
    expiration) written after ``start()``.
    """

    def __init__(self, config: Config | str | os.PathLike | None = None, *,
                 spool: str | os.PathLike | None = None, workers: int | None = None,
                 on_event: Callable[[E.OpsEvent], None] | None = None,
                 event_types: Iterable[str] | None = None) -> None:
        self.cfg = _config(config)
        self.spool_path = os.fspath(spool if spool is not None else self.cfg.spool.path)
        self.workers = workers
        self._callbacks: list[tuple[Callable[[E.OpsEvent], None], Any]] = []
        if on_event is not None:
            self.on_event(on_event, event_types)
        self.spool = None
        self.supervisor = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._events_thread: threading.Thread | None = None
        self._events_stop = threading.Event()
        self.admin: A.Admin | None = None

    # ------------------------------------------------------------ life cycle
    def open(self) -> WorkerPool:
        """Open the spool only (submit / inspect without running workers)."""
        if self.spool is None:
            from fastmta.spool import Spool

            self.spool = Spool.open(self.spool_path, self.cfg.spool)
            self.admin = A.Admin(self.spool, self.cfg)
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout_s: float = 60.0) -> WorkerPool:
        """Start the supervisor and workers; returns once the workers are started."""
        if self.running:
            return self
        self.open()
        from fastmta.engine.supervisor import Supervisor

        self._error = None
        self._ready.clear()
        from fastmta.cluster.node import worker_target

        self.supervisor = Supervisor(self.cfg, self.spool_path, workers=self.workers,
                                     title=False, worker_target=worker_target(self.cfg))
        self._events_from = self.spool.last_event_seq()
        self._thread = threading.Thread(target=self._run, name="fastmta-pool", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise PoolError("the worker pool did not start in time")
        self._check_alive()
        if self._callbacks:
            self._events_stop.clear()
            self._events_thread = threading.Thread(target=self._dispatch_events,
                                                   name="fastmta-events", daemon=True)
            self._events_thread.start()
        return self

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            sup = self.supervisor

            async def ready() -> None:
                while sup.ops is None or not any(s.proc is not None for s in sup.slots):
                    await asyncio.sleep(0.02)
                self._ready.set()

            waiter = asyncio.ensure_future(ready())
            try:
                await sup.run(forever=True)
            finally:
                waiter.cancel()

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported to the caller by _check_alive
            self._error = exc
        finally:
            self._ready.set()

    def _check_alive(self) -> None:
        if self._error is not None:
            raise PoolError(f"the worker pool failed: {self._error!r}") from self._error
        if self._thread is None or not self._thread.is_alive():
            raise PoolError("the worker pool is not running (start() it)")

    def stop(self, drain: bool = True, timeout_s: float = 120.0) -> None:
        """Stop the workers: ``drain`` finishes in-flight transactions first; otherwise
        connections are aborted.  Nothing is lost either way (the spool keeps it)."""
        if self._thread is not None and self._loop is not None and self._thread.is_alive():
            sup = self.supervisor
            self._loop.call_soon_threadsafe(sup.drain if drain else sup.stop)
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                self._loop.call_soon_threadsafe(sup.stop)
                self._thread.join(30.0)
        self._thread = None
        if self._events_thread is not None:
            self._events_stop.set()
            self._events_thread.join(30.0)
            self._events_thread = None
        if self._error is not None and not isinstance(self._error, SystemExit):
            err, self._error = self._error, None
            raise PoolError(f"the worker pool failed: {err!r}") from err

    def close(self) -> None:
        """Stop (drain) and close the spool handle."""
        self.stop()
        if self.spool is not None:
            self.spool.close()
            self.spool = None

    def __enter__(self) -> WorkerPool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop(drain=True)

    # ------------------------------------------------------------ submitting
    def submit(self, recipients: Recipients, message: bytes | str | os.PathLike, *,
               mail_from: str = "", validity_s: float | None = None,
               name: str = "", force: bool = False, pool: str = "") -> DeliveryHandle:
        """Analyse and inject a delivery; returns its handle at once (sending starts as
        soon as workers run).  ``recipients``: a CSV/JSONL file path, or an iterable of
        addresses or of dicts (``email`` plus personalisation fields).  ``message``: the
        template (bytes, text, or a file path).  Recipients are durable (``pending``)
        when this returns.  ``pool``: the egress pool (default: by From domain)."""
        self.open()
        body = _message_bytes(message)
        findings = self._preflight(body, mail_from, force)
        analysis = asyncio.run(self._inject(recipients, body, mail_from=mail_from,
                                            validity_s=validity_s, name=name, pool=pool))
        h = DeliveryHandle(self, analysis.delivery_id, analysis)
        h.compliance = findings
        return h

    def _preflight(self, body: bytes, mail_from: str, force: bool) -> list:
        """The compliance pre-flight (docs/compliance.md); raises ``PreflightError`` on
        errors when ``[compliance] preflight = "enforce"`` and not ``force``."""
        if self.cfg.compliance.preflight == "off":
            return []
        from fastmta.compliance import preflight
        from fastmta.delivery import Template

        findings = preflight.run_preflight(self.cfg, Template(body), mail_from)
        errors = preflight.blocking(findings, self.cfg, force)
        if errors:
            raise preflight.PreflightError(preflight.refusal(errors))
        return findings

    async def _inject(self, recipients: Recipients, body: bytes, *, mail_from: str,
                      validity_s: float | None, name: str, pool: str = ""):
        from fastmta.delivery import inject
        from fastmta.delivery.analysis import rows_from
        from fastmta.engine import entry as engine

        if isinstance(recipients, str | os.PathLike):
            return await engine.inject_file(self.spool, self.cfg, recipients, body,
                                            mail_from=mail_from, validity_s=validity_s,
                                            name=name, pool=pool)
        it = iter(recipients)
        first = next(it, None)
        if first is None:
            raise FastMTAError("no recipients given")
        items = itertools.chain([first], it)
        if isinstance(first, str):
            items = ({"email": e} for e in items)
        rows = list(rows_from(items))
        if pool:
            from fastmta.egress.model import build_model

            build_model(self.cfg).pool_for("", pool)  # unknown pool: ConfigError now
        domains = {r.email.rpartition("@")[2].lower() for r in rows if "@" in r.email}
        from fastmta.dkim.signers import key_check

        route = await engine.domain_router(domains, self.cfg, spool_path=self.spool.path)
        return await asyncio.to_thread(
            inject, self.spool, rows, body, mail_from=mail_from, validity_s=validity_s,
            cfg=self.cfg.delivery, shard_of=route, shards=self.cfg.engine.shards,
            name=name or "api", dkim_has_key=key_check(self.cfg.dkim), pool=pool)

    def send(self, to: str | Iterable[str], message: bytes | str | os.PathLike, *,
             mail_from: str = "", fields: dict[str, str] | None = None,
             validity_s: float | None = None) -> DeliveryHandle:
        """One message to one address (or a few): a delivery of its own."""
        rcpts = [to] if isinstance(to, str) else list(to)
        rows = [{"email": r, **(fields or {})} for r in rcpts]
        return self.submit(rows, message, mail_from=mail_from, validity_s=validity_s,
                           name="message")

    def delivery(self, delivery_id: int) -> DeliveryHandle:
        """The handle of an existing delivery (raises ``DeliveryNotFound``)."""
        self.open()
        self.spool.delivery(delivery_id)
        return DeliveryHandle(self, delivery_id)

    def deliveries(self) -> list[DeliveryHandle]:
        self.open()
        return [DeliveryHandle(self, d.id) for d in self.spool.deliveries()]

    # ------------------------------------------------------------ events
    def on_event(self, callback: Callable[[E.OpsEvent], None],
                 types: Iterable[str] | None = None) -> None:
        """Call ``callback(event)`` (from a pool thread) for new events of ``types``
        (default: delivery, bounce, transient, expiration).  Register before start()."""
        wanted = list(types) if types else sorted(E.RECIPIENT_TYPES)
        E._matcher(wanted, None)  # validates the names
        self._callbacks.append((callback, frozenset(wanted)))

    def _dispatch_events(self) -> None:
        reader = E.EventReader(self.spool, self._events_from)
        while True:
            stopping = self._events_stop.is_set()
            for ev in reader.poll():
                t = E.event_type(ev)
                for cb, wanted in self._callbacks:
                    if t in wanted:
                        try:
                            cb(ev)
                        except Exception:  # a user callback must not stop the stream
                            import logging

                            logging.getLogger("fastmta.api").exception("event callback")
            if stopping:
                return
            self._events_stop.wait(0.1)

    def events(self, types: Iterable[str] | None = None, *, since: int | None = None,
               delivery_id: int | None = None, timeout_s: float | None = None,
               stop: Callable[[], bool] | None = None) -> Iterator[E.OpsEvent]:
        """Iterate over events as they are written (from ``since``; default: from now)
        until ``stop()``, the timeout, or the pool stops."""
        self.open()
        start = self.spool.last_event_seq() if since is None else since
        reader = E.EventReader(self.spool, start, types=types, delivery_id=delivery_id)

        def stopped() -> bool:
            return (stop is not None and stop()) or not self.running

        yield from reader.follow(stop=stopped, timeout_s=timeout_s)

    # ------------------------------------------------------------ operations
    def status(self) -> dict:
        """The latest status snapshot: workers, sites, queues, spool, suspensions."""
        return A.read_status(self.spool_path)

    @property
    def metrics_url(self) -> str:
        ops = self.supervisor.ops if self.supervisor is not None else None
        return ops.server.url if ops is not None and ops.server is not None else ""


class AsyncDeliveryHandle:
    """``DeliveryHandle`` for asyncio: ``await h.wait()`` etc."""

    def __init__(self, handle: DeliveryHandle) -> None:
        self.sync = handle
        self.id = handle.id
        self.analysis = handle.analysis

    async def status(self) -> dict:
        return await asyncio.to_thread(self.sync.status)

    async def report(self) -> dict:
        return await asyncio.to_thread(self.sync.report)

    async def cancel(self, reason: str = "delivery_canceled") -> int:
        return await asyncio.to_thread(self.sync.cancel, reason)

    async def wait(self, timeout_s: float | None = None, poll_s: float = 0.1) -> dict:
        async def until_done() -> None:
            while not await asyncio.to_thread(self.sync.done):
                self.sync.pool._check_alive()
                await asyncio.sleep(poll_s)

        await asyncio.wait_for(until_done(), timeout_s)
        return await self.status()


class AsyncWorkerPool:
    """``WorkerPool`` for asyncio programs::

        async with AsyncWorkerPool(cfg, spool=path) as pool:
            h = await pool.submit(["a@example.com"], message)
            await h.wait()
            async for ev in pool.events(): ...
    """

    def __init__(self, config: Config | str | os.PathLike | None = None, **kw) -> None:
        self.pool = WorkerPool(config, **kw)

    async def start(self) -> AsyncWorkerPool:
        await asyncio.to_thread(self.pool.start)
        return self

    async def stop(self, drain: bool = True) -> None:
        await asyncio.to_thread(self.pool.stop, drain)

    async def __aenter__(self) -> AsyncWorkerPool:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop(drain=True)

    async def submit(self, recipients: Recipients, message: bytes | str | os.PathLike,
                     **kw) -> AsyncDeliveryHandle:
        h = await asyncio.to_thread(self.pool.submit, recipients, message, **kw)
        return AsyncDeliveryHandle(h)

    async def send(self, to: str | Iterable[str], message: bytes | str, **kw
                   ) -> AsyncDeliveryHandle:
        h = await asyncio.to_thread(self.pool.send, to, message, **kw)
        return AsyncDeliveryHandle(h)

    async def events(self, types: Iterable[str] | None = None, *, since: int | None = None,
                     delivery_id: int | None = None,
                     stop: Callable[[], bool] | None = None) -> AsyncIterator[E.OpsEvent]:
        """Events as they are written (default: from now) until ``stop()`` or the pool
        stops."""
        self.pool.open()
        start = self.pool.spool.last_event_seq() if since is None else since
        reader = E.EventReader(self.pool.spool, start, types=types, delivery_id=delivery_id)

        def stopped() -> bool:
            return (stop is not None and stop()) or not self.pool.running

        async for ev in reader.afollow(stop=stopped):
            yield ev

    @property
    def admin(self) -> A.Admin:
        self.pool.open()
        return self.pool.admin

    @property
    def metrics_url(self) -> str:
        return self.pool.metrics_url

    def status(self) -> dict:
        return self.pool.status()
