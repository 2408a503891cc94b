"""The per-domain KPI log: one record per transaction, folded exactly, and kept across
a reopen (as after a crash) and a purge."""

from __future__ import annotations

from helpers import open_spool

from fastmta.records import DeliveryRecord, RecipientIn, Result
from fastmta.spool import Spool

T0 = 1_800_000_000_000


def _delivery(sp: Spool, n: int) -> int:
    did = sp.create_delivery(DeliveryRecord(created_ms=T0, expires_ms=T0 + 86_400_000),
                             b"From: a@b.example\r\n\r\nx\r\n")
    sp.add_recipients(did, [RecipientIn(email=f"u{i}@d{i % 7}.example", shard=i % 2, line=i + 2)
                            for i in range(n)], now_ms=T0)
    return did


def test_domain_counters_logged_then_folded(tmp_path):
    sp = open_spool(str(tmp_path))
    sp._kpi_log_fold = 4
    did = _delivery(sp, 70)
    logged = []
    for _ in range(7):
        items = sp.lease([0, 1], "w", 10, now_ms=T0)
        sp.commit([Result(key=w.key, outcome="sent", code=250) for w in items], now_ms=T0)
        logged.append(sp.info()["entries"]["kpilog"])
    assert max(logged) == 3 and 0 in logged  # one record per transaction, folded at 4
    k = sp.kpis(did)
    assert k["sent"] == 70
    assert sum(v for n, v in k.items() if n.endswith("/sent")) == 70
    assert all(k[f"domain/d{j}.example/sent"] == 10 for j in range(7))
    assert sp.kpi(did, "domain/d3.example/sent") == 10


def test_unfolded_log_survives_reopen_and_purge(tmp_path):
    sp = open_spool(str(tmp_path))
    did = _delivery(sp, 14)
    items = sp.lease([0, 1], "w", 14, now_ms=T0)
    sp.commit([Result(key=w.key, outcome="sent", code=250) for w in items], now_ms=T0)
    assert sp.info()["entries"]["kpilog"] >= 1  # default fold: still in the log
    Spool.close_all()
    sp = open_spool(str(tmp_path))
    assert sp.kpi(did, "domain/d0.example/sent") == 2
    assert sp.kpi(did, "domain/d0.example/to_deliver") == 2
    sp.purge_delivery(did)
    info = sp.info()["entries"]
    assert info["kpilog"] == 0 and info["kpi"] == 0
    assert sp.kpis(did) == {}
