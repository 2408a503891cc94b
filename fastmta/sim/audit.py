"""Audit of a delivery sent to the simulated internet: every recipient's end in the
spool against the world's verdict and the sink's acceptances (tests, chaos runs)."""

from __future__ import annotations

from collections import Counter

from fastmta.sim.world import World
from fastmta.spool import Spool


def audit_delivery(spool: Spool, did: int, world: World, accepted: dict[str, int]) -> dict:
    """Compare every recipient's final state with the world's verdict and the sink.

    ``accepted``: how many times the sink accepted each address.  Returns counts, the
    duplicates the sink saw, the KPIs, and ``problems`` (the first mismatches; empty =
    the audit holds): a recipient still pending, an end other than the world's verdict,
    a recipient accepted but not ``sent``, KPIs that differ from a recount.
    """
    problems: list[str] = []
    status: Counter = Counter()
    reasons: Counter = Counter()
    dupes = 0
    n = 0
    for _rid, r in spool.recipients(did):
        n += 1
        st = r.status_name
        status[st] += 1
        if st == "failed":
            reasons[r.reason] += 1
        exp, why = world.expected(r.email)
        got = accepted.get(r.email, 0)
        if got > 1:
            dupes += got - 1
        if st == "pending":
            problems.append(f"{r.email}: still pending")
        elif exp == "sent":
            if st != "sent" or got < 1:
                problems.append(f"{r.email}: expected sent, is {st}/{r.reason}, accepted {got}")
        elif exp == "failed":
            if st != "failed" or r.reason != why or got:
                problems.append(f"{r.email}: expected failed {why}, is {st}/{r.reason}, "
                                f"accepted {got}")
        elif exp == "soft":
            # expired after the validity; the last soft reason is kept -- except for a
            # recipient whose site was suspended (block) before it was ever tried: our own
            # deferrals carry no reason in the spool
            ok_reason = r.last_soft_reason == why or (r.attempts == 0 and r.deferrals > 0
                                                     and not r.last_soft_reason)
            if st != "failed" or r.reason != "expired" or not ok_reason or got:
                problems.append(f"{r.email}: expected expired ({why}), is {st}/{r.reason}/"
                                f"{r.last_soft_reason} attempts {r.attempts}, accepted {got}")
        if st != "sent" and got:
            problems.append(f"{r.email}: accepted by the sink but {st}")
    k = spool.kpis(did)
    recount = {"sent": status["sent"], "failed": status["failed"],
               "pending": status["pending"]}
    kp = {key: k.get(key, 0) for key in recount}
    if kp != recount:
        problems.append(f"KPIs {kp} != recount {recount}")
    kreasons = {key[7:]: v for key, v in k.items() if key.startswith("reason/") and v}
    if kreasons != dict(reasons):
        problems.append(f"KPI reasons {kreasons} != recount {dict(reasons)}")
    return {"n": n, "status": dict(status), "reasons": dict(reasons), "dupes": dupes,
            "kpis": kp, "problems": problems[:20], "n_problems": len(problems)}
