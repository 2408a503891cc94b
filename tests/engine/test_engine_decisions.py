"""The engine acts on the classification's scope and action (engine/decisions.py),
against the simulated MX hosts: a recipient-scope limit defers that recipient only, a
reputation block suspends the site, a generic 421 does not cut the connection limit."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest
from engine_helpers import make_config

from fastmta.delivery import Template
from fastmta.dns.resolver import MxHost, MxResult
from fastmta.engine.scheduler import Scheduler
from fastmta.engine.sites import Job
from fastmta.records import WorkItem
from fastmta.sim import SimInternet
from fastmta.sim.world import Behaviour, Provider, World, WorldSpec

BODY = b"From: a@sender.example\r\nTo: x@y\r\nSubject: t\r\n\r\nhello\r\n"


def work(emails: list[str]) -> list[WorkItem]:
    exp = int(time.time() * 1000) + 600_000
    return [WorkItem(key=i.to_bytes(8, "big"), delivery_id=1, rcpt_id=i, email=e, shard=0,
                     mail_from="a@sender.example", expires_ms=exp)
            for i, e in enumerate(emails)]


async def run(sim, world, provider, domain, items, wait_for, max_rcpts=0, **shaping):
    h = world.provider_hosts[provider][0]
    mx = MxResult(domain=domain, site=h.name, hosts=[MxHost(h.name, 10, [h.address])])
    cfg = make_config(sim, **shaping)
    if max_rcpts:
        cfg = msgspec.structs.replace(
            cfg, smtp=msgspec.structs.replace(cfg.smtp, max_rcpts_per_txn=max_rcpts))
    results = []
    done = asyncio.Event()

    def on_result(job, res):
        results.append(res)
        if len(results) >= wait_for:
            done.set()

    tpl = Template(BODY)
    sched = Scheduler(cfg, [], on_result, lambda it: tpl.render({"email": it.email}),
                      is_static=lambda did: True)
    site = sched.site_for(mx)
    start_limit = site.shaper.limit
    for it in items:
        sched.enqueue(site, Job(it))
    await asyncio.wait_for(done.wait(), 30)
    await sched.stop()
    return sched, site, results, start_limit, await sim.stats()


@pytest.mark.timeout(60)
def test_recipient_rate_limit_defers_only_that_recipient():
    world = World(WorldSpec(providers=[Provider(
        name="rcptlimit", domains=["rl.test"], behaviour=Behaviour(max_msgs_per_rcpt=2))]))
    emails = [f"u{i}@rl.test" for i in range(60)] + ["hot@rl.test"] * 10

    async def go():
        async with SimInternet(world) as sim:
            return await run(sim, world, "rcptlimit", "rl.test", work(emails), len(emails))

    sched, site, results, start_limit, stats = asyncio.run(go())
    by = {}
    for r in results:
        by.setdefault(r.outcome, []).append(r)
    hot_keys = {i.to_bytes(8, "big") for i in range(60, 70)}
    sent_hot = [r for r in by.get("sent", []) if r.key in hot_keys]
    soft_hot = [r for r in by.get("soft", []) if r.key in hot_keys]
    assert len(by["sent"]) == 62 and len(sent_hot) == 2  # everyone else went through
    assert len(soft_hot) == 8 and all(r.code == 450 and r.enhanced == "4.2.1" for r in soft_hot)
    assert all(r.next_attempt_ms > r.time_ms for r in soft_hot)  # its own retry backoff
    assert sched.stats["deferred_recipient"] == 8
    # the site kept its speed: no throttle, no cut, no suspension
    assert site.throttled == 0 and site.shaper.throttles == 0
    assert site.shaper.ceiling is None and site.shaper.limit >= start_limit
    assert not site.shaper.suspended(sched.now())
    assert stats["replies"].get("450 4.2.1", 0) == 8


@pytest.mark.timeout(60)
def test_reputation_block_suspends_the_site_and_bounces_nobody():
    world = World(WorldSpec(providers=[Provider(
        name="blocker", domains=["blk.test"], behaviour=Behaviour(block=True))]))
    emails = [f"u{i}@blk.test" for i in range(50)]

    async def go():
        async with SimInternet(world) as sim:
            return await run(sim, world, "blocker", "blk.test", work(emails), len(emails))

    sched, site, results, _, stats = asyncio.run(go())
    assert site.shaper.suspended(sched.now()) and site.shaper.blocks >= 1
    assert not [r for r in results if r.outcome == "hard"]  # the recipients may be valid
    assert site.throttled >= 1  # counted as the strongest slow-down signal
    assert stats["replies"].get("550 5.7.1", 0) <= 5  # not retried for every message


@pytest.mark.timeout(60)
def test_generic_421_does_not_cut_the_connection_limit():
    world = World(WorldSpec(providers=[Provider(
        name="flaky", domains=["flaky.test"], behaviour=Behaviour(transient_421_every=7))]))
    emails = [f"u{i}@flaky.test" for i in range(80)]

    async def go():
        async with SimInternet(world) as sim:
            return await run(sim, world, "flaky", "flaky.test", work(emails), len(emails),
                             max_rcpts=1, initial_connections=4)

    sched, site, results, start_limit, stats = asyncio.run(go())
    soft = [r for r in results if r.outcome == "soft"]
    # both kinds of generic 421 happened: refused greetings and 421 to MAIL FROM
    assert stats["replies"].get("421 4.3.0", 0) >= 1 and stats["replies"].get("421 4.3.2", 0) >= 1
    assert soft and all(r.code == 421 for r in soft)
    assert sched.stats["connect_failed"] >= 1
    assert site.throttled == 0 and site.shaper.throttles == 0
    assert site.shaper.ceiling is None and site.shaper.limit >= start_limit == 4


SESSION_CAP_RULE = '''
[[rule]]
name = "operator-session-cap"
source = "test: an operator rule for a per-session message cap"
code = ["421"]
text = ["too many messages for this session"]
bounce_class = 70
type = "soft"
reason = "unreachable"
'''


@pytest.mark.timeout(60)
@pytest.mark.parametrize("effect", [True, False], ids=["with-effect", "without-effect"])
def test_an_operator_rule_carries_the_session_cap_effect(tmp_path, effect):
    """The engine reads the rule's ``effect`` field, not its name: an operator rule (tried
    before the packaged ones) with ``effect = "session_cap"`` makes the engine learn the
    server's per-session cap and send the rest on new connections; the same rule without
    the effect leaves ordinary soft failures."""
    from fastmta import core

    f = tmp_path / "ops.toml"
    f.write_text(SESSION_CAP_RULE + ('effect = "session_cap"\n' if effect else ""))
    world = World(WorldSpec(providers=[Provider(
        name="capped", domains=["cap.test"], behaviour=Behaviour(max_msgs_per_conn=3))]))
    emails = [f"u{i}@cap.test" for i in range(20)]

    async def go():
        async with SimInternet(world) as sim:
            return await run(sim, world, "capped", "cap.test", work(emails), len(emails),
                             max_rcpts=1, initial_connections=2)

    core.load_rules([str(f)])
    try:
        assert core.classify("421 4.7.0 Too many messages for this session",
                             "mail").rule == "operator-session-cap"
        sched, site, results, _, stats = asyncio.run(go())
    finally:
        core.load_rules([])
    outcomes = [r.outcome for r in results]
    if effect:
        assert outcomes.count("sent") == 20 and site.msgs_cap == 3
    else:
        assert outcomes.count("soft") >= 1 and not site.msgs_cap
        assert {(r.code, r.enhanced) for r in results if r.outcome == "soft"} == {(421, "4.7.0")}
    assert site.throttled == 0  # a session cap is never a throttle
