"""``SimInternet``: the DNS server and the MX hosts of a World, started and stopped together.

The DNS server runs in the caller's event loop.  The MX hosts run in the caller's loop
(``workers=0``, handy for tests) or in ``workers`` processes started with ``spawn``:
providers without cross-connection state are bound in every worker with SO_REUSEPORT
(the kernel spreads connections), stateful ones (connection limits, rates, greylisting)
in exactly one worker so their counters see every connection.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import tempfile
from collections import Counter

import msgspec

from fastmta.config import DnsConfig
from fastmta.sim.certs import make_self_signed, server_context
from fastmta.sim.dns import DnsServer
from fastmta.sim.mx import MxServer, Stats, free_port
from fastmta.sim.world import World, WorldSpec, load_world

__all__ = ["SimInternet"]


class SimInternet:
    """The simulated internet (see module docstring).  ``async with SimInternet(w) as sim``."""

    def __init__(self, world: World | str = "default", *, dns_port: int = 0,
                 smtp_port: int | None = 0, workers: int = 0, keep_messages: bool = False,
                 tls: bool = True) -> None:
        self.world = load_world(world) if isinstance(world, str) else world
        self.dns_port = dns_port
        self.smtp_port = self.world.spec.smtp_port if smtp_port is None else smtp_port
        self.workers = workers
        self.keep_messages = keep_messages
        self.tls = tls and any(p.behaviour.starttls for p in self.world.spec.providers)
        self.dns: DnsServer | None = None
        self.mx: MxServer | None = None
        self._procs: list = []
        self._conns: list = []
        self._locks: list[asyncio.Lock] = []
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.cert: tuple[str, str] | None = None
        self.mta_sts = None  # PolicyServer when the world publishes MTA-STS policies
        self.mta_sts_port = 0
        self.mta_sts_cert = ""
        self.ca_file = ""  # trust anchors of the sim's certificates (MX and policy hosts)

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> SimInternet:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def start(self) -> None:
        raise_fd_limit()
        if self.tls:
            self._tmp = tempfile.TemporaryDirectory(prefix="fastmta-sim-")
            names = list(self.world.hosts) or ["mx.sim.test"]
            self.cert = make_self_signed(self._tmp.name, names[:50], self.world.addresses[:50])
        self.dns = DnsServer(self.world)
        self.dns_port = await self.dns.start("127.0.0.1", self.dns_port)
        if self.world.spec.mta_sts:
            await self._start_mta_sts()
        addresses = self.world.addresses
        try:
            if self.workers <= 0:
                ctx = server_context(*self.cert) if self.cert else None
                self.mx = MxServer(self.world, tls_context=ctx, keep_messages=self.keep_messages)
                if addresses:
                    self.smtp_port = await self.mx.start(addresses, self.smtp_port)
            else:
                await self._start_workers(addresses)
        except BaseException:
            await self.stop()
            raise

    async def _start_mta_sts(self) -> None:
        """HTTPS policy hosts for ``WorldSpec.mta_sts``; ``ca_file`` trusts them and the MX
        hosts' certificate (for MTA-STS enforce)."""
        from pathlib import Path

        from fastmta.sim.mta_sts import PolicyServer

        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="fastmta-sim-")
        names = [f"mta-sts.{d}" for d in self.world.spec.mta_sts]
        cert, key = make_self_signed(Path(self._tmp.name) / "sts", names, ["127.0.0.1"])
        self.mta_sts = PolicyServer(self.world.spec.mta_sts, server_context(cert, key))
        self.mta_sts_port = await self.mta_sts.start("127.0.0.1", 0)
        self.mta_sts_cert = cert  # trusts the policy hosts only (not the MX hosts)
        ca = Path(self._tmp.name) / "ca.pem"
        ca.write_text(Path(cert).read_text() + (Path(self.cert[0]).read_text()
                                                if self.cert else ""))
        self.ca_file = str(ca)

    async def _start_workers(self, addresses: list[str]) -> None:
        if not self.smtp_port:
            self.smtp_port = free_port(addresses[0] if addresses else "127.0.0.1")
        n = self.workers
        plan: list[list[str]] = [[] for _ in range(n)]
        stateful_i = 0
        for p in self.world.spec.providers:
            addrs = [h.address for h in self.world.provider_hosts[p.name]]
            if p.behaviour.stateful:
                plan[stateful_i % n].extend(addrs)
                stateful_i += 1
            else:
                for lst in plan:
                    lst.extend(addrs)
        spec = msgspec.json.encode(self.world.spec)
        mp = multiprocessing.get_context("spawn")
        loop = asyncio.get_running_loop()
        for i in range(n):
            parent, child = mp.Pipe()
            proc = mp.Process(
                target=_worker_main,
                args=(spec, plan[i], self.smtp_port, self.keep_messages, self.cert, child),
                name=f"fastmta-sim-mx-{i}", daemon=True)
            proc.start()
            child.close()
            self._procs.append(proc)
            self._conns.append(parent)
            self._locks.append(asyncio.Lock())
        for i, c in enumerate(self._conns):
            ok = await loop.run_in_executor(None, _recv_timeout, c, 60.0)
            if not ok or ok[0] != "ready":
                raise RuntimeError(f"sim MX worker {i} failed to start: {ok!r}")

    async def stop(self) -> None:
        if self.mx is not None:
            await self.mx.stop()
        for c in self._conns:
            try:
                c.send(("stop",))
            except (OSError, EOFError, BrokenPipeError):
                pass
        loop = asyncio.get_running_loop()
        for p in self._procs:
            await loop.run_in_executor(None, p.join, 5.0)
            if p.is_alive():
                p.kill()
                await loop.run_in_executor(None, p.join, 5.0)
        for c in self._conns:
            c.close()
        self._procs, self._conns, self._locks = [], [], []
        if self.dns is not None:
            await self.dns.stop()
            self.dns = None
        if self.mta_sts is not None:
            await self.mta_sts.stop()
            self.mta_sts = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    # ------------------------------------------------------------------ configuration
    def add_mx(self, domain: str, host: str, address: str) -> None:
        """Publish an MX outside the world (the feedback listener of a bounce domain)."""
        assert self.dns is not None, "start the sim first"
        self.dns.zone.add_mx(domain, host, address)

    def dns_config(self, **kw) -> DnsConfig:
        """A DnsConfig pointing at this simulated internet (loopback MX allowed)."""
        kw.setdefault("allow_loopback_mx", True)
        return DnsConfig(nameservers=["127.0.0.1"], port=self.dns_port, **kw)

    def routes(self) -> dict[str, list[str]]:
        """domain -> ["ip:port", ...] (MX order), for MTAs that take a transport map."""
        out: dict[str, list[str]] = {}
        for d, p in self.world.domain_provider.items():
            if p.dns in ("nxdomain", "nullmx", "servfail"):
                continue  # a route would hide the DNS failure
            hosts = sorted(self.world.provider_hosts[p.name], key=lambda h: h.preference)
            out[d] = [f"{h.address}:{self.smtp_port}" for h in hosts]
        return out

    # ------------------------------------------------------------------ results
    async def _ask(self, i: int, msg: tuple):
        loop = asyncio.get_running_loop()
        async with self._locks[i]:
            self._conns[i].send(msg)
            return await loop.run_in_executor(None, _recv_timeout, self._conns[i], 30.0)

    async def _all_stats(self, with_messages: bool = False) -> list[dict]:
        out = []
        if self.mx is not None:
            out.append(self.mx.stats.to_dict(with_messages))
        for i in range(len(self._conns)):
            r = await self._ask(i, ("stats", with_messages))
            if r is None or r[0] != "stats":
                raise RuntimeError(f"sim MX worker {i} did not answer: {r!r}")
            out.append(r[1])
        return out

    async def stats(self) -> dict:
        """Merged counters: connections, messages, replies (refusals by code)."""
        merged = {"connections": 0, "messages": 0, "replies": Counter(),
                  "by_source": Counter(), "replies_by_source": Counter(),
                  "peak_connections": Counter(),
                  "dns_queries": self.dns.queries if self.dns else 0, "mx_cpu_s": 0.0}
        for s in await self._all_stats():
            if self._procs:  # worker processes: their own CPU (in-process: not separable)
                merged["mx_cpu_s"] += s["cpu_s"]
            merged["connections"] += s["connections"]
            merged["messages"] += s["messages"]
            merged["replies"].update(s["replies"])
            merged["by_source"].update(s.get("by_source", {}))
            merged["replies_by_source"].update(s.get("replies_by_source", {}))
            # per provider: the sum over processes of each one's peak (an upper bound of
            # the true peak when a provider's hosts are served by several processes)
            merged["peak_connections"].update(s.get("peak_connections", {}))
        for k in ("replies", "by_source", "replies_by_source", "peak_connections"):
            merged[k] = dict(merged[k])
        return merged

    async def accepted(self) -> dict[str, int]:
        """recipient -> how many times a message for it was accepted."""
        total: Counter[str] = Counter()
        for s in await self._all_stats():
            total.update(s["accepted"])
        return dict(total)

    async def messages(self) -> list[tuple[str, list[str], bytes]]:
        """Accepted messages (when kept): (mail_from, rcpts, body as received)."""
        out = []
        for s in await self._all_stats(with_messages=True):
            out.extend(tuple(m) for m in s.get("kept", []))
        return out

    async def messages_since(self, cursor: list[int] | None = None
                             ) -> tuple[list[tuple[str, list[str], bytes]], list[int]]:
        """Accepted messages kept since ``cursor`` (None: from the start) and the new
        cursor (one position per MX process): an incremental ``messages``."""
        n = len(self._conns) + (1 if self.mx is not None else 0)
        cur = list(cursor) if cursor else [0] * n
        out: list[tuple[str, list[str], bytes]] = []
        k = 0
        if self.mx is not None:
            new = self.mx.stats.kept[cur[0]:]
            out.extend(tuple(m) for m in new)
            cur[0] += len(new)
            k = 1
        for i in range(len(self._conns)):
            r = await self._ask(i, ("kept_since", cur[k + i]))
            if r is None or r[0] != "kept":
                raise RuntimeError(f"sim MX worker {i} did not answer: {r!r}")
            out.extend(tuple(m) for m in r[1])
            cur[k + i] += len(r[1])
        return out, cur

    async def reset(self) -> None:
        """Forget counters and kept messages (not greylist/rate state)."""
        if self.mx is not None:
            self.mx.stats = Stats()
        for i in range(len(self._conns)):
            await self._ask(i, ("reset",))


def raise_fd_limit() -> int:
    """Raise this process's open-file soft limit to the hard limit (many listeners)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return hard
        except (ValueError, OSError):
            pass
    return soft


def _recv_timeout(conn, timeout: float):
    if conn.poll(timeout):
        try:
            return conn.recv()
        except EOFError:
            return None
    return None


# ---------------------------------------------------------------------- worker process


def _worker_main(spec: bytes, addresses: list[str], port: int, keep: bool, cert, conn) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise_fd_limit()
    try:
        import setproctitle

        setproctitle.setproctitle(f"fastmta sim mx worker ({len(addresses)} addresses)")
    except ImportError:  # pragma: no cover
        pass
    from fastmta.runtime import run

    world = World(msgspec.json.decode(spec, type=WorldSpec))
    run(_worker_serve(world, addresses, port, keep, cert, conn))


async def _worker_serve(world: World, addresses, port, keep, cert, conn) -> None:
    ctx = server_context(*cert) if cert else None
    srv = MxServer(world, tls_context=ctx, keep_messages=keep)
    try:
        if addresses:
            await srv.start(addresses, port, reuse_port=True)
    except OSError as exc:
        conn.send(("error", str(exc)))
        return
    conn.send(("ready", os.getpid()))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def reply(obj) -> None:
        # the loop made the pipe non-blocking: a large answer (accepted counts of a
        # big run) would fail with EAGAIN half-written, so send it in blocking mode
        fd = conn.fileno()
        os.set_blocking(fd, True)
        try:
            conn.send(obj)
        finally:
            os.set_blocking(fd, False)

    def on_cmd() -> None:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            stop.set()  # the parent is gone
            return
        if msg[0] == "stats":
            reply(("stats", srv.stats.to_dict(with_messages=msg[1])))
        elif msg[0] == "kept_since":
            reply(("kept", srv.stats.kept[msg[1]:]))
        elif msg[0] == "reset":
            srv.stats = Stats()
            reply(("ok",))
        elif msg[0] == "stop":
            stop.set()

    loop.add_reader(conn.fileno(), on_cmd)
    await stop.wait()
    loop.remove_reader(conn.fileno())
    await srv.stop()
