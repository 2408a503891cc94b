"""ResultWriter: group-committed spool writes from asyncio, in one writer thread.

LMDB commits fsync and write transactions are thread-bound, so an event loop must not
commit itself.  Results are batched on the event loop: a batch is handed to the thread
when it holds ``commit_batch`` results or ``commit_window_ms`` after its first result.
The thread commits every batch waiting for it in ONE transaction (up to ``commit_max``
results): the busier the writer, the larger its commits, so one fsync and one commit
serve more results exactly when throughput matters (``benchmarks/bench_spool.py``).

Three ways to hand results over, from the cheapest:

- ``hand(results, on_durable)``: no future, no coroutine; ``on_durable(exc)`` is called
  on the loop once the transaction holding them is durable (``exc`` None) or failed.
  One callback per group, however many results it holds (the engine's worker).
- ``await submit_many(results)``: one future for the group.
- ``await submit(result)``: one future per result.

At-least-once: a result is durable only after its callback/future fired; if the process
dies before, the recipient is still leased and ``recover_leases`` puts it back, so at
most the results not yet committed (bounded by the callers: the worker's
``max_uncommitted``) are sent twice, never lost.  Nothing is ever reported committed
before the commit returned.

While the map is full the thread keeps the batch, marks ``paused`` with the alert text,
and retries every ``full_retry_s``; the waiters stay pending (nothing is lost) and
resolve once space is available again (map raised or deliveries purged).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from fastmta.records import Result
from fastmta.spool.errors import SpoolFullError
from fastmta.spool.store import Spool

log = logging.getLogger("fastmta.spool")

_STOP = object()
_MERGE = 4  # commit_max = _MERGE x commit_batch unless given


class _Call:
    __slots__ = ("fn", "args", "kwargs", "fut")

    def __init__(self, fn: Callable[..., Any], args: tuple, kwargs: dict, fut: asyncio.Future) -> None:
        self.fn, self.args, self.kwargs, self.fut = fn, args, kwargs, fut


class _Batch:
    """Results handed to the thread together, their waiters (futures or callbacks, one
    per group), and a lease to run in the same transaction."""

    __slots__ = ("results", "waiters", "lease")

    def __init__(self, results: list[Result], waiters: list[Any], lease: _Call | None = None) -> None:
        self.results, self.waiters, self.lease = results, waiters, lease


class ResultWriter:
    """One writer thread per process; batches are formed on the event loop (full batch
    or window expiry) and handed to the thread whole, so the loop never blocks and the
    thread never wakes up per result."""

    def __init__(
        self,
        spool: Spool,
        *,
        commit_batch: int | None = None,
        commit_window_ms: float | None = None,
        queue_size: int | None = None,
        full_retry_s: float | None = None,
        on_alert: Callable[[str], None] | None = None,
        commit_max: int | None = None,
    ) -> None:
        cfg = spool.cfg
        self.spool = spool
        self.commit_batch = commit_batch or cfg.commit_batch
        # batches waiting for the thread are merged into one transaction up to this
        self.commit_max = max(self.commit_batch, commit_max or _MERGE * self.commit_batch)
        self.window_s = (cfg.commit_window_ms if commit_window_ms is None else commit_window_ms) / 1000
        self.queue_size = queue_size or cfg.writer_queue
        self.full_retry_s = cfg.full_retry_s if full_retry_s is None else full_retry_s
        self.on_alert = on_alert
        self.paused: str | None = None
        self.commits = 0
        self.committed = 0
        self.merged_leases = 0  # leases done in the transaction of the batch before them
        self.merged_batches = 0  # batches committed in the transaction of an earlier one
        self._q: queue.Queue[Any] = queue.Queue()
        self._results: list[Result] = []  # the batch being formed on the loop
        self._waiters: list[Any] = []
        self._lease_wait: _Call | None = None  # a lease waiting for the next batch
        self._timer: asyncio.TimerHandle | asyncio.Handle | None = None
        self._room: asyncio.Condition | None = None
        self._outstanding = 0
        self._waiting = 0  # submitters waiting for room
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._abandon = threading.Event()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> ResultWriter:
        """Start the thread; must be called from the event loop that will submit."""
        self._loop = asyncio.get_running_loop()
        self._room = asyncio.Condition()
        self._thread = threading.Thread(target=self._run, name="fastmta-spool-writer", daemon=True)
        self._thread.start()
        return self

    async def close(self, timeout_s: float | None = None) -> None:
        """Commit everything queued, then stop the thread.  With ``timeout_s``, a writer
        still paused on a full map after that long gives up: its waiters get
        ``SpoolFullError`` and their recipients stay leased (recovered at restart)."""
        if self._thread is None:
            return
        self._handoff()
        self._q.put(_STOP)
        th = self._thread
        await asyncio.to_thread(th.join, timeout_s)
        if th.is_alive():
            self._abandon.set()
            await asyncio.to_thread(th.join)
        self._thread = None

    async def __aenter__(self) -> ResultWriter:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ API
    @property
    def outstanding(self) -> int:
        """Results handed over and not yet durable (or failed)."""
        return self._outstanding

    async def _reserve(self, n: int) -> None:
        """Bound the results waiting for the writer (backpressure, never blocks the loop)."""
        if self._outstanding + n > self.queue_size and self._outstanding:
            assert self._room is not None
            self._waiting += 1
            try:
                async with self._room:
                    await self._room.wait_for(
                        lambda: self._outstanding == 0 or self._outstanding + n <= self.queue_size)
            finally:
                self._waiting -= 1
        self._outstanding += n

    def _add(self, results: list[Result], waiter: Any) -> None:
        """Append a group to the batch being formed (a group is never split)."""
        self._results.extend(results)
        self._waiters.append(waiter)
        if len(self._results) >= self.commit_batch:
            self._handoff()
        elif self._timer is None:
            assert self._loop is not None
            if self.window_s > 0:
                self._timer = self._loop.call_later(self.window_s, self._handoff)
            else:
                self._timer = self._loop.call_soon(self._handoff)

    def _take(self) -> _Batch | None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._results:
            return None
        b = _Batch(self._results, self._waiters)
        self._results, self._waiters = [], []
        return b

    def _handoff(self) -> None:
        b = self._take()
        lease, self._lease_wait = self._lease_wait, None
        if b is not None:
            b.lease = lease  # a deferred lease rides with the batch (one transaction)
            self._q.put(b)
        elif lease is not None:
            self._q.put(lease)

    def hand(self, results: list[Result], on_durable: Callable[[BaseException | None], None]) -> None:
        """Queue a group of results without a future: ``on_durable(None)`` runs on the
        loop once the transaction holding all of them is durable, ``on_durable(exc)`` if
        it failed (the recipients stay leased).  No backpressure here: the caller bounds
        what it hands over (``outstanding``), as the engine's worker does."""
        assert self._loop is not None, "start() first"
        if not results:
            self._loop.call_soon(on_durable, None)
            return
        self._outstanding += len(results)
        self._add(results, on_durable)

    async def submit(self, result: Result) -> None:
        """Queue one result; returns when its commit is durable."""
        assert self._loop is not None, "start() first"
        if self._outstanding < self.queue_size:
            self._outstanding += 1  # fast path: no extra coroutine
        else:
            await self._reserve(1)
        fut = self._loop.create_future()
        self._add([result], fut)
        await fut

    async def submit_many(self, results: list[Result]) -> None:
        """Queue several results (e.g. one SMTP transaction); returns when all are durable."""
        assert self._loop is not None, "start() first"
        if not results:
            return
        await self._reserve(len(results))
        fut = self._loop.create_future()
        self._add(list(results), fut)
        await fut

    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run another spool write (``lease``, ``recover_leases``...) in the writer thread,
        after the results submitted before it; returns its value."""
        assert self._loop is not None, "start() first"
        fut = self._loop.create_future()
        call = _Call(fn, args, kwargs, fut)
        if self._lease_wait is not None:  # an earlier lease goes first, in order
            self._handoff()
        if not self._is_lease(fn):
            self._handoff()
            self._q.put(call)
        elif self._results:  # one transaction for the batch and the lease (one fsync)
            b = self._take()
            assert b is not None
            b.lease = call
            self._q.put(b)
        elif self._outstanding and self.window_s > 0:
            # results are in flight: the lease waits for the next batch (at most the
            # commit window) instead of a transaction and an fsync of its own
            self._lease_wait = call
            if self._timer is None:
                self._timer = self._loop.call_later(self.window_s, self._handoff)
        else:
            self._q.put(call)
        return await fut

    # ------------------------------------------------------------------ thread
    def _run(self) -> None:
        q = self._q
        held: Any = None
        while True:
            item, held = (held if held is not None else q.get()), None
            if item is _STOP:
                return
            if isinstance(item, _Call):
                self._do_call(item)
                continue
            # merge the batches queued behind this one (group commit under load); a
            # call or a lease ends the merge, so the order of writes is kept; a lease
            # right behind is done in the same transaction, after the commit (one fsync)
            while item.lease is None and len(item.results) < self.commit_max:
                try:
                    nxt = q.get_nowait()
                except queue.Empty:
                    break
                if not isinstance(nxt, _Batch):
                    if item.lease is None and isinstance(nxt, _Call) and self._is_lease(nxt.fn):
                        item.lease = nxt  # a lease queued right behind: same transaction
                    else:
                        held = nxt
                    break
                if len(item.results) + len(nxt.results) > self.commit_max:
                    held = nxt
                    break
                item.results.extend(nxt.results)
                item.waiters.extend(nxt.waiters)
                item.lease = nxt.lease
                self.merged_batches += 1
            self._commit(item)

    def _is_lease(self, fn: Callable[..., Any]) -> bool:
        return getattr(fn, "__func__", None) is Spool.lease and getattr(fn, "__self__", None) is self.spool

    def _commit(self, batch: _Batch) -> None:
        results, lease = batch.results, batch.lease
        while True:
            try:
                if lease is None:
                    self.spool.commit(results)
                else:
                    _, items = self.spool.commit_and_lease(results, *lease.args, **lease.kwargs)
                    self.merged_leases += 1
                    self._settle(lease.fut, items, None)
                break
            except SpoolFullError as exc:
                self._pause(str(exc))
                if self._abandon.wait(self.full_retry_s):
                    self._resolve(batch, exc)
                    if lease is not None:
                        self._settle(lease.fut, None, exc)
                    return
            except BaseException as exc:  # resolve the waiters with the error
                self._resolve(batch, exc)
                if lease is not None:
                    self._do_call(lease)
                return
        if self.paused:
            log.warning("spool writer resumed after: %s", self.paused)
            self.paused = None
        self.commits += 1
        self.committed += len(results)
        self._resolve(batch, None)

    def _pause(self, msg: str) -> None:
        if self.paused is None:
            self.paused = msg
            log.error("spool writer paused: %s", msg)
            if self.on_alert is not None:
                try:
                    self.on_alert(msg)
                except Exception:
                    log.exception("on_alert callback failed")

    def _resolve(self, batch: _Batch, exc: BaseException | None) -> None:
        n = len(batch.results)
        waiters = batch.waiters

        def done() -> None:  # one loop callback per transaction, one call per group
            self._outstanding -= n
            for w in waiters:
                if isinstance(w, asyncio.Future):
                    if not w.done():
                        if exc is None:
                            w.set_result(None)
                        else:
                            w.set_exception(exc)
                    continue
                try:
                    w(exc)
                except Exception:
                    log.exception("result writer callback failed")
            assert self._room is not None
            if self._waiting:
                asyncio.ensure_future(self._notify())

        assert self._loop is not None
        self._loop.call_soon_threadsafe(done)

    async def _notify(self) -> None:
        assert self._room is not None
        async with self._room:
            self._room.notify_all()

    def _do_call(self, call: _Call) -> None:
        try:
            val, exc = call.fn(*call.args, **call.kwargs), None
        except SpoolFullError as e:
            self._pause(str(e))
            val, exc = None, e
        except BaseException as e:
            val, exc = None, e
        self._settle(call.fut, val, exc)

    def _settle(self, fut: asyncio.Future, val: Any, exc: BaseException | None) -> None:
        assert self._loop is not None

        def done() -> None:
            if fut.done():
                return
            if exc is None:
                fut.set_result(val)
            else:
                fut.set_exception(exc)

        self._loop.call_soon_threadsafe(done)
