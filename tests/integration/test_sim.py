"""The client, the resolver and the simulated internet together: outcomes match the audit."""

from __future__ import annotations

import asyncio

import pytest

from fastmta.dns.resolver import Resolver
from fastmta.sim import Behaviour, Provider, SimInternet, World, WorldSpec
from fastmta.smtp.messages import Envelope
from fastmta.smtp.transport import ConnectFailed, Connection
from smtputil import arun, fast_timeouts

WORLD = WorldSpec(name="test", greylist_default_s=0.3, providers=[
    Provider(name="fast", domains=["fast.test"], hosts=2, behaviour=Behaviour(starttls=True)),
    Provider(name="lockstep", domains=["lockstep.test"], behaviour=Behaviour(pipelining=False)),
    Provider(name="users", domains=["users.test"],
             behaviour=Behaviour(unknown_user_rate=0.3, mailbox_full_rate=0.2)),
    Provider(name="blocker", domains=["blocked.test"], behaviour=Behaviour(block=True)),
    Provider(name="garbage", domains=["garbage.test"], behaviour=Behaviour(garbage=True)),
    Provider(name="silent", domains=["silent.test"], behaviour=Behaviour(silent=True)),
    Provider(name="dropper", domains=["dropper.test"],
             behaviour=Behaviour(disconnect_in_data_rate=1.0)),
    Provider(name="limited", domains=["limited.test"],
             behaviour=Behaviour(max_conn_per_ip=2, max_rcpts_per_txn=3)),
    Provider(name="grey", domains=["grey.test"], behaviour=Behaviour(greylist_s=0.3)),
    Provider(name="nx", domains=["nx.test"], dns="nxdomain"),
    Provider(name="null", domains=["null.test"], dns="nullmx"),
])


async def deliver(resolver: Resolver, port: int, domain: str, rcpts: list[str], **kw):
    """Minimal delivery of one domain's recipients: returns {rcpt: (status, reply, cls)}."""
    mx = await resolver.resolve_mx(domain)
    if not mx.ok:
        st = "failed" if mx.error.type == "hard" else "soft"
        return {r: (st, None, mx.error) for r in rcpts}
    last = None
    for ip, name in mx.addresses():
        try:
            conn = await Connection.open(ip, port, timeouts=fast_timeouts(**kw),
                                         server_hostname=name)
        except ConnectFailed as exc:
            last = exc
            continue
        res = await conn.send(Envelope("bounce@sender.test", rcpts, b"Subject: t\r\n\r\nhi\r\n"))
        await conn.quit()
        out = {}
        for rcpt, reply, cls in res.outcomes:
            st = "sent" if reply.code < 300 else ("failed" if cls.type == "hard" else "soft")
            out[rcpt] = (st, reply, cls)
        return out
    return {r: ("soft", last.reply, last.classification) for r in rcpts}


RCPTS = {
    "fast.test": ["a@fast.test", "b@fast.test", "unknown-1@fast.test", "full-2@fast.test",
                  "tempfail@fast.test", "disabled@fast.test"],
    "lockstep.test": ["a@lockstep.test", "nouser@lockstep.test", "c@lockstep.test"],
    "users.test": [f"user{i}@users.test" for i in range(30)],
    "blocked.test": ["a@blocked.test"],
    "garbage.test": ["a@garbage.test"],
    "silent.test": ["a@silent.test"],
    "dropper.test": ["a@dropper.test", "b@dropper.test"],
    "nx.test": ["a@nx.test"],
    "null.test": ["a@null.test"],
}


def test_outcomes_match_world_expected():
    world = World(WORLD)

    async def go():
        async with SimInternet(world, keep_messages=True) as sim:
            r = Resolver(sim.dns_config())
            results = {}
            for domain, rcpts in RCPTS.items():
                results.update(await deliver(r, sim.smtp_port, domain, rcpts))
            return results, await sim.accepted(), await sim.messages()

    results, accepted, kept = arun(go(), timeout=30)
    mismatches = []
    for rcpt, (status, reply, _cls) in results.items():
        exp_status, exp_reason = world.expected(rcpt)
        if exp_status != status:
            mismatches.append((rcpt, exp_status, status, reply and reply.raw))
        if exp_reason == "user_unknown":
            assert reply.enhanced == "5.1.1"
    assert not mismatches
    sent = {r for r, (s, _, _) in results.items() if s == "sent"}
    assert accepted == {r: 1 for r in sent}  # delivered exactly once
    assert len(sent) > 10 and any(s == "failed" for s, _, _ in results.values())
    users = [s for r, (s, _, _) in results.items() if r.endswith("@users.test")]
    assert 0 < users.count("failed") < 30 and 0 < users.count("soft") < 30
    assert sum(len(k[1]) for k in kept) == len(sent)
    assert all(k[2] == b"Subject: t\r\n\r\nhi\r\n" for k in kept)


def test_kept_messages_are_unstuffed():
    body = b".first\r\nmiddle\r\n.\r\n..two\r\nlast"

    async def go():
        async with SimInternet(World(WORLD), keep_messages=True) as sim:
            conn = await Connection.open("127.0.1.1", sim.smtp_port, timeouts=fast_timeouts())
            assert (await conn.send(Envelope("s@x.test", ["a@fast.test"], body))).ok
            await conn.quit()
            return await sim.messages()

    [(mail_from, rcpts, got)] = arun(go())
    assert (mail_from, rcpts) == ("s@x.test", ["a@fast.test"])
    assert got == body + b"\r\n"


@pytest.mark.parametrize("pipelining", [True, False])
@pytest.mark.parametrize("tls", ["none", "required"])
def test_many_messages_per_connection(pipelining, tls):
    async def go():
        async with SimInternet(World(WORLD)) as sim:
            conn = await Connection.open("127.0.1.1", sim.smtp_port, pipelining=pipelining,
                                         timeouts=fast_timeouts(tls=tls))
            assert conn.capabilities.pipelining and conn.proto.pipelining is pipelining
            assert conn.tls_active is (tls == "required")
            envs = [Envelope("s@x.test", [f"r{i}@fast.test", f"q{i}@fast.test"], b"m%d" % i)
                    for i in range(40)]
            results = await conn.send_many(envs)
            more = [await conn.send(e) for e in envs[:5]]
            assert await conn.probe()
            await conn.quit()
            return results + more, await sim.accepted()

    results, accepted = arun(go())
    assert all(r.ok and len(r.accepted) == 2 for r in results)
    assert sum(accepted.values()) == 90 and accepted["r0@fast.test"] == 2


def test_lockstep_server():
    async def go():
        async with SimInternet(World(WORLD)) as sim:
            conn = await Connection.open("127.0.1.3", sim.smtp_port, timeouts=fast_timeouts())
            assert not conn.capabilities.pipelining
            res = await conn.send_many([Envelope("s@x.test", ["a@lockstep.test"], b"x")] * 3)
            await conn.quit()
            return res

    assert all(r.ok for r in arun(go()))


def test_greylisting_then_accepted():
    async def go():
        async with SimInternet(World(WORLD)) as sim:
            r = Resolver(sim.dns_config())
            first = await deliver(r, sim.smtp_port, "grey.test", ["a@grey.test"])
            await asyncio.sleep(0.35)  # the greylist delay itself is what is tested
            second = await deliver(r, sim.smtp_port, "grey.test", ["a@grey.test"])
            return first, second

    first, second = arun(go())
    st, reply, cls = first["a@grey.test"]
    assert st == "soft" and reply.code == 450 and cls.type == "soft"
    assert second["a@grey.test"][0] == "sent"


def test_connection_limit_per_sender_ip_and_too_many_recipients():
    async def go():
        async with SimInternet(World(WORLD)) as sim:
            ip = World(WORLD).provider_hosts["limited"][0].address
            c1 = await Connection.open(ip, sim.smtp_port, timeouts=fast_timeouts())
            c2 = await Connection.open(ip, sim.smtp_port, timeouts=fast_timeouts())
            with pytest.raises(ConnectFailed) as ei:
                await Connection.open(ip, sim.smtp_port, timeouts=fast_timeouts())
            res = await c1.send(Envelope("s@x.test", [f"u{i}@limited.test" for i in range(5)],
                                         b"x"))
            await c1.quit()
            await c2.quit()
            return ei.value, res

    err, res = arun(go())
    assert err.kind == "greeting" and err.reply.code == 421 and err.reply.enhanced == "4.3.2"
    assert err.classification.type == "soft"
    assert [rep.code for rep in res.rcpt_replies] == [250, 250, 250, 452, 452]
    assert len(res.accepted) == 3


def test_worker_processes_count_exactly():
    async def go():
        async with SimInternet(World(WORLD), workers=2) as sim:
            conns = [await Connection.open(f"127.0.1.{1 + i % 2}", sim.smtp_port,
                                           timeouts=fast_timeouts()) for i in range(4)]
            envs = [[Envelope("s@x.test", [f"w{c}-{i}@fast.test"], b"x" * 3000)
                     for i in range(50)] for c in range(4)]
            results = await asyncio.gather(*(c.send_many(e) for c, e in zip(conns, envs, strict=True)))
            for c in conns:
                await c.quit()
            return results, await sim.accepted(), await sim.stats()

    results, accepted, stats = arun(go(), timeout=60)
    assert all(r.ok for rs in results for r in rs)
    assert len(accepted) == 200 and set(accepted.values()) == {1}
    assert stats["messages"] == 200 and stats["connections"] == 4


def test_source_ip_is_used_and_limits_are_per_sender_ip():
    async def go():
        async with SimInternet(World(WORLD)) as sim:
            ip = World(WORLD).provider_hosts["limited"][0].address
            cfg = fast_timeouts()
            a = [await Connection.open(ip, sim.smtp_port, source_ip="127.0.0.2", timeouts=cfg)
                 for _ in range(2)]
            with pytest.raises(ConnectFailed):
                await Connection.open(ip, sim.smtp_port, source_ip="127.0.0.2", timeouts=cfg)
            b = await Connection.open(ip, sim.smtp_port, source_ip="127.0.0.3", timeouts=cfg)
            addrs = [c.local_address[0] for c in a + [b]]
            for c in a + [b]:
                await c.quit()
            return addrs

    assert arun(go()) == ["127.0.0.2", "127.0.0.2", "127.0.0.3"]


CHUNK_WORLD = WorldSpec(name="chunk", providers=[
    Provider(name="chunky", domains=["chunky.test"], behaviour=Behaviour(chunking=True)),
    Provider(name="plain", domains=["plain.test"]),
])


@pytest.mark.parametrize("provider,expect_bdat", [("chunky", True), ("plain", False)])
def test_bdat_against_the_sim(provider, expect_bdat):
    body = b".leading dot\r\nline\nbare lf\r\n"
    world = World(CHUNK_WORLD)

    async def go():
        async with SimInternet(world, keep_messages=True) as sim:
            ip = world.provider_hosts[provider][0].address
            conn = await Connection.open(ip, sim.smtp_port,
                                         timeouts=fast_timeouts(chunking=True))
            assert conn.proto.chunking is expect_bdat
            envs = [Envelope("s@x.test", [f"a{i}@{provider}.test", f"unknown{i}@x.test",
                                          f"b{i}@{provider}.test"], body) for i in range(30)]
            envs.append(Envelope("s@x.test", ["unknown-only@x.test"], body))
            envs.append(Envelope("s@x.test", ["last@x.test"], body))
            results = await conn.send_many(envs)
            await conn.quit()
            return results, await sim.accepted(), await sim.messages()

    results, accepted, kept = arun(go())
    assert all(len(r.accepted) == 2 for r in results[:30])
    assert not results[30].ok and results[30].outcomes[0][1].code == 550
    assert results[31].ok  # the RSET after the refused transaction kept the next one clean
    assert sum(accepted.values()) == 61
    assert {k[2] for k in kept} == {b".leading dot\r\nline\r\nbare lf\r\n"}
