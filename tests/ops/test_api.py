"""WorkerPool / AsyncWorkerPool against a real engine on the simulated internet."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from ops_helpers import MESSAGE, make_config, recipients

from fastmta import AsyncWorkerPool, PoolError, WorkerPool
from fastmta.ops import events as E

pytestmark = pytest.mark.timeout(120)


def test_submit_iterable_wait_status_report(sim, world, spool_dir):
    cfg = make_config(sim)
    rows = recipients(world, 200, ["fast", "unknownusers", "nxdomain"])
    seen: list = []
    with WorkerPool(cfg, spool=spool_dir, on_event=seen.append) as pool:
        h = pool.submit(rows, MESSAGE)
        assert h.analysis.to_deliver == 200
        st = h.wait(timeout_s=60)
        assert st["done"] and st["pending"] == 0
        rep = h.report()
    accepted = sim.accepted()
    expected = Counter(world.expected(r["email"])[0] for r in rows)
    assert st["sent"] == expected["sent"] > 0
    assert st["failed"] == expected["failed"] > 0
    assert sum(accepted.get(r["email"], 0) for r in rows) == st["sent"]
    assert rep["sent"] == st["sent"]
    # the callback saw one final event per recipient (delivery or bounce)
    finals = Counter(E.event_type(e) for e in seen if e.delivery_id == h.id)
    assert finals["delivery"] == st["sent"]
    assert finals["bounce"] == st["failed"]
    assert {e.email for e in seen} == {r["email"] for r in rows}


def test_submit_file_and_single_message_and_handles(sim, world, spool_dir, tmp_path):
    cfg = make_config(sim)
    path = tmp_path / "rcpts.csv"
    rows = recipients(world, 50, ["fast"], prefix="f")
    path.write_text("email,name\n" + "".join(f"{r['email']},{r['name']}\n" for r in rows))
    msg = tmp_path / "msg.eml"
    msg.write_text(MESSAGE)
    pool = WorkerPool(cfg, spool=spool_dir)
    # submitted before start: waits in the spool
    h1 = pool.submit(str(path), msg)
    pool.start()
    try:
        h2 = pool.send("single@" + rows[0]["email"].split("@")[1], MESSAGE,
                       fields={"name": "Single"})
        assert h1.wait(timeout_s=60)["sent"] == 50
        assert h2.wait(timeout_s=60)["sent"] == 1
        assert [d.id for d in pool.deliveries()] == [h1.id, h2.id]
        assert pool.delivery(h2.id).status()["sent"] == 1
        evs = list(h2.events())
        assert [E.event_type(e) for e in evs if E.event_type(e) in E.RECIPIENT_TYPES] == \
            ["delivery"]
    finally:
        pool.stop(drain=True)
    assert not pool.running
    with pytest.raises(Exception, match="not running"):
        h1.pool._check_alive()


def test_asyncio_flavour(sim, world, spool_dir):
    cfg = make_config(sim)
    rows = recipients(world, 60, ["fast", "unknownusers"], prefix="a")

    async def go():
        async with AsyncWorkerPool(cfg, spool=spool_dir) as pool:
            got: list = []
            since = pool.pool.open().spool.last_event_seq()

            async def collect():
                async for ev in pool.events(types=["delivery", "bounce"], since=since):
                    got.append(ev)
                    if len(got) == len(rows):
                        return

            task = asyncio.ensure_future(collect())
            h = await pool.submit(rows, MESSAGE)
            st = await h.wait(timeout_s=60)
            await asyncio.wait_for(task, 30)
            rep = await h.report()
            return st, rep, got

    st, rep, got = asyncio.run(go())
    assert st["pending"] == 0 and st["sent"] + st["failed"] == 60
    assert rep["sent"] == st["sent"]
    assert sorted(e.email for e in got) == sorted(r["email"] for r in rows)


def test_second_pool_on_the_same_spool_is_refused(sim, spool_dir):
    cfg = make_config(sim)
    with WorkerPool(cfg, spool=spool_dir):
        other = WorkerPool(cfg, spool=spool_dir)
        with pytest.raises(PoolError, match="another fastmta supervisor"):
            other.start()


def test_sync_event_iterator(sim, world, spool_dir):
    import threading

    cfg = make_config(sim)
    rows = recipients(world, 40, ["fast", "unknownusers"], prefix="it")
    with WorkerPool(cfg, spool=spool_dir) as pool:
        since = pool.spool.last_event_seq()
        got: list = []
        done = threading.Event()

        def consume():
            for ev in pool.events(["delivery", "bounce"], since=since, timeout_s=60,
                                  stop=done.is_set):
                got.append(ev)
                if len(got) == len(rows):
                    done.set()

        t = threading.Thread(target=consume)
        t.start()
        h = pool.submit(rows, MESSAGE)
        h.wait(timeout_s=60)
        t.join(60)
    assert not t.is_alive()
    assert sorted(e.email for e in got) == sorted(r["email"] for r in rows)
    assert all(e.delivery_id == h.id for e in got)
