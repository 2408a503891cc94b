"""Crash tests: kill -9 a worker, and separately the supervisor, in the middle of the
end-to-end run; the run completes after restart with 0 lost recipients and duplicates
bounded by the result-commit window (docs/engine.md, "Durability")."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest
from engine_helpers import audit, config_toml, inject, make_config, mixed_world, write_inputs

from fastmta.engine import entry as engine
from fastmta.sim import SimInternet
from fastmta.spool import Spool
from pathutil import package_parent

VALIDITY_S = 15.0
N = 10_000


def dupe_bound(cfg, workers_killed: int) -> int:
    # results not yet durable when a process dies: a worker lets at most
    # 2 x commit_batch be outstanding before its next flight, plus the flights whose
    # replies are being processed (8 transactions per connection)
    return (2 * cfg.spool.commit_batch + 8 * cfg.shaping.max_connections) * workers_killed


async def _wait_sent(spool, did, n, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while spool.kpis(did).get("sent", 0) < n:
        assert time.monotonic() < deadline, "delivery made no progress"
        await asyncio.sleep(0.02)


@pytest.mark.timeout(180)
def test_kill_worker_mid_run(tmp_path):
    world = mixed_world()
    rcpt, msg, _ = write_inputs(tmp_path, world, N)

    async def go():
        async with SimInternet(world) as sim:
            cfg = make_config(sim, validity_s=VALIDITY_S)
            spool_path = tmp_path / "spool"
            spool = Spool.open(spool_path, cfg.spool)
            did = await inject(spool, cfg, rcpt, msg, VALIDITY_S)
            sup = engine.Supervisor(cfg, spool_path)
            run = asyncio.create_task(sup.run([did]))
            await _wait_sent(spool, did, 2000)
            # the busiest worker (most recipients in flight)
            slot = max(sup.slots, key=lambda s: s.beat.get("inflight", 0))
            victim = slot.proc.pid
            os.kill(victim, signal.SIGKILL)
            killed_at = spool.kpis(did).get("sent", 0)
            await asyncio.wait_for(run, 150)
            return spool, did, await sim.accepted(), sup, killed_at, cfg

    spool, did, accepted, sup, killed_at, cfg = asyncio.run(go())
    result = audit(spool, did, world, accepted)
    print(f"\nworker kill at {killed_at} sent: {result['status']} dupes {result['dupes']} "
          f"restarts {sup.restarts}")
    assert sup.restarts >= 1
    assert result["n"] == N
    assert result["n_problems"] == 0, result["problems"]  # 0 lost, reasons right
    assert result["dupes"] <= dupe_bound(cfg, 1)


@pytest.mark.timeout(180)
def test_kill_supervisor_mid_run(tmp_path):
    world = mixed_world()
    rcpt, msg, _ = write_inputs(tmp_path, world, N)
    src = package_parent()
    env = dict(os.environ, PYTHONPATH=src + os.pathsep + os.environ.get("PYTHONPATH", ""))

    async def go():
        async with SimInternet(world) as sim:
            cfg = make_config(sim, validity_s=VALIDITY_S)
            spool_path = tmp_path / "spool"
            conf = tmp_path / "fastmta.toml"
            conf.write_text(config_toml(cfg))
            spool = Spool.open(spool_path, cfg.spool)
            did = await inject(spool, cfg, rcpt, msg, VALIDITY_S)
            cmd = [sys.executable, "-m", "fastmta", "run", "--spool", str(spool_path),
                   "--config", str(conf)]
            first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
            try:
                await _wait_sent(spool, did, 2000)
                first.kill()  # SIGKILL: no drain, workers orphaned
                killed_at = spool.kpis(did).get("sent", 0)
                first.wait(10)
                second = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT)
                try:
                    loop = asyncio.get_running_loop()
                    out, _ = await asyncio.wait_for(
                        loop.run_in_executor(None, second.communicate), 150)
                finally:
                    if second.poll() is None:
                        second.kill()
            finally:
                if first.poll() is None:
                    first.kill()
            assert second.returncode == 0, out.decode()[-2000:]
            return spool, did, await sim.accepted(), killed_at, cfg, out.decode()

    spool, did, accepted, killed_at, cfg, out = asyncio.run(go())
    result = audit(spool, did, world, accepted)
    print(f"\nsupervisor kill at {killed_at} sent: {result['status']} dupes {result['dupes']}")
    assert result["n"] == N
    assert result["n_problems"] == 0, result["problems"]
    assert result["dupes"] <= dupe_bound(cfg, cfg.engine.workers or 2)
    assert "Delivery" in out  # the restarted engine printed the report
