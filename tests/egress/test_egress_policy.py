"""Pure egress policy: weighted spread, warm-up caps with spill/defer, the ramp, the
memory's decay (no sockets; an injected clock)."""

from __future__ import annotations

from collections import Counter

import msgspec
import pytest

from fastmta.config import (
    Config,
    EgressConfig,
    EgressMember,
    EgressPool,
    EgressRule,
    EgressSource,
    ShapingConfig,
    WarmupPlanConfig,
)
from fastmta.egress.clock import DAY_S, HOUR_S, ManualClock
from fastmta.egress.egress import Egress
from fastmta.egress.memory import restore, snapshot, weight
from fastmta.egress.plans import load_plans
from fastmta.egress.selector import PoolSelector, SmoothWrr
from fastmta.egress.warmup import ADVANCE, HOLD, IDLE, STEP_BACK, Ramp, WarmupState
from fastmta.engine.shaping import SiteShaper
from fastmta.errors import ConfigError

PLAN = WarmupPlanConfig(name="test", daily=[80, 160, 320], hourly_fraction=0.25)


def egress_cfg(overflow="spill", cold=("c",), warm=("w1", "w2"), weights=None) -> Config:
    names = list(cold) + list(warm)
    weights = weights or {n: 1.0 for n in names}
    sources = [EgressSource(name=n, source_ip=f"127.0.0.{i + 2}", warmup=n in cold,
                            plan="test") for i, n in enumerate(names)]
    pool = EgressPool(name="main", members=[EgressMember(source=n, weight=weights[n])
                                            for n in names])
    return Config(egress=EgressConfig(sources=sources, pools=[pool], plans=[PLAN],
                                      overflow=overflow,
                                      rules=[EgressRule(from_domain="news.example",
                                                        pool="main")]))


def test_smooth_wrr_is_exact_within_one():
    wrr = SmoothWrr([("a", 5), ("b", 3), ("c", 2)])
    seen = Counter()
    for i in range(1, 1001):
        seen[wrr.pick()] += 1
        for name, w in (("a", 5), ("b", 3), ("c", 2)):
            assert abs(seen[name] - i * w / 10) <= 1.0
    assert seen == {"a": 500, "b": 300, "c": 200}


def test_weighted_spread_skips_a_suspended_member():
    sel = PoolSelector([("a", 2), ("b", 1), ("c", 1)])
    seen = Counter(sel.choose(lambda n: n != "b", lambda n: True).source for _ in range(900))
    assert seen["b"] == 0
    assert seen["a"] == 600 and seen["c"] == 300  # the others keep their 2:1 ratio


@pytest.mark.parametrize("overflow", ["spill", "defer"])
def test_warmup_caps_never_exceeded(overflow):
    clock = ManualClock(10 * DAY_S)
    eg = Egress(egress_cfg(overflow), clock=clock)
    pool = eg.pool_for("x@news.example")
    got = Counter()
    waits = 0
    for _ in range(30):  # 30 hours, 300 messages an hour
        for _ in range(300):
            ch = eg.select(pool, "gmail", lambda n: True)
            if ch.source is None:
                waits += 1
                assert ch.capped == "c" and eg.wait_s("c", "gmail") > 0
            else:
                got[ch.source] += 1
        st = eg.state("c", "gmail")
        daily, hourly = eg._ramp("c", "gmail").caps(st)
        assert st.used_hour <= hourly and st.used_day <= daily  # never above a cap
        clock.advance(HOUR_S)
    # day 10 at stage 1 (80/day, 20/h) filled its cap cleanly: day 11 at stage 2 (160)
    assert eg.state("c", "gmail").stage == 2
    assert got["c"] == 80 + 160  # both days exactly at their daily cap
    if overflow == "spill":
        assert waits == 0 and eg.stats["overflowed"] > 0
        assert abs(got["w1"] - got["w2"]) <= 1  # overflow shared by weight
    else:
        assert eg.stats["overflowed"] == 0 and waits == eg.stats["deferred"] > 0
        assert got["w1"] == got["w2"] == 30 * 100  # the warm ones keep exactly their share


def test_defer_a_message_that_waited_keeps_its_source():
    """``defer``: a message that waited for the capped source goes to it when it comes
    back, without a new pick, so over a backlog each source carries its weight."""
    clock = ManualClock(10 * DAY_S)
    eg = Egress(egress_cfg("defer"), clock=clock)
    pool = eg.pool_for("x@news.example")
    backlog = [b"k%d" % i for i in range(1000)]
    got: Counter = Counter()
    for _hour in range(60):  # every waiting message comes back each hour
        waiting = []
        for key in backlog:
            ch = eg.select(pool, "gmail", lambda n: True, key)
            if ch.source is None:
                assert ch.capped == "c"
                waiting.append(key)
            else:
                got[ch.source] += 1
        backlog = waiting
        clock.advance(HOUR_S)
    assert got["c"] + got["w1"] + got["w2"] + len(backlog) == 1000
    # equal weights (egress_cfg): the warm ones exactly their third, not the overflow
    assert {got["w1"], got["w2"]} <= {333, 334} and got["c"] + len(backlog) >= 332, got
    assert set(eg.waiting.values()) <= {"c"} and len(eg.waiting) == len(backlog)
    # a suspended bound source: picked afresh among the usable ones
    eg2 = Egress(egress_cfg("defer"), clock=ManualClock(10 * DAY_S))
    eg2.waiting[b"z"] = "c"
    ch = eg2.select(eg2.pool_for("x@news.example"), "gmail", lambda n: n != "c", b"z")
    assert ch.source in ("w1", "w2") and b"z" not in eg2.waiting


def test_give_back_returns_room():
    clock = ManualClock(0.0)
    eg = Egress(egress_cfg("defer", warm=()), clock=clock)
    pool = eg.pool_for("a@news.example")
    for _ in range(20):
        assert eg.select(pool, "p", lambda n: True).source == "c"
    assert eg.select(pool, "p", lambda n: True).source is None
    eg.give_back("c", "p")
    assert eg.select(pool, "p", lambda n: True).source == "c"


def ramp() -> tuple[Ramp, WarmupState]:
    plan = load_plans([PLAN])["test"]
    return Ramp(plan, hold_throttle_pct=2.0, advance_fill_pct=90.0), \
        WarmupState(source="c", provider="gmail")


def run_day(r: Ramp, st: WarmupState, day: int, used: int, throttles=0, blocks=0):
    t = day * DAY_S
    r.roll(st, t)
    for _ in range(used):
        Ramp.take(st, t)
    Ramp.feedback(st, attempts=used + throttles, throttles=throttles, blocks=blocks)
    return r.roll(st, t + DAY_S)


def test_ramp_advances_only_after_a_clean_full_day():
    r, st = ramp()
    assert run_day(r, st, 0, 80) == ADVANCE and st.stage == 2
    assert run_day(r, st, 1, 100) == HOLD and st.stage == 2  # 100 < 90% of 160
    assert run_day(r, st, 2, 0) == IDLE and st.stage == 2  # no traffic: not a send-day
    assert st.send_days == 2


def test_ramp_holds_on_throttles_and_steps_back_after_a_block():
    r, st = ramp()
    run_day(r, st, 0, 80)
    assert run_day(r, st, 1, 160, throttles=10) == HOLD and st.stage == 2  # 5.9% > 2%
    assert run_day(r, st, 2, 160, blocks=1) == STEP_BACK and st.stage == 1
    assert run_day(r, st, 3, 80, throttles=1) == ADVANCE  # 1.2% <= 2%: clean enough
    assert r.status(st, 4 * DAY_S)["daily_cap"] == 160


def test_plan_end_means_warm_and_config_errors():
    r, st = ramp()
    for d, used in enumerate((80, 160, 320)):
        run_day(r, st, d, used)
    assert r.caps(st) is None and r.room(st, 5 * DAY_S) is None
    eg = egress_cfg().egress
    bad = msgspec.structs.replace(eg.sources[0], plan="nope")
    cfg = Config(egress=msgspec.structs.replace(eg, sources=[bad, *eg.sources[1:]]))
    with pytest.raises(ConfigError, match="unknown warm-up plan"):
        Egress(cfg)
    with pytest.raises(ConfigError, match="unknown source"):
        Egress(Config(egress=EgressConfig(pools=[EgressPool(
            name="p", members=[EgressMember(source="x")])], sources=[EgressSource(name="a")])))


def test_memory_restores_with_decay_and_keeps_a_suspension():
    p = ShapingConfig(initial_connections=2, max_connections=32)
    sh = SiteShaper(p, now=100.0)
    sh.limit, sh.ceiling, sh.rate = 10, 11, 80.0
    sh.on_block(100.0, "blocked")  # suspended for 60 s
    rec = snapshot(sh, site="s", source="a", provider="p", now_mono=100.0, now_egress=0.0,
                   now_wall=1000.0)
    assert rec.suspended_until_wall == pytest.approx(1060.0)
    fresh = SiteShaper(p, now=5.0)
    assert restore(fresh, rec, now_mono=5.0, now_egress=0.0, now_wall=1010.0,
                   half_life_s=DAY_S, forget_s=14 * DAY_S)
    assert fresh.limit == 10 and fresh.ceiling == 11 and fresh.rate == 80.0
    assert fresh.suspended(5.0) and fresh.resume_at(5.0) == pytest.approx(55.0)
    old = SiteShaper(p, now=5.0)
    restore(old, rec, now_mono=5.0, now_egress=DAY_S, now_wall=2000.0,
            half_life_s=DAY_S, forget_s=14 * DAY_S)
    assert old.limit == 6 and old.rate == pytest.approx(40.0)  # half-way back: w = 0.5
    assert not old.suspended(5.0)  # its end has passed
    assert not restore(SiteShaper(p), rec, now_mono=0.0, now_egress=15 * DAY_S,
                       now_wall=0.0, half_life_s=DAY_S, forget_s=14 * DAY_S)
    assert weight(2 * DAY_S, DAY_S) == 0.25


def test_warm_sources_use_is_counted_for_status():
    """A pool of warm sources only (the capless fast path) still counts what each source
    was handed, per provider and hour, into the records ``egress status`` shows."""
    clock = ManualClock(10 * DAY_S + 5 * HOUR_S)
    eg = Egress(egress_cfg(cold=(), warm=("w1", "w2"), weights={"w1": 3.0, "w2": 1.0}),
                clock=clock)
    pool = eg.pool_for("news@news.example")
    for _ in range(400):
        assert eg.select(pool, "gmail", lambda n: True).source is not None
    out = eg.dirty()
    assert {k for k in out if k.startswith(b"W")} == {b"W\x00w1\x00gmail", b"W\x00w2\x00gmail"}
    rows = {r["source"]: r for r in eg.status()}
    assert rows["w1"]["used_today"] == 300 and rows["w2"]["used_today"] == 100
    assert rows["w1"]["used_this_hour"] == 300 and rows["w1"]["daily_cap"] is None
    assert rows["w1"]["next"] == "warm" and rows["w1"]["cold"] is False
    clock.advance(HOUR_S)
    eg.select(pool, "gmail", lambda n: True)
    eg.dirty()
    rows = {r["source"]: r for r in eg.status()}
    assert rows["w1"]["used_today"] + rows["w2"]["used_today"] == 401
    assert rows["w1"]["used_this_hour"] + rows["w2"]["used_this_hour"] == 1
    assert eg.dirty() == {}  # nothing new: nothing to write
    # deferred after selection (the fast path): out of the use, into the deferrals
    before = {r["source"]: r["used_today"] for r in eg.status()}
    eg.select(pool, "gmail", lambda n: True)  # handed, not folded yet
    eg.give_back("w1", "gmail")
    eg.give_back("w1", "gmail")
    eg.dirty()
    rows = {r["source"]: r for r in eg.status()}
    assert sum(r["used_today"] for r in rows.values()) == sum(before.values()) + 1 - 2
    assert rows["w1"]["deferred_today"] == 2 and rows["w2"]["deferred_today"] == 0
    assert max(r["last_used"] for r in rows.values()) == clock.now()


def test_status_totals_deferrals_and_last_use_for_warm_and_cold_sources():
    """Every source, warm ones too, has its use today / this hour against its allowance,
    its deferrals and its last use, per provider and in total (``egress status``)."""
    from fastmta.egress.status import egress_status

    t0 = 10 * DAY_S + 5 * HOUR_S
    clock = ManualClock(t0)
    cfg = egress_cfg("defer", cold=("c",), warm=("w1",))
    eg = Egress(cfg, clock=clock)
    pool = eg.pool_for("news@news.example")
    got = Counter()
    for _ in range(100):
        ch = eg.select(pool, "gmail", lambda n: True)
        got[ch.source or "wait"] += 1
    assert got["c"] == 20 and got["w1"] == 50 and got["wait"] == 30  # 20/h, then defer
    clock.advance(60.0)
    for _ in range(5):  # five of w1's were deferred by our own shaping after selection
        eg.give_back("w1", "gmail")
    eg.give_back("c", "gmail")  # and one of c's: its room comes back
    items = list(eg.dirty().items())
    doc = egress_status(cfg, items, 0.0, clock)
    src = {s["name"]: s for s in doc["sources"]}
    w1, c = src["w1"], src["c"]
    (row,) = w1["providers"]
    assert row["used_today"] == row["used_this_hour"] == 45 and row["deferred_today"] == 5
    assert row["daily_cap"] is None and row["room_today"] is None
    assert row["last_used"] == pytest.approx(t0)  # a mixed pool counts at selection
    assert w1["used_today"] == 45 and w1["deferred_today"] == 5
    assert w1["daily_allowance"] is None and w1["last_used"] == row["last_used"]
    (crow,) = c["providers"]
    assert crow["used_today"] == 19 and crow["daily_cap"] == 80 and crow["hourly_cap"] == 20
    assert crow["room_today"] == 61 and crow["room_this_hour"] == 1
    assert crow["deferred_today"] == 30 + 1  # waited for its cap, and the one given back
    assert c["daily_allowance"] == 80 and c["hourly_allowance"] == 20
    assert c["last_used"] == pytest.approx(t0)
    # a warm source without traffic still has its (zero) totals
    eg2 = Egress(egress_cfg(cold=(), warm=("w1", "w2")), clock=clock)
    doc2 = egress_status(eg2.cfg, [], 0.0, clock)
    s2 = doc2["sources"][0]
    assert s2["used_today"] == 0 and s2["deferred_today"] == 0 and s2["last_used"] is None
    # the next day starts from zero
    clock.advance(DAY_S)
    doc3 = egress_status(cfg, items, 0.0, clock)
    assert all(s["used_today"] == 0 and s["deferred_today"] == 0 for s in doc3["sources"])
