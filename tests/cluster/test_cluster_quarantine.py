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
