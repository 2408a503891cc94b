"""The throttled profile's cap metrics (bench/audit.py): how soon a sender reaches 90%
of a hidden per-minute cap, and when it converged (sustained)."""

from __future__ import annotations

from fastmta.bench.audit import _converged_s, _reached_s
from fastmta.bench.state import time_to_90pct_cap

CAP = 600  # per minute: 10/s


def ramp(rates: list[float]) -> list[int]:
    """Acceptance times (ms): ``rates[i]`` messages per second during second i."""
    out = []
    for i, r in enumerate(rates):
        n = int(r)
        out += [i * 1000 + int(1000 * k / n) for k in range(n)] if n else []
    return out


def test_reached_at_the_end_of_the_first_full_rate_window():
    at_cap = ramp([10.0] * 120)
    assert _reached_s(at_cap, CAP) == 10.0  # one 10-s window at the cap's rate
    slow_start = ramp([2.0] * 30 + [10.0] * 90)
    assert _reached_s(slow_start, CAP) == 39.0  # 9 s at 10/s + 1 s at 2/s: 92 >= 90
    never = ramp([8.0] * 120)  # 80% of the cap
    assert _reached_s(never, CAP) is None


def test_converged_needs_every_later_minute():
    dip = ramp([10.0] * 60 + [5.0] * 20 + [10.0] * 100)
    assert _reached_s(dip, CAP) == 10.0  # reached at once...
    assert _converged_s(dip, CAP) > 60.0  # ...but only sustained after the dip
    shaping = {"a": {"windows": 3, "reached_90pct_s": 10.0, "converged_s": 75.0},
               "b": {"windows": 3, "reached_90pct_s": 25.0, "converged_s": 5.0},
               "c": {"windows": 0}}
    assert time_to_90pct_cap(shaping) == 25.0  # the slowest capped provider
    assert time_to_90pct_cap(shaping, "converged_s") == 75.0


def test_steady_rate_figures_in_250ms_buckets():
    from fastmta.bench.ramp import ramp_figures, slowest

    flat = [i * 5 for i in range(2000)]  # 200/s from the first acceptance
    f = ramp_figures(flat)
    assert f["steady_per_s"] == 200.0 and f["reached_90pct_steady_s"] == 0.25
    assert f["reached_90pct_steady_1s_s"] == 1.0
    climb = [i * 40 for i in range(25)] + [1000 + i * 5 for i in range(2000)]  # 25/s, 1 s
    g = ramp_figures(climb)
    assert g["steady_per_s"] == 200.0 and g["reached_90pct_steady_s"] == 1.25
    assert g["reached_90pct_steady_1s_s"] == 2.0
    # flights: full and empty buckets in turn still give the slope, and the 1-s window
    bursty = [(i // 88) * 500 + (i % 88) for i in range(1760)]  # 88 every 0.5 s = 176/s
    b = ramp_figures(bursty)
    assert abs(b["steady_per_s"] - 176) < 10 and b["reached_90pct_steady_s"] == 0.25
    assert b["reached_90pct_steady_1s_s"] == 1.0
    assert slowest({"a": f, "b": g}) == 1.25
    assert slowest({"a": f, "b": g}, "reached_90pct_steady_1s_s") == 2.0
    assert ramp_figures([1, 2, 3])["steady_per_s"] is None  # too few to say


def test_time_to_90pct_of_a_hidden_per_second_cap():
    """Against the sim's cap, not the run's own rate: a run that never gets above 80%
    of the cap never reaches it, however steady it is."""
    from fastmta.bench.ramp import cap_figures

    climb = [i * 40 for i in range(50)] + [2000 + i * 5 for i in range(2000)]  # 25/s, 200/s
    f = cap_figures(climb, 200.0)
    assert f["cap_per_s"] == 200.0 and f["steady_pct_of_cap"] == 100.0
    assert f["reached_90pct_cap_s"] == 3.0 and f["reached_90pct_cap_bucket_s"] == 2.25
    low = cap_figures([i * 6 for i in range(2000)], 200.0)  # 166/s: 83% of the cap
    assert low["steady_pct_of_cap"] == 83.3 and low["reached_90pct_cap_s"] is None
