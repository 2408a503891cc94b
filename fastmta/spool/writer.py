"""ResultWriter: group-committed spool writes from asyncio, in one writer thread.

LMDB commits fsync and write transactions are thread-bound, so an event loop must not
commit itself.  ``await writer.submit(result)`` queues the result and resolves once the
transaction holding it is durable.  The thread takes up to ``commit_batch`` results, or
whatever arrived within ``commit_window_ms`` of the first, and commits them together.

At-least-once: a result is durable only after its future resolves; if the process dies
before, the recipient is still leased and ``recover_leases`` puts it back, so at most the
results not yet committed (bounded by the batch/window and by the callers' concurrency)
are sent twice, never lost.

While the map is full the thread keeps the batch, marks ``paused`` with the alert text,
and retries every ``full_retry_s``; the futures stay pending (nothing is lost) and
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


class _Call:
    __slots__ = ("fn", "args", "kwargs", "fut")

    def __init__(self, fn: Callable[..., Any], args: tuple, kwargs: dict, fut: asyncio.Future) -> None:
        self.fn, self.args, self.kwargs, self.fut = fn, args, kwargs, fut


class _Group:
    """Waiters of several results (``submit_many``): resolved when all are durable."""

    __slots__ = ("fut", "left")

    def __init__(self, fut: asyncio.Future, left: int) -> None:
        self.fut, self.left = fut, left


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
    ) -> None:
        cfg = spool.cfg
        self.spool = spool
        self.commit_batch = commit_batch or cfg.commit_batch
        self.window_s = (cfg.commit_window_ms if commit_window_ms is None else commit_window_ms) / 1000
        self.queue_size = queue_size or cfg.writer_queue
        self.full_retry_s = cfg.full_retry_s if full_retry_s is None else full_retry_s
        self.on_alert = on_alert
        self.paused: str | None = None
        self.commits = 0
        self.committed = 0
        self.merged_leases = 0  # leases done in the transaction of the batch before them
        self._q: queue.Queue[Any] = queue.Queue()
        self._batch: list[tuple[Result, Any]] = []
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

    def _add(self, result: Result, waiter: Any) -> None:
        batch = self._batch
        batch.append((result, waiter))
        if len(batch) >= self.commit_batch:
            self._handoff()
        elif self._timer is None:
            assert self._loop is not None
            if self.window_s > 0:
                self._timer = self._loop.call_later(self.window_s, self._handoff)
            else:
                self._timer = self._loop.call_soon(self._handoff)

    def _handoff(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._batch:
            self._q.put(self._batch)
            self._batch = []

    async def submit(self, result: Result) -> None:
        """Queue one result; returns when its commit is durable."""
        assert self._loop is not None, "start() first"
        if self._outstanding < self.queue_size:
            self._outstanding += 1  # fast path: no extra coroutine
        else:
            await self._reserve(1)
        fut = self._loop.create_future()
        self._add(result, fut)
        await fut

    async def submit_many(self, results: list[Result]) -> None:
        """Queue several results (e.g. one SMTP transaction); returns when all are durable."""
        assert self._loop is not None, "start() first"
        if not results:
            return
        await self._reserve(len(results))
        group = _Group(self._loop.create_future(), len(results))
        for r in results:
            self._add(r, group)
        await group.fut

    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run another spool write (``lease``, ``recover_leases``...) in the writer thread,
        after the results submitted before it; returns its value."""
        assert self._loop is not None, "start() first"
        fut = self._loop.create_future()
        call = _Call(fn, args, kwargs, fut)
        if self._batch and self._is_lease(fn):  # one transaction for both (one fsync)
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            batch, self._batch = self._batch, []
            self._q.put((batch, call))
        else:
            self._handoff()
            self._q.put(call)
        return await fut

    # ------------------------------------------------------------------ thread
    def _run(self) -> None:
        q = self._q
        while True:
            item = q.get()
            if item is _STOP:
                return
            if isinstance(item, _Call):
                self._do_call(item)
                continue
            if isinstance(item, tuple):  # a batch and the lease queued right behind it
                self._commit(item[0], lease=item[1])
            else:
                self._commit(item)

    def _is_lease(self, fn: Callable[..., Any]) -> bool:
        return getattr(fn, "__func__", None) is Spool.lease and getattr(fn, "__self__", None) is self.spool

    def _commit(self, batch: list[tuple[Result, Any]], lease: _Call | None = None) -> None:
        results = [r for r, _ in batch]
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
        self.committed += len(batch)
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

    def _resolve(self, batch: list[tuple[Result, Any]], exc: BaseException | None) -> None:
        n = len(batch)

        def done() -> None:  # one loop callback per batch, not per result
            for _, w in batch:
                if isinstance(w, _Group):
                    w.left -= 1
                    if w.left and exc is None:
                        continue
                    w = w.fut
                if not w.done():
                    if exc is None:
                        w.set_result(None)
                    else:
                        w.set_exception(exc)
            self._outstanding -= n
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
