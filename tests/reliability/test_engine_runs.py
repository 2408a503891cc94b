"""Engine-level reliability (issue #9): a small chaos run (the CI version of
benchmarks/chaos.py), two `fastmta send` on one spool, and a slow destination that must
not make the in-memory queue grow without bound."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from fastmta.engine import entry as engine
from fastmta.sim import SimInternet
from fastmta.sim.config import sim_config
from fastmta.sim.world import Behaviour, Provider, World, WorldSpec
from fastmta.spool import Spool
from pathutil import package_parent

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import chaos  # noqa: E402

SRC = package_parent()


@pytest.mark.timeout(240)
def test_chaos_small(tmp_path):
    """5,000 recipients, 3 kill -9 (two workers, then the supervisor, restarted)."""
    out = asyncio.run(chaos.chaos(tmp_path, n=5000, rounds=3, interval_s=0.8,
                                  supervisor_kills=1, workers=2, seed=3, timeout_s=180,
                                  log=lambda s: print(s)))
    print({k: v for k, v in out.items() if k != "kills"})
    assert out["engine_rc"] == 0
    assert out["lost"] == 0 and out["n_problems"] == 0, out["audit_problems"]
    assert out["duplicates"] <= out["in_flight_at_kills"]
    assert out["kpis"]["pending"] == 0
    assert out["reopen"]["ok"], out["reopen"]
    assert out["rounds"] == 3


def _toml(cfg) -> str:
    return chaos.config_toml(cfg)


@pytest.mark.timeout(180)
def test_two_sends_on_one_spool(tmp_path):
    world = World(WorldSpec(name="two", providers=[
        Provider(name="slowish", generate=5, behaviour=Behaviour(reply_delay_s=0.002))]))
    rcpt = tmp_path / "r.csv"
    rcpt.write_text("email,name\n" + "".join(
        f"u{i}@{world.domains[i % 5]},n{i}\n" for i in range(3000)))
    msg = tmp_path / "m.eml"
    msg.write_text("From: a@sender.example\nTo: {{email}}\nSubject: hi\n\nhello\n")
    env = dict(os.environ, PYTHONPATH=SRC)
    spool = tmp_path / "spool"

    async def go():
        async with SimInternet(world) as sim:
            cfg = sim_config(sim, validity_s=300.0, retry_s=1.0, workers=1)
            conf = tmp_path / "c.toml"
            conf.write_text(_toml(cfg))
            cmd = [sys.executable, "-m", "fastmta", "send", "--recipients", str(rcpt),
                   "--message", str(msg), "--spool", str(spool), "--config", str(conf),
                   "--yes"]
            loop = asyncio.get_running_loop()
            first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
            try:
                # the first engine holds the spool once the delivery is injected
                deadline = time.monotonic() + 60
                while True:
                    from fastmta.engine.supervisor import engine_running
                    if engine_running(spool):
                        break
                    assert first.poll() is None, first.stdout.read().decode()
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
                second = await loop.run_in_executor(None, lambda: subprocess.run(
                    cmd, env=env, capture_output=True, text=True, timeout=60))
                out1, _ = await loop.run_in_executor(None, first.communicate)
            finally:
                if first.poll() is None:
                    first.kill()
            return second, first.returncode, out1.decode(), await sim.accepted()

    second, rc1, out1, accepted = asyncio.run(go())
    assert second.returncode == 1
    assert second.stderr.strip().splitlines()[-1] == (
        f"Error: another fastmta engine is running on the spool {spool}; wait for it to "
        "finish, use another --spool, or queue this delivery with `fastmta inject` for an "
        "engine started with `fastmta run --forever`")
    assert rc1 == 0, out1[-2000:]
    sp = Spool.open(spool)
    try:
        assert [d.id for d in sp.deliveries()] == [1]  # the second injected nothing
        k = sp.kpis(1)
        assert k.get("sent") == 3000 and k.get("pending", 0) == 0
    finally:
        sp.close()
    assert len(accepted) == 3000


@pytest.mark.timeout(120)
def test_slow_destination_keeps_the_queue_bounded(tmp_path):
    """One slow site (every reply delayed 0.2 s) and 30,000 recipients: the worker leases
    at most max_inflight of them; the rest stay in the spool, not in memory."""
    world = World(WorldSpec(name="slow", providers=[
        Provider(name="slow", generate=3,
                 behaviour=Behaviour(reply_delay_s=0.2, max_conn_per_ip=2))]))
    n = 30_000
    rcpt = tmp_path / "r.csv"
    rcpt.write_text("email,name\n" + "".join(
        f"u{i}@{world.domains[i % 3]},n{i}\n" for i in range(n)))
    msg = b"From: a@sender.example\nTo: {{email}}\nSubject: hi\n\nhello\n"

    async def go():
        async with SimInternet(world) as sim:
            cfg = sim_config(sim, validity_s=600.0, retry_s=1.0, workers=1)
            spool = Spool.open(tmp_path / "spool", cfg.spool)
            a = await engine.inject_file(spool, cfg, rcpt, msg, validity_s=600.0)
            sup = engine.Supervisor(cfg, tmp_path / "spool")
            run = asyncio.create_task(sup.run(forever=True))
            samples = []
            t0 = time.monotonic()
            while time.monotonic() - t0 < 8:
                await asyncio.sleep(0.5)
                beat = sup.slots[0].beat
                samples.append((len(spool.leases(a.delivery_id)), beat.get("inflight", 0),
                                beat.get("queued", 0)))
            sup.stop()
            await asyncio.wait_for(run, 60)
            return samples, spool.kpis(a.delivery_id), spool.queue_counts()

    samples, k, queues = asyncio.run(go())
    print(samples)
    from fastmta.engine.worker import WorkerSpec
    cap = WorkerSpec.__struct_fields__ and msgspec.structs.fields(WorkerSpec)
    max_inflight = next(f.default for f in cap if f.name == "max_inflight")
    leased = [s[0] for s in samples]
    assert max(leased) > 0
    assert max(leased) <= max_inflight < n  # bounded by the worker, not by the input
    assert max(s[1] for s in samples) <= max_inflight
    assert k.get("sent", 0) < n  # the destination really was slow
    assert k.get("pending", 0) + k.get("sent", 0) + k.get("failed", 0) == n
    assert queues["lease"] == 0  # the stop gave every lease back
