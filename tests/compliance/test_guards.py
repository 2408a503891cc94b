"""The send guards: pure decisions at their thresholds, and the guards pausing a real
campaign to the simulated internet (bounce guard from the spool's hard-bounce KPIs,
complaint guard from complaints seeded through ``record_complaints``), released by
``admin resume``."""

from __future__ import annotations

import time

import msgspec
import pytest
from compliance_helpers import SimThread

from fastmta import WorkerPool
from fastmta.compliance.guard_runner import GUARD_USER, record_complaints
from fastmta.compliance.guards import (
    SlidingCounts,
    bounce_decision,
    complaint_decision,
    provider_group,
)
from fastmta.ops.admin import read_status
from fastmta.records import AdminEvent
from fastmta.sim.config import sim_config
from fastmta.sim.world import Behaviour, Provider, World, WorldSpec

MESSAGE = "From: News <news@sender.example>\nTo: {{email}}\nSubject: Hi\n\nHello.\n"


# --------------------------------------------------------------------------- pure
def test_bounce_decision_thresholds():
    assert bounce_decision(999, 500).action == "ok"  # not enough attempts yet
    assert bounce_decision(1000, 50).action == "ok"  # exactly 5%: not above
    d = bounce_decision(1000, 51)
    assert d.action == "pause" and d.rate == pytest.approx(0.051)
    assert d.detail.startswith("hard-bounce rate 5.10% (51 of 1000 attempts) is above 5.00%")


def test_complaint_decision_thresholds():
    assert complaint_decision(999, 100).action == "ok"  # below the minimum volume
    assert complaint_decision(10_000, 9).action == "ok"  # 0.09%
    assert complaint_decision(10_000, 10).action == "warn"  # 0.1%
    d = complaint_decision(10_000, 30, provider="google")
    assert d.action == "pause"  # 0.3%: the threshold itself pauses
    assert d.detail.startswith("complaint rate at google 0.30% (30 complaints for 10000 "
                               "delivered) reached 0.30%")
    assert complaint_decision(10_000, 30, limit=0.005, warn=0.002).action == "warn"


def test_sliding_counts_window():
    c = SlidingCounts(window_s=600, bucket_s=60)
    c.add("k", 0.0, 5)
    c.add("k", 300.0, 7)
    assert c.total("k", 300.0) == 12
    assert c.total("k", 661.0) == 7  # the first bucket left the window
    assert c.total("k", 2000.0) == 0


def test_provider_group():
    assert provider_group("GMAIL.com") == provider_group("googlemail.com") == "google"
    assert provider_group("aol.com") == "yahoo"
    assert provider_group("example.org") == "example.org"


# --------------------------------------------------------------------------- with a sim
@pytest.fixture(scope="module")
def gsim():
    world = World(WorldSpec(name="guards", providers=[
        Provider(name="bouncy", generate=4, behaviour=Behaviour(unknown_user_rate=0.12)),
        Provider(name="gsim", domains=["gmail.com", "googlemail.com"]),
    ]))
    s = SimThread(world)
    s.world = world
    try:
        yield s
    finally:
        s.close()


def _config(sim, **compliance):
    cfg = sim_config(sim.sim, validity_s=60.0, retry_s=1.0, workers=1)
    r = msgspec.structs.replace
    return r(cfg, shaping=r(cfg.shaping, msg_rate_per_s=300.0, adaptive_rate=False),
             ops=r(cfg.ops, status_interval_s=0.2, admin_poll_s=0.2),
             compliance=r(cfg.compliance, **compliance))


def _wait(pred, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return False


def _guard_events(pool, did):
    return [ev for _, ev in pool.spool.events(delivery_id=did)
            if isinstance(ev, AdminEvent) and ev.user == GUARD_USER]


@pytest.mark.timeout(180)
def test_bounce_guard_pauses_and_resume_releases(gsim, tmp_path):
    import re

    cfg = _config(gsim, bounce_guard=True)
    doms = [d for d in gsim.world.domains if d.endswith("bouncy.test")]
    rows = [{"email": f"b{i}@{doms[i % len(doms)]}"} for i in range(3000)]
    with WorkerPool(cfg, spool=str(tmp_path / "spool")) as pool:
        h = pool.submit(rows, MESSAGE)
        assert _wait(lambda: h.status()["state"] == "paused", 60), h.status()
        assert _wait(lambda: _guard_events(pool, h.id), 10)  # appended after the state
        k = pool.spool.kpis(h.id)
        assert k["attempts"] >= 1000 and k["failed_hard"] / k["attempts"] > 0.05
        ev = _guard_events(pool, h.id)
        assert len(ev) == 1 and ev[0].action == "suspend"
        assert ev[0].text.startswith("bounce guard: hard-bounce rate ")
        assert _wait(lambda: read_status(pool.spool_path).get("guards", {}).get(str(h.id)), 10)
        flag = read_status(pool.spool_path)["guards"][str(h.id)]["bounce"]
        assert flag["state"] == "paused"
        assert h.status()["pending"] > 0  # the paused delivery stops taking recipients
        # `fastmta admin resume --delivery N` releases it; the guard then judges only
        # attempts made after its pause: it may pause again, but only after >= 1,000 more
        for _ in range(5):
            h.resume()
            assert _wait(lambda: h.done() or h.status()["state"] == "paused", 60)
            if h.done():
                break
        st = h.status()
        assert st["pending"] == 0 and st["sent"] + st["failed"] == 3000
        for e in _guard_events(pool, h.id):
            n = int(re.search(r"of (\d+) attempts", e.text).group(1))
            assert n >= 1000, e.text


@pytest.mark.timeout(120)
@pytest.mark.parametrize("complaints, paused", [(5, True), (2, False)])
def test_complaint_guard(gsim, tmp_path, complaints, paused):
    cfg = _config(gsim)
    # 2 complaints: a warning while 1,000..2,000 are delivered (0.2%..0.1%)
    rows = [{"email": f"c{i}@{'gmail.com' if i % 2 else 'googlemail.com'}"}
            for i in range(3000)]
    with WorkerPool(cfg, spool=str(tmp_path / "spool")) as pool:
        h = pool.submit(rows, MESSAGE)
        # the feedback work's ARF apply step calls this for each complaint report
        record_complaints(pool.spool, h.id, "gmail.com", n=complaints)
        if paused:  # 5 / 1,000..1,666 delivered >= 0.3%
            assert _wait(lambda: h.status()["state"] == "paused", 60), h.status()
            assert _wait(lambda: _guard_events(pool, h.id), 10)  # appended after the state
            ev = _guard_events(pool, h.id)
            assert len(ev) == 1
            assert ev[0].text.startswith("complaint:google guard: complaint rate at google ")
            assert h.status()["pending"] > 0
            h.resume()
            st = h.wait(timeout_s=60)
            assert st["pending"] == 0 and len(_guard_events(pool, h.id)) == 1
        else:  # 2 / 1,000..3,000 = 0.07..0.2%: a warning flag (from 0.1%), no pause
            st = h.wait(timeout_s=60)
            assert st["sent"] == 3000 and _guard_events(pool, h.id) == []
            assert _wait(lambda: read_status(pool.spool_path).get("guards", {})
                         .get(str(h.id)), 10)
            flag = read_status(pool.spool_path)["guards"][str(h.id)]["complaint:google"]
            assert flag["state"] == "warning"


def test_guard_metric():
    from fastmta.ops.metrics import MetricsState, OpsCollector

    st = MetricsState()
    st.guards = {3: {"bounce": {"state": "paused", "reason": "x"},
                     "complaint:google": {"state": "warning", "reason": "y"}}}
    fam = [m for m in OpsCollector(st).collect() if m.name == "fastmta_compliance_guard"][0]
    assert {(s.labels["delivery"], s.labels["guard"], s.labels["state"]) for s in fam.samples} \
        == {("3", "bounce", "paused"), ("3", "complaint:google", "warning")}
