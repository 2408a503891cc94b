"""The quarantine shared by the nodes (cluster/quarantine.py), with a real redis-server:
node A's engine (supervisor + worker with the cluster entry point) hard-bounces unknown
users; its first worker publishes the quarantined addresses; node B pulls them into its
own spool and its next injection excludes them, while A keeps its own entries (source
``bounce``) for analysis; B's entries say where they came from."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import msgspec
import pytest
import redis

sys.path.insert(0, str(Path(__file__).parent.parent / "engine"))
from engine_helpers import inject, make_config, write_inputs  # noqa: E402

from fastmta.cluster.node import cluster_worker_main  # noqa: E402
from fastmta.cluster.quarantine import QuarantineSync  # noqa: E402
from fastmta.cluster.server import RedisServer  # noqa: E402
from fastmta.engine import entry as engine  # noqa: E402
from fastmta.engine.supervisor import Supervisor  # noqa: E402
from fastmta.sim import SimInternet  # noqa: E402
from fastmta.sim.world import Behaviour, Provider, World, WorldSpec  # noqa: E402
from fastmta.spool import Spool  # noqa: E402

r = msgspec.structs.replace


@pytest.mark.timeout(180)
def test_hard_bounce_on_one_node_excludes_the_address_on_the_other(tmp_path):
    world = World(WorldSpec(name="q", providers=[
        Provider(name="users", generate=5, behaviour=Behaviour(unknown_user_rate=0.2))]))
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    rcpt, msg, emails = write_inputs(a_dir, world, 300)
    unknown = {e for e in emails if world.expected(e)[0] == "failed"}
    assert 20 < len(unknown) < 120

    with RedisServer() as srv:
        async def go():
            async with SimInternet(world) as sim:
                cfg = make_config(sim, validity_s=60.0, workers=1)
                cfg_a = r(cfg, cluster=r(cfg.cluster, redis_url=srv.url, node="a"))
                cfg_b = r(cfg, cluster=r(cfg.cluster, redis_url=srv.url, node="b"))
                spool_a = Spool.open(a_dir / "spool", cfg.spool)
                did = await inject(spool_a, cfg_a, rcpt, msg, 60.0)
                sup = Supervisor(cfg_a, a_dir / "spool", workers=1, title=False,
                                 worker_target=cluster_worker_main)
                task = asyncio.get_running_loop().create_task(sup.run(forever=True))
                client = redis.Redis.from_url(srv.url)
                deadline = time.monotonic() + 90
                # A's worker publishes what its hard bounces quarantined
                while spool_a.kpis(did).get("pending", 0) or \
                        client.hlen("fm:qa:{all}") < len(unknown):
                    assert time.monotonic() < deadline, "not published in time"
                    await asyncio.sleep(0.1)
                sup.drain()
                await asyncio.wait_for(task, 60)
                # node B (its own spool) pulls them, then injects the same list
                spool_b = Spool.open(b_dir / "spool", cfg.spool)
                sync_b = QuarantineSync(spool_b, cfg_b.cluster)
                pushed, pulled = sync_b.sync()
                analysis = await engine.inject_file(spool_b, cfg_b, rcpt, msg.read_bytes(),
                                                    validity_s=60.0)
                a_entries = {e.address: e for e in spool_a.quarantine_list()}
                b_entries = {e.address: e for e in spool_b.quarantine_list()}
                again = sync_b.sync()
                return pushed, pulled, analysis, a_entries, b_entries, again

        pushed, pulled, analysis, a_entries, b_entries, again = asyncio.run(go())
    Spool.close_all()
    assert pushed == 0 and pulled == len(unknown)
    assert analysis.excluded["address_in_quarantine"] == len(unknown)
    assert set(a_entries) == set(b_entries) == unknown
    assert all(e.source == "bounce" and e.state == "quarantined" for e in a_entries.values())
    assert all(e.reason.startswith("cluster:a:") for e in b_entries.values())
    assert again == (0, 0)  # B does not echo A's entries back, nothing new to pull


def _addresses(spool) -> dict[str, str]:
    return {e.address: e.reason for e in spool.quarantine_list()}


def test_releases_reach_the_other_nodes(tmp_path):
    """Three nodes' syncs on one Redis (no engine: the rules one by one): an operator's
    release on any node ends the exclusion everywhere, an expiry removes only the copies
    of that node's entry, a bounce newer than a release stays, a release made while a
    node's sync was stopped is sent when it starts again, and nothing echoes."""
    from fastmta.config import ClusterConfig

    with RedisServer() as srv:
        sp = {n: Spool.open(tmp_path / n) for n in "abc"}
        cl = {n: ClusterConfig(redis_url=srv.url, node=n) for n in "abc"}
        sync = {n: QuarantineSync(sp[n], cl[n]) for n in "abc"}

        def rounds(order="acb"):
            for n in order:
                sync[n].sync()

        def bounce(n, addr, **kw):
            sp[n].quarantine_add(addr, reason="bounce", permanent=False, source="bounce", **kw)

        for addr in ("x1@d.test", "x2@d.test", "x3@d.test", "x4@d.test", "x5@d.test"):
            bounce("a", addr)
        sp["a"].quarantine_add("d1@d.test", state="denylisted", reason="complaint")
        bounce("c", "x3@d.test")  # C's own quarantine of x3
        rounds()
        assert set(_addresses(sp["b"])) == set(_addresses(sp["a"])) == {
            "x1@d.test", "x2@d.test", "x3@d.test", "x4@d.test", "x5@d.test", "d1@d.test"}
        assert _addresses(sp["c"])["x3@d.test"] == "bounce"
        assert _addresses(sp["b"])["x3@d.test"].startswith("cluster:a:")

        # an operator on A releases x1; an operator on B releases its copy of d1
        assert sp["a"].quarantine_remove("x1@d.test")
        assert sp["b"].quarantine_remove("d1@d.test")
        rounds("bac")
        rounds("bac")
        for n in "abc":
            assert "x1@d.test" not in _addresses(sp[n]) and "d1@d.test" not in \
                _addresses(sp[n]), n

        # A's bounce quarantines expire: B's copies go, C's own x3 stays
        later = int(time.time() * 1000) + 40 * 86400 * 1000
        assert sp["a"].quarantine_release_expired(now_ms=later) == 4
        rounds()
        assert _addresses(sp["a"]) == {}
        assert _addresses(sp["b"]) == {}
        assert _addresses(sp["c"]) == {"x3@d.test": "bounce"}
        client = redis.Redis.from_url(srv.url)
        assert {k.decode() for k in client.hkeys("fm:qa:{all}")} == {"x3@d.test"}

        # a bounce on B newer than A's release of the same address stays
        now = int(time.time() * 1000)
        bounce("a", "x6@d.test", now_ms=now)
        rounds()
        sp["b"].quarantine_remove("x6@d.test")  # B's copy, replaced by its own bounce:
        bounce("b", "x6@d.test", now_ms=now + 5000)
        sp["a"].quarantine_remove("x6@d.test", now_ms=now + 1000)
        rounds("acb")
        assert _addresses(sp["b"]).get("x6@d.test") == "bounce"

        # a release made while A's sync is stopped goes out when it starts again
        bounce("a", "x7@d.test")
        rounds()
        assert "x7@d.test" in _addresses(sp["c"])
        sp["a"].quarantine_remove("x7@d.test")
        sync["a"] = QuarantineSync(sp["a"], cl["a"])  # A restarted
        rounds()
        assert "x7@d.test" not in _addresses(sp["c"])

        # no echo: nothing more to push or pull anywhere
        before = {n: (sync[n].released_out, sync[n].released_in) for n in "abc"}
        assert [sync[n].sync() for n in "abc"] == [(0, 0)] * 3
        assert {n: (sync[n].released_out, sync[n].released_in) for n in "abc"} == before
        client.close()
    Spool.close_all()


@pytest.mark.timeout(180)
def test_release_on_one_running_node_reaches_the_other_running_node(tmp_path):
    """Two running engines (supervisor + worker with the cluster entry point each), one
    Redis: A hard-bounces unknown users, B's worker imports them; then an operator
    releases one address on A (``quarantine remove``) and the others expire on A: B's
    worker removes its copies by itself, and B's event log says why."""
    world = World(WorldSpec(name="q", providers=[
        Provider(name="users", generate=5, behaviour=Behaviour(unknown_user_rate=0.2))]))
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    rcpt, msg, emails = write_inputs(a_dir, world, 200)
    unknown = {e for e in emails if world.expected(e)[0] == "failed"}
    assert 10 < len(unknown) < 90

    with RedisServer() as srv:
        async def until(cond, what: str, timeout_s: float = 60.0) -> None:
            deadline = time.monotonic() + timeout_s
            while not cond():
                assert time.monotonic() < deadline, what
                await asyncio.sleep(0.1)

        async def go():
            async with SimInternet(world) as sim:
                cfg = make_config(sim, validity_s=60.0, workers=1)
                cfgs = {n: r(cfg, cluster=r(cfg.cluster, redis_url=srv.url, node=n))
                        for n in "ab"}
                spool_a = Spool.open(a_dir / "spool", cfg.spool)
                spool_b = Spool.open(b_dir / "spool", cfg.spool)
                did = await inject(spool_a, cfgs["a"], rcpt, msg, 60.0)
                sups = {n: Supervisor(cfgs[n], d / "spool", workers=1, title=False,
                                      worker_target=cluster_worker_main)
                        for n, d in (("a", a_dir), ("b", b_dir))}
                loop = asyncio.get_running_loop()
                tasks = [loop.create_task(s.run(forever=True)) for s in sups.values()]
                try:
                    await until(lambda: not spool_a.kpis(did).get("pending", 0) and set(
                        _addresses(spool_b)) == unknown, "B did not import A's entries", 90)
                    one = sorted(unknown)[0]
                    assert spool_a.quarantine_remove(one)  # the operator, on A
                    await until(lambda: one not in _addresses(spool_b), "release not seen")
                    later = int(time.time() * 1000) + 40 * 86400 * 1000
                    assert spool_a.quarantine_release_expired(now_ms=later) == len(unknown) - 1
                    await until(lambda: not _addresses(spool_b), "expiry not seen")
                finally:
                    for s in sups.values():
                        s.drain()
                    await asyncio.wait_for(asyncio.gather(*tasks), 60)
                reasons = [ev.reason for _, ev in spool_b.events()
                           if getattr(ev, "kind", "") == "released"]
                return one, reasons

        one, reasons = asyncio.run(go())
    Spool.close_all()
    assert reasons.count("cluster:a:manual") == 1
    assert reasons.count("cluster:a:expired") == len(unknown) - 1
