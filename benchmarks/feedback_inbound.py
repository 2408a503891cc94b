"""Inbound feedback throughput: Postfix's ``smtp-source`` sends a realistic mix of bounce
mail (RFC 3464, Exim and qmail DSNs, delayed DSNs, ARF complaints, auto-replies) to
``fastmta``'s listener; every message is received, parsed, matched, applied and durable
(fsync) before its 250.  The same smtp-source run against Postfix's ``smtp-sink`` (which
parses and stores nothing) gives the peer ratio.

    python benchmarks/feedback_inbound.py [--messages 20000] [--files 200] [--sessions 16]
                                          [--processes 2]

Each of ``--files`` distinct feedback messages (one recipient each, its own signed VERP
address) is sent ``messages/files`` times: the first application changes the recipient,
the repeats go through the whole path (parse, token check, duplicate lookup, raw copy
stored) and are counted as duplicates.  Prints messages/s, the p50/p99 latency from
the end of DATA to the durable status change, and the CPU time per message of the
fastmta process (the figure least disturbed by other load on a shared machine).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import msgspec  # noqa: E402

from fastmta import runtime  # noqa: E402
from fastmta.config import Config, FeedbackConfig, SpoolConfig  # noqa: E402
from fastmta.feedback.listener import InboundServer  # noqa: E402
from fastmta.feedback.tokens import Tokens  # noqa: E402
from fastmta.records import DeliveryRecord, RecipientIn, Result  # noqa: E402
from fastmta.sim.feedback import build_arf, build_autoreply, build_dsn  # noqa: E402
from fastmta.sim.mx import free_port  # noqa: E402
from fastmta.spool import Spool, now_ms  # noqa: E402

DOMAIN = "bounces.bench.test"
MIX = ("rfc3464", "exim", "qmail", "rfc3464", "soft", "arf", "autoreply", "exim")


def _source(port: int, path: str, to: str, n: int, sessions: int) -> subprocess.Popen:
    return subprocess.Popen(["smtp-source", "-s", str(sessions), "-m", str(n), "-f", "",
                             "-F", path, "-t", to, f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


HARNESS_CPU: list[float] = []  # CPU of the thread that starts the smtp-source processes


def _run_sources(port: int, jobs: list[tuple[str, str]], per: int, parallel: int,
                 sessions: int) -> float:
    t0 = time.perf_counter()
    c0 = time.thread_time()
    running: list[subprocess.Popen] = []
    queue = list(jobs)
    while queue or running:
        while queue and len(running) < parallel:
            path, to = queue.pop()
            running.append(_source(port, path, to, per, sessions))
        p = running.pop(0)
        _, err = p.communicate(timeout=600)
        if p.returncode:
            raise SystemExit(f"smtp-source failed: {err.decode()[:300]}")
    HARNESS_CPU.append(time.thread_time() - c0)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--files", type=int, default=200)
    ap.add_argument("--parallel", type=int, default=8, help="smtp-source processes at once")
    ap.add_argument("--sessions", type=int, default=8, help="sessions per smtp-source")
    ap.add_argument("--no-sync", action="store_true", help="spool without fsync")
    ap.add_argument("--parse-processes", type=int, default=0,
                    help="[feedback] parse_processes (0 = parse on the commit thread)")
    ap.add_argument("--processes", type=int, default=1,
                    help="[feedback] listen_processes (SO_REUSEPORT listener processes)")
    a = ap.parse_args()
    if not shutil.which("smtp-source"):
        raise SystemExit("smtp-source not found (Debian package postfix)")
    per = max(1, a.messages // a.files)
    tmp = tempfile.mkdtemp(prefix="fastmta-fb-bench-")
    scfg = SpoolConfig(sync=not a.no_sync, metasync=not a.no_sync, map_size_bytes=2 * 1024**3)
    cfg = msgspec.structs.replace(Config(), spool=scfg, feedback=FeedbackConfig(
        enabled=True, domains=[DOMAIN], max_connections_per_ip=500, max_connections=1000,
        # one client address sends everything here: rate limits on, but above the load
        max_messages_per_s_per_ip=1e6, messages_burst_per_ip=1e6,
        max_connections_per_s_per_ip=1e6, connections_burst_per_ip=1e6,
        parse_processes=a.parse_processes, listen_processes=a.processes))
    sp = Spool.open(os.path.join(tmp, "spool"), scfg)
    t = now_ms()
    did = sp.create_delivery(DeliveryRecord(mail_from="news@sender.example", created_ms=t,
                                            expires_ms=t + 86400_000), b"From: a@b.c\r\n\r\nx\r\n")
    sp.add_recipients(did, (RecipientIn(email=f"user{i}@dest{i % 50}.example", line=i + 2)
                            for i in range(a.files)))
    items = sp.lease([0], "bench", a.files)
    sp.commit([Result(key=it.key, outcome="sent", code=250) for it in items])
    tok = Tokens(sp.feedback_key(), DOMAIN)
    jobs = []
    for i, it in enumerate(items):
        t_ = tok.token(did, it.rcpt_id)
        rp = tok.return_path(t_)
        orig = (f"From: news@sender.example\r\nTo: {it.email}\r\nSubject: Offer {i}\r\n"
                f"Message-ID: {tok.message_id(t_)}\r\n\r\nbody\r\n").encode()
        style = MIX[i % len(MIX)]
        if style == "arf":
            raw, to = build_arf(it.email, orig), f"fbl@{DOMAIN}"
        elif style == "autoreply":
            raw, to = build_autoreply(it.email, rp, orig), rp
        elif style == "soft":
            raw, to = build_dsn(it.email, rp, orig, soft=True), rp
        else:
            raw, to = build_dsn(it.email, rp, orig, style=style), rp
        path = os.path.join(tmp, f"m{i}.eml")
        with open(path, "wb") as fh:
            fh.write(raw.replace(b"\r\n", b"\n"))
        jobs.append((path, to))
    port = free_port()

    async def bench() -> tuple[float, InboundServer]:
        srv = InboundServer(cfg, sp)
        await srv.start("127.0.0.1", port)
        try:
            el = await asyncio.to_thread(_run_sources, port, jobs, per, a.parallel, a.sessions)
        finally:
            await srv.close()
        return el, srv

    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    elapsed, srv = runtime.run(bench())
    ru1 = resource.getrusage(resource.RUSAGE_SELF)  # this process: SMTP, parse, commit
    cpu_user, cpu_sys = ru1.ru_utime - ru0.ru_utime, ru1.ru_stime - ru0.ru_stime
    # + the other listener processes, - the thread here that starts smtp-source
    harness = HARNESS_CPU[0] if HARNESS_CPU else 0.0
    cpu = cpu_user + cpu_sys + srv.worker_cpu_s - harness
    n = srv.stats["accepted"]
    lat = sorted(srv.latencies)
    counters = sp.inbound_counters()
    # peer: the same smtp-source load against Postfix's smtp-sink
    sink_port = free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    sink = subprocess.Popen(["smtp-sink", *user, f"127.0.0.1:{sink_port}", "1000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # smtp-sink has no readiness signal; benchmark only
    try:
        peer = _run_sources(sink_port, jobs, per, a.parallel, a.sessions)
    finally:
        sink.terminate()
        sink.wait()
    load = os.getloadavg()
    print(f"inbound: {n} messages in {elapsed:.2f}s = {n / elapsed:,.0f} msgs/s "
          f"(received + parsed + matched + applied, fsync={'on' if scfg.sync else 'off'}, "
          f"{srv.committer.groups} group commits)")
    if n:
        # CPU time is what the load of other processes disturbs least: the figure to
        # compare between runs on a shared machine
        print(f"cpu: {1e6 * cpu / n:,.0f} us per message in the fastmta process"
              f"{f'es ({a.processes})' if a.processes > 1 else ''} "
              f"(first process: user {1e6 * cpu_user / n:,.0f} + system "
              f"{1e6 * cpu_sys / n:,.0f}; = {n / cpu:,.0f} msgs/s per fully available core; "
              f"the benchmark's own smtp-source launcher thread, {1e6 * harness / n:,.0f} us, "
              f"left out)")
    if lat:
        print(f"latency end of DATA -> durable status change: p50 {1000 * lat[len(lat) // 2]:.1f} ms, "
              f"p99 {1000 * lat[int(len(lat) * 0.99)]:.1f} ms")
    print(f"effects: { {k: v for k, v in counters.items() if k.startswith('effect/')} }")
    print(f"peer: smtp-source -> smtp-sink {n / peer:,.0f} msgs/s; fastmta/peer ratio "
          f"{peer / elapsed:.2f}")
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (2 cores, shared)")
    Spool.close_all()
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
