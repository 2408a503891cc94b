"""Authoritative DNS server of the simulated internet (dnspython messages, asyncio UDP+TCP).

Serves the World's synthetic zones on a loopback port: MX of each domain -> MX host
names -> A records on 127.0.x.y, and per provider ``dns`` kind: ``implicit`` (no MX,
an A record on the domain), ``nullmx`` (RFC 7505 ``MX 0 .``), ``nxdomain``,
``servfail``, ``slow`` (answers delayed by ``dns_delay_s``), ``cname`` (the domain is a
CNAME to an alias holding the MX; the chain is in the answer) and ``cname-partial``
(only the CNAME is answered; the client must chase it).  Names outside the world get
NXDOMAIN (REFUSED is not used: the server is authoritative for everything it is asked).
``WorldSpec.records`` adds any other data (TXT for SPF, DMARC, DKIM and ``_mta-sts``,
PTR, A), ``WorldSpec.servfail_names`` makes names answer SERVFAIL (broken zones).
"""

from __future__ import annotations

import asyncio
import struct

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataset
import dns.rdatatype
import dns.rrset

from fastmta.sim.world import World

__all__ = ["DnsServer", "Zone"]

_SOA = "ns.sim.test. hostmaster.sim.test. 1 3600 600 86400 60"


class Zone:
    """name -> {rdtype -> Rdataset}, plus names answered with SERVFAIL or after a delay.

    Rdatasets are shared: all domains of a provider point at one MX rdataset, so a
    world of 100,000 domains builds in well under a second; RRsets get their owner name
    when a query is answered.
    """

    def __init__(self, world: World) -> None:
        self.records: dict[str, dict[int, dns.rdataset.Rdataset]] = {}
        self.wire: dict[str, dict[int, tuple[int, bytes]]] = {}  # fast path: name -> answers
        self.cname_partial: set[str] = set()
        self.servfail: set[str] = set()
        self.delay: dict[str, float] = {}
        for h in world.hosts.values():
            self._put(h.name, _rdataset(300, "A", [h.address]))
        for p in world.spec.providers:
            hosts = world.provider_hosts[p.name]
            mx = _rdataset(p.ttl, "MX", [f"{h.preference} {h.name}." for h in hosts])
            a = _rdataset(p.ttl, "A", [hosts[0].address]) if hosts else None
            null = _rdataset(p.ttl, "MX", ["0 ."])
            for d in world.domains_of(p):
                if p.dns == "nxdomain":
                    continue
                if p.dns == "servfail":
                    self.servfail.add(d)
                    continue
                if p.dns == "slow":
                    self.delay[d] = p.dns_delay_s
                if p.dns == "nullmx":
                    self._put(d, null)
                elif p.dns == "implicit":
                    self._put(d, a)
                elif p.dns in ("cname", "cname-partial"):
                    alias = f"alias.{d}"
                    self._put(d, _rdataset(p.ttl, "CNAME", [alias + "."]))
                    self._put(alias, mx)
                    if p.dns == "cname-partial":
                        self.cname_partial.add(d)
                else:
                    self._put(d, mx)
        for r in world.spec.records:
            self._put(r.name, _record_rdataset(r.ttl, r.type, r.data))
        self.servfail.update(n.lower().rstrip(".") for n in world.spec.servfail_names)

    def add_mx(self, domain: str, host: str, address: str, ttl: int = 300) -> None:
        """Point ``domain``'s MX at ``host`` = ``address`` (e.g. the feedback listener)."""
        self._put(host, _rdataset(ttl, "A", [address]))
        self._put(domain, _rdataset(ttl, "MX", [f"10 {host.rstrip('.')}."]))

    def _put(self, name: str, rds: dns.rdataset.Rdataset) -> None:
        key = name.lower().rstrip(".")
        self.records.setdefault(key, {})[rds.rdtype] = rds
        if rds.rdtype in (dns.rdatatype.MX, dns.rdatatype.A):
            self.wire.setdefault(key, {})[int(rds.rdtype)] = _answer_blob(rds)

    def fast_answer(self, data: bytes) -> tuple[bytes, float] | None:
        """Wire-level answer for a plain MX or A query of a known name, else None.

        Handles one question, class IN, optional EDNS OPT record; the answers point at
        the question's name (compression pointer 0xC00C).  Anything else goes through
        dnspython (``answer``).
        """
        if len(data) < 17 or data[4:6] != b"\x00\x01" or data[2] & 0x78:  # 1 question, QUERY
            return None
        labels = []
        i = 12
        n = len(data)
        while i < n:
            ln = data[i]
            if ln == 0:
                break
            if ln & 0xC0 or i + 1 + ln > n:
                return None
            labels.append(data[i + 1 : i + 1 + ln])
            i += 1 + ln
        else:
            return None
        end_q = i + 5
        if end_q > n or data[i + 3 : i + 5] != b"\x00\x01":
            return None
        qtype = (data[i + 1] << 8) | data[i + 2]
        try:
            name = b".".join(labels).decode("ascii").lower()
        except UnicodeDecodeError:
            return None
        by_type = self.wire.get(name)
        if by_type is None or name in self.servfail:
            return None
        blob = by_type.get(qtype)
        if blob is None:
            return None
        count, records = blob
        flags = 0x8400 | ((data[2] & 0x01) << 8)  # QR, AA, copy RD
        head = data[:2] + bytes((flags >> 8, flags & 0xFF)) + b"\x00\x01" \
            + count.to_bytes(2, "big") + b"\x00\x00\x00\x00"
        return head + data[12:end_q] + records, self.delay.get(name, 0.0)

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
            rds = recs.get(q.rdtype)
            if rds is not None:
                resp.answer.append(_rrset(name, rds))
                return resp, delay
            cname = recs.get(dns.rdatatype.CNAME)
            if cname is None or seen > 8:
                resp.authority.append(self._soa(name))  # NODATA
                return resp, delay
            resp.answer.append(_rrset(name, cname))
            if name in self.cname_partial:
                return resp, delay
            name = next(iter(cname)).target.to_text(omit_final_dot=True).lower()
            seen += 1

    @staticmethod
    def _soa(name: str) -> dns.rrset.RRset:
        return dns.rrset.from_text(name + ".", 60, "IN", "SOA", _SOA)


def _answer_blob(rds: dns.rdataset.Rdataset) -> tuple[int, bytes]:
    """(count, answer records in wire form owned by the question's name)."""
    out = b""
    for rd in rds:
        rdata = rd.to_wire()
        out += (b"\xc0\x0c" + int(rds.rdtype).to_bytes(2, "big") + b"\x00\x01"
                + int(rds.ttl).to_bytes(4, "big") + len(rdata).to_bytes(2, "big") + rdata)
    return len(rds), out


def _record_rdataset(ttl: int, rdtype: str, data: list[str]) -> dns.rdataset.Rdataset:
    """An extra record's rdataset; TXT items are plain text, quoted here in 255-byte strings."""
    if rdtype.upper() == "TXT":
        texts = []
        for item in data:
            raw = item.encode()
            chunks = [raw[i:i + 255] for i in range(0, len(raw), 255)] or [b""]
            texts.append(" ".join('"' + c.decode().replace("\\", "\\\\").replace('"', '\\"')
                                  + '"' for c in chunks))
        data = texts
    return _rdataset(ttl, rdtype.upper(), data)


def _rdataset(ttl: int, rdtype: str, texts: list[str]) -> dns.rdataset.Rdataset:
    return dns.rdataset.from_text("IN", rdtype, ttl, *texts)


def _rrset(name: str, rds: dns.rdataset.Rdataset) -> dns.rrset.RRset:
    rr = dns.rrset.RRset(dns.name.from_text(name + "."), rds.rdclass, rds.rdtype)
    rr.update_ttl(rds.ttl)
    rr.items = dict(rds.items)  # rdatas are already unique: skip re-hashing each one
    return rr


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
        self._cache: dict[tuple[bool, bytes], tuple[bytes, float]] = {}
        self.port = 0
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.AbstractServer | None = None

    def handle(self, data: bytes, udp: bool) -> tuple[bytes | None, float]:
        self.queries += 1
        # the zone is static: the same query (apart from its ID) gets the same answer
        key = (udp, data[2:])
        hit = self._cache.get(key)
        if hit is not None:
            return data[:2] + hit[0], hit[1]
        fast = self.zone.fast_answer(data)
        if fast is not None:
            return fast
        try:
            query = dns.message.from_wire(data)
        except Exception:  # malformed query: drop it, as servers do
            self.queries -= 1
            return None, 0.0
        resp, delay = self.zone.answer(query)
        wire = resp.to_wire(max_size=65535 if not udp else 1232)
        if len(self._cache) < 500_000:
            self._cache[key] = (wire[2:], delay)
        return wire, delay

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
