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
def test_complaint_guard_warns_below_the_threshold(gsim, tmp_path):
    cfg = _config(gsim)
    # 2 complaints: a warning while 1,000..2,000 are delivered (0.2%..0.1%)
    rows = [{"email": f"c{i}@{'gmail.com' if i % 2 else 'googlemail.com'}"}
            for i in range(3000)]
    with WorkerPool(cfg, spool=str(tmp_path / "spool")) as pool:
        h = pool.submit(rows, MESSAGE)
        record_complaints(pool.spool, h.id, "gmail.com", n=2)
        # 2 / 1,000..3,000 = 0.07..0.2%: a warning flag (from 0.1%), no pause
        st = h.wait(timeout_s=60)
        assert st["sent"] == 3000 and _guard_events(pool, h.id) == []
        assert _wait(lambda: read_status(pool.spool_path).get("guards", {})
                     .get(str(h.id)), 10)
        flag = read_status(pool.spool_path)["guards"][str(h.id)]["complaint:google"]
        assert flag["state"] == "warning"


def _by_group(pool, did):
    out: dict[tuple[str, str], int] = {}
    for _rid, rec in pool.spool.recipients(did):
        g = provider_group(rec.email.rpartition("@")[2])
        g = "google" if g == "google" else "other"
        out[(g, rec.status_name)] = out.get((g, rec.status_name), 0) + 1
    return out


@pytest.mark.timeout(180)
def test_complaint_guard_pauses_only_that_provider(gsim, tmp_path):
    """Complaints at the threshold from Gmail recipients pause this delivery's Gmail
    traffic only: its other recipients keep being delivered; resume releases it."""
    cfg = _config(gsim)
    others = [d for d in gsim.world.domains if d.endswith("bouncy.test")]
    rows = [{"email": f"c{i}@{'gmail.com' if i % 2 else 'googlemail.com'}"}
            for i in range(2400)] + [{"email": f"o{i}@{others[i % len(others)]}"}
                                     for i in range(600)]
    with WorkerPool(cfg, spool=str(tmp_path / "spool")) as pool:
        h = pool.submit(rows, MESSAGE)
        # the feedback work's ARF apply step calls this for each complaint report
        record_complaints(pool.spool, h.id, "gmail.com", n=5)
        # 5 / 1,000..1,666 delivered to google >= 0.3%
        assert _wait(lambda: pool.admin.paused_providers(h.id) == ["google"], 60)
        assert _wait(lambda: _guard_events(pool, h.id), 10)
        ev = _guard_events(pool, h.id)
        assert len(ev) == 1 and ev[0].action == "suspend"
        assert ev[0].target == f"delivery:{h.id}/provider:google"
        assert ev[0].text.startswith("complaint:google guard: complaint rate at google ")
        assert h.status()["state"] == "active"  # the delivery itself is not paused
        assert _wait(lambda: read_status(pool.spool_path).get("guards", {})
                     .get(str(h.id), {}).get("complaint:google", {}).get("state")
                     == "paused", 10)
        # the other provider's recipients all reach a final state; Gmail's are held
        assert _wait(lambda: _by_group(pool, h.id).get(("other", "pending"), 0) == 0, 60)
        held = _by_group(pool, h.id)
        assert held.get(("google", "pending"), 0) > 0, held
        sent_google = held.get(("google", "sent"), 0)
        assert 1000 <= sent_google < 2400, held
        time.sleep(1.0)  # no Gmail delivery while paused (deferred rechecks are held again)
        assert _by_group(pool, h.id).get(("google", "sent"), 0) == sent_google
        h.resume()  # `fastmta admin resume --delivery N` releases the provider pause
        assert pool.admin.paused_providers(h.id) == []
        st = h.wait(timeout_s=90)
        assert st["pending"] == 0
        assert _by_group(pool, h.id).get(("google", "sent"), 0) == 2400
        assert len(_guard_events(pool, h.id)) == 1  # no second pause for the same ones
        assert _wait(lambda: "complaint:google" not in read_status(pool.spool_path)
                     .get("guards", {}).get(str(h.id), {}), 10)


def test_guard_metric():
    from fastmta.ops.metrics import MetricsState, OpsCollector

    st = MetricsState()
    st.guards = {3: {"bounce": {"state": "paused", "reason": "x"},
                     "complaint:google": {"state": "warning", "reason": "y"}}}
    fam = [m for m in OpsCollector(st).collect() if m.name == "fastmta_compliance_guard"][0]
    assert {(s.labels["delivery"], s.labels["guard"], s.labels["state"]) for s in fam.samples} \
        == {("3", "bounce", "paused"), ("3", "complaint:google", "warning")}
