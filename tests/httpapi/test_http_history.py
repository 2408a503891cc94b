"""``GET /api/v1/egress`` (= ``fastmta egress status --json``) after a pooled send over
two real loopback sources, and ``GET /api/v1/deliveries/{id}/timeline`` (the delivery's
past, from the event log) against the report, over a real server, spool and sim."""

from __future__ import annotations

import httpx
import pytest
from history_helpers import COLD_CAP, cli_egress, egress_config, stable
from http_helpers import MESSAGE, TOKEN, cli_report, csv_text, upload
from ops_helpers import recipients

from fastmta import WorkerPool
from fastmta.http.server import HttpServer

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def eg_cfg(cfg):
    return egress_config(cfg)


@pytest.fixture
def eg_admin(eg_cfg, spool_dir):
    srv = HttpServer(eg_cfg, spool_dir, "127.0.0.1:0", token=TOKEN)
    srv.start()
    try:
        with httpx.Client(base_url=srv.url, timeout=30,
                          headers={"Authorization": f"Bearer {TOKEN}"}) as c:
            yield c
    finally:
        srv.stop()


def test_egress_endpoint_equals_the_cli(eg_cfg, world, spool_dir, eg_admin, tmp_path):
    before = eg_admin.get("/api/v1/egress").json()
    assert [s["name"] for s in before["sources"]] == ["warm1", "cold1"]
    assert all(s["providers"] == [] for s in before["sources"])  # no traffic yet
    rows = recipients(world, 150, ["fast"], prefix="eg-")
    with WorkerPool(eg_cfg, spool=spool_dir) as pool:
        h = pool.submit(rows, MESSAGE, pool="mix")
        assert h.wait(timeout_s=90)["sent"] == 150
    api = eg_admin.get("/api/v1/egress").json()
    cli = cli_egress(spool_dir, eg_cfg, tmp_path)
    assert stable(api) == stable(cli)
    cold = next(s for s in api["sources"] if s["name"] == "cold1")
    assert cold["warmup"] and cold["plan"] == "tiny" and cold["day"] == 1
    used = sum(r["used_today"] for r in cold["providers"])
    assert 0 < used <= COLD_CAP  # the cap held; the rest spilled to warm1
    assert all(r["daily_cap"] == COLD_CAP for r in cold["providers"])
    one = eg_admin.get("/api/v1/egress", params={"source": "cold1"}).json()
    assert [s["name"] for s in one["sources"]] == ["cold1"]
    assert all(r["source"] == "cold1" for r in one["learned"])
    bad = eg_admin.get("/api/v1/egress", params={"sources": "x"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "unknown_parameter"


def test_timeline_is_the_delivery_past(cfg, world, spool_dir, server, admin):
    rows = recipients(world, 300, ["fast", "unknownusers"], prefix="tl-")
    did = upload(admin, csv_text(rows), confirm="1").json()["delivery_id"]
    empty = admin.get(f"/api/v1/deliveries/{did}/timeline").json()
    assert sum(empty["received"]) == 300 and sum(empty["sent"]) == 0
    assert empty["pending"][-1] == 300
    with WorkerPool(cfg, spool=spool_dir) as pool:
        pool.delivery(did).wait(timeout_s=90)
    rep = cli_report(spool_dir, did)
    t = admin.get(f"/api/v1/deliveries/{did}/timeline").json()
    assert sum(t["sent"]) == rep["sent"] == t["cum_sent"][-1]
    assert sum(t["failed"]) == rep["failed"] == t["cum_failed"][-1] > 0
    assert sum(t["received"]) == rep["to_deliver"] and t["pending"][-1] == rep["pending"] == 0
    assert t["last_seq"] >= empty["last_seq"]
    step = t["step_s"]
    assert all(b - a == step for a, b in zip(t["t"], t["t"][1:], strict=False))
    n = len(t["t"])
    assert all(len(t[k]) == n for k in ("rate", "sent", "failed", "soft", "pending"))
    assert t["rate"] == [round((s + f) / step, 3) for s, f in zip(t["sent"], t["failed"],
                                                                    strict=True)]
    coarse = admin.get(f"/api/v1/deliveries/{did}/timeline", params={"step": 60}).json()
    assert coarse["step_s"] >= 60 and sum(coarse["sent"]) == rep["sent"]
    assert admin.get("/api/v1/deliveries/999/timeline").status_code == 404
    r = admin.get(f"/api/v1/deliveries/{did}/timeline", params={"step": "x"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_parameter"
