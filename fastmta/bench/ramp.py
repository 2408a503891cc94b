"""How soon a run reaches its steady sending rate, from delivery timestamps.  Pure.

The memory figure of issue #17 (a restarted run starts near what it learned instead of
climbing from ``initial_connections``) is a difference of a second or two, invisible in
10-s or one-minute windows: here the acceptances of one provider are counted in
``BUCKET_MS`` (250 ms) buckets from its first acceptance.

- ``steady_per_s``: the slope of the cumulative acceptances between the 20th and the
  80th percentile acceptance -- the backlogged middle of the run (every recipient is
  queued at the start).  A slope, not a bucket median: a connection sends its messages
  in pipelined flights, so single 250-ms buckets alternate between full and empty when
  the replies are slow.
- ``reached_90pct_steady_s``: the end of the first bucket whose rate is at least 90% of
  that steady rate (a resolution of one bucket; a run that starts at its learned
  connection level reaches it in its first bucket);
- ``reached_90pct_steady_1s_s``: the end of the first 1-s window (four buckets, sliding
  by one) averaging at least 90% of it -- the same question, less sensitive to one full
  flight landing in one bucket.
"""

from __future__ import annotations

from collections.abc import Sequence

BUCKET_MS = 250
MIN_SAMPLES = 20  # fewer acceptances: no figure


def steady_per_s(times: Sequence[int]) -> float | None:
    """Acceptances per second over the 20th..80th percentile of sorted ``times`` (ms)."""
    n = len(times)
    if n < MIN_SAMPLES:
        return None
    lo, hi = n // 5, (4 * n) // 5
    span = times[hi] - times[lo]
    return (hi - lo) * 1000.0 / span if span > 0 else None


def bucket_rates(times: Sequence[int], bucket_ms: int = BUCKET_MS) -> list[float]:
    """Acceptances per second in each ``bucket_ms`` bucket from the first acceptance."""
    if not times:
        return []
    t0 = times[0]
    counts = [0] * ((times[-1] - t0) // bucket_ms + 1)
    for t in times:
        counts[(t - t0) // bucket_ms] += 1
    return [c * 1000.0 / bucket_ms for c in counts]


def reached_s(times: Sequence[int], steady: float | None = None, fraction: float = 0.9,
              bucket_ms: int = BUCKET_MS, window: int = 1) -> float | None:
    """Seconds from the first acceptance to the end of the first run of ``window``
    buckets averaging ``fraction`` x ``steady`` (default: the run's ``steady_per_s``)."""
    if steady is None:
        steady = steady_per_s(times)
    if not steady:
        return None
    need = fraction * steady * window
    rates = bucket_rates(times, bucket_ms)
    acc = 0.0
    for i, r in enumerate(rates):
        acc += r - (rates[i - window] if i >= window else 0.0)
        if i + 1 >= window and acc >= need:
            return round((i + 1) * bucket_ms / 1000.0, 3)
    return None


def ramp_figures(times: Sequence[int], bucket_ms: int = BUCKET_MS) -> dict:
    """The figures of one provider (``times``: sorted acceptance times in ms)."""
    steady = steady_per_s(times)
    return {"bucket_ms": bucket_ms, "delivered": len(times),
            "steady_per_s": round(steady, 1) if steady else None,
            "reached_90pct_steady_s": reached_s(times, steady, 0.9, bucket_ms),
            "reached_90pct_steady_1s_s": reached_s(times, steady, 0.9, bucket_ms,
                                                   max(1, 1000 // bucket_ms)),
            "first_buckets_per_s": [round(r, 1) for r in bucket_rates(times, bucket_ms)[:40]]}


def cap_figures(times: Sequence[int], cap_per_s: float,
                bucket_ms: int = BUCKET_MS) -> dict:
    """How soon one provider reached 90% of its *hidden* per-second cap (the sim's
    ``max_conn_per_ip x conn_msgs_per_s``, not the run's own rate): the end of the first
    1-s window (four buckets, sliding by one) averaging >= 90% of it, and of the first
    single bucket."""
    out = ramp_figures(times, bucket_ms)
    out["cap_per_s"] = round(cap_per_s, 2)
    out["reached_90pct_cap_s"] = reached_s(times, cap_per_s, 0.9, bucket_ms,
                                           max(1, 1000 // bucket_ms))
    out["reached_90pct_cap_bucket_s"] = reached_s(times, cap_per_s, 0.9, bucket_ms)
    out["steady_pct_of_cap"] = (round(100.0 * out["steady_per_s"] / cap_per_s, 1)
                                if out["steady_per_s"] else None)
    return out


def slowest(ramp: dict[str, dict], key: str = "reached_90pct_steady_s") -> float | None:
    """The largest ``key`` over providers (None if one never got there)."""
    vals = [r.get(key) for r in ramp.values() if r["steady_per_s"]]
    if not vals or any(v is None for v in vals):
        return None
    return max(vals)
