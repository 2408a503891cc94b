"""KPIs maintained incrementally equal a full recount after random status transitions."""

from __future__ import annotations

import shutil
import tempfile
import zlib
from collections import Counter

from helpers import open_spool
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastmta.records import AttemptEvent, DeliveryRecord, RecipientIn, Result, Status
from fastmta.spool import Spool

T0 = 1_800_000_000_000
VALIDITY = 100_000
POOL = [f"{n}@{d}.example" for n in ("a", "b", "c", "d", "e") for d in ("x", "y", "z")]

inject_op = st.tuples(
    st.just("inject"),
    st.lists(st.tuples(st.sampled_from(POOL), st.sampled_from(["", "", "", "unqualified_address"])),
             min_size=1, max_size=8),
)
lease_op = st.tuples(st.just("lease"), st.lists(st.integers(0, 2), min_size=1, max_size=3, unique=True),
                     st.integers(1, 6))
outcome = st.sampled_from(["sent", "hard", "soft", "defer", "expired"])
commit_op = st.tuples(st.just("commit"), st.lists(st.tuples(st.integers(0, 50), outcome),
                                                  min_size=1, max_size=6))
other_op = st.sampled_from([("recover",), ("tick",), ("bigtick",), ("expire",), ("quarantine",)])
ops = st.tuples(
    inject_op, lease_op, st.lists(st.one_of(inject_op, lease_op, commit_op, commit_op, other_op),
                                  min_size=1, max_size=30),
).map(lambda t: [t[0], t[1], *t[2]])


def recount(sp: Spool, did: int) -> dict[str, int]:
    c: Counter[str] = Counter()
    for _, r in sp.recipients(did):
        c["recipients"] += 1
        dom = r.domain
        if r.status == Status.IGNORED:
            c["excluded"] += 1
            c[f"excluded/{r.reason}"] += 1
            continue
        c["to_deliver"] += 1
        c[f"domain/{dom}/to_deliver"] += 1
        c["attempts"] += r.attempts
        c["deferrals"] += r.deferrals
        c["soft_bounces"] += r.attempts
        if r.status == Status.PENDING:
            c["pending"] += 1
        elif r.status == Status.SENT:
            c["sent"] += 1
            c["soft_bounces"] -= 1
            c[f"domain/{dom}/sent"] += 1
        else:
            c["failed"] += 1
            c[f"domain/{dom}/failed"] += 1
            c[f"reason/{r.reason}"] += 1
            if r.bounce_class:
                c[f"class/{r.bounce_class}"] += 1
            if r.reason == "expired":
                c["failed_expired"] += 1
            else:
                c["failed_hard"] += 1
                c["soft_bounces"] -= 1
    for _, ev in sp.events(delivery_id=did):
        if isinstance(ev, AttemptEvent) and ev.outcome == "soft":
            c[f"soft_reason/{ev.reason}"] += 1
    return {k: v for k, v in c.items() if v}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops, st.sampled_from([1, 2, 5, 32]))
def test_kpis_equal_recount(seq, fold):
    """``fold``: the domain-counter log is folded into ``kpi`` every ``fold`` records
    (1: at once, 32: the default), so reads see folded and unfolded counters."""
    tmp = tempfile.mkdtemp(prefix="fastmta-kpi-")
    try:
        sp = open_spool(tmp)
        sp._kpi_log_fold = fold
        did = sp.create_delivery(DeliveryRecord(created_ms=T0, expires_ms=T0 + VALIDITY),
                                 b"From: a@b.example\r\n\r\nx\r\n")
        now = T0
        line = 1
        leased: list[bytes] = []
        for op in seq:
            kind = op[0]
            if kind == "inject":
                items = []
                for email, exc in op[1]:
                    line += 1
                    items.append(RecipientIn(email=email, shard=zlib.crc32(email.encode()) % 3, line=line,
                                             exclude=exc))
                sp.add_recipients(did, items, now_ms=now)
            elif kind == "lease":
                leased += [w.key for w in sp.lease(op[1], "w", op[2], now_ms=now)]
            elif kind == "commit":
                if not leased:
                    continue
                res = []
                for idx, out in op[1]:
                    key = leased[idx % len(leased)]
                    cls = {"hard": 10, "soft": 22}.get(out, 0)
                    res.append(Result(key=key, outcome=out, code=550 if out == "hard" else 250,
                                      bounce_class=cls, type="hard" if out == "hard" else "soft",
                                      reason={"hard": "user_unknown", "soft": "mailbox_full"}.get(out, ""),
                                      next_attempt_ms=now + 5_000 if out in ("soft", "defer") else 0))
                sp.commit(res, now_ms=now)
                done = {r.key for r in res}
                leased = [k for k in leased if k not in done]
            elif kind == "recover":
                sp.recover_leases(owner="w", now_ms=now)
                leased = []
            elif kind == "tick":
                now += 6_000
            elif kind == "bigtick":
                now += VALIDITY // 2
            elif kind == "expire":
                sp.expire_due(now_ms=now)
            elif kind == "quarantine":
                sp.quarantine_add(POOL[line % len(POOL)], now_ms=now)
            assert {k: v for k, v in sp.kpis(did).items() if v} == recount(sp, did), op
        k = sp.kpis(did)
        for name in ("sent", "failed", "to_deliver"):  # single-counter reads agree too
            for dom in ("x", "y", "z"):
                key = f"domain/{dom}.example/{name}"
                assert sp.kpi(did, key) == k.get(key, 0)
        assert k.get("pending", 0) + k.get("sent", 0) + k.get("failed", 0) == k.get("to_deliver", 0)
    finally:
        Spool.close_all()
        shutil.rmtree(tmp, ignore_errors=True)
