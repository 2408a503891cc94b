"""The engine over several real loopback sources (127.0.0.x): weighted spread, a block
at one source suspends that source only, and learned state survives kill -9."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections import Counter

import msgspec
import pytest

from fastmta.config import EgressConfig, EgressMember, EgressPool, EgressSource
from fastmta.egress.egress import _dec_learned
from fastmta.engine import entry as engine
from fastmta.sim import SimInternet
from fastmta.sim.world import Behaviour, Provider, World, WorldSpec
from fastmta.spool import Spool

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "engine"))
from engine_helpers import inject, make_config, write_inputs  # noqa: E402

N_BLOCK = 3000
SOURCES = {"a": "127.0.0.2", "b": "127.0.0.3", "c": "127.0.0.4"}


def with_pool(cfg, weights: dict[str, float], **egress):
    eg = EgressConfig(
        sources=[EgressSource(name=n, source_ip=SOURCES[n]) for n in weights],
        pools=[EgressPool(name="main", members=[EgressMember(source=n, weight=w)
                                                for n, w in weights.items()])], **egress)
    return msgspec.structs.replace(cfg, egress=eg)


def per_ip(stats: dict, provider: str) -> Counter:
    out: Counter = Counter()
    for k, v in stats["by_source"].items():
        prov, ip, _day = k.split("\t")
        if prov == provider:
            out[ip] += v
    return out


@pytest.mark.timeout(120)
def test_weighted_spread_over_real_sources(tmp_path):
    world = World(WorldSpec(name="spread", providers=[Provider(name="big", generate=10,
                                                               hosts=2)]))
    rcpt, msg, _ = write_inputs(tmp_path, world, 4000)

    async def go():
        async with SimInternet(world) as sim:
            cfg = with_pool(make_config(sim, validity_s=60, workers=1),
                            {"a": 2, "b": 1, "c": 1})
            spool = Spool.open(tmp_path / "spool", cfg.spool)
            did = await inject(spool, cfg, rcpt, msg, 60)
            await engine.Supervisor(cfg, tmp_path / "spool").run([did])
            return spool.kpis(did), await sim.stats()

    kpis, stats = asyncio.run(go())
    assert kpis.get("sent") == 4000
    got = per_ip(stats, "big")
    assert sum(got.values()) == 4000
    for name, share in (("a", 0.5), ("b", 0.25), ("c", 0.25)):
        assert abs(got[SOURCES[name]] / 4000 - share) <= 0.05 * share, got


def block_world() -> World:
    return World(WorldSpec(name="block", providers=[Provider(
        name="picky", generate=10, hosts=1,
        behaviour=Behaviour(block_ips=[SOURCES["b"]], reply_delay_s=0.02))]))


def learned(spool: Spool) -> dict[str, object]:
    return {r.source: r for r in (_dec_learned.decode(v) for _k, v in
                                  spool.egress_items(b"L\x00"))}


@pytest.mark.timeout(150)
def test_block_on_one_source_suspends_only_it_and_survives_kill9(tmp_path):
    world = block_world()
    rcpt, msg, _ = write_inputs(tmp_path, world, N_BLOCK)

    async def go():
        async with SimInternet(world) as sim:
            cfg = with_pool(make_config(sim, validity_s=120, retry_s=1.0, workers=1,
                                        max_connections=2),
                            {"a": 1, "b": 1})
            r = msgspec.structs.replace
            cfg = r(cfg, shaping=r(cfg.shaping, suspend_initial_s=300.0, suspend_max_s=600.0))
            path = tmp_path / "spool"
            spool = Spool.open(path, cfg.spool)
            did = await inject(spool, cfg, rcpt, msg, 120)
            sup = engine.Supervisor(cfg, path)
            run = asyncio.create_task(sup.run([did]))
            deadline = time.monotonic() + 60
            # wait until the block at b is persisted (the worker writes every beat)
            while "b" not in learned(spool) or not learned(spool)["b"].suspended_until_wall:
                assert time.monotonic() < deadline, "no suspension recorded for b"
                await asyncio.sleep(0.1)
            st = await sim.stats()
            blocks_before = st["replies_by_source"].get(f"picky\t{SOURCES['b']}\t550 5.7.1", 0)
            a_rec = learned(spool).get("a")
            assert a_rec is None or not a_rec.suspended_until_wall  # a is not suspended
            # kill -9 the worker: the supervisor starts a new one, which reloads
            sent_at_kill = spool.kpis(did).get("sent", 0)
            assert sent_at_kill < N_BLOCK - 500, "the run must still have work for b after the kill"
            os.kill(sup.slots[0].proc.pid, signal.SIGKILL)
            await asyncio.wait_for(run, 120)
            restored = sup.slots[0].beat.get("stats", {}).get("memory_restored", 0)
            assert restored >= 2  # (site, a) and (site, b) started from their records
            return spool, did, await sim.stats(), blocks_before, cfg

    spool, did, stats, blocks_before, cfg = asyncio.run(go())
    k = spool.kpis(did)
    assert k.get("sent") == N_BLOCK, k
    got = per_ip(stats, "picky")
    assert got[SOURCES["b"]] == 0
    # every recipient through a; the kill may repeat what was accepted but not committed
    assert N_BLOCK <= got[SOURCES["a"]] <= N_BLOCK + 2 * cfg.spool.commit_batch
    blocks = stats["replies_by_source"].get(f"picky\t{SOURCES['b']}\t550 5.7.1", 0)
    # one block suspends b; the in-flight transactions of its connections may also see
    # it, but after the restart the suspension was restored: b was never tried again
    assert blocks == blocks_before
    assert blocks <= 8 * cfg.shaping.initial_connections
    rec = learned(spool)["b"]
    assert rec.suspended_until_wall > time.time() + 100  # 300 s from the block
    assert rec.blocks >= 1


@pytest.mark.timeout(150)
def test_warmup_counters_are_durable_before_sending_so_kill9_cannot_exceed_a_cap(tmp_path):
    """A cold source's warm-up reservations are written before its messages go: at any
    moment -- here right after a kill -9 -- the spool's counter is at least what the
    sim accepted from that IP, and across the restart the day's cap is never exceeded."""
    from fastmta.config import WarmupPlanConfig
    from fastmta.egress.egress import _dec_warm

    cap = 150
    world = World(WorldSpec(name="warmkill", providers=[Provider(name="inbox", generate=5)]))
    rcpt, msg, _ = write_inputs(tmp_path, world, 600)
    cold_ip = SOURCES["c"]

    def used(spool) -> int:
        return sum(st.used_day for st in (_dec_warm.decode(v) for _k, v in
                                          spool.egress_items(b"W\x00")) if st.source == "c")

    async def go():
        async with SimInternet(world) as sim:
            cfg = make_config(sim, validity_s=15, retry_s=1.0, workers=1)
            cfg = msgspec.structs.replace(cfg, egress=EgressConfig(
                sources=[EgressSource(name="c", source_ip=cold_ip, warmup=True, plan="t")],
                pools=[EgressPool(name="main", members=[EgressMember(source="c")])],
                plans=[WarmupPlanConfig(name="t", daily=[cap], hourly_fraction=1.0)],
                overflow="defer"))
            path = tmp_path / "spool"
            spool = Spool.open(path, cfg.spool)
            did = await inject(spool, cfg, rcpt, msg, 15)
            sup = engine.Supervisor(cfg, path)
            run = asyncio.create_task(sup.run([did]))
            deadline = time.monotonic() + 60
            while per_ip(await sim.stats(), "inbox")[cold_ip] == 0:
                assert time.monotonic() < deadline, "nothing sent from the cold source"
                await asyncio.sleep(0.01)
            os.kill(sup.slots[0].proc.pid, signal.SIGKILL)
            at_kill = per_ip(await sim.stats(), "inbox")[cold_ip]
            durable = used(spool)
            await asyncio.wait_for(run, 120)
            return at_kill, durable, per_ip(await sim.stats(), "inbox")[cold_ip], \
                used(spool), spool.kpis(did)

    at_kill, durable, total, used_end, kpis = asyncio.run(go())
    assert 0 < at_kill <= durable, (at_kill, durable)  # nothing went uncounted
    assert total <= cap, (total, cap)  # the restarted worker did not hand it out again
    assert used_end >= total
    assert kpis.get("sent", 0) + kpis.get("failed", 0) >= 600 - 1, kpis
