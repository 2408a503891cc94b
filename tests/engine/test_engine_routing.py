"""Routing at injection: domains -> MX site / provider -> shard, resolved against the
simulated internet's DNS (so one site, and one provider, land on one worker)."""

from __future__ import annotations

import asyncio

import pytest
from engine_helpers import make_config

from fastmta.engine import entry as engine
from fastmta.engine.routing import assign_shards
from fastmta.sim import SimInternet
from fastmta.sim.world import Provider, World, WorldSpec


@pytest.mark.timeout(30)
def test_domain_router_groups_by_site_and_provider():
    world = World(WorldSpec(providers=[
        Provider(name="shared", generate=40, hosts=2),
        Provider(name="bigmail", domains=["gmail.test", "googlemail.test"], hosts=2,
                 mx_names=["aspmx.l.google.com", "alt1.aspmx.l.google.com"]),
        Provider(name="bigmail2", domains=["workspace.test"],
                 mx_names=["alt4.aspmx.l.google.com"]),
        Provider(name="nx", domains=["nx.test"], dns="nxdomain"),
    ]))

    async def go():
        async with SimInternet(world) as sim:
            cfg = make_config(sim)
            return await engine.domain_router(world.domains, cfg)

    route = asyncio.run(go())
    shared = {route(d) for d in world.domains if d.endswith(".shared.test")}
    assert len(shared) == 1  # 40 domains on the same MX hosts: one shard
    google = {route(d) for d in ("gmail.test", "googlemail.test", "workspace.test")}
    assert len(google) == 1  # different MX sets of one provider: one shard
    assert route.keys["workspace.test"] == "provider:google"
    assert route.keys["nx.test"] == "domain:nx.test"  # unresolvable: routed by name
    owners = assign_shards(64, 2)
    assert sum(next(iter(shared)) in o for o in owners) == 1
