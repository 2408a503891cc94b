"""The simulated MX hosts: a lean asyncio SMTP server with behaviour profiles.

One ``MxServer`` listens on the addresses of a World's MX hosts (one port for all) and
answers as each host's provider behaves (``world.Behaviour``).  The fast path (accept
everything) does a handful of bytes operations per command and one write per received
chunk, so a pipelining client is answered with one packet per group.  aiosmtpd is kept
for tests as an independent peer; it is too slow to be a benchmark sink.

Every accepted message is counted per recipient (``Stats.accepted``); with
``keep_messages`` the messages themselves are kept.  One connection's conversation
(commands, replies, behaviours) is ``session._Session``.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections import Counter, deque

from fastmta.sim.session import _Session
from fastmta.sim.world import Behaviour, World

__all__ = ["MxServer", "Stats"]

_EHLO_CAPS_BASE = (b"8BITMIME", b"ENHANCEDSTATUSCODES", b"SMTPUTF8")


class Stats:
    """What the MX hosts of one process saw (merged across processes by SimInternet)."""

    def __init__(self) -> None:
        self.connections = 0
        self.messages = 0  # transactions accepted after the dot
        self.accepted: Counter[str] = Counter()  # recipient -> times accepted
        self.replies: Counter[str] = Counter()  # "550 5.1.1" -> count (refusals only)
        self.kept: list[tuple[str, list[str], bytes]] = []  # (from, rcpts, body un-stuffed)
        # issue #17: "provider<TAB>sender ip<TAB>reputation day" -> accepted recipients,
        # "provider<TAB>sender ip<TAB>550 5.7.1" -> refusals per sender IP
        self.by_source: Counter[str] = Counter()
        self.replies_by_source: Counter[str] = Counter()
        self.open: Counter[str] = Counter()  # provider -> connections open now
        self.peak: Counter[str] = Counter()  # provider -> most connections open at once

    def to_dict(self, with_messages: bool = False) -> dict:
        d = {
            "cpu_s": time.process_time(),  # CPU of the process serving these hosts
            "connections": self.connections,
            "messages": self.messages,
            "accepted": dict(self.accepted),
            "replies": dict(self.replies),
            "by_source": dict(self.by_source),
            "replies_by_source": dict(self.replies_by_source),
            "peak_connections": dict(self.peak),
        }
        if with_messages:
            d["kept"] = [(f, r, m) for f, r, m in self.kept]
        return d


class _ProviderState:
    """State shared by all hosts of one provider in this process."""

    __slots__ = ("conns", "rate", "greylist", "rcpt_rate", "mails", "rep", "penalty")

    def __init__(self) -> None:
        self.rep = None  # sim.reputation.Reputation of a provider with reputation on
        self.conns: Counter[str] = Counter()  # sender ip -> open connections
        self.rate: dict[str, deque] = {}  # sender ip -> recent message times
        self.greylist: dict[tuple, float] = {}  # (ip, from, rcpt) -> first seen
        self.rcpt_rate: dict[str, deque] = {}  # recipient -> recent acceptance times
        self.mails = 0  # MAIL FROM commands seen (transient_421_every)
        self.penalty: dict[str, float] = {}  # sender ip -> end of its over-cap penalty


class MxServer:
    """Listeners for the MX hosts of a World (this process's share)."""

    def __init__(self, world: World, *, tls_context: ssl.SSLContext | None = None,
                 keep_messages: bool = False) -> None:
        self.world = world
        self.stats = Stats()
        self.tls_context = tls_context
        self.keep_messages = keep_messages
        self.default_behaviour = Behaviour()
        self.queue_id = 0
        self.open_sessions: set[_Session] = set()
        self.tasks: set[asyncio.Future] = set()
        self._pstates: dict[str, _ProviderState] = {}
        self._servers: list[asyncio.AbstractServer] = []
        self._names = {h.address: h.name.encode() for h in world.hosts.values()}
        self._ehlo_cache: dict[tuple, bytes] = {}
        self.port = 0
        from fastmta.egress.clock import EgressClock

        self.clock = EgressClock(world.spec.time_factor, world.spec.time_origin or time.time())

    def pstate(self, provider: str) -> _ProviderState:
        st = self._pstates.get(provider)
        if st is None:
            st = self._pstates[provider] = _ProviderState()
        return st

    def hostname_of(self, ip: str) -> bytes:
        return self._names.get(ip, b"mx.sim.test")

    def ehlo_reply(self, ip: str, beh: Behaviour, tls: bool) -> bytes:
        key = (ip, id(beh), tls)
        r = self._ehlo_cache.get(key)
        if r is None:
            caps = [self.hostname_of(ip) + b" greets you"]
            if beh.pipelining:
                caps.append(b"PIPELINING")
            caps.append(b"SIZE %d" % beh.max_size)
            caps.extend(_EHLO_CAPS_BASE)
            if beh.chunking:
                caps.append(b"CHUNKING")
            if beh.starttls and not tls and self.tls_context is not None:
                caps.append(b"STARTTLS")
            lines = [b"250-" + c for c in caps[:-1]] + [b"250 " + caps[-1]]
            r = self._ehlo_cache[key] = b"\r\n".join(lines) + b"\r\n"
        return r

    async def start(self, addresses: list[str], port: int, *, reuse_port: bool = False) -> int:
        """Listen on ``addresses`` at ``port`` (0: pick one port free on all of them)."""
        for a in addresses:
            if not a.startswith("127.") and a != "::1":
                raise ValueError(f"the simulated internet listens on loopback only, not {a}")
        for attempt in range(10):
            try:
                return await self._bind(addresses, port, reuse_port)
            except OSError:
                await self.stop()
                if port or attempt == 9:
                    raise
        raise AssertionError("unreachable")

    async def _bind(self, addresses: list[str], port: int, reuse_port: bool) -> int:
        loop = asyncio.get_running_loop()
        for a in addresses:
            srv = await loop.create_server(
                lambda: _Session(self), host=a, port=port, reuse_port=reuse_port,
                reuse_address=True, backlog=1024)
            if port == 0:
                port = srv.sockets[0].getsockname()[1]
            self._servers.append(srv)
        self.port = port
        return port

    async def stop(self) -> None:
        for s in self._servers:
            s.close()
        for sess in list(self.open_sessions):
            if sess.tr is not None:
                sess.tr.abort()
        for s in self._servers:
            try:
                await asyncio.wait_for(s.wait_closed(), 2.0)
            except TimeoutError:
                pass
        self._servers = []


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port free on ``address`` right now."""
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]
