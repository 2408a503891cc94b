"""``fastmta demo --feedback``: VERP on, the inbound listener published in the sim DNS,
and the simulated providers' asynchronous feedback after the run (docs/feedback.md)."""

from __future__ import annotations


async def start_feedback(sim, cfg, spool):
    from fastmta.sim.feedback import start_listener

    return await start_listener(sim, cfg, spool)


async def send_feedback(sim, srv) -> dict:
    from fastmta.sim.feedback import run_feedback

    return await run_feedback(sim, srv)
