"""The cluster state in the Prometheus endpoint, scraped during a real run (a real
redis-server, killed mid-run): scope, node, leases, nodes seen, round trips, and the
degraded flag while Redis is down."""

from __future__ import annotations

import asyncio
import socket
import sys
import urllib.request
from pathlib import Path

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).parent))
from test_cluster_engine import capped_world, node_config  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent.parent / "engine"))
from engine_helpers import inject, write_inputs  # noqa: E402

from fastmta.cluster.node import cluster_worker_main  # noqa: E402
from fastmta.cluster.server import RedisServer  # noqa: E402
from fastmta.engine.supervisor import Supervisor  # noqa: E402
from fastmta.sim import SimInternet  # noqa: E402
from fastmta.spool import Spool  # noqa: E402

r = msgspec.structs.replace


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(url: str) -> dict[str, list[tuple[dict, float]]]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    out: dict = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


@pytest.mark.timeout(180)
def test_cluster_state_in_metrics(tmp_path):
    world = capped_world()
    rcpt, msg, _ = write_inputs(tmp_path, world, 8000)
    port = _port()
    url = f"http://127.0.0.1:{port}/metrics"

    async def go(srv):
        async with SimInternet(world) as sim:
            cfg = node_config(sim, workers=1, redis_url=srv.url, node="m0")
            cfg = r(cfg, ops=r(cfg.ops, metrics_port=port))
            spool = Spool.open(tmp_path / "spool", cfg.spool)
            did = await inject(spool, cfg, rcpt, msg, 60.0)
            sup = Supervisor(cfg, tmp_path / "spool", workers=1, title=False,
                             worker_target=cluster_worker_main)
            task = asyncio.get_running_loop().create_task(sup.run(forever=True))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            seen_shared = seen_degraded = None
            leases_seen = 0
            while spool.kpis(did).get("pending", 0):
                assert loop.time() < deadline, "not final in time"
                try:
                    m = await asyncio.to_thread(scrape, url)
                except OSError:
                    m = {}
                deg = m.get("fastmta_limits_degraded", [])
                leases = m.get("fastmta_limits_leases", [({}, 0)])[0][1]
                leases_seen = max(leases_seen, leases) if seen_shared is None else leases_seen
                if seen_shared is None and deg and deg[0][1] == 0 and leases_seen > 0:
                    seen_shared = m
                    srv.kill()  # an outage: the worker goes on its local share
                elif seen_shared is not None and deg and deg[0][1] == 1:
                    seen_degraded = m
                    break
                await asyncio.sleep(0.1)
            sup.drain()
            await asyncio.wait_for(task, 60)
            return seen_shared, seen_degraded, leases_seen

    with RedisServer() as srv:
        shared, degraded, leases_seen = asyncio.run(go(srv))
    Spool.close_all()
    assert shared is not None and degraded is not None
    assert 0 < leases_seen <= 4  # the site's limit
    labels, _ = shared["fastmta_limits_degraded"][0]
    assert labels == {"worker": "0", "scope": "cluster", "node": "m0"}
    assert shared["fastmta_cluster_nodes"][0][1] == 1
    assert shared["fastmta_limits_round_trips_total"][0][1] > 0
    assert shared["fastmta_limits_outages_total"][0][1] == 0
    assert degraded["fastmta_limits_outages_total"][0][1] == 1
