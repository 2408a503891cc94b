"""More than one listener process: ``[feedback] listen_processes = N`` runs N accept loops
on the same address (``SO_REUSEPORT``: the kernel spreads the connections over them),
each process with its own SMTP loop, parser and group commits into the same spool (LMDB
lets one writer at a time commit; each commit stays one fsync for a group), so that
every core takes inbound mail.  The calling process is the first of them; the others
are spawned here.  Each one answers ``250`` only after its own durable commit, as the
first does; the limits per client and in total are shared out between the processes.

A spawned listener stops when told to, or when the process that started it goes away
(its end of the pipe closes), and reports its counters, latencies and CPU time.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import resource
from multiprocessing.connection import Connection

from fastmta.config import Config

START_TIMEOUT_S = 60.0


def share(value: float, n: int, *, whole: bool = False) -> float:
    """One process's part of a limit shared by ``n`` (0 = no limit stays 0)."""
    if n <= 1 or not value:
        return value
    part = value / n
    return max(1, math.ceil(part)) if whole else part


class Workers:
    """The spawned listener processes of one ``InboundServer`` (``n`` - 1 of them)."""

    def __init__(self, cfg: Config, spool_path: str, hostname: str, n: int) -> None:
        self.cfg = cfg
        self.spool_path = spool_path
        self.hostname = hostname
        self.n = n
        self.procs: list[multiprocessing.process.BaseProcess] = []
        self.pipes: list[Connection] = []
        self.reports: list[dict] = []

    def start(self, host: str, port: int) -> None:
        """Spawn them and wait until each one listens (blocking: run in an executor)."""
        ctx = multiprocessing.get_context("spawn")
        for i in range(1, self.n):
            ours, theirs = ctx.Pipe()
            p = ctx.Process(target=_child, name=f"fastmta-inbound-{i}", daemon=True,
                            args=(self.cfg, self.spool_path, self.hostname, host, port,
                                  self.n, theirs))
            p.start()
            theirs.close()
            self.procs.append(p)
            self.pipes.append(ours)
        for p, pipe in zip(self.procs, self.pipes, strict=True):
            if not pipe.poll(START_TIMEOUT_S):
                self.stop()
                raise RuntimeError(f"inbound listener process {p.name} did not start")
            msg = pipe.recv()
            if msg[0] != "ready":
                self.stop()
                raise RuntimeError(f"inbound listener process {p.name}: {msg[1]}")

    def stop(self) -> list[dict]:
        """Stop them (each finishes its commits first) and collect their reports."""
        for pipe in self.pipes:
            try:
                pipe.send("stop")
            except (BrokenPipeError, OSError):
                pass
        for p, pipe in zip(self.procs, self.pipes, strict=True):
            try:
                if pipe.poll(30):
                    self.reports.append(pipe.recv())
            except (EOFError, OSError):
                pass
            p.join(10)
            if p.is_alive():
                p.terminate()
                p.join(5)
            pipe.close()
        self.procs, self.pipes = [], []
        return self.reports


def _child(cfg: Config, spool_path: str, hostname: str, host: str, port: int, n: int,
           pipe: Connection) -> None:
    """A spawned listener process: listen, serve until told to stop, report."""
    from fastmta import runtime
    from fastmta.feedback.listener import InboundServer
    from fastmta.spool import Spool

    async def main() -> None:
        loop = asyncio.get_running_loop()
        try:
            srv = InboundServer(cfg, Spool.open(spool_path, cfg.spool), hostname=hostname,
                                processes=n, spawned=True)
            await srv.start(host, port)
        except Exception as exc:
            pipe.send(("error", f"{type(exc).__name__}: {exc}"))
            return
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        pipe.send(("ready", None))
        try:
            await loop.run_in_executor(None, pipe.recv)
        except (EOFError, OSError):
            pass  # the parent is gone: stop as well
        await srv.close()
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        try:
            pipe.send({"stats": dict(srv.stats), "latencies": srv.latencies[-200_000:],
                       "groups": srv.committer.groups,
                       "cpu_user_s": ru1.ru_utime - ru0.ru_utime,
                       "cpu_sys_s": ru1.ru_stime - ru0.ru_stime})
        except (BrokenPipeError, OSError):
            pass

    runtime.run(main())
