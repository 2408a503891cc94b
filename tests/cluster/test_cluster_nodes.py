"""Nodes as real separate processes (``fastmta.bench.node``: supervisor, worker, spool)
sharing one provider's caps through a real redis-server.

- kill -9 of one node's whole process group mid-run: its leases (members ``n1:...`` of
  the provider's lease set) expire within the lease TTL, the other nodes keep the
  provider's limits (no refusal) and take its share of the rate, and after the node
  restarts on its spool every recipient is final: 0 lost; re-sent messages (accepted by
  the provider before the kill, not yet written to the spool) are bounded and counted.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest
import redis

from fastmta.bench.audit import _audit
from fastmta.bench.cluster import NodeProc, capped_provider, node_config, node_spec
from fastmta.bench.harness import BenchOptions, bench_config
from fastmta.bench.profile import expand, load_profile
from fastmta.cluster.server import RedisServer
from fastmta.config import ClusterConfig, Config
from fastmta.sim import SimInternet
from fastmta.spool import Spool

TTL = 3.0
PER_NODE = 1500


def _sent(spools) -> int:
    return sum(s.kpis(d).get("sent", 0) for s, d in spools)


@pytest.mark.timeout(300)
def test_kill9_of_a_node_frees_its_leases_and_loses_nothing(tmp_path):
    prof = load_profile("capped")
    opts = BenchOptions(messages=3 * PER_NODE, domains=20, sites=1, profile="capped",
                        workers=1, timeout_s=200.0,
                        config=Config(cluster=ClusterConfig(lease_ttl_s=TTL, retry_s=0.2)))
    world = expand(prof, opts.domains, opts.sites)
    name, conns, rate = capped_provider(world)
    lease_key = f"fm:c:{{provider:{name}}}"

    async def go(srv):
        client = redis.Redis.from_url(srv.url)
        async with SimInternet(world, tls=False) as sim:
            base = bench_config(sim, opts, prof)
            specs = [node_spec(opts, node_config(base, world, srv.url, f"n{i}"),
                               str(tmp_path), i, 3) for i in range(3)]
            procs = [await NodeProc(s, str(tmp_path), f"node{i}").start()
                     for i, s in enumerate(specs)]
            try:
                for p in procs:
                    await p.expect("ready", 120)
                for p in procs:
                    p.go()
                dids = [int((await p.expect("injected", 60)).split()[1]) for p in procs]
                spools = [(Spool.open(s["spool"]), d) for s, d in zip(specs, dids,
                                                                       strict=True)]
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 120
                # kill node 1 while it holds leases, early enough for the others to take its share
                while not (_sent(spools) >= 1000 and any(
                        m.startswith(b"n1:") for m in client.zrange(lease_key, 0, -1))):
                    assert loop.time() < deadline, "no progress before the kill"
                    await asyncio.sleep(0.02)
                procs[1].kill9()
                t_kill = time.monotonic()
                await procs[1].wait()
                held = [m for m in client.zrange(lease_key, 0, -1) if m.startswith(b"n1:")]
                while any(m.startswith(b"n1:") for m in client.zrange(lease_key, 0, -1)):
                    assert time.monotonic() - t_kill < TTL + 2.0, "dead node's leases stay"
                    await asyncio.sleep(0.05)
                freed_s = time.monotonic() - t_kill
                t_free_ms = time.time() * 1000.0
                others = [await procs[i].result(200) for i in (0, 2)]
                # node 1 restarts on its spool (no new injection) and finishes it
                spec1 = dict(specs[1], inject=False, did=dids[1])
                procs[1].close()
                procs[1] = await NodeProc(spec1, str(tmp_path), "node1b").start()
                await procs[1].expect("ready", 120)
                procs[1].go()
                again = await procs[1].result(200)
            finally:
                for p in procs:
                    p.close()
            left = client.zcard(lease_key)
            return (dids, held, freed_s, t_free_ms, others, again, await sim.stats(),
                    await sim.accepted(), left)

    with RedisServer() as srv:
        dids, held, freed_s, t_free_ms, others, again, stats, accepted, left = \
            asyncio.run(go(srv))
    Spool.close_all()
    assert held, "node 1 held no lease when it was killed"
    assert freed_s <= TTL + 1.0, freed_s  # expired within the TTL (+ polling)
    assert left == 0  # nothing leaked at the end
    # the survivors kept the provider's limits: never refused, never over C at once
    refused = {k: v for k, v in stats["replies"].items() if k.startswith("421")}
    assert refused == {}, refused
    assert stats["peak_connections"][name] <= conns
    audits, capped_times = [], []
    for i, did in enumerate(dids):
        spool = Spool.open(os.path.join(str(tmp_path), f"spool{i}"))
        a = _audit(spool, [(did, [(1, 0.0)])], world, accepted, 0.0)
        audits.append(a)
        capped_times += a["_capped"].get(name, [])
    Spool.close_all()
    for a in audits:
        assert a["lost"] == 0 and a["pending"] == 0 and a["unexpected"] == 0, a["problems"]
        assert a["delivered"] == PER_NODE
    # re-sent after the restart: at most what was in flight on node 1's connections
    dup = sum(a["duplicates"] for a in audits)
    print(f"\nleases of the dead node: {len(held)}, freed after {freed_s:.2f} s; "
          f"re-sent after its restart: {dup}")
    assert dup <= conns * 20
    # the survivors took its share: once its leases expired, the rate stayed near R
    survivors_end = min(o["t_final"] for o in others) * 1000.0 - 200.0
    window = [t for t in capped_times if t_free_ms + 500 <= t <= survivors_end]
    span_s = (survivors_end - t_free_ms - 500) / 1000.0
    print(f"survivors: {[o['t_final'] * 1000 - t_free_ms for o in others]} ms after the "
          f"leases freed; node sent {[a['delivered'] for a in audits]}")
    assert span_s > 2.0, span_s
    assert len(window) / span_s >= 0.8 * rate, (len(window) / span_s, rate)
