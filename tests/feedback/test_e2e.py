"""End to end on real sockets: the engine sends through the simulated internet with VERP
return paths; simulated providers later send DSNs (5%), ARF complaints (0.5%) and
auto-replies to the return path's MX (the listener, found through the sim DNS); every
one is matched and applied exactly once, and the KPIs equal a recount."""

from __future__ import annotations

import asyncio
import os
import sys
from collections import Counter

import msgspec
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "engine"))

from engine_helpers import inject, make_config, write_inputs  # noqa: E402

from fastmta.engine import entry as engine  # noqa: E402
from fastmta.feedback import tokens as tk  # noqa: E402
from fastmta.feedback.listener import InboundServer  # noqa: E402
from fastmta.records import FeedbackEvent, Status  # noqa: E402
from fastmta.sim import SimInternet  # noqa: E402
from fastmta.sim.feedback import FeedbackSpec, plan, send  # noqa: E402
from fastmta.sim.world import Provider, World, WorldSpec  # noqa: E402
from fastmta.spool import Spool  # noqa: E402

N = 3000
BOUNCE_DOMAIN = "bounces.sim.test"
LISTENER_IP = "127.0.9.1"


@pytest.mark.timeout(240)
def test_async_feedback_end_to_end(tmp_path):
    world = World(WorldSpec(name="fb", providers=[
        Provider(name="alpha", generate=20, hosts=1),
        Provider(name="beta", generate=10, hosts=1),
    ]))
    rcpt, msg, emails = write_inputs(tmp_path, world, N)
    spec = FeedbackSpec(bounce_rate=0.05, complaint_rate=0.005, autoreply_rate=0.01)

    async def go():
        async with SimInternet(world, keep_messages=True) as sim:
            base = make_config(sim, validity_s=30.0)
            fb = msgspec.structs.replace(base.feedback, enabled=True, domains=[BOUNCE_DOMAIN],
                                         unsubscribe_url="https://u.sim.test")
            cfg = msgspec.structs.replace(base, feedback=fb)
            spool_path = tmp_path / "spool"
            spool = Spool.open(spool_path, cfg.spool)
            srv = InboundServer(cfg, spool)
            await srv.start(LISTENER_IP, sim.smtp_port)
            sim.add_mx(BOUNCE_DOMAIN, "mx." + BOUNCE_DOMAIN, LISTENER_IP)
            try:
                did = await inject(spool, cfg, rcpt, msg, 30.0)
                await asyncio.wait_for(engine.run(cfg, spool_path, [did]), 150)
                messages = await sim.messages()
                feedback = plan(messages, spec)
                sent1 = await send(feedback, sim.dns_config(), sim.smtp_port)
                sent2 = await send(feedback, sim.dns_config(), sim.smtp_port)  # replayed
            finally:
                await srv.close()
            return spool, did, messages, feedback, sent1, sent2

    spool, did, messages, feedback, sent1, sent2 = asyncio.run(go())
    key = spool.feedback_key()
    # every message carried a signed VERP return path and the same token in its Message-ID
    assert len(messages) == N
    for mail_from, rcpts, body in messages:
        assert len(rcpts) == 1
        local, _, dom = mail_from.partition("@")
        assert dom == BOUNCE_DOMAIN and local.startswith("b-")
        ids = tk.verify(key, local[2:])
        assert ids is not None and spool.recipient(*ids).email == rcpts[0]
        head = body.split(b"\r\n\r\n", 1)[0]
        assert f"Message-ID: <m-{local[2:]}@{BOUNCE_DOMAIN}>".encode() in head
        assert f"/u/{local[2:]}>, <mailto:u-{local[2:]}@".encode() in head
        assert b"List-Unsubscribe-Post: List-Unsubscribe=One-Click" in head
    kinds = Counter(f.kind for f in feedback)
    assert kinds["dsn"] >= 0.03 * N and kinds["arf"] >= 5 and kinds["autoreply"] >= 10
    assert sent1 == {"sent": len(feedback)} and sent2 == sent1
    # every item matched and applied once; the replay changed nothing
    recs = list(spool.inbound_list())
    assert len(recs) == 2 * len(feedback)
    first, second = recs[: len(feedback)], recs[len(feedback):]
    assert all(r.matched for r in recs)
    eff = Counter(r.effect for r in first)
    assert eff == {"failed": kinds["dsn"], "complained": kinds["arf"],
                   "recorded": kinds["autoreply"]}
    assert Counter(r.effect for r in second) == {"duplicate": len(feedback)}
    bounced = {f.rcpt for f in feedback if f.kind == "dsn"}
    complained = {f.rcpt for f in feedback if f.kind == "arf"}
    rows = [r for _, r in spool.recipients(did)]
    for r in rows:
        assert (r.status == Status.FAILED) == (r.email in bounced)
        assert ("complained" in r.feedback) == (r.email in complained)
    evs = Counter(ev.kind for _, ev in spool.events() if isinstance(ev, FeedbackEvent))
    assert evs == {"bounce_async": len(bounced), "complaint": len(complained),
                   "autoreply": kinds["autoreply"]}
    k = spool.kpis(did)
    assert k["sent"] == sum(r.status == Status.SENT for r in rows) == N - len(bounced)
    assert k["failed"] == sum(r.status == Status.FAILED for r in rows) == len(bounced)
    assert k["async_bounces"] == len(bounced) and k["complaints"] == len(complained)
    assert k["autoreplies"] == kinds["autoreply"]
    for e in bounced:
        assert spool.quarantine_get(e).state == "quarantined"
    for e in complained:
        q = spool.quarantine_get(e)
        assert q.state == "denylisted" and q.reason == "complaint"


@pytest.mark.timeout(240)
def test_feedback_sent_while_the_delivery_runs(tmp_path):
    """The sim's providers send their feedback during the run (``LiveFeedback``): DSNs
    for messages accepted early arrive while the engine still delivers (one greylisted
    recipient keeps the run going); each is applied once, KPIs equal a recount."""
    from fastmta.sim.feedback import LiveFeedback, start_listener

    n = 1500
    world = World(WorldSpec(name="fb-live", greylist_default_s=4.0, providers=[
        Provider(name="alpha", generate=10, hosts=1)]))
    rcpt, msg, _ = write_inputs(tmp_path, world, n)
    with open(rcpt, "a") as f:
        f.write(f"greylist@{world.domains[0]},late\n")
    spec = FeedbackSpec(bounce_rate=0.05, complaint_rate=0.005, autoreply_rate=0.01)

    async def go():
        async with SimInternet(world, keep_messages=True) as sim:
            base = make_config(sim, validity_s=60.0)
            spool_path = tmp_path / "spool"
            spool = Spool.open(spool_path, base.spool)
            cfg, srv = await start_listener(sim, base, spool)
            live = LiveFeedback(sim, srv, spec, interval_s=0.2, delay_s=0.5).start()
            try:
                did = await inject(spool, cfg, rcpt, msg, 60.0)
                await asyncio.wait_for(engine.run(cfg, spool_path, [did]), 150)
            finally:
                audit = await live.finish()
            return spool, did, audit, live.items

    spool, did, audit, items = asyncio.run(go())
    assert audit["sent_during_run"] > 0, audit  # interleaved with the delivery
    assert audit["all_applied_once"], audit
    assert audit["smtp"] == {"sent": len(items)}
    bounced = {f.rcpt for f in items if f.kind == "dsn"}
    complained = {f.rcpt for f in items if f.kind == "arf"}
    assert len(bounced) >= 0.03 * n
    rows = [r for _, r in spool.recipients(did)]
    for r in rows:
        assert (r.status == Status.FAILED) == (r.email in bounced), r
        assert ("complained" in r.feedback) == (r.email in complained)
    k = spool.kpis(did)
    assert k["sent"] == sum(r.status == Status.SENT for r in rows) == n + 1 - len(bounced)
    assert k["failed"] == len(bounced) == k["async_bounces"]
    assert k["complaints"] == len(complained)
