"""Full disk (issue #9): the spool lives on a 20 MB tmpfs that fills up mid-delivery.
Delivery pauses with a clear error (reported in the worker heartbeat), nothing is lost
or corrupted, and it resumes by itself when space returns.  (LMDB map full is covered by
tests/spool/test_mapfull.py.)"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import msgspec
import pytest

from fastmta.engine import entry as engine
from fastmta.sim import SimInternet
from fastmta.sim.config import sim_config
from fastmta.sim.world import Provider, World, WorldSpec
from fastmta.spool import Spool

N = 20_000


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {r.stderr}")
    yield mnt
    Spool.close_all()
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@pytest.mark.timeout(180)
def test_disk_fills_mid_delivery_pauses_and_resumes(tmp_path, small_disk):
    world = World(WorldSpec(name="disk", providers=[Provider(name="fast", generate=20)]))
    rcpt = tmp_path / "r.csv"
    with open(rcpt, "w") as f:
        f.write("email,name\n")
        for i in range(N):
            f.write(f"u{i}@{world.domains[i % len(world.domains)]},n{i}\n")
    msg = b"From: a@sender.example\nTo: {{email}}\nSubject: hi {{name}}\n\nhello\n"
    filler = small_disk / "filler"
    spool_path = small_disk / "spool"

    async def go():
        async with SimInternet(world) as sim:
            cfg = sim_config(sim, validity_s=600.0, retry_s=1.0, workers=1)
            r = msgspec.structs.replace
            cfg = r(cfg, spool=r(cfg.spool, full_retry_s=0.2))
            spool = Spool.open(spool_path, cfg.spool)
            a = await engine.inject_file(spool, cfg, rcpt, msg, validity_s=600.0)
            did = a.delivery_id
            # leave ~1.5 MB: the results and events of the delivery need more
            with open(filler, "wb") as f:
                f.write(b"\0" * max(0, free_bytes(small_disk) - 1_500_000))
            sup = engine.Supervisor(cfg, spool_path)
            run = asyncio.create_task(sup.run([did]))
            deadline = time.monotonic() + 90
            alert = ""
            while not alert:
                assert time.monotonic() < deadline, "the disk never filled"
                assert not run.done(), "delivery finished without filling the disk"
                alert = next((s.beat.get("spool_full") for s in sup.slots
                              if s.beat.get("spool_full")), "")
                await asyncio.sleep(0.1)
            sent_at_full = spool.kpis(did).get("sent", 0)
            # paused: while the disk stays full, no result becomes durable
            for _ in range(10):
                await asyncio.sleep(0.1)
                assert spool.kpis(did).get("sent", 0) == sent_at_full
            assert not run.done()
            filler.unlink()  # space returns
            await asyncio.wait_for(run, 120)
            return spool, did, alert, sent_at_full, await sim.accepted(), cfg

    spool, did, alert, sent_at_full, accepted, cfg = asyncio.run(go())
    assert "is full" in alert and "nothing is lost" in alert, alert
    assert 0 < sent_at_full < N
    k = spool.kpis(did)
    recount = {"sent": 0, "failed": 0, "pending": 0}
    for _rid, r in spool.recipients(did):
        recount[r.status_name] += 1
        assert r.status_name == "sent" and accepted.get(r.email, 0) >= 1, r
    assert recount == {"sent": N, "failed": 0, "pending": 0}
    assert {key: k.get(key, 0) for key in recount} == recount  # KPIs equal a recount
    assert spool.queue_counts() == {"ready": 0, "sched": 0, "lease": 0}
    dupes = sum(max(0, v - 1) for v in accepted.values())
    assert dupes <= 2 * cfg.spool.commit_batch  # a paused writer repeats nothing
    print(f"\nfull at {sent_at_full} sent; alert: {alert}; duplicates {dupes}")
