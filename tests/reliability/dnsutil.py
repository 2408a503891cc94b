"""A scripted authoritative DNS server on 127.0.0.1 (UDP) for hostile-DNS tests.

``records``: {(name, "MX"|"A"|"CNAME"): [rdata text, ...]}; a CNAME is answered alone
(the server does not chase it), so the resolver must.  Counts the queries it got.
"""

from __future__ import annotations

import asyncio

import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset


class ScriptDns(asyncio.DatagramProtocol):
    def __init__(self, records: dict[tuple[str, str], list[str]]) -> None:
        self.records = {(n.lower().rstrip("."), t): v for (n, t), v in records.items()}
        self.queries = 0
        self.transport = None
        self.port = 0

    async def __aenter__(self) -> ScriptDns:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", 0))
        self.port = self.transport.get_extra_info("sockname")[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self.transport.close()

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        self.queries += 1
        try:
            q = dns.message.from_wire(data)
        except Exception:
            return
        resp = dns.message.make_response(q)
        resp.flags |= 0x0400  # AA
        qq = q.question[0]
        name = qq.name.to_text(omit_final_dot=True).lower()
        rtype = dns.rdatatype.to_text(qq.rdtype)
        cname = self.records.get((name, "CNAME"))
        if cname:
            resp.answer.append(dns.rrset.from_text_list(qq.name, 60, "IN", "CNAME", cname))
        elif (name, rtype) in self.records:
            resp.answer.append(dns.rrset.from_text_list(qq.name, 60, "IN", rtype,
                                                        self.records[(name, rtype)]))
        elif not any(n == name for n, _ in self.records):
            resp.set_rcode(dns.rcode.NXDOMAIN)
        self.transport.sendto(resp.to_wire(), addr)
