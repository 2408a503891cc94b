"""The sim's per-second hidden cap (``conn_msgs_per_s`` x ``max_conn_per_ip``) and its
over-cap penalty, through real sockets: each connection's acceptances are answered at
the pace, in order; a connection over the cap gets Exchange's 421 4.3.2 and the IP is
served at half the pace for ``over_cap_penalty_s``."""

from __future__ import annotations

import asyncio
import time

import pytest

from fastmta.sim import SimInternet
from fastmta.sim.world import Behaviour, Provider, World, WorldSpec

PACE = 20.0  # acceptances per second per connection


def world() -> World:
    beh = Behaviour(max_conn_per_ip=2, conn_msgs_per_s=PACE, over_cap_penalty_s=1.0)
    return World(WorldSpec(name="tarpit", providers=[
        Provider(name="paced", domains=["paced.test"], behaviour=beh)]))


async def session(host: str, port: int):
    r, w = await asyncio.open_connection(host, port)
    greeting = await r.readline()
    return r, w, greeting


async def flight(r, w, n: int) -> list[float]:
    """``n`` pipelined transactions; the times of their ``250 ... queued`` replies."""
    cmds = b"".join(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<u%d@paced.test>\r\nDATA\r\n"
                    b"Subject: x\r\n\r\nhi\r\n.\r\n" % i for i in range(n))
    w.write(b"EHLO me\r\n" + cmds)
    t0, out = time.monotonic(), []
    while len(out) < n:
        line = await r.readline()
        assert line, "connection closed"
        if b"queued" in line:
            out.append(time.monotonic() - t0)
    return out


@pytest.mark.timeout(30)
def test_paced_connections_cap_and_penalty():
    w0 = world()

    async def go():
        async with SimInternet(w0) as sim:
            host = w0.provider_hosts["paced"][0].address
            port = sim.smtp_port
            r1, w1, g1 = await session(host, port)
            assert g1.startswith(b"220")
            times = await flight(r1, w1, 10)
            # 10 acceptances at 20/s: the first at once, the last after ~9 intervals
            assert times == sorted(times)
            assert 9 / PACE * 0.9 <= times[-1] - times[0] <= 9 / PACE * 2 + 0.3
            r2, w2, g2 = await session(host, port)
            r3, w3, g3 = await session(host, port)  # the third: over the cap
            assert g2.startswith(b"220")
            assert g3.startswith(b"421 4.3.2 The maximum number of concurrent server")
            w3.close()
            slow = await flight(r2, w2, 6)  # during the penalty: half the pace
            assert slow[-1] - slow[0] >= 5 * 2 / PACE * 0.9
            await asyncio.sleep(1.1)  # the penalty is over
            fast = await flight(r2, w2, 6)
            assert fast[-1] - fast[0] < 5 * 2 / PACE * 0.9
            for w in (w1, w2):
                w.close()
            st = await sim.stats()
            assert st["replies"].get("421 4.3.2") == 1

    asyncio.run(go())
