from __future__ import annotations

from collections import deque

import pytest

from fastmta.config import ProviderConfig, ShapingConfig, ShapingRule
from fastmta.engine.providers import load_providers, shipped_providers, site_params, site_rules
from fastmta.engine.rates import Gcra, ProviderBudget
from fastmta.engine.shaping import SiteShaper
from fastmta.errors import ConfigError


def feed(shaper, now, n, active=None):
    for _ in range(n):
        shaper.on_success(now, 1, active if active is not None else shaper.limit)


def test_gcra_rate_and_burst():
    g = Gcra(10.0, burst=3)
    assert [g.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = g.take(0.0)
    assert wait == pytest.approx(0.1)
    assert g.take(0.1) == 0.0
    # sustained: 10 per second
    taken = sum(1 for i in range(1000) if g.take(1.0 + i * 0.001) == 0.0)
    assert 9 <= taken <= 13


def test_additive_increase_only_while_limit_in_use():
    s = SiteShaper(ShapingConfig(initial_connections=2, max_connections=6))
    assert s.connection_limit(0) == 2
    feed(s, 0, 50, active=1)  # limit not in use: no growth
    assert s.limit == 2
    feed(s, 0, 2)
    assert s.limit == 3  # one window (= limit) of successes -> +1
    feed(s, 0, 1000)
    assert s.limit == 6  # operator bound


def test_multiplicative_cut_then_fast_recovery_below_ceiling_then_slow_probe():
    cfg = ShapingConfig(initial_connections=2, max_connections=32, probe_interval_s=30,
                        throttle_holdoff_s=2)
    s = SiteShaper(cfg)
    feed(s, 0, 200)
    assert s.limit >= 9
    s.limit = 9
    assert s.on_throttle(10.0) is True
    assert s.limit == 4 and s.ceiling == 9
    assert s.on_throttle(10.5) is False  # same cohort: counted, no second cut
    assert s.limit == 4 and s.throttles == 2
    feed(s, 11, 100)
    assert s.limit == 8  # fast back to just below the remembered level
    feed(s, 20, 100)
    assert s.limit == 8  # no probe before probe_interval_s
    feed(s, 41, 10)
    assert s.limit == 9  # one probe
    s.on_throttle(42.0)  # the probe failed: back below, no deep cut
    assert s.limit == 8 and s.ceiling == 9


def test_probe_that_holds_raises_the_ceiling():
    s = SiteShaper(ShapingConfig(initial_connections=8, probe_interval_s=10))
    s.on_throttle(0.0)
    assert (s.limit, s.ceiling) == (4, 8)
    feed(s, 1, 100)
    assert s.limit == 7
    feed(s, 11, 10)
    assert s.limit == 8  # probe
    feed(s, 22, 10)
    assert s.ceiling == 9 and s.limit == 9  # held 8 for a probe interval


def test_bounds_and_fixed_mode():
    s = SiteShaper(ShapingConfig(initial_connections=20, min_connections=3,
                                 max_connections=20, adaptive=False))
    feed(s, 0, 100)
    s.on_throttle(1.0)
    assert s.limit == 20  # fixed limit never moves
    s = SiteShaper(ShapingConfig(initial_connections=4, min_connections=3))
    s.on_throttle(0.0)
    assert s.limit == 3
    s.on_throttle(5.0)
    assert s.limit == 3


def test_ceiling_forgotten_after_ttl():
    s = SiteShaper(ShapingConfig(initial_connections=10, ceiling_ttl_s=100))
    s.on_throttle(0.0)
    assert s.ceiling == 10
    s.connection_limit(101.0)
    assert s.ceiling is None


def test_rate_throttle_learns_the_count_the_destination_allowed():
    cfg = ShapingConfig(rate_window_s=60.0, rate_recover_fraction=0.95, probe_interval_s=30)
    s = SiteShaper(cfg)
    # a burst at ~166/s for 36 s meets a cap of 6,000 per sliding minute
    for i in range(6000):
        s.on_success(i / 166.6, 1, active=6)
    assert s.msg_rate(36.0) is None
    s.on_throttle(36.0, "rate")
    # 6,000 accepted in the last minute: 100/s is what the destination allows, not the
    # 166/s we were sending nor the rate averaged over the pause that follows
    assert s.rate_ceiling == pytest.approx(100.0, rel=0.01)
    assert s.msg_rate(36.0) == pytest.approx(95.0, rel=0.01)
    # GCRA: no more than the rate over a second
    sent, t = 0, 70.0
    while t < 71.0:
        if s.reserve_send(t) == 0.0:
            sent += 1
        t += 0.001
    assert sent <= 95 + 10


def test_rate_pause_ends_when_the_sliding_window_has_room_again():
    s = SiteShaper(ShapingConfig(rate_window_s=60.0, throttle_pause_s=1.0,
                                 rate_pause_max_s=60.0))
    for i in range(6000):
        s.on_success(i / 166.6, 1, active=6)
    s.on_throttle(36.0, "rate")
    assert s.rate_pause_until == pytest.approx(37.0)
    ends = [s.rate_pause_until]
    for _ in range(4):  # every probe refused while the window is full: the pause doubles
        t = s.rate_pause_until + 0.01
        assert s.reserve_send(t, 1) == 0.0
        s.on_throttle(t + 0.01, "rate")
        ends.append(s.rate_pause_until)
    # 1, 2, 4, 8 s ... and then not 16 s but until the first acceptances leave the
    # minute (t = 60.1) when the window has room again
    assert ends[:4] == pytest.approx([37.0, 39.02, 43.04, 51.06], abs=0.03)
    assert ends[4] == pytest.approx(60.1, abs=0.11)
    assert s.rate_ceiling == pytest.approx(100.0, rel=0.01)  # pauses did not lower it


def test_rate_probes_upwards_only_while_the_rate_is_used():
    cfg = ShapingConfig(rate_window_s=60.0, rate_recover_fraction=0.95,
                        rate_probe_fraction=0.03, probe_interval_s=30)
    busy, idle = SiteShaper(cfg), SiteShaper(cfg)
    for sh in (busy, idle):
        for i in range(6000):
            sh.on_success(i / 100.0, 1, active=6)
        sh.on_throttle(60.0, "rate")
    base = busy.msg_rate(60.0)
    # the busy site sends at its rate for a minute, the idle one at a third of it
    t = 60.0
    while t < 90.5:
        busy.on_success(t, 1, active=6)
        if int(t * 100) % 3 == 0:
            idle.on_success(t, 1, active=6)
        t += 1.0 / base
    assert busy.msg_rate(90.5) == pytest.approx(base * 1.03, rel=0.001)
    assert idle.msg_rate(90.5) == pytest.approx(base)
    while t < 121.0:
        busy.on_success(t, 1, active=6)
        t += 1.0 / busy.msg_rate(t)
    assert busy.msg_rate(121.0) == pytest.approx(base * 1.03 * 1.06, rel=0.001)  # step doubles


@pytest.mark.parametrize("cap_per_min", [600, 6000, 12000])
def test_rate_shaping_against_a_sliding_minute_cap(cap_per_min):
    """The shaper drives a sender that could do 166/s against a destination with a
    sliding one-minute cap (the simulated providers' model), replies 20 ms later:
    over minutes 1-4 it delivers >= 93% of the cap, with few refusals."""
    s = SiteShaper(ShapingConfig())
    capacity, latency, dt = 166.0, 0.02, 0.001
    accepted: deque = deque()
    replies: deque = deque()  # (due, accepted?)
    delivered, refused, attempts, next_free, t = [], 0, 0, 0.0, 0.0
    while t < 300.0:
        while replies and replies[0][0] <= t:
            _, ok = replies.popleft()
            if ok:
                s.on_success(t, 1, active=6)
                delivered.append(t)
            else:
                refused += 1
                s.on_throttle(t, "rate", active=6)
        if t >= next_free and s.reserve_send(t, 1) == 0.0:
            attempts += 1
            next_free = max(next_free + 1.0 / capacity, t)
            while accepted and accepted[0] < t - 60.0:
                accepted.popleft()
            ok = len(accepted) < cap_per_min
            if ok:
                accepted.append(t)
            replies.append((t + latency, ok))
        t += dt
    in_minutes = sum(1 for d in delivered if 60.0 <= d < 240.0)
    assert in_minutes >= 0.93 * 3 * min(cap_per_min, capacity * 60)
    assert refused <= 0.01 * attempts + 5

def test_block_suspends_for_growing_duration_and_resets_after_success():
    s = SiteShaper(ShapingConfig(suspend_initial_s=60, suspend_max_s=200, suspend_factor=2))
    assert s.on_block(0.0) == 60
    assert s.suspended(30) and s.open_delay(30, 0) == pytest.approx(30)
    assert s.on_block(30) == 60  # while suspended: no extension
    assert s.on_block(61) == 61 + 120
    assert s.on_block(200) == 200 + 200  # capped
    s.on_success(500)
    assert s.on_block(600) == 660


def test_connect_failures_suspend_dead_site():
    s = SiteShaper(ShapingConfig(connect_failures_to_suspend=3, initial_connections=4))
    assert s.on_connect_failure(0.0) is False
    s.on_connected(0.5)
    assert s.on_connect_failure(1.0) is False
    assert s.on_connect_failure(2.0) is False
    assert s.on_connect_failure(3.0) is True
    assert s.suspended(4.0) and s.suspend_reason == "unreachable"
    s2 = SiteShaper(ShapingConfig(initial_connections=4))
    s2.on_connect_failure(0.0, throttle=True)
    assert s2.limit == 2


def test_open_delay_respects_limit_pause_and_provider_budget():
    budget = ProviderBudget("p", max_connections=3)
    a = SiteShaper(ShapingConfig(initial_connections=2), provider=budget)
    b = SiteShaper(ShapingConfig(initial_connections=2), provider=budget)
    assert a.open_delay(0, 0) == 0.0
    a.on_open(0)
    a.on_open(0)
    assert a.open_delay(0, 2) is None  # site limit
    b.on_open(0)
    assert b.open_delay(0, 1) is None  # provider cap summed over sites
    a.on_close()
    assert b.open_delay(0, 1) == 0.0
    b.on_throttle(1.0)
    assert b.open_delay(1.2, 0) == pytest.approx(0.8)  # throttle pause


def test_provider_rules_threshold_graded_and_reversible():
    rules = [
        ShapingRule(name="soft", pattern=r"TSS04", action="set_connections", value=2,
                    duration_s=100, threshold=1),
        ShapingRule(name="hard", pattern=r"TSS04", action="suspend", duration_s=300,
                    threshold=3, period_s=60),
    ]
    s = SiteShaper(ShapingConfig(initial_connections=8), rules)
    fired = s.on_reply("421 4.7.0 [TSS04] Messages temporarily deferred", 0.0)
    assert [e.rule for e in fired] == ["soft"]
    assert s.connection_limit(1) == 2 and not s.suspended(1)
    s.on_reply("[TSS04]", 10)
    fired = s.on_reply("[TSS04]", 20)
    assert "hard" in [e.rule for e in fired]
    assert s.suspended(21) and s.resume_at(21) == 320
    assert s.connection_limit(130) == 8  # the set_connections effect expired
    assert not s.suspended(321)
    assert s.on_reply("250 ok", 400) == []


def test_threshold_counts_only_within_period():
    rule = ShapingRule(name="r", pattern="busy", action="bounce", threshold=2, period_s=10)
    s = SiteShaper(ShapingConfig(), [rule])
    assert s.on_reply("server busy", 0) == []
    assert s.on_reply("server busy", 20) == []  # first hit aged out
    assert s.on_reply("server busy", 25)
    assert s.bouncing(26) is not None and s.bouncing(26 + 600) is None


def test_shipped_providers_load_and_merge():
    shipped = shipped_providers()
    names = {p.name for p in shipped}
    assert {"google", "microsoft", "yahoo", "apple"} <= names
    merged = load_providers([ProviderConfig(name="google", max_connections=5),
                             ProviderConfig(name="sim", mx_suffixes=["sim.test"])])
    google = next(p for p in merged if p.name == "google")
    assert google.max_connections == 5 and google.mx_suffixes == ["google.com", "googlemail.com"]
    assert google.rules  # kept from the shipped file
    assert merged[1].name == "sim"
    params = site_params(ShapingConfig(max_connections=4), google)
    assert params.max_connections == 4  # operator bound wins
    assert site_rules(ShapingConfig(), google) == list(google.rules)


def test_bad_rules_are_rejected():
    with pytest.raises(ConfigError, match="unknown action"):
        load_providers([ProviderConfig(name="x", rules=[ShapingRule(pattern="a", action="nuke")])])
    with pytest.raises(ConfigError, match="pattern"):
        load_providers([ProviderConfig(name="x", rules=[ShapingRule(pattern="(", action="bounce")])])


def test_rate_throttle_pauses_sending_then_probes_with_one_message():
    s = SiteShaper(ShapingConfig(throttle_pause_s=1.0, rate_pause_max_s=4.0))
    for i in range(50):
        s.on_success(i / 100, 1, active=1)
    s.on_throttle(0.5, "rate")
    assert s.reserve_send(0.6) == pytest.approx(0.9)  # paused
    s.on_throttle(0.7, "rate")  # same cohort, during the pause: no extension
    assert s.rate_pause_until == pytest.approx(1.5)
    assert s.flight_limit(1.6) == 1
    assert s.reserve_send(1.6, 5) > 0  # only a single probe message may go
    assert s.reserve_send(1.6, 1) == 0.0
    assert s.reserve_send(1.61, 1) > 0  # the rest waits for the probe's answer
    s.on_throttle(1.7, "rate")  # the probe was throttled: pause doubles
    assert s.rate_pause_until == pytest.approx(3.7)
    assert s.reserve_send(3.8, 1) == 0.0
    s.on_throttle(3.9, "rate")
    assert s.rate_pause_until == pytest.approx(7.9)  # 4 s: capped by rate_pause_max_s
    assert s.reserve_send(8.0, 1) == 0.0
    s.on_success(8.1, 1, active=1)  # the probe got through
    assert not s.probe_pending and s.rate_pause_s == 1.0
    rate = s.msg_rate(8.1)
    assert rate is not None  # a learned rate limit paces what follows, in bursts
    assert s.flight_limit(8.1) == max(1, int(rate * 0.1))


def test_fixed_mode_never_pauses():
    s = SiteShaper(ShapingConfig(adaptive=False))
    s.on_throttle(0.0, "rate")
    assert s.reserve_send(0.0, 5) == 0.0 and s.open_delay(0.0, 0) == 0.0


def test_throttle_level_is_the_connections_actually_open():
    s = SiteShaper(ShapingConfig(initial_connections=11))
    # refused while 8 were established (+ the refused one): the limit was 11 but the
    # level that caused it is 9
    s.on_throttle(0.0, "connections", active=9)
    assert s.ceiling == 9 and s.limit == 4


def test_rate_limit_holds_for_flights_of_several_messages():
    s = SiteShaper(ShapingConfig(msg_rate_per_s=100.0, msg_burst=10))
    assert s.flight_limit(0.0) == 10
    sent, t = 0, 0.0
    while t < 2.0:  # flights of 10 messages, as the scheduler sends them
        if s.reserve_send(t, 10) == 0.0:
            sent += 10
        t += 0.001
    assert 190 <= sent <= 220  # 100/s over 2 s (+ one burst)


def test_window_count_equals_a_recount():
    import random

    rng = random.Random(5)
    s = SiteShaper(ShapingConfig(rate_window_s=10.0))
    log, t = [], 0.0
    for _ in range(3000):
        t += rng.expovariate(50.0)
        n = rng.randint(1, 3)
        s.on_success(t, n, active=1)
        log.append((t, n))
        if rng.random() < 0.05:
            for span in (None, 1.0, 4.0, 10.0):
                w = 10.0 if span is None else span
                # buckets of 0.1 s: an acceptance counts while its bucket overlaps the span
                expect = sum(k for at, k in log
                             if (int(at * 10 + 1e-9) / 10) + 0.1 > t - w)
                assert s.window_count(t, span) == expect


def test_a_flight_larger_than_the_burst_never_conforms_so_it_is_trimmed():
    """After a rate cut (a throttle, or a limit learned from another node), a flight
    built for the old burst can never conform (a GCRA grants at most its burst at once):
    the connection loop trims it to ``flight_limit`` (engine/connections.py ``_trim``)
    and the rest goes back to the queue, else the flight waits for ever."""
    from fastmta.engine.connections import _trim

    s = SiteShaper(ShapingConfig(initial_connections=2, max_connections=6))
    s.rate = 200.0
    assert s.flight_limit(0.0) == 20
    assert s.reserve_send(0.0, 20) == 0.0
    s.rate = 30.0  # cut: burst 3
    assert s.flight_limit(1.0) == 3
    assert all(s.reserve_send(1.0 + i, 20) > 0 for i in range(100))  # for ever
    flight = [["a", "b"], ["c", "d", "e"], ["f"]]
    kept, rest = _trim(flight, 3)
    assert kept == [["a", "b"], ["c"]] and rest == ["d", "e", "f"]
    assert s.reserve_send(200.0, sum(len(g) for g in kept)) == 0.0


class _Reserving:
    """A backend that reserves ahead (the cluster's shape, without Redis): grants every
    batch, usable ``ready`` seconds from now; ``epoch`` as a backend switching."""

    denied_max_s = 0.05
    reserve_ahead_s = 0.5
    last_denial_fair = False

    def __init__(self, ready: float) -> None:
        self.ready, self.epoch, self.calls = ready, 0, 0

    def reserve(self, keys, rates, n, ahead_s=0.0):
        self.calls += 1
        return True, self.ready


def test_shared_budget_spends_reserved_cells_no_earlier_than_granted():
    import time

    from fastmta.engine.limits import SharedBudget

    back = _Reserving(ready=0.2)
    b = SharedBudget(back, "s", conn_limit=lambda now: 2, msg_rate=lambda now: 100.0)
    t0 = time.monotonic()
    wait = b.delay(0.0, 5)
    assert 0.15 < wait <= 0.21 and back.calls == 1 and b.cells == 5
    assert 0.0 < b.delay(0.0, 5) <= 0.21 and back.calls == 1  # the same batch, later
    time.sleep(max(0.0, t0 + 0.22 - time.monotonic()))
    assert b.delay(0.0, 5) == 0.0 and back.calls == 1
    back.epoch = 1  # the backend switched (Redis lost or back): those cells lapse
    b.delay(0.0, 5)
    assert back.calls == 2
