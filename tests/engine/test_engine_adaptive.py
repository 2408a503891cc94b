"""Adaptive shaping against a provider with hidden limits (issue #5).

The simulated provider allows 8 concurrent connections per sender IP (421 4.3.2 above)
and a message-rate cap per minute (421 4.7.28 above).  Three runs on fresh worlds:

1. calibration: a fixed limit of exactly 8 connections (what an operator who knew the
   hidden limit would configure), no rate cap -> the provider's capacity in msgs/s;
2. fastmta's adaptive shaping, starting at 2 connections, with the rate cap set so that
   it binds after ~14 s at full speed: goodput before the cap must reach >= 90% of the
   calibrated capacity, the accepted total must reach >= 90% of the per-minute cap, and
   throttle replies must stay <= 2% of attempts;
3. the same with a fixed limit of 20 (Postfix's default destination concurrency) and no
   adaptation, for comparison (printed; it must throttle far more).
"""

from __future__ import annotations

import asyncio
import time

import pytest
from engine_helpers import inject, make_config, write_inputs

from fastmta.engine.supervisor import Supervisor
from fastmta.sim import SimInternet
from fastmta.sim.world import Behaviour, Provider, World, WorldSpec
from fastmta.spool import Spool

HIDDEN_CONNS = 8


def hidden_world(cap_per_min: int) -> World:
    return World(WorldSpec(name="adaptive", providers=[
        Provider(name="hidden", generate=20, hosts=2,
                 behaviour=Behaviour(max_conn_per_ip=HIDDEN_CONNS, reply_delay_s=0.02,
                                     max_msgs_per_min_per_ip=cap_per_min))]))


async def measure(tmp, name: str, cap_per_min: int, n: int, duration_s: float,
                  **shaping) -> list[tuple[float, int, int]]:
    """Send for ``duration_s``; (t, accepted, throttle replies) every 0.5 s."""
    world = hidden_world(cap_per_min)
    d = tmp / name
    d.mkdir()
    rcpt, msg, _ = write_inputs(d, world, n)
    async with SimInternet(world) as sim:
        cfg = make_config(sim, validity_s=600, workers=1, **shaping)
        spool = Spool.open(d / "spool", cfg.spool)
        did = await inject(spool, cfg, rcpt, msg, 600)
        sup = Supervisor(cfg, d / "spool")
        run = asyncio.create_task(sup.run([did]))
        series = []
        t0 = None
        try:
            while not run.done():
                await asyncio.sleep(0.5)
                st = await sim.stats()
                r = st["replies"]
                if t0 is None and st["messages"]:
                    t0 = time.monotonic()  # from the first accepted message (spawn excluded)
                if t0 is None:
                    continue
                t = time.monotonic() - t0
                series.append((t, st["messages"],
                               r.get("421 4.3.2", 0) + r.get("421 4.7.28", 0)))
                if t >= duration_s:
                    break
        finally:
            sup.drain()
            await asyncio.wait_for(run, 60)
    return series


def at(series, t: float) -> tuple[float, int, int]:
    return min(series, key=lambda x: abs(x[0] - t))


def rate_between(series, t1: float, t2: float) -> float:
    a, b = at(series, t1), at(series, t2)
    return (b[1] - a[1]) / (b[0] - a[0])


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_adaptive_finds_hidden_limits(tmp_path):
    async def go():
        calib = await measure(tmp_path, "calib", 10**9, 40_000, 7.0,
                              adaptive=False, initial_connections=HIDDEN_CONNS)
        capacity = rate_between(calib, 2.0, 7.0)
        cap = int(capacity * 14)  # per minute: binds after ~14 s at full speed
        adaptive = await measure(tmp_path, "adaptive", cap, int(cap * 1.3), 22.0)
        fixed = await measure(tmp_path, "fixed20", cap, int(cap * 1.3), 22.0,
                              adaptive=False, initial_connections=20)
        return capacity, cap, adaptive, fixed

    capacity, cap, adaptive, fixed = asyncio.run(go())
    goodput = rate_between(adaptive, 4.0, 12.0)
    _, acc, thr = adaptive[-1]
    _, facc, fthr = fixed[-1]
    t90 = next((t for t, a, _ in adaptive if a >= 0.9 * cap), None)
    print(f"\ncapacity with {HIDDEN_CONNS} connections: {capacity:.0f} msgs/s; rate cap "
          f"{cap}/min\nadaptive: goodput {goodput:.0f} msgs/s = {100 * goodput / capacity:.0f}%"
          f" of capacity; {acc} accepted ({100 * acc / cap:.0f}% of the cap, 90% at "
          f"{t90 and round(t90, 1)}s); throttle replies {thr} = {100 * thr / (acc + thr):.2f}%"
          f" of attempts\nfixed 20: {facc} accepted, goodput "
          f"{rate_between(fixed, 4.0, 12.0):.0f} msgs/s; throttle replies {fthr} = "
          f"{100 * fthr / (facc + fthr):.2f}% of attempts")
    assert goodput >= 0.9 * capacity
    assert t90 is not None and t90 <= 60.0
    assert thr <= 0.02 * (acc + thr)
    assert fthr > 5 * max(thr, 1)  # the fixed limit keeps hitting the hidden limits
