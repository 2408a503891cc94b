"""Admin actions (durable requests through the spool) against running workers."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import pytest
from ops_helpers import MESSAGE, domains_of, make_config, recipients

from fastmta import WorkerPool
from fastmta.dns.resolver import Resolver
from fastmta.ops import events as E
from fastmta.ops.admin import AdminError
from pathutil import package_parent

pytestmark = pytest.mark.timeout(120)
SRC = package_parent()


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=SRC)
    return subprocess.run([sys.executable, "-m", "fastmta", *args], capture_output=True,
                          text=True, env=env, timeout=60, check=False)


def site_of(cfg, domain: str) -> str:
    async def go():
        return (await Resolver(cfg.dns, cfg.smtp).resolve_mx(domain)).site

    return asyncio.run(go())


def accepted_of(sim, rows) -> int:
    acc = sim.accepted()
    return sum(acc.get(r["email"], 0) for r in rows)


def wait_for(cond, timeout: float = 30.0, step: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(step)


def _events(pool, types):
    return [e for e in E.EventReader(pool.spool, types=types).poll(limit=100_000)]


def test_suspend_and_resume_site_via_cli(sim, world, spool_dir):
    cfg = make_config(sim)
    slow_site = site_of(cfg, domains_of(world, "slowpoke")[0])
    slow = recipients(world, 40, ["slowpoke"], prefix="s1-")
    fast = recipients(world, 40, ["fast"], prefix="s1-")
    with WorkerPool(cfg, spool=spool_dir) as pool:
        r = _cli("suspend", "--spool", spool_dir, "--site", slow_site, "--reason", "maint")
        assert r.returncode == 0, r.stderr
        h = pool.submit(slow + fast, MESSAGE)
        wait_for(lambda: accepted_of(sim, fast) == 40)
        time.sleep(1.0)  # several admin polls and recheck periods
        assert accepted_of(sim, slow) == 0
        assert h.status()["pending"] == 40
        r = _cli("admin", "suspensions", "--spool", spool_dir, "--json")
        assert json.loads(r.stdout)[0]["name"] == slow_site
        r = _cli("resume", "--spool", spool_dir, "--site", slow_site)
        assert r.returncode == 0, r.stderr
        st = h.wait(timeout_s=30)
        assert st["sent"] == 80
        site_evs = [e for e in _events(pool, ["site"]) if e.site == slow_site]
        adm = _events(pool, ["admin"])
    assert accepted_of(sim, slow) == 40
    assert [e.kind for e in site_evs][:2] == ["suspended", "resumed"]
    assert site_evs[0].reason == "operator"
    assert [(a.action, a.target) for a in adm] == [("suspend", f"site:{slow_site}"),
                                                   ("resume", f"site:{slow_site}")]
    assert _cli("resume", "--spool", spool_dir, "--site", slow_site).returncode != 0


def test_suspend_provider_for_a_duration(sim, world, spool_dir):
    cfg = make_config(sim)
    slow = recipients(world, 30, ["slowpoke"], prefix="p1-")
    with WorkerPool(cfg, spool=spool_dir) as pool:
        pool.admin.suspend(provider="slowpoke", reason="ramp", duration_s=2.0)
        t0 = time.monotonic()
        h = pool.submit(slow, MESSAGE)
        time.sleep(1.0)
        assert accepted_of(sim, slow) == 0
        st = h.wait(timeout_s=30)  # lifts by itself
        assert st["sent"] == 30
        assert time.monotonic() - t0 >= 2.0
        assert pool.admin.suspensions() == []


def test_suspend_resume_delivery(sim, world, spool_dir):
    cfg = make_config(sim)
    rows = recipients(world, 30, ["fast"], prefix="d1-")
    pool = WorkerPool(cfg, spool=spool_dir).open()
    h = pool.submit(rows, MESSAGE)
    h.suspend("hold")
    with pytest.raises(AdminError):
        pool.admin.suspend(delivery=999)
    with pool:
        time.sleep(1.0)
        assert accepted_of(sim, rows) == 0 and h.status()["state"] == "paused"
        h.resume()
        assert h.wait(timeout_s=30)["sent"] == 30


def test_cancel_delivery(sim, world, spool_dir):
    cfg = make_config(sim)
    slow_site = site_of(cfg, domains_of(world, "slowpoke")[0])
    rows = recipients(world, 50, ["slowpoke"], prefix="c1-")
    with WorkerPool(cfg, spool=spool_dir) as pool:
        pool.admin.suspend(site=slow_site)
        h = pool.submit(rows, MESSAGE)
        time.sleep(0.5)  # some recipients are leased by the worker, some deferred
        r = _cli("cancel", "--spool", spool_dir, str(h.id))
        assert r.returncode == 0, r.stderr
        st = h.wait(timeout_s=30)  # the pool sweeps what was in flight
        pool.admin.resume(site=slow_site)
        bounces = [e for e in _events(pool, ["bounce"]) if e.delivery_id == h.id]
    assert st["failed"] == 50 and st["sent"] == 0 and st["state"] == "cancelled"
    assert accepted_of(sim, rows) == 0
    reasons = {r.reason for _i, r in pool.spool.recipients(h.id)}
    assert reasons == {"delivery_canceled"}
    assert len(bounces) == 50 and {b.bounce_type for b in bounces} == {"ignored"}
    assert list(pool.spool.quarantine_list()) == []  # an operator cancel quarantines nobody
    assert pool.spool.kpis(h.id).get("failed_canceled") == 50


def test_bounce_site_queue(sim, world, spool_dir):
    cfg = make_config(sim)
    slow_site = site_of(cfg, domains_of(world, "slowpoke")[0])
    slow = recipients(world, 40, ["slowpoke"], prefix="b1-")
    fast = recipients(world, 20, ["fast"], prefix="b1-")
    with WorkerPool(cfg, spool=spool_dir) as pool:
        pool.admin.suspend(site=slow_site)
        h = pool.submit(slow + fast, MESSAGE)
        wait_for(lambda: accepted_of(sim, fast) == 20)
        # loopback-only config for the CLI: DNS = the simulated internet
        conf = os.path.join(os.path.dirname(spool_dir), "dns.toml")
        with open(conf, "w") as f:
            f.write(f"[dns]\nnameservers = {json.dumps(cfg.dns.nameservers)}\n"
                    f"port = {cfg.dns.port}\n")
        r = _cli("admin", "bounce-site", "--spool", spool_dir, "--config", conf, slow_site)
        assert r.returncode == 0, r.stderr
        n = int(r.stdout.split(":")[1].split()[0])
        pool.admin.resume(site=slow_site)
        st = h.wait(timeout_s=30)
    assert 0 < n <= 40  # the rest were held by the worker, which failed them itself
    assert st["sent"] == 20 and st["failed"] == 40
    assert {r.reason for _i, r in pool.spool.recipients(h.id) if r.status_name == "failed"} \
        == {"bounced_by_admin"}
    assert accepted_of(sim, slow) == 0
    assert list(pool.spool.quarantine_list()) == []


def test_inspect_and_top(sim, world, spool_dir):
    cfg = make_config(sim, validity_s=30.0)
    rows = recipients(world, 100, ["fast", "unknownusers", "fullboxes"], prefix="t1-")
    with WorkerPool(cfg, spool=spool_dir) as pool:
        h = pool.submit(rows, MESSAGE)
        wait_for(lambda: any((s.get("last_error") or {}).get("code") == 550
                             for s in pool.status().get("sites", {}).values()))
        r = _cli("admin", "inspect", "--spool", spool_dir, "--json", "--by", "failed")
        assert r.returncode == 0, r.stderr
        data = json.loads(r.stdout)
        r2 = _cli("top", "--spool", spool_dir, "--once")
        h.cancel()
    sites = {s["site"]: s for s in data["sites"]}
    unk = next(s for name, s in sites.items() if "unknownusers" in name)
    assert unk["last_error"]["code"] == 550 and unk["failed"] > 0
    assert unk["limit"] >= 1 and "queue_ms_avg" in unk
    assert data["sites"][0]["failed"] >= data["sites"][-1]["failed"]
    assert r2.returncode == 0 and "unknownusers" in r2.stdout and "workers 1/1" in r2.stdout
