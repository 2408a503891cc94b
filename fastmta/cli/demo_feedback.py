"""``fastmta demo --feedback``: VERP on, the inbound listener published in the sim DNS,
and the simulated providers' asynchronous feedback, sent while the delivery runs
(docs/feedback.md)."""

from __future__ import annotations


async def start_feedback(sim, cfg, spool):
    """(cfg with VERP on, the running ``LiveFeedback``)."""
    from fastmta.sim.feedback import LiveFeedback, start_listener

    cfg, srv = await start_listener(sim, cfg, spool)
    return cfg, LiveFeedback(sim, srv).start()


async def send_feedback(sim, live) -> dict:
    """The rest of the feedback, then the audit (the listener is closed)."""
    return await live.finish()
