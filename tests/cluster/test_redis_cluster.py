"""The shared limits and quarantine on a real Redis Cluster (three cluster-enabled
redis-server primaries on loopback joined by ``redis-cli --cluster create``), through
redis-py's ``RedisCluster`` (``[cluster] redis_cluster = true``): every Function call
is single-slot thanks to the hash tags, the Function library is on every primary, and
the keys of different providers land on different shards."""

from __future__ import annotations

import shutil

import pytest
import redis

from fastmta.cluster.quarantine import QuarantineSync
from fastmta.cluster.redis_limits import RedisLimits
from fastmta.cluster.server import RedisClusterServers
from fastmta.config import ClusterConfig
from fastmta.engine.limits import LocalLimits
from fastmta.spool import Spool

pytestmark = pytest.mark.skipif(shutil.which("redis-cli") is None,
                                reason="redis-cli (redis-tools) is not installed")


@pytest.mark.timeout(120)
def test_limits_and_quarantine_on_a_redis_cluster(tmp_path):
    with RedisClusterServers(3) as rc:
        cfgs = {n: ClusterConfig(redis_url=rc.url, node=n, redis_cluster=True,
                                 signal_poll_s=0.0) for n in "ab"}
        a, b = (RedisLimits(cfgs[n], fallback=LocalLimits()) for n in "ab")
        assert not a.degraded and not b.degraded
        client = redis.RedisCluster.from_url(rc.url)
        provs = [f"provider:p{i}" for i in range(12)]
        slots = {client.keyslot(a.k("c", p)) for p in provs}
        owners = {client.get_node_from_key(a.k("c", p)).port for p in provs}
        assert len(slots) == 12 and len(owners) > 1  # spread over the shards
        held = []
        for p in provs:
            site = f"{p}/site:mx.{p[9:]}.test"
            held.append(a.acquire([site, p], [2, 3]))
            held.append(b.acquire([site, p], [2, 3]))
            assert a.acquire([site, p], [2, 3]) is None  # the site's limit, cluster-wide
            assert a.reserve([site, p], [(100.0, 5), (500.0, 10)], 5, 0.5)[0]
        assert all(held) and not a.degraded and not b.degraded
        a.tick()  # membership, renewal: one pipeline over several slots
        b.tick()
        assert a.nodes == ["a", "b"] and not a.degraded
        a.publish(f"{provs[0]}/site:mx.p0.test", limit=1)
        assert b.learned(f"{provs[0]}/site:mx.p0.test").limit == 1
        assert [x.limit for _, x in b.signals([])] == [1]
        for x in (a, b):
            x.close()
        assert sum(client.zcard(a.k("c", p)) for p in provs) == 0  # nothing leaked

        # the quarantine sync on the cluster
        sp = {n: Spool.open(tmp_path / n) for n in "ab"}
        sync = {n: QuarantineSync(sp[n], cfgs[n]) for n in "ab"}
        sp["a"].quarantine_add("x@d.test", reason="bounce", permanent=False,
                               source="bounce")
        sync["a"].sync()
        sync["b"].sync()
        assert sp["b"].quarantine_get("x@d.test") is not None
        sp["a"].quarantine_remove("x@d.test")
        sync["a"].sync()
        sync["b"].sync()
        assert sp["b"].quarantine_get("x@d.test") is None
        client.close()
    Spool.close_all()
