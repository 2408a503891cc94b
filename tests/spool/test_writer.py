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
            assert w.committed == 500 and 2 <= w.commits <= 10  # batches of 100, merged up to 400
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


def test_lease_behind_a_batch_shares_its_transaction(spool):
    did = make_delivery(spool, 300, shards=1)

    async def run():
        async with ResultWriter(spool, commit_batch=1000, commit_window_ms=1000) as w:
            first = await w.run(spool.lease, [0], "w", 100)
            pending = asyncio.ensure_future(w.submit_many(
                [Result(key=i.key, outcome="sent", code=250) for i in first]))
            await asyncio.sleep(0)  # the results are batched on the loop, not yet handed off
            second = await w.run(spool.lease, [0], "w", 100)  # hands the batch off first
            await pending
            assert w.merged_leases == 1 and w.commits == 1
            assert [i.rcpt_id for i in second] == list(range(100, 200))
            return second

    asyncio.run(asyncio.wait_for(run(), 30))
    k = spool.kpis(did)
    assert k["sent"] == 100 and len(spool.leases(did)) == 100


def test_backpressure_with_a_small_queue(spool):
    did = make_delivery(spool, 200, shards=1)

    async def run():
        async with ResultWriter(spool, commit_batch=16, commit_window_ms=1, queue_size=10) as w:
            items = await w.run(spool.lease, [0], "w", 200)
            await asyncio.gather(*(w.submit(Result(key=i.key, outcome="sent", code=250))
                                   for i in items))
            assert w._outstanding == 0 and w.committed == 200
            assert w.commits >= 200 // 10  # never more than queue_size waiting at once

    asyncio.run(asyncio.wait_for(run(), 30))
    assert spool.kpis(did)["sent"] == 200


def test_hand_calls_back_once_per_group_once_durable(spool):
    did = make_delivery(spool, 300, shards=1)
    seen: list[tuple[int, int, object]] = []

    async def run():
        async with ResultWriter(spool, commit_batch=64, commit_window_ms=5) as w:
            items = await w.run(spool.lease, [0], "w", 300)
            done = asyncio.Event()
            groups = [items[i:i + 50] for i in range(0, 300, 50)]

            def cb(n):
                def f(exc):
                    # at callback time the group is in the spool (durable), not before
                    seen.append((n, spool.kpis(did).get("sent", 0), exc))
                    if len(seen) == len(groups):
                        done.set()
                return f

            handed = 0
            for g in groups:
                handed += len(g)
                w.hand([Result(key=i.key, outcome="sent", code=250) for i in g], cb(handed))
                assert w.outstanding <= handed
            await done.wait()
            assert w.outstanding == 0

    asyncio.run(asyncio.wait_for(run(), 30))
    assert len(seen) == 6 and all(exc is None for _, _, exc in seen)
    assert all(sent >= handed for handed, sent, _ in seen)
    assert spool.kpis(did)["sent"] == 300


def test_batches_waiting_for_the_thread_merge_into_one_commit(spool):
    import threading

    did = make_delivery(spool, 100, shards=1)
    gate = threading.Event()

    async def run():
        async with ResultWriter(spool, commit_batch=10, commit_window_ms=1000) as w:
            items = await w.run(spool.lease, [0], "w", 100)
            blocked = asyncio.ensure_future(w.run(gate.wait, 10))  # the thread is busy
            futs = [asyncio.ensure_future(w.submit_many(
                [Result(key=i.key, outcome="sent", code=250) for i in items[k:k + 10]]))
                for k in range(0, 100, 10)]
            await asyncio.sleep(0)  # every group is a full batch: all handed off, queued
            assert w.commits == 0
            gate.set()
            assert await blocked is True
            await asyncio.gather(*futs)
            # commit_max = 4 x commit_batch: 10 queued batches in 3 transactions
            assert w.commits == 3 and w.merged_batches == 7 and w.committed == 100

    asyncio.run(asyncio.wait_for(run(), 30))
    assert spool.kpis(did)["sent"] == 100


def test_hand_reports_a_failed_commit(spool):
    make_delivery(spool, 1)
    got: list = []

    async def run():
        async with ResultWriter(spool) as w:
            ev = asyncio.Event()
            w.hand([Result(key=b"\0\0\0\1\0\0\0\0", outcome="bogus")],
                   lambda exc: (got.append(exc), ev.set()))
            await ev.wait()

    asyncio.run(asyncio.wait_for(run(), 30))
    assert len(got) == 1 and "bogus" in str(got[0])


def test_lease_queued_behind_a_handed_batch_shares_its_transaction(spool):
    import threading

    did = make_delivery(spool, 300, shards=1)
    gate = threading.Event()

    async def run():  # no commit window: the lease is queued behind the batch at once
        async with ResultWriter(spool, commit_batch=100, commit_window_ms=0) as w:
            first = await w.run(spool.lease, [0], "w", 100)
            blocked = asyncio.ensure_future(w.run(gate.wait, 10))  # the thread is busy
            pending = asyncio.ensure_future(w.submit_many(
                [Result(key=i.key, outcome="sent", code=250) for i in first]))
            await asyncio.sleep(0)  # a full batch: handed off, queued behind the call
            second = asyncio.ensure_future(w.run(spool.lease, [0], "w", 100))
            await asyncio.sleep(0)  # queued as a call behind the batch
            gate.set()
            await asyncio.gather(blocked, pending)
            items = await second
            assert w.merged_leases == 1 and w.commits == 1
            assert [i.rcpt_id for i in items] == list(range(100, 200))

    asyncio.run(asyncio.wait_for(run(), 30))
    assert spool.kpis(did)["sent"] == 100 and len(spool.leases(did)) == 100


def test_lease_while_results_are_in_flight_waits_for_the_next_batch(spool):
    import threading

    did = make_delivery(spool, 400, shards=1)
    gate = threading.Event()

    async def run():
        async with ResultWriter(spool, commit_batch=100, commit_window_ms=5000) as w:
            first = await w.run(spool.lease, [0], "w", 200)
            blocked = asyncio.ensure_future(w.run(gate.wait, 10))  # the thread is busy
            a = asyncio.ensure_future(w.submit_many(
                [Result(key=i.key, outcome="sent", code=250) for i in first[:100]]))
            await asyncio.sleep(0)  # a full batch, handed off: 100 results in flight
            second = asyncio.ensure_future(w.run(spool.lease, [0], "w", 100))
            await asyncio.sleep(0)
            assert not second.done() and w._lease_wait is not None  # deferred
            b = asyncio.ensure_future(w.submit_many(
                [Result(key=i.key, outcome="sent", code=250) for i in first[100:]]))
            await asyncio.sleep(0)  # the next full batch takes the lease along
            assert w._lease_wait is None
            gate.set()
            await asyncio.gather(blocked, a, b)
            items = await second
            # both batches and the lease in one transaction (the thread merged them)
            assert w.commits == 1 and w.merged_leases == 1 and w.merged_batches == 1
            assert [i.rcpt_id for i in items] == list(range(200, 300))
            # with nothing in flight a lease does not wait
            assert len(await asyncio.wait_for(w.run(spool.lease, [0], "w", 10), 1)) == 10

    asyncio.run(asyncio.wait_for(run(), 30))
    assert spool.kpis(did)["sent"] == 200 and len(spool.leases(did)) == 110
