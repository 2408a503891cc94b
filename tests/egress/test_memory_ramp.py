"""The delivery memory's time figure with the real engine and sim: a cold run climbs
from ``initial_connections`` to a connection-capped provider's level; the same spool's
next run (a restart) starts from what the first learned and reaches 90% of its steady
rate sooner.  Measured in 250-ms buckets of the acceptance times (fastmta.bench.ramp),
the world of ``fastmta bench --profile memory``."""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from fastmta.bench.profile import load_profile
from fastmta.bench.ramp import ramp_figures
from fastmta.engine import entry as engine
from fastmta.records import Status
from fastmta.sim import SimInternet
from fastmta.sim.world import World
from fastmta.spool import Spool

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "engine"))
from engine_helpers import inject, make_config, write_inputs  # noqa: E402

N = 1200


def accepted(stats: dict) -> int:
    return sum(stats["by_source"].values())


@pytest.mark.timeout(150)
def test_restarted_run_reaches_its_steady_rate_sooner(tmp_path):
    world = World(load_profile("memory").world)
    rcpt, msg, _ = write_inputs(tmp_path, world, N)

    async def go():
        runs = []
        async with SimInternet(world) as sim:
            cfg = make_config(sim, validity_s=60, workers=1)
            path = tmp_path / "spool"
            spool = Spool.open(path, cfg.spool)
            for _run in ("cold", "memory"):
                before = accepted(await sim.stats())
                did = await inject(spool, cfg, rcpt, msg, 60)
                sup = engine.Supervisor(cfg, path)
                await sup.run([did])
                times = sorted(r.done_ms for _rid, r in spool.recipients(did)
                               if r.status == Status.SENT)
                runs.append({"kpis": spool.kpis(did), "fig": ramp_figures(times),
                             "accepted": accepted(await sim.stats()) - before,
                             "restored": sup.slots[0].beat.get("stats", {})
                             .get("memory_restored", 0)})
        return runs

    cold, mem = asyncio.run(go())
    for run in (cold, mem):  # nothing lost, nothing twice
        assert run["kpis"].get("sent") == N == run["accepted"], run
    assert cold["restored"] == 0 and mem["restored"] >= 1
    c, m = cold["fig"], mem["fig"]
    print("cold", c, "\nmemory", m)
    # both runs end at the same connection-bound rate (12 connections x slow replies)
    assert 0.7 < m["steady_per_s"] / c["steady_per_s"] < 1.4, (c, m)
    # the restarted run starts at the learned level: it gets there sooner
    assert m["reached_90pct_steady_1s_s"] < c["reached_90pct_steady_1s_s"], (c, m)
    assert m["reached_90pct_steady_s"] <= c["reached_90pct_steady_s"], (c, m)
