"""``fastmta cluster status``: what a real Redis holds for two nodes, and exit 2 when
Redis cannot be reached."""

from __future__ import annotations

import json

from click.testing import CliRunner

from fastmta.cli import main
from fastmta.cluster.redis_limits import RedisLimits
from fastmta.cluster.server import RedisServer
from fastmta.config import ClusterConfig
from fastmta.engine.limits import LocalLimits


def test_status_shows_nodes_leases_and_learned_state():
    with RedisServer() as srv:
        a, b = (RedisLimits(ClusterConfig(redis_url=srv.url, node=n), LocalLimits())
                for n in ("a", "b"))
        site = "provider:p/site:mx1.p.test"
        assert a.acquire([site, "provider:p"], [3, 5])
        assert a.acquire([site, "provider:p"], [3, 5])
        assert b.acquire([site, "provider:p"], [3, 5])
        a.publish(site, limit=2, suspend_s=60)
        res = CliRunner().invoke(main, ["cluster", "status", "--redis-url", srv.url,
                                        "--json"])
        assert res.exit_code == 0, res.output
        st = json.loads(res.output)
        assert st["reachable"]
        assert sorted(n["node"] for n in st["nodes"]) == ["a", "b"]
        leases = {row["key"]: row for row in st["leases"]}
        assert leases[site]["held"] == 3 and leases[site]["by_node"] == {"a": 2, "b": 1}
        assert leases["provider:p"]["held"] == 3
        assert st["leases_by_node"] == {"a": 4, "b": 2}
        state = {row["key"]: row for row in st["state"]}
        assert state[site]["limit"] == 2 and 55 < state[site]["suspended_s"] <= 60
        text = CliRunner().invoke(main, ["cluster", "status", "--redis-url", srv.url])
        assert "2 node(s)" in text.output and "(a 2, b 1)" in text.output
        a.close()
        b.close()
        st = json.loads(CliRunner().invoke(main, ["cluster", "status", "--redis-url",
                                                  srv.url, "--json"]).output)
        assert st["leases"] == []  # released: nothing held
        url = srv.url
    res = CliRunner().invoke(main, ["cluster", "status", "--redis-url", url])
    assert res.exit_code == 2 and "unreachable" in res.output
