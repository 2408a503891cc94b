"""End to end: 10,000 recipients over 200 domains on the simulated internet (issue #5).

Real everything: the sim's DNS server and MX hosts on loopback, the LMDB spool, worker
processes started with spawn.  Short validity and retry intervals so soft-failing
recipients expire within the test.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from engine_helpers import audit, inject, make_config, mixed_world, write_inputs

from fastmta.engine import entry as engine
from fastmta.sim import SimInternet
from fastmta.spool import Spool

VALIDITY_S = 12.0


@pytest.mark.timeout(180)
def test_mixed_profiles_end_to_end(tmp_path):
    world = mixed_world()
    assert len(world.domains) == 200
    rcpt, msg, emails = write_inputs(tmp_path, world, 10_000)

    async def go():
        async with SimInternet(world) as sim:
            cfg = make_config(sim, validity_s=VALIDITY_S)
            spool_path = tmp_path / "spool"
            spool = Spool.open(spool_path, cfg.spool)
            did = await inject(spool, cfg, rcpt, msg, VALIDITY_S)
            t0 = time.monotonic()
            sup = await asyncio.wait_for(engine.run(cfg, spool_path, [did]), 150)
            elapsed = time.monotonic() - t0
            accepted = await sim.accepted()
            stats = await sim.stats()
            return spool, did, accepted, stats, elapsed, sup

    spool, did, accepted, stats, elapsed, sup = asyncio.run(go())
    result = audit(spool, did, world, accepted)
    print(f"\ne2e: {result['status']} reasons {result['reasons']} in {elapsed:.1f}s; "
          f"sink {stats['messages']} msgs, refusals {stats['replies']}")
    assert result["n"] == 10_000
    assert result["n_problems"] == 0, result["problems"]
    assert result["dupes"] == 0  # no crash: every sent recipient accepted exactly once
    assert sum(accepted.values()) == result["status"]["sent"]
    # every kind of outcome really happened
    for reason in ("user_unknown", "invalid_domain", "expired"):
        assert result["reasons"].get(reason, 0) > 0
    assert stats["replies"].get("450 4.2.0", 0) > 0  # greylisted, then delivered
    assert sup.restarts == 0
