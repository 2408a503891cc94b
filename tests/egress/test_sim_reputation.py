"""The simulated providers' reputation model (pure: an injected wall clock), and the
warm-up bench end to end on a short compressed run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fastmta.egress.clock import DAY_S, HOUR_S, EgressClock
from fastmta.sim.reputation import Reputation
from fastmta.sim.world import Behaviour


class Wall:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def rep(**kw):
    wall = Wall()
    beh = Behaviour(reputation=True, rep_cold_daily=40, rep_hourly_fraction=0.25,
                    rep_growth=2.0, **kw)
    return Reputation(beh, EgressClock(1.0, 0.0, wall)), wall


def send(r: Reputation, ip: str, n: int) -> list[bytes]:
    refusals = []
    for _ in range(n):
        no = r.check(ip, 0.0)
        if no is None:
            r.accepted(ip, 1)
        else:
            refusals.append(no)
    return refusals


def test_cold_ip_gets_hourly_then_daily_421_and_grows_after_a_clean_day():
    r, wall = rep()
    wall.t = 10 * DAY_S + 60
    no = send(r, "127.0.0.9", 15)
    assert len(no) == 5 and b"421-4.7.28" in no[0]  # 10 an hour (40 * 0.25)
    for _ in range(3):
        wall.t += HOUR_S
        send(r, "127.0.0.9", 10)
    wall.t += HOUR_S
    no = send(r, "127.0.0.9", 1)
    assert b"[TSS04]" in no[0]  # the day's 40 are used
    # that day had refusals: not clean, no growth
    wall.t = 11 * DAY_S + 60
    assert len(send(r, "127.0.0.9", 11)) == 1
    # day 11: 10 accepted, one refused -> dirty again; day 12 clean (only 10 sent)
    wall.t = 12 * DAY_S + 60
    assert send(r, "127.0.0.9", 10) == []
    wall.t = 13 * DAY_S + 60
    assert send(r, "127.0.0.9", 20) == []  # grown: 80 a day, 20 an hour
    assert r.check("127.0.0.8", 0.0) is None  # another IP has its own reputation


def test_burst_from_a_cold_ip_earns_a_block():
    r, wall = rep(rep_burst_fraction=0.1, rep_block_s=4 * HOUR_S)
    wall.t = 5 * DAY_S
    no = send(r, "127.0.0.9", 6)  # more than 4 (0.1 x 40) within a minute
    assert no and b"[TS03]" in no[0]
    wall.t += 2 * HOUR_S
    assert b"[TS03]" in send(r, "127.0.0.9", 1)[0]  # still blocked
    wall.t += 3 * HOUR_S
    assert send(r, "127.0.0.9", 1) == []


def test_known_ips_have_no_allowance():
    r, wall = rep(rep_warm_ips=["127.0.0.7"])
    assert send(r, "127.0.0.7", 500) == []


@pytest.mark.timeout(180)
def test_warmup_bench_short_run():
    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-m", "fastmta", "bench", "--profile", "warmup",
                          "--sources", "3", "--days", "3", "--day-seconds", "8", "--json"],
                         capture_output=True, timeout=170, env=env)
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    r = json.loads(out.stdout)
    assert r["cap_violations"] == 0 and r["lost"] == 0 and r["audit_ok"]
    assert r["overflowed"] > 0  # the demand above the cold caps went to the warm source
    cold = [p for p in r["per_source"] if p["cold"]]
    assert len(cold) == 4
    for p in cold:
        assert [d["cap"] for d in p["days"]][:3] == [2, 5, 10]  # advanced each clean day
        assert all(d["sent"] <= d["cap"] for d in p["days"])
    assert r["throttle_pct_of_attempts"] <= 1.0
