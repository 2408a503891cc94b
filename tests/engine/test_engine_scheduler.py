"""The scheduler alone (in the test's event loop) against the simulated MX hosts:
MX fallback by preference, block -> site suspension, multi-recipient transactions."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest
from engine_helpers import make_config

from fastmta.config import ProviderConfig, ShapingRule
from fastmta.delivery import Template
from fastmta.dns.resolver import MxHost, MxResult
from fastmta.engine.scheduler import Scheduler
from fastmta.engine.sites import Job
from fastmta.records import WorkItem
from fastmta.sim import SimInternet
from fastmta.sim.world import Behaviour, Provider, World, WorldSpec

BODY = b"From: a@sender.example\r\nTo: x@y\r\nSubject: t\r\n\r\nhello\r\n"


def items(domain: str, n: int) -> list[WorkItem]:
    exp = int(time.time() * 1000) + 600_000
    return [WorkItem(key=i.to_bytes(8, "big"), delivery_id=1, rcpt_id=i, email=f"u{i}@{domain}",
                     shard=0, mail_from="a@sender.example", expires_ms=exp)
            for i in range(n)]


async def run_jobs(sim, mx: MxResult, work: list[WorkItem], *, wait_for: int,
                   timeout_s: float = 20.0, providers=(), max_rcpts: int = 0, **shaping):
    cfg = make_config(sim, **shaping)
    if max_rcpts:
        cfg = msgspec.structs.replace(
            cfg, smtp=msgspec.structs.replace(cfg.smtp, max_rcpts_per_txn=max_rcpts))
    results = []
    done = asyncio.Event()

    def on_result(job: Job, res) -> None:
        results.append(res)
        if len(results) >= wait_for:
            done.set()

    tpl = Template(BODY)
    sched = Scheduler(cfg, list(providers), on_result, lambda it: tpl.render({"email": it.email}),
                      is_static=lambda did: True)
    site = sched.site_for(mx)
    for it in work:
        sched.enqueue(site, Job(it))
    await asyncio.wait_for(done.wait(), timeout_s)
    await sched.stop()
    return sched, site, results


def mx_of(world: World, provider: str, domain: str) -> tuple[str, str]:
    h = world.provider_hosts[provider][0]
    return h.name, h.address


@pytest.mark.timeout(60)
def test_mx_fallback_by_preference():
    world = World(WorldSpec(providers=[Provider(name="good", domains=["good.test"])]))

    async def go():
        async with SimInternet(world) as sim:
            name, addr = mx_of(world, "good", "good.test")
            # the preferred MX refuses connections (nothing listens on 127.0.0.254)
            mx = MxResult(domain="good.test", site="dead.good.test," + name, hosts=[
                MxHost("dead.good.test", 5, ["127.0.0.254"]), MxHost(name, 10, [addr])])
            sched, site, results = await run_jobs(sim, mx, items("good.test", 30),
                                                  wait_for=30)
            return sched, site, results, await sim.accepted()

    sched, site, results, accepted = asyncio.run(go())
    assert [r.outcome for r in results] == ["sent"] * 30
    assert all("127.0.0.254" not in r.mx for r in results)
    assert site.host_down.get("127.0.0.254", 0) > 0  # the dead MX is skipped for a while
    assert len(accepted) == 30
    # identical bodies: recipients shared transactions
    assert sched.stats["attempts"] == 30 and sched.stats["connections"] <= 4


@pytest.mark.timeout(60)
def test_block_suspends_the_site_instead_of_trying_everyone():
    world = World(WorldSpec(providers=[
        Provider(name="blocker", domains=["blocked.test"], behaviour=Behaviour(block=True))]))

    async def go():
        async with SimInternet(world) as sim:
            name, addr = mx_of(world, "blocker", "blocked.test")
            mx = MxResult(domain="blocked.test", site=name, hosts=[MxHost(name, 10, [addr])])
            sched, site, results = await run_jobs(sim, mx, items("blocked.test", 200),
                                                  wait_for=200)
            return sched, site, results, await sim.stats()

    sched, site, results, stats = asyncio.run(go())
    outcomes = [r.outcome for r in results]
    assert site.shaper.suspended(sched.now())
    soft = [r for r in results if r.outcome == "soft"]
    assert soft and all(r.reason == "refused" and r.code == 550 for r in soft)
    # one transaction (100 recipients) got the block; the rest of the pipelined flight
    # and the queue wait for the site without counting an attempt
    assert len(soft) == 100
    assert outcomes.count("defer") == 100
    assert stats["replies"].get("550 5.7.1", 0) <= 10


@pytest.mark.timeout(60)
def test_provider_rule_bounces_the_sites_queue():
    """A [[providers]] rule (regex on the reply -> bounce for a duration) turns the
    provider's block reply into hard failures for everything queued to the site."""
    world = World(WorldSpec(providers=[
        Provider(name="blocker", domains=["blocked.test"], behaviour=Behaviour(block=True))]))
    rule = ShapingRule(name="blocklisted", pattern=r"on our block list \(S3150\)",
                       action="bounce", duration_s=60)
    provider = ProviderConfig(name="blockco", mx_suffixes=["blocker.sim.test"], rules=[rule])

    async def go():
        async with SimInternet(world) as sim:
            name, addr = mx_of(world, "blocker", "blocked.test")
            mx = MxResult(domain="blocked.test", site=name, hosts=[MxHost(name, 10, [addr])])
            sched, site, results = await run_jobs(sim, mx, items("blocked.test", 50),
                                                  wait_for=50, providers=[provider])
            return sched, site, results

    sched, site, results = asyncio.run(go())
    assert site.provider is provider
    assert site.shaper.bouncing(sched.now()) is not None
    hard = [r for r in results if r.outcome == "hard"]
    assert len(hard) == 50 and all(r.reason == "refused" for r in hard)


@pytest.mark.timeout(90)
def test_rate_throttle_while_flights_wait_does_not_stall_the_site():
    """A rate throttle on one connection while others hold pipelined flights of several
    messages: only a single probe may go, so the others give their flights back to the
    queue (they used to wait for a probe nobody sent).  Everything is delivered, and the
    learned rate keeps refusals rare."""
    world = World(WorldSpec(providers=[Provider(name="rated", domains=["rated.test"],
        behaviour=Behaviour(max_msgs_per_min_per_ip=150, rate_window_s=3.0,
                            reply_delay_s=0.005))]))
    n = 600

    async def go():
        async with SimInternet(world) as sim:
            name, addr = mx_of(world, "rated", "rated.test")
            mx = MxResult(domain="rated.test", site=name, hosts=[MxHost(name, 10, [addr])])
            sched, site, results = await run_jobs(
                sim, mx, items("rated.test", n), wait_for=n, timeout_s=60.0, max_rcpts=1,
                initial_connections=4, rate_window_s=3.0, probe_interval_s=3.0)
            return sched, site, results, await sim.stats()

    sched, site, results, stats = asyncio.run(go())
    sent = [r for r in results if r.outcome == "sent"]
    assert len(sent) == n
    assert site.shaper.rate_ceiling is not None  # it learned a rate (~50/s)
    refused = stats["replies"].get("421 4.7.28", 0)
    assert refused <= 0.1 * n
