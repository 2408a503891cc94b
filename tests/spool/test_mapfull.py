"""MapFullError in a tiny map: clear error, nothing lost or corrupted, resumes after the
map is raised (by another process, as an operator would)."""

from __future__ import annotations

import asyncio
import multiprocessing as mp

import children
import pytest
from helpers import make_delivery, open_spool

from fastmta.records import RecipientIn, Result, Status
from fastmta.spool import ResultWriter, SpoolFullError

CTX = mp.get_context("spawn")
TINY = 1024 * 1024


def _items(n, start=0):
    return [RecipientIn(email=f"user{i:07d}@domain{i % 50}.example", fields=("x" * 20,),
                        shard=i % 4, line=i + 2) for i in range(start, n)]


def test_map_full_pauses_and_resumes_after_raise(tmp_path):
    path = str(tmp_path / "spool")
    sp = open_spool(path, map_size_bytes=TINY, full_retry_s=0.05)
    alerts = []
    sp.on_full.append(alerts.append)
    first = make_delivery(sp, 400, shards=4)
    held = sp.lease(range(4), "w", 400)
    assert len(held) == 400

    # 1. inject until the map is full: a clear error, earlier batches intact
    did = make_delivery(sp, 0)
    items = _items(60_000)
    with pytest.raises(SpoolFullError, match="full.*map_size_bytes") as ei:
        sp.add_recipients(did, items, batch=500)
    added = ei.value.added
    assert 0 < added < 60_000
    assert sp.full and alerts and "nothing is lost" in alerts[0]
    k = sp.kpis(did)
    assert k["to_deliver"] == added == len(list(sp.recipients(did)))
    assert sp.queue_counts()["ready"] == added

    # 2. results submitted while full wait (paused), then commit once the map is raised
    async def run():
        async with ResultWriter(sp, commit_batch=1000, full_retry_s=0.05) as w:
            # fill the remaining pages so even a small commit fails
            filler = make_delivery_noraise(sp)
            fut = asyncio.ensure_future(w.submit_many(
                [Result(key=i.key, outcome="sent", code=250) for i in held]))
            for _ in range(200):
                if w.paused:
                    break
                await asyncio.sleep(0.01)
            assert w.paused and "full" in w.paused, "writer did not pause"
            assert not fut.done()
            p = CTX.Process(target=children.raise_map, args=(path, 64 * TINY))
            p.start()
            await asyncio.to_thread(p.join, 30)
            assert p.exitcode == 0
            await asyncio.wait_for(fut, 30)
            assert w.paused is None
            return filler

    asyncio.run(asyncio.wait_for(run(), 60))
    assert sp.full is None
    assert all(sp.recipient(first, i).status == Status.SENT for i in range(400))

    # 3. the interrupted injection resumes from its last durable line
    st = sp.add_recipients(did, items, batch=500)
    assert st.skipped == added and st.added == 60_000 - added
    k = sp.kpis(did)
    assert k["to_deliver"] == 60_000 == k["pending"]
    emails = [r.email for _, r in sp.recipients(did)]
    assert emails == [i.email for i in items]  # in order, no loss, no duplicate


def make_delivery_noraise(sp):
    """Fill the map to the last page with small injections."""
    did = make_delivery(sp, 0)
    n = 0
    for size in (200, 20, 1):
        while True:
            try:
                sp.add_recipients(did, _items(n + size, n), batch=size)
                n += size
            except SpoolFullError:
                break
    return did


def test_close_gives_up_on_a_full_map_and_leases_stay(tmp_path):
    path = str(tmp_path / "spool")
    sp = open_spool(path, map_size_bytes=TINY, full_retry_s=0.02)
    make_delivery(sp, 300, shards=4)
    held = sp.lease(range(4), "w", 300)
    make_delivery_noraise(sp)

    async def run():
        w = ResultWriter(sp, commit_batch=1000, full_retry_s=0.02).start()
        fut = asyncio.ensure_future(w.submit_many(
            [Result(key=i.key, outcome="sent", code=250) for i in held]))
        for _ in range(200):
            if w.paused:
                break
            await asyncio.sleep(0.01)
        assert w.paused
        await w.close(timeout_s=0.2)
        with pytest.raises(SpoolFullError):
            await fut

    asyncio.run(asyncio.wait_for(run(), 30))
    # nothing was acknowledged: the recipients are still pending and leased
    assert len(sp.leases()) == 300
    sp.set_map_size(64 * TINY)  # the operator raises the map; the restart recovers
    assert sp.recover_leases(owner="w") == 300
