"""``fastmta bench --profile warmup --sources N [--days D]``: IP warm-up on a compressed clock.

The simulated providers (``warmup-gmail``, ``warmup-yahoo``) keep a reputation per
sender IP (``sim/reputation.py``): an unknown IP may deliver a few messages a day, more
after each clean day; past its allowance it answers 421 4.7.28 / 421 4.7.0 [TSS04], and
a burst earns a block.  fastmta sends from N loopback sources in one pool: source 1 is
warm (known to the providers, no plan), sources 2..N are new IPs on the plan
``bench-sparkpost`` (the first ten SparkPost stages divided by 100; docs/egress.md).

Engine and sim share one compressed clock (``[egress] time_factor`` = 86400 /
``day_s``, one origin).  Every two egress hours a batch of recipients arrives for each
provider (twice what the cold sources may take that hour plus a warm share), so the
ramp sees real daily demand.  Reported per (source, provider): the plan cap of each day,
what the sim accepted, throttle and block replies; ``cap_violations`` = accepted above
the day's cap (must be 0); ``overflowed`` (given to another source of the pool) and
``deferred`` (waited for a cap); and the audit (lost 0).
"""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import tempfile
import time
from collections import Counter, defaultdict

import msgspec

from fastmta import core as _core
from fastmta.bench.audit import _audit
from fastmta.bench.harness import THROTTLE_KEYS, check_loopback
from fastmta.bench.messages import message_template
from fastmta.config import (
    Config,
    EgressConfig,
    EgressMember,
    EgressPool,
    EgressSource,
    ProviderConfig,
    WarmupPlanConfig,
)
from fastmta.delivery import inject
from fastmta.delivery.recipients import Row
from fastmta.egress.clock import DAY_S, HOUR_S
from fastmta.egress.egress import _dec_warm
from fastmta.egress.plans import load_plans
from fastmta.engine import entry as engine
from fastmta.engine.supervisor import Supervisor
from fastmta.sim import SimInternet
from fastmta.sim.config import sim_config
from fastmta.sim.world import Behaviour, Provider, World, WorldSpec
from fastmta.spool import Spool

PLAN = WarmupPlanConfig(
    name="bench-sparkpost", hourly_fraction=0.25,
    description="SparkPost stages 1-10 divided by 100 (the bench's scale)",
    source="SparkPost automated IP warm-up, stage-based progression schedule",
    daily=[2, 5, 10, 20, 50, 100, 200, 400, 500, 750])
PROVIDERS = ("warmup-gmail", "warmup-yahoo")
BATCH_EVERY_H = 2


def source_ip(i: int) -> str:
    return f"127.0.0.{20 + i}"


def world(n_sources: int, factor: float, origin: float) -> World:
    beh = Behaviour(reputation=True, rep_cold_daily=4, rep_growth=2.5,
                    rep_hourly_fraction=0.5, rep_burst_fraction=0.4,
                    rep_warm_ips=[source_ip(0)])
    return World(WorldSpec(name="bench-warmup", time_factor=factor, time_origin=origin,
                           providers=[Provider(name=p, generate=4, hosts=1, behaviour=beh)
                                      for p in PROVIDERS]))


def egress_config(n: int, factor: float, origin: float) -> EgressConfig:
    sources = [EgressSource(name=f"ip{i + 1}", source_ip=source_ip(i), warmup=i > 0,
                            plan=PLAN.name) for i in range(n)]
    pool = EgressPool(name="warmup", members=[EgressMember(source=s.name) for s in sources])
    return EgressConfig(sources=sources, pools=[pool], plans=[PLAN], overflow="spill",
                        time_factor=factor, time_origin=origin, flush_s=1.0)


def _states(spool) -> dict[tuple[str, str], object]:
    return {(st.source, st.provider): st for st in
            (_dec_warm.decode(v) for _k, v in spool.egress_items(b"W\x00"))}


async def run_warmup(n_sources: int = 4, days: int = 10, day_s: float = 12.0,
                     workers: int = 0, timeout_s: float = 1800.0) -> dict:
    """Run the warm-up bench (module docstring); returns the result dict."""
    if n_sources < 2 or n_sources > 200:
        raise ValueError("--sources must be between 2 and 200 (one warm, the rest cold)")
    if days < 1:
        raise ValueError("--days must be at least 1")
    factor = DAY_S / day_s
    origin = time.time()  # egress time = origin + (wall - origin) * factor
    w = world(n_sources, factor, origin)
    tmp = tempfile.mkdtemp(prefix="fastmta-warmup-")
    try:
        async with SimInternet(w, workers=2, tls=False) as sim:
            return await _run(sim, w, n_sources, days, day_s, factor, origin, workers,
                              tmp, timeout_s)
    finally:
        Spool.close_all()
        shutil.rmtree(tmp, ignore_errors=True)


async def _run(sim, w, n, days, day_s, factor, origin, workers, tmp, timeout_s) -> dict:
    r = msgspec.structs.replace
    cfg = sim_config(sim, Config(), validity_s=days * day_s * 3 + 120, retry_s=2.0,
                     workers=workers or None)
    # the operator names the providers (MX suffix) so that warm-up is kept per provider
    provs = [ProviderConfig(name=p, mx_suffixes=[f"{p}.sim.test"]) for p in PROVIDERS]
    cfg = r(cfg, smtp=r(cfg.smtp, tls="none"), egress=egress_config(n, factor, origin),
            providers=provs)
    check_loopback(cfg, [a for hosts in sim.routes().values() for a in hosts])
    plan = load_plans([PLAN])[PLAN.name]
    spool_path = os.path.join(tmp, "spool")
    spool = Spool.open(spool_path, cfg.spool)
    route = await engine.domain_router(w.domains, cfg, spool_path=spool_path)
    template = message_template(800)
    sup = Supervisor(cfg, spool_path, workers=workers or None, title=False)
    task = asyncio.get_running_loop().create_task(sup.run(forever=True))
    t0 = time.monotonic()
    while not all(x.get("pid") for x in sup.workers_status()):
        if time.monotonic() - t0 > 60 or task.done():
            sup.stop()
            raise RuntimeError("the engine did not start")
        await asyncio.sleep(0.05)
    # start at the next egress midnight, so that the D days are whole days
    egress_now = origin + (time.time() - origin) * factor
    clock_start = math.ceil(egress_now / DAY_S) * DAY_S
    await asyncio.sleep((clock_start - egress_now) / factor)
    dids: list[int] = []
    seq = 0
    batches = int(days * 24 / BATCH_EVERY_H)
    t_start = time.monotonic()
    for b in range(batches):
        # wait for the batch's egress time (mid-interval: away from hour boundaries)
        due = t_start + (b + 0.5) * BATCH_EVERY_H * HOUR_S / factor
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        states = _states(spool)
        rows = []
        for prov in PROVIDERS:
            hourly = 0
            for i in range(1, n):
                st = states.get((f"ip{i + 1}", prov))
                caps = plan.caps(prov, st.stage if st else 1)
                hourly += caps[1] if caps else 0
            want = 2 * hourly + 5
            doms = [d for d in w.domains if w.domain_provider[d].name == prov]
            for k in range(want):
                seq += 1
                rows.append(Row(seq, f"b{b}r{k}@{doms[k % len(doms)]}", {}))
        a = await asyncio.to_thread(inject, spool, rows, template,
                                    validity_s=cfg.delivery.validity_s, cfg=cfg.delivery,
                                    shard_of=route, shards=cfg.engine.shards,
                                    name=f"warmup-{b}", pool="warmup")
        dids.append(a.delivery_id)
    # the last batch: wait until every recipient is final
    deadline = time.monotonic() + timeout_s
    while any(spool.kpis(d).get("pending", 0) for d in dids):
        if time.monotonic() > deadline or task.done():
            break
        await asyncio.sleep(0.2)
    elapsed = time.monotonic() - t_start
    sup.drain()
    await asyncio.wait_for(task, 120)
    return await _report(sim, w, spool, dids, plan, n, days, day_s, factor, elapsed,
                         clock_start, sup)


async def _report(sim, w, spool, dids, plan, n, days, day_s, factor, elapsed, clock_start,
                  sup) -> dict:
    stats = await sim.stats()
    accepted = await sim.accepted()
    states = _states(spool)
    day0 = int(clock_start // DAY_S)
    ip_name = {source_ip(i): f"ip{i + 1}" for i in range(n)}
    got: dict[tuple[str, str], dict[int, int]] = defaultdict(dict)
    for key, v in stats["by_source"].items():
        prov, ip, day = key.split("\t")
        if ip in ip_name:
            got[(ip_name[ip], prov)][int(day)] = got[(ip_name[ip], prov)].get(int(day), 0) + v
    replies: Counter = Counter()
    for key, v in stats["replies_by_source"].items():
        prov, ip, code = key.split("\t")
        replies[(ip_name.get(ip, ip), prov, code)] += v
    per = []
    violations = 0
    for i in range(n):
        name = f"ip{i + 1}"
        for prov in PROVIDERS:
            st = states.get((name, prov))
            caps = {}
            if i > 0 and st is not None:
                for day, _stage, _used, cap, _act in st.history:
                    caps[day] = cap
                cur = plan.caps(prov, st.stage)
                caps.setdefault(st.day, cur[0] if cur else 0)
            sent_by_day = got.get((name, prov), {})
            days_out = []
            for day in sorted(set(sent_by_day) | set(caps)):
                cap = caps.get(day) if i > 0 else None
                sent = sent_by_day.get(day, 0)
                over = max(0, sent - cap) if cap is not None else 0
                violations += over
                days_out.append({"day": day - day0 + 1, "cap": cap, "sent": sent,
                                 "over_cap": over})
            thr = sum(v for (s, p, c), v in replies.items() if s == name and p == prov
                      and c in ("421 4.7.28", "421 4.7.0"))
            blk = sum(v for (s, p, c), v in replies.items() if s == name and p == prov
                      and c in ("421 4.7.1", "550 5.7.1"))
            per.append({"source": name, "source_ip": source_ip(i), "provider": prov,
                        "cold": i > 0, "stage": st.stage if st and i > 0 else None,
                        "ramp": [h[4] for h in st.history] if st and i > 0 else [],
                        "days": days_out, "sent": sum(sent_by_day.values()),
                        "throttle_replies": thr, "block_replies": blk})
    audits = [_audit(spool, [(d, [(1, 0.0)])], w, accepted, 0.0) for d in dids]
    total = sum(spool.kpis(d).get("attempts", 0) for d in dids)
    throttles = sum(v for k, v in stats["replies"].items() if k in THROTTLE_KEYS)
    wstat: Counter = Counter()
    for s in sup.workers_status():
        wstat.update({k: v for k, v in (s.get("stats") or {}).items()
                      if isinstance(v, int | float)})
    lost = sum(a["lost"] for a in audits)
    pending = sum(a["pending"] for a in audits)
    return {
        "profile": "warmup", "impl": _core.IMPL, "sources": n, "days": days,
        "day_s": day_s, "time_factor": factor, "plan": plan.name, "elapsed_s": round(elapsed, 1),
        "messages": sum(a["final"] + a["pending"] for a in audits),
        "delivered": sum(a["delivered"] for a in audits),
        "bounced": sum(a["bounced"] for a in audits),
        "expired": sum(a["expired"] for a in audits), "pending": pending, "lost": lost,
        "duplicates": sum(a["duplicates"] for a in audits),
        "audit_ok": lost == 0 and pending == 0,
        "attempts": total, "throttle_replies": throttles,
        "throttle_pct_of_attempts": round(100.0 * throttles / max(1, total), 3),
        "refusals_by_code": stats["replies"],
        "cap_violations": violations,
        "overflowed": int(wstat.get("egress_overflowed", 0)),
        "deferred": int(wstat.get("defer_warmup_cap", 0)),
        "per_source": per,
    }
