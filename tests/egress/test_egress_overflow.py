"""A cold source's daily allowance used up, with the real engine and sim on a compressed
clock (one egress day = 5 real seconds): ``overflow = "spill"`` gives the rest to the
pool's warm source at once, ``overflow = "defer"`` keeps it for the cold source's next
day (the warm source keeps only its own share).  Never above a day's cap, every
recipient delivered exactly once."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter

import msgspec
import pytest

from fastmta.config import (
    EgressConfig,
    EgressMember,
    EgressPool,
    EgressSource,
    ProviderConfig,
    WarmupPlanConfig,
)
from fastmta.egress.clock import DAY_S
from fastmta.egress.egress import _dec_warm
from fastmta.engine import entry as engine
from fastmta.sim import SimInternet
from fastmta.sim.world import Behaviour, Provider, World, WorldSpec
from fastmta.spool import Spool

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "engine"))
from engine_helpers import inject, make_config, write_inputs  # noqa: E402

N = 200
DAY_REAL_S = 5.0
CAPS = [30, 60, 120, 240]
WARM, COLD = "127.0.0.9", "127.0.0.10"


def world(factor: float, origin: float) -> World:
    # reputation on only to have the sim count acceptances per sender IP and egress day
    # on the same clock (both IPs known: it refuses nothing)
    beh = Behaviour(reputation=True, rep_warm_ips=[WARM, COLD])
    return World(WorldSpec(name="overflow", time_factor=factor, time_origin=origin,
                           providers=[Provider(name="inbox", generate=4, behaviour=beh)]))


def egress(overflow: str, factor: float, origin: float) -> EgressConfig:
    return EgressConfig(
        sources=[EgressSource(name="warm", source_ip=WARM),
                 EgressSource(name="cold", source_ip=COLD, warmup=True, plan="t")],
        pools=[EgressPool(name="main", members=[EgressMember(source="warm", weight=1),
                                                EgressMember(source="cold", weight=3)])],
        plans=[WarmupPlanConfig(name="t", daily=CAPS, hourly_fraction=1.0)],
        overflow=overflow, time_factor=factor, time_origin=origin)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("overflow", ["spill", "defer"])
def test_cold_allowance_used_up_spills_or_defers_and_nothing_is_lost(tmp_path, overflow):
    factor = DAY_S / DAY_REAL_S
    # start half an egress hour into a day: the first day is (almost) a whole one
    now = time.time()
    start = (now * factor // DAY_S + 1) * DAY_S + 1800.0
    origin = (start - now * factor) / (1.0 - factor)
    w = world(factor, origin)
    rcpt, msg, emails = write_inputs(tmp_path, w, N)

    async def go():
        async with SimInternet(w) as sim:
            cfg = make_config(sim, validity_s=60, retry_s=1.0, workers=1)
            cfg = msgspec.structs.replace(
                cfg, egress=egress(overflow, factor, origin),
                providers=[ProviderConfig(name="inbox", mx_suffixes=["inbox.sim.test"])])
            path = tmp_path / "spool"
            spool = Spool.open(path, cfg.spool)
            did = await inject(spool, cfg, rcpt, msg, 60)
            sup = engine.Supervisor(cfg, path)
            await asyncio.wait_for(sup.run([did]), 90)
            wstat: Counter = Counter()
            for s in sup.workers_status():
                wstat.update({k: v for k, v in (s.get("stats") or {}).items()
                              if isinstance(v, int | float)})
            states = [_dec_warm.decode(v) for _k, v in spool.egress_items(b"W\x00")]
            return spool.kpis(did), await sim.stats(), await sim.accepted(), wstat, states

    kpis, stats, accepted, wstat, states = asyncio.run(go())
    # nothing lost, nothing twice
    assert kpis.get("sent") == N and kpis.get("pending", 0) == 0, kpis
    assert all(accepted.get(e) == 1 for e in emails), Counter(accepted.values())
    by_ip: Counter = Counter()
    cold_days: Counter = Counter()
    for k, v in stats["by_source"].items():
        _prov, ip, day = k.split("\t")
        by_ip[ip] += v
        if ip == COLD:
            cold_days[int(day)] += v
    assert by_ip[WARM] + by_ip[COLD] == N
    # the engine's own day counters: never above a day's cap, and every message the sim
    # accepted from the cold IP was counted against one of its days
    (st,) = [s for s in states if s.source == "cold"]
    days = [(d, used, cap) for d, _stage, used, cap, _act in st.history]
    days.append((st.day, st.used_day, CAPS[st.stage - 1]))
    assert all(used <= cap for _d, used, cap in days), days
    assert sum(used for _d, used, _cap in days) == by_ip[COLD], (days, by_ip)
    first = CAPS[0]
    print(overflow, dict(by_ip), dict(sorted(cold_days.items())), days,
          {k: wstat.get(k, 0) for k in ("egress_overflowed", "defer_warmup_cap")})
    if overflow == "spill":
        # day 1: the cold IP takes its whole cap, the rest goes to the warm one at once
        assert wstat["egress_overflowed"] > 0 and wstat.get("defer_warmup_cap", 0) == 0
        assert by_ip[COLD] == first and by_ip[WARM] == N - first, by_ip
        assert len(cold_days) == 1
    else:
        # the cold source's share waits for its next day(s): deferred, sent later
        assert wstat.get("egress_overflowed", 0) == 0 and wstat["defer_warmup_cap"] > 0
        assert len(cold_days) >= 2, cold_days  # sent on more than one egress day
        assert cold_days[min(cold_days)] == first  # day 1 at its cap, the rest later
        # the warm source kept its weight's share (1 in 4), not the overflow: a message
        # that waited goes to the source it waited for (measured: 50 and 150)
        assert abs(by_ip[WARM] - N / 4) <= 0.05 * N, by_ip
        assert by_ip[COLD] == N - by_ip[WARM], by_ip
