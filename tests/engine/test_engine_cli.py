"""`fastmta send` end to end, and SIGTERM handling of the engine (drain; second signal
stops at once), with the simulated internet in the test process and the CLI in a
subprocess."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest
from engine_helpers import audit, config_toml, inject, make_config, write_inputs

from fastmta.sim import SimInternet
from fastmta.sim.world import Behaviour, Provider, World, WorldSpec
from fastmta.spool import Spool
from pathutil import package_parent

SRC = package_parent()
ENV = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))


def small_world(delay: float = 0.0) -> World:
    return World(WorldSpec(name="cli", providers=[
        Provider(name="fastmail", generate=10, hosts=2,
                 behaviour=Behaviour(reply_delay_s=delay)),
        Provider(name="unknownusers", generate=3,
                 behaviour=Behaviour(unknown_user_rate=0.3, reply_delay_s=delay)),
        Provider(name="nxdomain", generate=1, dns="nxdomain"),
    ]))


def fastmta(*args: str) -> list[str]:
    return [sys.executable, "-m", "fastmta", *args]


async def communicate(proc: subprocess.Popen, timeout_s: float) -> str:
    loop = asyncio.get_running_loop()
    try:
        out, _ = await asyncio.wait_for(loop.run_in_executor(None, proc.communicate),
                                        timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
    return out.decode(errors="replace")


@pytest.mark.timeout(120)
def test_send_command(tmp_path):
    world = small_world()
    rcpt, msg, _ = write_inputs(tmp_path, world, 600)
    spool_path = tmp_path / "spool"

    async def go():
        async with SimInternet(world) as sim:
            cfg = make_config(sim, validity_s=8.0)
            conf = tmp_path / "fastmta.toml"
            conf.write_text(config_toml(cfg))
            proc = subprocess.Popen(
                fastmta("send", "--recipients", str(rcpt), "--message", str(msg), "--yes",
                        "--spool", str(spool_path), "--config", str(conf), "--workers", "2"),
                env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            out = await communicate(proc, 90)
            return proc.returncode, out, await sim.accepted()

    code, out, accepted = asyncio.run(go())
    assert code == 0, out[-3000:]
    assert "Analysis: 600 recipients, 600 to deliver" in out
    assert "Success" in out and "pending           0" in out
    spool = Spool.open(spool_path)
    result = audit(spool, 1, world, accepted)
    assert result["n_problems"] == 0, result["problems"]
    assert result["dupes"] == 0


@pytest.mark.timeout(180)
def test_sigterm_drains_and_second_signal_stops(tmp_path):
    world = small_world(delay=0.01)  # slow enough to be interrupted mid-run
    rcpt, msg, _ = write_inputs(tmp_path, world, 6000)
    spool_path = tmp_path / "spool"

    async def go():
        async with SimInternet(world) as sim:
            cfg = make_config(sim, validity_s=120.0)
            conf = tmp_path / "fastmta.toml"
            conf.write_text(config_toml(cfg))
            spool = Spool.open(spool_path, cfg.spool)
            did = await inject(spool, cfg, rcpt, msg, 120.0)
            run = fastmta("run", "--spool", str(spool_path), "--config", str(conf))

            async def interrupt(signals: int) -> tuple[float, str]:
                proc = subprocess.Popen(run, env=ENV, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT)
                start = spool.kpis(did).get("sent", 0)
                deadline = time.monotonic() + 60
                while spool.kpis(did).get("sent", 0) < start + 500:
                    assert time.monotonic() < deadline and proc.poll() is None
                    await asyncio.sleep(0.05)
                t0 = time.monotonic()
                for _ in range(signals):
                    proc.send_signal(signal.SIGTERM)
                    await asyncio.sleep(0.2)
                out = await communicate(proc, 60)
                assert proc.returncode == 0, out[-3000:]
                return time.monotonic() - t0, out

            drain_s, out1 = await interrupt(1)
            after_drain = spool.kpis(did)
            leases_after_drain = len(spool.leases(did))
            stop_s, out2 = await interrupt(2)
            leases_after_stop = len(spool.leases(did))
            proc = subprocess.Popen(run, env=ENV, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT)
            out3 = await communicate(proc, 120)
            return (did, spool, after_drain, leases_after_drain, leases_after_stop,
                    drain_s, stop_s, out1, out3, await sim.accepted())

    (did, spool, after_drain, l1, l2, drain_s, stop_s, out1, out3,
     accepted) = asyncio.run(go())
    print(f"\ndrain {drain_s:.1f}s, stop {stop_s:.1f}s; after drain {after_drain}")
    assert after_drain.get("pending", 0) > 0  # really interrupted mid-run
    assert "resumes" in out1
    assert l1 == 0 and l2 == 0  # nothing left leased: everything went back to the spool
    assert "pending           0" in out3
    result = audit(spool, did, world, accepted)
    assert result["n_problems"] == 0, result["problems"]
    assert result["dupes"] <= 2 * spool.cfg.commit_batch + 8 * 32  # stop-at-once window


@pytest.mark.timeout(120)
def test_send_detach_runs_the_engine_in_the_background(tmp_path):
    world = small_world()
    rcpt, msg, _ = write_inputs(tmp_path, world, 300)
    spool_path = tmp_path / "spool"

    async def go():
        async with SimInternet(world) as sim:
            cfg = make_config(sim, validity_s=6.0)
            conf = tmp_path / "fastmta.toml"
            conf.write_text(config_toml(cfg))
            proc = subprocess.Popen(
                fastmta("send", "--recipients", str(rcpt), "--message", str(msg), "--yes",
                        "--detach", "--spool", str(spool_path), "--config", str(conf)),
                env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            out = await communicate(proc, 60)
            assert proc.returncode == 0, out[-2000:]
            assert "engine running in the background (pid" in out
            pid = int(out.split("(pid ")[1].split(")")[0])
            spool = Spool.open(spool_path)
            deadline = time.monotonic() + 60
            while True:  # the detached engine exits by itself once everything is final
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                assert time.monotonic() < deadline, "detached engine did not finish"
                await asyncio.sleep(0.2)
            return spool, await sim.accepted()

    spool, accepted = asyncio.run(go())
    assert spool.kpis(1).get("pending", 0) == 0
    result = audit(spool, 1, world, accepted)
    assert result["n_problems"] == 0, result["problems"]
