"""Behaviours of the simulated MX hosts, one per provider, seen through the client."""

from __future__ import annotations

import time

import pytest

from fastmta.sim import Behaviour, Provider, SimInternet, World, WorldSpec
from fastmta.smtp.messages import Envelope
from fastmta.smtp.transport import ConnectFailed, Connection
from smtputil import arun, fast_timeouts

SPEC = WorldSpec(name="behaviours", providers=[
    Provider(name="slow", domains=["slow.test"], behaviour=Behaviour(reply_delay_s=0.05)),
    Provider(name="rude", domains=["rude.test"],
             behaviour=Behaviour(greeting="554 5.7.1 mx.rude.test: no SMTP service here")),
    Provider(name="short", domains=["short.test"], behaviour=Behaviour(max_msgs_per_conn=2)),
    Provider(name="small", domains=["small.test"], behaviour=Behaviour(max_size=1000)),
    Provider(name="rated", domains=["rated.test"],
             behaviour=Behaviour(max_msgs_per_min_per_ip=3)),
])
WORLD = World(SPEC)


def ip_of(provider: str) -> str:
    return WORLD.provider_hosts[provider][0].address


def env(to: str, body: bytes = b"hello") -> Envelope:
    return Envelope("s@x.test", [to], body)


def test_slow_server_is_slow_but_works():
    async def go():
        async with SimInternet(WORLD) as sim:
            t = time.monotonic()
            conn = await Connection.open(ip_of("slow"), sim.smtp_port, timeouts=fast_timeouts())
            res = await conn.send(env("a@slow.test"))
            await conn.quit()
            return res, time.monotonic() - t

    res, took = arun(go())
    assert res.ok and took >= 0.05 * 5  # greeting, EHLO, group, dot, QUIT each delayed


def test_refusing_greeting():
    async def go():
        async with SimInternet(WORLD) as sim:
            with pytest.raises(ConnectFailed) as ei:
                await Connection.open(ip_of("rude"), sim.smtp_port, timeouts=fast_timeouts())
            return ei.value

    err = arun(go())
    assert err.kind == "greeting" and err.reply.code == 554 and err.reply.command == "connect"
    assert err.classification.type != "hard"  # a refused connection is not a bad address


def test_messages_per_connection_limit():
    async def go():
        async with SimInternet(WORLD) as sim:
            conn = await Connection.open(ip_of("short"), sim.smtp_port, timeouts=fast_timeouts())
            results = await conn.send_many([env(f"u{i}@short.test") for i in range(4)])
            usable = conn.usable
            await conn.quit()
            return results, usable

    results, usable = arun(go())
    assert [r.ok for r in results] == [True, True, False, False]
    assert results[2].mail_reply.code == 421 and results[2].outcomes[0][2].type == "soft"
    assert not usable


def test_size_limit_is_enforced_locally():
    async def go():
        async with SimInternet(WORLD) as sim:
            conn = await Connection.open(ip_of("small"), sim.smtp_port, timeouts=fast_timeouts())
            assert conn.capabilities.size == 1000
            big, small = await conn.send_many([env("a@small.test", b"x" * 2000),
                                               env("b@small.test")])
            await conn.quit()
            return big, small, await sim.accepted()

    big, small, accepted = arun(go())
    assert big.outcomes[0][1].code == 552 and big.outcomes[0][2].bounce_class == 23
    assert small.ok and accepted == {"b@small.test": 1}


def test_message_rate_per_sender_ip():
    async def go():
        async with SimInternet(WORLD) as sim:
            conn = await Connection.open(ip_of("rated"), sim.smtp_port, timeouts=fast_timeouts())
            results = await conn.send_many([env(f"u{i}@rated.test") for i in range(4)])
            await conn.quit()
            return results, await sim.stats()

    results, stats = arun(go())
    assert [r.ok for r in results] == [True, True, True, False]
    r = results[3].mail_reply
    assert r.code == 421 and r.enhanced == "4.7.28" and "rate" in r.text
    assert results[3].outcomes[0][2].throttle
    assert stats["replies"] == {"421 4.7.28": 1}
