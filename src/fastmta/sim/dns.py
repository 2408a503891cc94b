"""Authoritative DNS server of the simulated internet (dnspython messages, asyncio UDP+TCP).

Serves the World's synthetic zones on a loopback port: MX of each domain -> MX host
names -> A records on 127.0.x.y, and per provider ``dns`` kind: ``implicit`` (no MX,
an A record on the domain), ``nullmx`` (RFC 7505 ``MX 0 .``), ``nxdomain``,
``servfail``, ``slow`` (answers delayed by ``dns_delay_s``), ``cname`` (the domain is a
CNAME to an alias holding the MX; the chain is in the answer) and ``cname-partial``
(only the CNAME is answered; the client must chase it).  Names outside the world get
NXDOMAIN (REFUSED is not used: the server is authoritative for everything it is asked).
"""

from __future__ import annotations

import asyncio
import struct

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

from .world import World

__all__ = ["DnsServer", "Zone"]

_SOA = "ns.sim.test. hostmaster.sim.test. 1 3600 600 86400 60"


class Zone:
    """name -> {rdtype -> RRset}, plus names answered with SERVFAIL or after a delay."""

    def __init__(self, world: World) -> None:
        self.records: dict[str, dict[int, dns.rrset.RRset]] = {}
        self.cname_partial: set[str] = set()
        self.servfail: set[str] = set()
        self.delay: dict[str, float] = {}
        for h in world.hosts.values():
            self._add(h.name, 300, "A", h.address)
        for p in world.spec.providers:
            hosts = world.provider_hosts[p.name]
            for d in world.domains_of(p):
                if p.dns == "nxdomain":
                    continue
                if p.dns == "servfail":
                    self.servfail.add(d)
                    continue
                if p.dns == "slow":
                    self.delay[d] = p.dns_delay_s
                if p.dns == "nullmx":
                    self._add(d, p.ttl, "MX", "0 .")
                elif p.dns == "implicit":
                    self._add(d, p.ttl, "A", hosts[0].address)
                elif p.dns in ("cname", "cname-partial"):
                    alias = f"alias.{d}"
                    self._add(d, p.ttl, "CNAME", alias + ".")
                    for h in hosts:
                        self._add(alias, p.ttl, "MX", f"{h.preference} {h.name}.")
                    if p.dns == "cname-partial":
                        self.cname_partial.add(d)
                else:
                    for h in hosts:
                        self._add(d, p.ttl, "MX", f"{h.preference} {h.name}.")

    def _add(self, name: str, ttl: int, rdtype: str, text: str) -> None:
        name = name.lower().rstrip(".")
        t = dns.rdatatype.from_text(rdtype)
        by_type = self.records.setdefault(name, {})
        rr = by_type.get(t)
        if rr is None:
            by_type[t] = dns.rrset.from_text(name + ".", ttl, "IN", rdtype, text)
        else:
            rr.add(dns.rrset.from_text(name + ".", ttl, "IN", rdtype, text)[0])

    def answer(self, query: dns.message.Message) -> tuple[dns.message.Message, float]:
        """The response to ``query`` and the delay before sending it."""
        resp = dns.message.make_response(query)
        resp.flags |= dns.flags.AA
        if not query.question:
            resp.set_rcode(dns.rcode.FORMERR)
            return resp, 0.0
        q = query.question[0]
        name = q.name.to_text(omit_final_dot=True).lower()
        delay = self.delay.get(name, 0.0)
        if name in self.servfail:
            resp.flags &= ~dns.flags.AA
            resp.set_rcode(dns.rcode.SERVFAIL)
            return resp, delay
        seen = 0
        while True:
            recs = self.records.get(name)
            if recs is None:
                if seen == 0:
                    resp.set_rcode(dns.rcode.NXDOMAIN)
                    resp.authority.append(self._soa(name))
                return resp, delay
            rr = recs.get(q.rdtype)
            if rr is not None:
                resp.answer.append(rr)
                return resp, delay
            cname = recs.get(dns.rdatatype.CNAME)
            if cname is None or seen > 8:
                resp.authority.append(self._soa(name))  # NODATA
                return resp, delay
            resp.answer.append(cname)
            if name in self.cname_partial:
                return resp, delay
            name = cname[0].target.to_text(omit_final_dot=True).lower()
            seen += 1

    @staticmethod
    def _soa(name: str) -> dns.rrset.RRset:
        return dns.rrset.from_text(name + ".", 60, "IN", "SOA", _SOA)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        wire, delay = self.server.handle(data, udp=True)
        if wire is None or self.transport is None:
            return
        if delay:
            asyncio.get_running_loop().call_later(delay, self._send, wire, addr)
        else:
            self.transport.sendto(wire, addr)

    def _send(self, wire: bytes, addr) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(wire, addr)


class _Tcp(asyncio.Protocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 2:
            (n,) = struct.unpack("!H", self.buf[:2])
            if len(self.buf) < 2 + n:
                return
            msg, self.buf = self.buf[2 : 2 + n], self.buf[2 + n :]
            wire, delay = self.server.handle(msg, udp=False)
            if wire is not None:
                out = struct.pack("!H", len(wire)) + wire
                if delay:
                    asyncio.get_running_loop().call_later(delay, self._send, out)
                else:
                    self.transport.write(out)

    def _send(self, out: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(out)


class DnsServer:
    """UDP and TCP on ``host:port`` (loopback only) answering from a ``Zone``."""

    def __init__(self, world: World) -> None:
        self.zone = Zone(world)
        self.queries = 0
        self.port = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.AbstractServer | None = None

    def handle(self, data: bytes, udp: bool) -> tuple[bytes | None, float]:
        try:
            query = dns.message.from_wire(data)
        except Exception:  # malformed query: drop it, as servers do
            return None, 0.0
        self.queries += 1
        resp, delay = self.zone.answer(query)
        return resp.to_wire(max_size=65535 if not udp else 1232), delay

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        if not host.startswith("127.") and host != "::1":
            raise ValueError("the simulated DNS server listens on loopback only")
        loop = asyncio.get_running_loop()
        for attempt in range(10):
            try:
                self._udp, _ = await loop.create_datagram_endpoint(
                    lambda: _Udp(self), local_addr=(host, port))
                p = self._udp.get_extra_info("sockname")[1]
                self._tcp = await loop.create_server(lambda: _Tcp(self), host, p)
                self.port = p
                return p
            except OSError:
                if self._udp is not None:
                    self._udp.close()
                    self._udp = None
                if port or attempt == 9:
                    raise
        raise AssertionError("unreachable")

    async def stop(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
            self._tcp = None
