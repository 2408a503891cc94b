"""Spool behaviour on a real LMDB: injection, leasing, results, expiry, quarantine."""

from __future__ import annotations

import os

import pytest
from helpers import make_delivery, open_spool

from fastmta.records import DeliveryRecord, RecipientIn, Result, Status
from fastmta.spool import Spool, SpoolError, now_ms


def _drain(sp: Spool, shards, owner="w", now=None):
    out = []
    while True:
        got = sp.lease(shards, owner, 100, now_ms=now)
        if not got:
            return out
        out += got


def test_one_handle_per_path_per_process(tmp_path):
    a = open_spool(str(tmp_path / "s"))
    b = Spool.open(str(tmp_path / "s" / "." ))
    assert a is b


def test_injection_is_pending_and_queued_per_shard(spool):
    did = make_delivery(spool, 100, shards=4)
    k = spool.kpis(did)
    assert k["recipients"] == 100 and k["to_deliver"] == 100 and k["pending"] == 100
    assert spool.queue_counts()["ready"] == 100
    items = _drain(spool, [2])
    assert {i.shard for i in items} == {2} and len(items) == 25
    assert [i.rcpt_id for i in items] == sorted(i.rcpt_id for i in items)  # FIFO range scan
    assert items[0].fields == {"first": "F2", "email": items[0].email}
    assert items[0].mail_from == "news@example.com"
    assert len(spool.leases(did)) == 25
    assert spool.lease([2], "w", 10) == []  # leased work is not handed out twice


def test_results_update_status_kpis_and_events(spool):
    did = make_delivery(spool, 4, shards=1, domains=1)
    items = spool.lease([0], "w", 10)
    t = now_ms()
    res = [
        Result(key=items[0].key, outcome="sent", code=250, mx="mx.d0.example", source_ip="127.0.0.2"),
        Result(key=items[1].key, outcome="hard", code=550, enhanced="5.1.1", bounce_class=10,
               type="hard", reason="user_unknown", reply="550 5.1.1 no such user"),
        Result(key=items[2].key, outcome="soft", code=452, enhanced="4.2.2", bounce_class=22,
               type="soft", reason="mailbox_full", next_attempt_ms=t + 60_000),
        Result(key=items[3].key, outcome="defer", next_attempt_ms=t + 1000),
    ]
    st = spool.commit(res, now_ms=t)
    assert st.applied == 4
    recs = dict(spool.recipients(did))
    assert recs[0].status == Status.SENT and recs[0].attempts == 1 and recs[0].mx == "mx.d0.example"
    assert recs[1].status == Status.FAILED and recs[1].reason == "user_unknown"
    assert recs[2].status == Status.PENDING and recs[2].reason == "mailbox_full"
    assert recs[2].next_attempt_ms == t + 60_000 and recs[2].attempts == 1
    assert recs[3].status == Status.PENDING and recs[3].attempts == 0 and recs[3].deferrals == 1
    k = spool.kpis(did)
    assert (k["sent"], k["failed"], k["failed_hard"], k["pending"]) == (1, 1, 1, 2)
    assert k["reason/user_unknown"] == 1 and k["class/10"] == 1 and k["soft_bounces"] == 1
    assert k["domain/d0.example/sent"] == 1 and k["domain/d0.example/failed"] == 1
    assert spool.kpi(did, "pending") == 2 and spool.kpi(did, "no-such-counter") == 0
    assert not spool.leases(did)
    # hard bounce -> quarantine
    assert spool.quarantine_get(recs[1].email).state == "quarantined"
    # the scheduled queue: nothing due now, the deferral is due first
    assert spool.lease([0], "w", 10, now_ms=t + 10) == []
    assert spool.next_due_ms([0]) == t + 1000
    # the supervisor's shard plan reads the backlog: ready + scheduled, per shard
    assert spool.shard_backlog([0, 1]) == {0: 2, 1: 0}
    due = spool.lease([0], "w", 10, now_ms=t + 1000)
    assert [i.rcpt_id for i in due] == [3]
    due = spool.lease([0], "w", 10, now_ms=t + 60_000)
    assert [i.rcpt_id for i in due] == [2] and due[0].attempts == 1
    spool.commit([Result(key=due[0].key, outcome="sent", code=250)], now_ms=t + 60_001)
    rec = spool.recipient(did, 2)
    assert rec.status == Status.SENT and rec.attempts == 2 and rec.reason == "mailbox_full"
    evs = [e for _, e in spool.events(delivery_id=did) if type(e).__name__ == "AttemptEvent"]
    assert [e.outcome for e in evs] == ["sent", "hard", "soft", "defer", "sent"]


def test_final_status_is_sticky_and_repeats_are_stale(spool):
    did = make_delivery(spool, 1, shards=1)
    (item,) = spool.lease([0], "w", 1)
    spool.commit([Result(key=item.key, outcome="sent", code=250)])
    st = spool.commit([Result(key=item.key, outcome="hard", reason="user_unknown")])
    assert st.stale == 1 and st.applied == 0
    assert spool.recipient(did, 0).status == Status.SENT
    assert spool.kpis(did)["sent"] == 1 and "failed" not in spool.kpis(did)


def test_recover_expired_and_owner_leases(spool):
    make_delivery(spool, 10, shards=1)
    t = now_ms()
    spool.lease([0], "a", 4, now_ms=t, lease_s=10)
    spool.lease([0], "b", 6, now_ms=t, lease_s=1000)
    assert spool.recover_leases(now_ms=t + 5_000) == 0  # holders alive, leases valid
    assert spool.recover_leases(now_ms=t + 20_000) == 4  # a's leases expired
    assert spool.renew_leases("b", now_ms=t + 900_000, lease_s=1000) == 6
    assert spool.recover_leases(now_ms=t + 1_500_000) == 0  # renewed: still valid
    assert spool.recover_leases(owner="b") == 6
    assert len(_drain(spool, [0])) == 10


def test_late_result_after_recovery_unqueues(spool):
    did = make_delivery(spool, 1, shards=1)
    (item,) = spool.lease([0], "a", 1)
    assert spool.recover_leases(owner="a") == 1
    spool.commit([Result(key=item.key, outcome="sent", code=250)])  # the old holder finishes
    assert spool.lease([0], "b", 10) == []  # not handed out again
    assert spool.kpis(did)["pending"] == 0


def test_validity_expiry_keeps_last_soft_reason(spool):
    did = make_delivery(spool, 3, shards=1, validity_s=100)
    d = spool.delivery(did)
    items = spool.lease([0], "w", 3, now_ms=d.created_ms)
    spool.commit([Result(key=items[0].key, outcome="soft", reason="mailbox_full", type="soft",
                         bounce_class=22, code=452, next_attempt_ms=d.created_ms + 500_000)],
                 now_ms=d.created_ms + 1)
    rec = spool.recipient(did, 0)
    assert rec.next_attempt_ms == d.expires_ms  # rescheduled no later than the validity end
    spool.recover_leases(owner="w")
    # after the validity period, leasing expires instead of returning the items
    assert spool.lease([0], "w", 10, now_ms=d.expires_ms) == []
    r0 = spool.recipient(did, 0)
    assert r0.status == Status.FAILED and r0.reason == "expired"
    assert r0.last_soft_reason == "mailbox_full" and r0.bounce_class == 22
    k = spool.kpis(did)
    assert k["failed_expired"] == 3 and k["pending"] == 0 and k["reason/expired"] == 3


def test_expire_sweep(spool):
    did = make_delivery(spool, 5, shards=2, validity_s=10)
    d = spool.delivery(did)
    assert spool.expire_due(now_ms=d.expires_ms - 1) == 0
    assert spool.expire_due(now_ms=d.expires_ms) == 5
    assert spool.queue_counts()["ready"] == 0 and spool.kpis(did)["failed_expired"] == 5


def test_paused_delivery_is_skipped(spool):
    a = make_delivery(spool, 3, shards=1)
    b = make_delivery(spool, 3, shards=1)
    spool.set_state(a, "paused", "operator")
    items = _drain(spool, [0])
    assert {i.delivery_id for i in items} == {b}
    spool.set_state(a, "active")
    assert {i.delivery_id for i in _drain(spool, [0])} == {a}


def test_validity_limit(spool):
    t = now_ms()
    with pytest.raises(SpoolError, match="3.5 days"):
        spool.create_delivery(DeliveryRecord(created_ms=t, expires_ms=t + 4 * 86400_000), b"")


def test_quarantine_rules(spool):
    cfg_threshold = spool.cfg.quarantine_soft_threshold
    t = now_ms()
    # soft errors: counted at each expiry, quarantined at the threshold
    for i in range(cfg_threshold):
        did = spool.create_delivery(
            DeliveryRecord(created_ms=t, expires_ms=t + 1000, fields=[]), b"From: a@b.c\r\n\r\n")
        st = spool.add_recipients(did, [RecipientIn(email="Soft@x.example", line=2)])
        assert st.added == 1, i
        (it,) = spool.lease([0], "w", 1, now_ms=t)
        spool.commit([Result(key=it.key, outcome="soft", reason="mailbox_full", type="soft")], now_ms=t)
        spool.expire_due(now_ms=t + 1000)
        e = spool.quarantine_get("soft@x.example")
        assert e.soft_count == i + 1
        assert e.state == ("quarantined" if i + 1 >= cfg_threshold else "erroneous")
    did = make_delivery(spool, 0)
    st = spool.add_recipients(did, [RecipientIn(email="soft@x.example", line=2)])
    assert st.excluded == {"address_in_quarantine": 1}
    # released after quarantine_release_days
    later = t + int(spool.cfg.quarantine_release_days * 86400_000) + 2000
    assert spool.precheck("soft@x.example", now_ms=later) is None
    assert spool.quarantine_release_expired(now_ms=later) == 1
    # denylist by domain, manual add/remove
    spool.quarantine_add("@bad.example", state="denylisted")
    st = spool.add_recipients(did, [RecipientIn(email="x@bad.example", line=3)])
    assert st.excluded == {"denylisted_address": 1}
    assert spool.quarantine_remove("@bad.example") and not spool.quarantine_remove("@bad.example")
    # a success clears an erroneous address
    did2 = make_delivery(spool, 0)
    spool.add_recipients(did2, [RecipientIn(email="e@x.example", line=2)])
    with spool._env.begin(write=True) as txn:  # seed an 'erroneous' entry
        from fastmta.records import QuarantineEntry
        spool._q_put(txn, QuarantineEntry(address="e@x.example", state="erroneous",
                                          soft_count=1, source="bounce"))
    (it,) = spool.lease([0], "w", 1)
    spool.commit([Result(key=it.key, outcome="sent", code=250)])
    assert spool.quarantine_get("e@x.example") is None


def test_resume_injection_skips_committed_lines(spool):
    did = make_delivery(spool, 0)
    items = [RecipientIn(email=f"r{i}@x.example", line=i + 2) for i in range(10)]
    spool.add_recipients(did, items[:6], batch=3)
    st = spool.add_recipients(did, items, batch=3)  # re-run over the whole input
    assert st.skipped == 6 and st.added == 4
    assert spool.kpis(did)["to_deliver"] == 10


def test_purge_frees_the_delivery(spool):
    did = make_delivery(spool, 50, shards=2)
    spool.lease([0], "w", 5)
    assert spool.purge_delivery(did) == 50
    info = spool.info()["entries"]
    assert info["rcpt"] == info["ready"] == info["lease"] == info["seen"] == info["kpi"] == 0


def test_opened_before_fork_is_refused(tmp_path):
    sp = open_spool(str(tmp_path / "s"))
    pid = os.fork()
    if pid == 0:  # child: must refuse the inherited handle
        try:
            Spool.open(str(tmp_path / "s"))
        except SpoolError:
            os._exit(0)
        os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert sp.kpis(1) == {}


def test_doubles_across_and_within_batches(spool):
    did = make_delivery(spool, 0)
    emails = ["a@x.example", "b@x.example", "a@x.example", "c@x.example", "b@x.example",
              "A@X.example", "a@x.example"]
    st = spool.add_recipients(did, [RecipientIn(email=e.split("@")[0] + "@" + e.split("@")[1].lower(),
                                                line=i + 2) for i, e in enumerate(emails)], batch=2)
    assert st.added == 4 and st.excluded == {"double": 3}
    statuses = [r.status for _, r in spool.recipients(did)]
    assert statuses == [Status.PENDING, Status.PENDING, Status.IGNORED, Status.PENDING,
                        Status.IGNORED, Status.PENDING, Status.IGNORED]


def test_prune_events(spool):
    make_delivery(spool, 3, shards=1)
    items = spool.lease([0], "w", 3)
    spool.commit([Result(key=i.key, outcome="sent", code=250) for i in items])
    last = spool.last_event_seq()
    assert len(list(spool.events())) == last
    assert spool.prune_events(last) == last - 1
    assert [s for s, _ in spool.events()] == [last]


def test_resume_point_is_read_in_the_write_transaction(spool, monkeypatch):
    """After a writer is killed mid-commit a reader can lag one commit behind; the
    resume point must come from the write transaction, not from such a read."""
    did = make_delivery(spool, 0)
    items = [RecipientIn(email=f"r{i}@x.example", line=i + 2) for i in range(10)]
    spool.add_recipients(did, items[:6], batch=3)
    stale = spool.delivery(did)
    import msgspec

    monkeypatch.setattr(spool, "delivery", lambda d: msgspec.structs.replace(stale, injected_line=4))
    st = spool.add_recipients(did, items, batch=4)
    assert st.skipped == 6 and st.added == 4 and st.excluded == {}
    assert spool.kpis(did)["recipients"] == 10


def test_maintenance(spool):
    did = make_delivery(spool, 4, shards=1, validity_s=10)
    d = spool.delivery(did)
    spool.lease([0], "gone", 2, now_ms=d.created_ms, lease_s=1)
    out = spool.maintenance(now_ms=d.created_ms + 2_000)
    assert out == {"recovered": 2, "expired": 0, "released": 0}
    out = spool.maintenance(now_ms=d.expires_ms)
    assert out["expired"] == 4 and spool.kpis(did)["failed_expired"] == 4


def test_an_older_delivery_resumed_after_a_newer_one_is_queued_in_order(spool):
    """Ready entries are appended per shard; a delivery resumed after a newer one was
    injected (its entries sort before the newer ones) is inserted in place, none lost."""
    old = make_delivery(spool, 0)
    new = make_delivery(spool, 0)
    items = [RecipientIn(email=f"r{i}@x.example", shard=i % 2, line=i + 2) for i in range(40)]
    spool.add_recipients(old, items[:10], batch=10)
    spool.add_recipients(new, items, batch=10)
    st = spool.add_recipients(old, items, batch=7)  # the resume, after the newer delivery
    assert st.added == 30 and spool.queue_counts()["ready"] == 80
    got = _drain(spool, [0, 1])
    assert len(got) == 80 and len({(i.delivery_id, i.rcpt_id) for i in got}) == 80
    for shard in (0, 1):
        keys = [(i.delivery_id, i.rcpt_id) for i in got if i.shard == shard]
        assert keys == sorted(keys)  # oldest delivery first, FIFO within it


def test_doubles_within_one_batch_keep_the_first(spool):
    did = make_delivery(spool, 0)
    emails = ["a@x.example", "b@x.example", "a@x.example", "a@x.example", "c@x.example"]
    st = spool.add_recipients(did, [RecipientIn(email=e, line=i + 2) for i, e in enumerate(emails)])
    assert st.added == 3 and st.excluded == {"double": 2}
    assert [r.status for _, r in spool.recipients(did)] == [
        Status.PENDING, Status.PENDING, Status.IGNORED, Status.IGNORED, Status.PENDING]


def test_write_transactions_restore_the_cyclic_gc_state(spool):
    import gc

    did = make_delivery(spool, 4, shards=1)
    assert gc.isenabled()
    items = spool.lease([0], "w", 2)
    assert gc.isenabled()  # off only inside the transaction
    gc.disable()
    try:
        spool.commit([Result(key=w.key, outcome="sent", code=250) for w in items])
        assert not gc.isenabled()  # a process that turned it off keeps it off
    finally:
        gc.enable()
    assert spool.kpis(did)["sent"] == 2
