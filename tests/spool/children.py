"""Child-process bodies for the crash tests (started with multiprocessing 'spawn')."""

from __future__ import annotations

import asyncio
import os
import signal
import time

from helpers import open_spool, sink_append

from fastmta.records import Result
from fastmta.spool import ResultWriter


def hold_leases(path: str, n: int, conn) -> None:
    """Lease ``n`` items, report, then hang until killed."""
    sp = open_spool(path)
    items = sp.lease(range(4), f"holder-{os.getpid()}", n)
    conn.send([i.key for i in items])
    time.sleep(120)


def work_then_die(path: str, sink: str, batch: int, die_after: int, conn) -> None:
    """Lease/deliver/commit batches; on batch ``die_after`` SIGKILL itself after the
    work (delivered to the sink) and before the commit."""
    sp = open_spool(path, sync=True, metasync=True)
    owner = f"w-{os.getpid()}"
    n = 0
    while True:
        items = sp.lease(range(4), owner, batch)
        if not items:
            conn.send(("done", n))
            return
        sink_append(sink, [i.key for i in items])
        n += 1
        if n == die_after:
            conn.send(("dying", [i.key for i in items]))
            os.kill(os.getpid(), signal.SIGKILL)
        sp.commit([Result(key=i.key, outcome="sent", code=250) for i in items])


def async_worker(path: str, sink: str, concurrency: int, commit_batch: int) -> None:
    """An engine-shaped worker: leases through the writer thread, ``concurrency`` tasks
    deliver one item at a time to the sink and await the durable commit of its result."""
    sp = open_spool(path, sync=True, metasync=True, commit_batch=commit_batch,
                    commit_window_ms=5.0)
    owner = f"aw-{os.getpid()}"

    async def main() -> None:
        async with ResultWriter(sp) as writer:
            q: asyncio.Queue = asyncio.Queue(maxsize=concurrency * 2)
            done = asyncio.Event()

            async def feeder() -> None:
                while True:
                    items = await writer.run(sp.lease, range(4), owner, concurrency)
                    if not items:
                        done.set()
                        for _ in range(concurrency):
                            await q.put(None)
                        return
                    for it in items:
                        await q.put(it)

            async def task() -> None:
                while True:
                    it = await q.get()
                    if it is None:
                        return
                    await asyncio.to_thread(sink_append, sink, [it.key])
                    await writer.submit(Result(key=it.key, outcome="sent", code=250))

            await asyncio.gather(feeder(), *(task() for _ in range(concurrency)))

    asyncio.run(main())


def raise_map(path: str, size: int) -> None:
    """Another process raises the map size (as `fastmta spool resize` does)."""
    from fastmta.spool import Spool

    sp = Spool.open(path, open_spool.__globals__["SpoolConfig"](map_size_bytes=size))
    sp.set_map_size(size)


def inject_file(path: str, csv_path: str, template: bytes, conn) -> None:
    """Inject a recipients file (small batches so the kill lands mid-way)."""
    from fastmta.delivery import inject, open_recipients

    sp = open_spool(path, sync=True, metasync=True, inject_batch=500)
    with open_recipients(csv_path) as r:
        a = inject(sp, r, template, shards=4)
    conn.send(a.delivery_id)
