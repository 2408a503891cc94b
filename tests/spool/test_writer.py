"""ResultWriter: group commit from asyncio in a writer thread."""

from __future__ import annotations

import asyncio

from helpers import make_delivery

from fastmta.records import Result, Status
from fastmta.spool import ResultWriter


def test_group_commit_resolves_when_durable(spool):
    did = make_delivery(spool, 500, shards=2)

    async def run():
        async with ResultWriter(spool, commit_batch=100, commit_window_ms=50) as w:
            items = await w.run(spool.lease, [0, 1], "w", 500)
            assert len(items) == 500
            await asyncio.gather(*(w.submit(Result(key=i.key, outcome="sent", code=250))
                                   for i in items))
            # every awaited result is already committed when its future resolves
            assert spool.kpis(did)["sent"] == 500
            assert w.committed == 500 and 5 <= w.commits <= 10
            # a single result is not held longer than the window
            more = await w.run(spool.lease, [0, 1], "w", 1)
            assert more == []

    asyncio.run(asyncio.wait_for(run(), 30))
    assert all(r.status == Status.SENT for _, r in spool.recipients(did))


def test_errors_reach_the_awaiting_caller(spool):
    make_delivery(spool, 1)

    async def run():
        async with ResultWriter(spool) as w:
            try:
                await w.submit(Result(key=b"\0\0\0\1\0\0\0\0", outcome="bogus"))
            except Exception as exc:  # noqa: BLE001
                return exc
        return None

    exc = asyncio.run(asyncio.wait_for(run(), 30))
    assert exc is not None and "bogus" in str(exc)
