"""``fastmta demo --feedback``: VERP on, the inbound listener published in the sim DNS,
and the simulated providers' asynchronous feedback after the run (docs/feedback.md)."""

from __future__ import annotations

import msgspec

BOUNCE_DOMAIN = "bounces.demo.test"
LISTENER_IP = "127.0.9.1"


async def start_feedback(sim, cfg, spool):
    from fastmta.feedback.listener import InboundServer

    fb = msgspec.structs.replace(cfg.feedback, enabled=True, domains=[BOUNCE_DOMAIN],
                                 unsubscribe_url="https://unsubscribe.demo.test")
    cfg = msgspec.structs.replace(cfg, feedback=fb)
    srv = InboundServer(cfg, spool)
    await srv.start(LISTENER_IP, sim.smtp_port)
    sim.add_mx(BOUNCE_DOMAIN, "mx." + BOUNCE_DOMAIN, LISTENER_IP)
    return cfg, srv


async def send_feedback(sim, srv) -> dict[str, int]:
    from fastmta.sim.feedback import FeedbackSpec, plan, send

    items = plan(await sim.messages(), FeedbackSpec())
    try:
        counts = await send(items, sim.dns_config(), sim.smtp_port)
    finally:
        await srv.close()
    kinds: dict[str, int] = {}
    for i in items:
        kinds[i.kind] = kinds.get(i.kind, 0) + 1
    return {**kinds, **{f"smtp_{k}": v for k, v in counts.items()}}
