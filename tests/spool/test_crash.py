"""Crash safety with real processes (spawn) and kill -9: nothing lost, bounded repeats."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time

import children
from helpers import make_delivery, open_spool, sink_counts

from fastmta.records import Result, Status

CTX = mp.get_context("spawn")


def _join(p, timeout=60.0):
    p.join(timeout)
    if p.is_alive():
        p.kill()
        p.join(5)
        raise AssertionError("child did not finish in time")


def _all_sent(sp, did, n):
    recs = list(sp.recipients(did))
    assert len(recs) == n
    assert all(r.status == Status.SENT for _, r in recs)
    k = sp.kpis(did)
    assert k["sent"] == n and k["pending"] == 0
    assert not sp.leases()


def test_kill9_while_holding_leases_loses_nothing(tmp_path):
    path = str(tmp_path / "spool")
    sp = open_spool(path)
    did = make_delivery(sp, 200, shards=4)
    parent, child = CTX.Pipe()
    p = CTX.Process(target=children.hold_leases, args=(path, 120, child))
    p.start()
    assert parent.poll(60), "child did not lease"
    held = parent.recv()
    assert len(held) == 120
    assert len(sp.leases(did)) == 120
    os.kill(p.pid, signal.SIGKILL)
    _join(p)
    # leases are still valid in time, but their holder is dead: recovered at restart
    assert sp.recover_leases() == 120
    delivered = []
    while items := sp.lease(range(4), "survivor", 50):
        delivered += [i.key for i in items]
        sp.commit([Result(key=i.key, outcome="sent", code=250) for i in items])
    assert set(held) <= set(delivered) and len(delivered) == 200
    _all_sent(sp, did, 200)


def test_kill_between_work_and_commit_repeats_at_most_that_batch(tmp_path):
    path = str(tmp_path / "spool")
    sink = str(tmp_path / "sink")
    sp = open_spool(path)
    did = make_delivery(sp, 500, shards=4)
    parent, child = CTX.Pipe()
    p = CTX.Process(target=children.work_then_die, args=(path, sink, 40, 4, child))
    p.start()
    assert parent.poll(60)
    kind, dying_batch = parent.recv()
    assert kind == "dying"
    _join(p)
    assert p.exitcode == -signal.SIGKILL
    assert sp.recover_leases() == len(dying_batch)
    # a fresh worker finishes the delivery
    parent, child = CTX.Pipe()
    p2 = CTX.Process(target=children.work_then_die, args=(path, sink, 40, 0, child))
    p2.start()
    assert parent.poll(60) and parent.recv()[0] == "done"
    _join(p2)
    counts = sink_counts(sink)
    assert len(counts) == 500  # every recipient delivered: none lost
    repeated = {k for k, c in counts.items() if c > 1}
    assert repeated == {k.hex() for k in dying_batch}  # exactly the uncommitted batch
    assert max(counts.values()) == 2
    _all_sent(sp, did, 500)


def test_random_kill9_of_async_worker(tmp_path):
    """kill -9 at a random moment of an engine-shaped worker (ResultWriter, concurrent
    tasks): repeats are bounded by the results not yet durable (<= concurrency)."""
    path = str(tmp_path / "spool")
    sink = str(tmp_path / "sink")
    sp = open_spool(path)
    did = make_delivery(sp, 3000, shards=4)
    conc = 16
    p = CTX.Process(target=children.async_worker, args=(path, sink, conc, 8))
    p.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait for real progress, then kill mid-flight
        n = sum(sink_counts(sink).values())
        if n >= 600:
            break
        time.sleep(0.02)
    else:
        p.kill()
        raise AssertionError("worker made no progress")
    os.kill(p.pid, signal.SIGKILL)
    _join(p)
    committed = sp.kpis(did).get("sent", 0)
    assert committed < 3000, "killed too late to test anything"
    sp.recover_leases()
    p2 = CTX.Process(target=children.async_worker, args=(path, sink, conc, 8))
    p2.start()
    _join(p2, 120)
    assert p2.exitcode == 0
    counts = sink_counts(sink)
    assert len(counts) == 3000
    repeats = sum(c - 1 for c in counts.values())
    assert repeats <= conc, repeats
    _all_sent(sp, did, 3000)


TEMPLATE = b"From: news@shop.example\r\nSubject: hi {{first}}\r\n\r\nHello {{first}}\r\n"


def test_kill9_during_injection_then_resume(tmp_path):
    """Injection killed mid-file: the batches committed are intact, re-running the same
    input with the delivery id adds exactly the rest (no loss, no duplicate)."""
    from fastmta.delivery import inject, open_recipients

    path = str(tmp_path / "spool")
    csv_path = str(tmp_path / "r.csv")
    n = 100_000
    with open(csv_path, "w") as f:
        f.write("email,first\n")
        for i in range(n):
            f.write(f"user{i}@d{i % 7}.example,F{i}\n")
            if i % 1000 == 999:
                f.write(f"user{i - 500}@d{(i - 500) % 7}.example,dup\n")  # a double
    parent, child = CTX.Pipe()
    p = CTX.Process(target=children.inject_file, args=(path, csv_path, TEMPLATE, child))
    p.start()
    sp = open_spool(path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if sp.kpis(1).get("recipients", 0) >= 3000:
                break
        except Exception:  # noqa: BLE001 - the child may not have created it yet
            pass
        time.sleep(0.005)
    os.kill(p.pid, signal.SIGKILL)
    _join(p)
    k = sp.kpis(1)
    assert 0 < k["recipients"] < n + n // 1000, f"kill did not land mid-injection: {k}"
    injected_line = sp.delivery(1).injected_line
    assert len(list(sp.recipients(1))) == k["recipients"]  # counters match the records
    with open_recipients(csv_path) as r:
        a = inject(sp, r, TEMPLATE, shards=4, delivery_id=1)
    assert a.to_deliver == n and a.excluded["double"] == n // 1000
    recs = [r for _, r in sp.recipients(1)]
    assert [r.line for r in recs] == list(range(2, 2 + n + n // 1000))  # every line once
    assert sp.delivery(1).injected_line > injected_line
    assert sp.queue_counts()["ready"] == n
