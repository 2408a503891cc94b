"""The simulated MX hosts and DNS server survive bad clients (no exception reaches the loop)."""

from __future__ import annotations

import asyncio

import dns.asyncquery
import dns.message
import dns.rdatatype

from fastmta.dns.resolver import Resolver
from fastmta.sim import Behaviour, Provider, SimInternet, World, WorldSpec
from fastmta.smtp.messages import Envelope
from fastmta.smtp.transport import Connection
from smtputil import arun, fast_timeouts

WORLD = World(WorldSpec(providers=[
    Provider(name="p", domains=["p.test"], behaviour=Behaviour(chunking=True)),
]))


async def talk(port: int, data: bytes, read_until_close: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.1.1", port)
    try:
        writer.write(data)
        await writer.drain()
        if read_until_close:
            return await asyncio.wait_for(reader.read(), 5)
        await asyncio.sleep(0.1)
        return await reader.read(65536)
    finally:
        writer.close()
        await writer.wait_closed()


def test_bad_commands_get_errors_and_the_server_keeps_serving():
    async def go():
        async with SimInternet(WORLD) as sim:
            port = sim.smtp_port
            out1 = await talk(port, b"HELLO\r\nMAIL FROM:<a@b>\r\nEHLO x\r\nRCPT TO:<a@p.test>\r\n"
                                    b"MAIL FROM:broken\r\nDATA\r\nBDAT x\r\nBDAT 5\r\n12345"
                                    b"QUIT\r\n")
            out2 = await talk(port, b"EHLO x\r\n" + b"A" * 10000 + b"\r\n")
            out3 = await talk(port, b"\x00\xff\xfe garbage \r\n\r\n\n\nQUIT\r\n")
            conn = await Connection.open("127.0.1.1", port, timeouts=fast_timeouts())
            ok = (await conn.send(Envelope("s@x.test", ["a@p.test"], b"x"))).ok
            await conn.quit()
            return out1, out2, out3, ok, await sim.accepted()

    out1, out2, out3, ok, accepted = arun(go())
    codes = [line[:3] for line in out1.split(b"\r\n") if line[:1].isdigit()]
    # greeting, HELLO, MAIL before EHLO, EHLO (multi-line), RCPT without MAIL, bad MAIL,
    # DATA without MAIL, bad BDAT, BDAT without MAIL (after its 5 octets), QUIT
    assert codes[0] == b"220" and codes[1] == b"500" and codes[2] == b"503"
    assert b"501 5.5.4" in out1 and out1.count(b"503 5.5.1") >= 3 and out1.endswith(b"221 2.0.0 Bye\r\n")
    assert b"500 5.5.2 Line too long" in out2
    assert out3.endswith(b"221 2.0.0 Bye\r\n")
    assert ok and accepted == {"a@p.test": 1}


def test_dns_over_tcp_and_malformed_queries():
    async def go():
        async with SimInternet(WORLD) as sim:
            q = dns.message.make_query("p.test", dns.rdatatype.MX)
            tcp = await dns.asyncquery.tcp(q, "127.0.0.1", port=sim.dns_port, timeout=2)
            loop = asyncio.get_running_loop()
            tr, _ = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, remote_addr=("127.0.0.1", sim.dns_port))
            tr.sendto(b"\x00\x01garbage")  # dropped, must not break the server
            tr.close()
            r = Resolver(sim.dns_config(ipv6=True))  # AAAA: NODATA, A still used
            mx = await r.resolve_mx("p.test")
            return tcp, mx

    tcp, mx = arun(go())
    assert tcp.answer and tcp.answer[0].rdtype == dns.rdatatype.MX
    assert mx.ok and mx.hosts[0].addresses == ["127.0.1.1"]


def test_dns_wire_fast_path_matches_dnspython_answers():
    from fastmta.sim import load_world
    from fastmta.sim.dns import Zone

    zone = Zone(load_world("default"))
    names = list(zone.wire)
    assert len(names) > 20
    for name in names:
        for rdtype in (dns.rdatatype.MX, dns.rdatatype.A):
            for edns in (None, 0):
                q = dns.message.make_query(name, rdtype, use_edns=edns)
                wire = q.to_wire()
                fast = zone.fast_answer(wire)
                slow, delay = zone.answer(q)
                if fast is None:
                    assert rdtype not in zone.wire[name]
                    continue
                got = dns.message.from_wire(fast[0])
                assert got.id == q.id and fast[1] == delay
                assert got.rcode() == slow.rcode() == 0
                assert [sorted(r.to_text().splitlines()) for r in got.answer] == \
                    [sorted(r.to_text().splitlines()) for r in slow.answer]
