"""The bench's audit and report figures, computed from the spool after a run.

``_audit``: every injected recipient final exactly once, as the simulated world says,
and accepted by the sink when sent (``lost``, ``duplicates``, ``unexpected``), plus the
injection-to-acceptance latency and per-provider counts.  ``_goodput``: per rate-capped
provider, the acceptances over its first full rate windows against its cap.
"""

from __future__ import annotations

import bisect
from collections import Counter

from fastmta.bench.profile import BenchProfile, tail_of
from fastmta.records import Status

TIMELINE_MS = 250  # the acceptance timeline's bucket (``accepted_per_250ms``)


def _pct(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return 0.0
    i = min(len(sorted_vals) - 1, max(0, int(round(q * (len(sorted_vals) - 1)))))
    return sorted_vals[i]


def _audit(spool, runs, world, accepted: dict[str, int], wall0_ms) -> dict:
    """Every recipient final exactly once, as the world says, and accepted when sent.

    ``runs``: (delivery id, marks) per delivery of the bench, marks being (line, wall ms
    when that line was handed to the spool), for the injection-to-acceptance latency."""
    counts = Counter()
    problems: list[str] = []
    lat: list[float] = []
    by_provider: dict[str, dict] = {}
    # rate- or connection-capped provider -> acceptance times (ms)
    capped: dict[str, list[int]] = {}
    first_ms = last_ms = 0
    timeline: Counter = Counter()  # acceptances per TIMELINE_MS from the first injection
    dup = 0
    seen = 0
    for r, lines, times in _runs(spool, runs):
        seen += 1
        st = r.status
        got = accepted.get(r.email, 0)
        if got > 1:
            dup += got - 1
        prov = world.domain_provider.get(r.domain)
        pname = prov.name if prov else "?"
        bp = by_provider.get(pname)
        if bp is None:
            bp = by_provider[pname] = {"recipients": 0, "delivered": 0, "failed": 0,
                                       "first_ms": 0, "last_ms": 0}
        bp["recipients"] += 1
        exp, why = world.expected(r.email)
        if st == Status.SENT:
            counts["delivered"] += 1
            bp["delivered"] += 1
            d = r.done_ms
            if prov is not None and (prov.behaviour.max_msgs_per_min_per_ip or
                                     prov.behaviour.max_conn_per_ip):
                capped.setdefault(pname, []).append(d)
            bp["first_ms"] = d if not bp["first_ms"] else min(bp["first_ms"], d)
            bp["last_ms"] = max(bp["last_ms"], d)
            first_ms = d if not first_ms else min(first_ms, d)
            last_ms = max(last_ms, d)
            timeline[d] += 1
            j = bisect.bisect_right(lines, r.line) - 1
            if j >= 0 and j + 1 < len(lines):  # interpolate within the 512-row mark
                a, b = lines[j], lines[j + 1]
                t_in = times[j] + (times[j + 1] - times[j]) * (r.line - a) / max(1, b - a)
                lat.append(max(0.0, d - t_in))
            if got < 1:
                counts["lost"] += 1
                problems.append(f"{r.email}: sent in the spool, never accepted by the sink")
            if exp != "sent":
                counts["unexpected"] += 1
                problems.append(f"{r.email}: sent, world expects {exp} {why}")
        elif st == Status.FAILED and got and "bounced_async" in r.feedback:
            # accepted, then bounced by a DSN (bench --feedback, sent during the run):
            # what a correct MTA ends with for a message the provider bounced later
            bp["failed"] += 1
            counts["bounced_async"] += 1
            if exp != "sent":
                counts["unexpected"] += 1
                problems.append(f"{r.email}: async bounce, world expects {exp} {why}")
        elif st == Status.FAILED:
            bp["failed"] += 1
            if r.reason == "expired":
                counts["expired"] += 1
                ok = exp == "soft"
            else:
                counts["bounced"] += 1
                ok = exp == "failed" and r.reason == why
            if got:
                counts["accepted_but_failed"] += 1
                problems.append(f"{r.email}: failed ({r.reason}) but accepted by the sink")
            if not ok:
                counts["unexpected"] += 1
                problems.append(f"{r.email}: failed {r.reason}, world expects {exp} {why}")
        elif st == Status.PENDING:
            counts["pending"] += 1
            counts["lost"] += 1
            problems.append(f"{r.email}: still pending")
        else:
            counts["ignored"] += 1
    injected = sum(spool.kpis(did).get("recipients", 0) for did, _m in runs)
    if seen != injected:
        counts["lost"] += abs(injected - seen)
        problems.append(f"spool lists {seen} recipients, injection counted {injected}")
    lat.sort()
    return {
        "final": counts["delivered"] + counts["bounced"] + counts["expired"]
        + counts["bounced_async"],
        "bounced_async": counts["bounced_async"],
        "delivered": counts["delivered"], "bounced": counts["bounced"],
        "expired": counts["expired"], "pending": counts["pending"], "lost": counts["lost"],
        "duplicates": dup, "unexpected": counts["unexpected"],
        "accepted_but_failed": counts["accepted_but_failed"],
        "problems": problems[:10], "n_problems": len(problems),
        "latency_p50": round(_pct(lat, 0.50), 1), "latency_p99": round(_pct(lat, 0.99), 1),
        "by_provider": by_provider, "_capped": capped, "_first_ms": first_ms, "_last_ms": last_ms,
        "accepted_per_250ms": _timeline(timeline, wall0_ms),
    }


def _timeline(done: Counter, wall0_ms: float) -> list[int]:
    """Acceptances per TIMELINE_MS from ``wall0_ms`` (from the first acceptance when no
    injection time is given, e.g. the warm-up bench's simulated days)."""
    if not done:
        return []
    base = wall0_ms if wall0_ms > 0 else min(done)
    out = [0] * (max(0, int((max(done) - base) // TIMELINE_MS)) + 1)
    for d, n in done.items():
        out[max(0, int((d - base) // TIMELINE_MS))] += n
    return out


def _runs(spool, runs):
    """(recipient, mark lines, mark times) over every delivery of ``runs``."""
    for did, marks in runs:
        lines = [m[0] for m in marks]
        times = [m[1] for m in marks]
        for _rid, r in spool.recipients(did):
            yield r, lines, times


def _converged_s(times: list[int], cap: int, fraction: float = 0.9,
                 step_ms: int = 5_000) -> float | None:
    """Seconds from the first acceptance to the start of the first sliding minute from
    which every later minute (in 5-s steps, while the provider still had work) holds
    >= ``fraction`` of the cap; None if none does."""
    # the backlog lasts until the 99th-percentile acceptance (a few deferred stragglers
    # after it are not a sending rate)
    t0, end = times[0], times[max(0, int(len(times) * 0.99) - 1)]
    starts = list(range(t0, end - 60_000 + 1, step_ms))
    ok = [bisect.bisect_left(times, a + 60_000) - bisect.bisect_left(times, a)
          >= fraction * cap for a in starts]
    first = None
    for a, good in zip(reversed(starts), reversed(ok), strict=True):
        if not good:
            break
        first = a
    return None if first is None else round((first - t0) / 1000.0, 1)


def _reached_s(times: list[int], cap: int, fraction: float = 0.9,
               window_ms: int = 10_000, step_ms: int = 1_000) -> float | None:
    """Seconds from the first acceptance to the end of the first ``window_ms`` window
    (sliding in ``step_ms`` steps) whose acceptances reach ``fraction`` of the cap's
    rate (``cap`` per minute); None if none does.  It measures how soon the sender
    *reaches* the hidden cap, at a finer resolution than a minute window."""
    need = fraction * cap * window_ms / 60_000
    t0, last = times[0], times[-1]
    a = t0
    while a + window_ms <= last + step_ms:
        n = bisect.bisect_left(times, a + window_ms) - bisect.bisect_left(times, a)
        if n >= need:
            return round((a + window_ms - t0) / 1000.0, 1)
        a += step_ms
    return None


def _goodput(world, prof: BenchProfile, capped: dict[str, list[int]]) -> dict:
    """Per rate-capped provider: goodput over its first full rate windows vs its cap.

    The simulated cap is a sliding minute: at most C messages in any 60 s.  Every
    recipient is injected at the start, so a provider with several minutes of work is
    backlogged from its first acceptance t0: over the windows [t0, t0 + 60 k) (k = up
    to 3 full minutes while it still had work) the cap allows k * C acceptances,
    whether the sender paces or bursts at window boundaries.  goodput_pct_of_cap =
    acceptances in those windows / (k * C).  A provider that finished within its first
    minute never met the cap (``windows`` = 0, no percentage).  ``minutes_pct_of_cap``:
    each full minute from t0; ``converged_s``: see ``_converged_s``.
    """
    out = {}
    for p in world.spec.providers:
        c = p.behaviour.max_msgs_per_min_per_ip
        times = sorted(capped.get(p.name, []))
        if not c or len(times) < 2:
            continue
        t0 = times[0]
        span = (times[-1] - t0) / 1000.0
        k = min(3, int(span // 60))
        entry = {"delivered": len(times), "span_s": round(span, 1),
                 "cap_per_min": c, "cap_per_s": round(c / 60.0, 2), "windows": k,
                 "max_conn_per_ip": p.behaviour.max_conn_per_ip,
                 "profile_provider": tail_of(prof, p.name)}
        if k >= 1:
            n = sum(1 for t in times if t < t0 + k * 60_000)
            entry["goodput_per_s"] = round(n / (k * 60.0), 2)
            entry["goodput_pct_of_cap"] = round(100.0 * n / (k * c), 1)
            entry["minutes_pct_of_cap"] = [
                round(100.0 * sum(1 for t in times if t0 + m * 60_000 <= t <
                                  t0 + (m + 1) * 60_000) / c, 1)
                for m in range(int(span // 60))]
            entry["converged_s"] = _converged_s(times, c)
            entry["reached_90pct_s"] = _reached_s(times, c)
        else:
            entry["goodput_per_s"] = round(len(times) / max(1e-3, span), 2)
            entry["goodput_pct_of_cap"] = None
        out[p.name] = entry
    return out
