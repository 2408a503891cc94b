"""Throughput cost of the operations features (issue #8): events, exports, metrics.

Same process, same simulated internet (the ``sink`` profile: accept-all MX hosts on
loopback), alternating runs with ``[ops]`` fully off (``enabled = false``: no hooks in
the workers, no status, no metrics, no exports) and fully on (site events, status
snapshot, Prometheus endpoint scraped every second, JSONL + accounting CSV exports and a
webhook to a local receiver).  Each run injects N recipients first, then times the pool
from start until every recipient is final; the time ``stop()`` then takes is the
exporters catching up (reported apart).  The site's per-run event log is the same in
both modes (the spool always logs results), so "off" still pays for the durable log.

    PYTHONPATH=src python benchmarks/bench_overhead.py [--recipients 40000] [--pairs 3]

Prints one line per run and the median cost; ``--json`` for machine-readable output.
Loopback only.  Figures on a shared 2-core machine are noisy: compare medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import msgspec

from fastmta import IMPL, WorkerPool
from fastmta.sim import SimInternet
from fastmta.sim.config import sim_config
from fastmta.spool import Spool

MESSAGE = (b"From: Bench <bench@sender.example>\nTo: {{email}}\nSubject: Bench\n\n"
           + b"x" * 2000 + b"\n")


class Hook(BaseHTTPRequestHandler):
    events = 0

    def log_message(self, *a):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hook.events += body.count(b'"seq":')
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


def serve_hook(port_conn) -> None:
    """The webhook receiver, in its own process (it is the operator's system, not
    fastmta: its CPU must not count as fastmta's)."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    port_conn.send(srv.server_port)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    port_conn.recv()  # any message: report and stop
    port_conn.send(Hook.events)
    srv.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_run(sim: SimInternet, domains: list[str], n: int, mode: str, workdir: str,
            hook_url: str, workers: int) -> dict:
    base = sim_config(sim, validity_s=600.0, retry_s=5.0, workers=workers)
    r = msgspec.structs.replace
    on = mode == "on"
    if mode == "hooks":  # worker hooks, site events, status file; no metrics/exports
        port = 0
        ops = r(base.ops, enabled=True)
    elif on:
        port = free_port()
        ops = r(base.ops, enabled=True, metrics_port=port,
                jsonl_dir=os.path.join(workdir, "jsonl"),
                csv_path=os.path.join(workdir, "acct", "acct.csv"), webhook_url=hook_url)
    else:
        port = 0
        ops = r(base.ops, enabled=False)
    cfg = r(base, ops=ops)
    spool = os.path.join(workdir, "spool")
    rows = ({"email": f"b{i}@{domains[i % len(domains)]}"} for i in range(n))
    pool = WorkerPool(cfg, spool=spool).open()
    h = pool.submit(rows, MESSAGE)
    scrapes = 0
    stop_scrape = threading.Event()

    def scraper():
        nonlocal scrapes
        while not stop_scrape.wait(1.0):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
                scrapes += 1
            except OSError:
                pass

    t0 = time.perf_counter()
    cpu0 = os.times()
    pool.start()
    th = None
    if on:
        th = threading.Thread(target=scraper, daemon=True)
        th.start()
    st = h.wait(timeout_s=600, poll_s=0.05)
    t1 = time.perf_counter()
    stop_scrape.set()
    pool.stop(drain=True)
    t2 = time.perf_counter()
    cpu1 = os.times()
    events = pool.spool.last_event_seq()
    pool.close()
    Spool.close_all()
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    assert st["sent"] == n, st
    return {"mode": mode, "n": n, "deliver_s": t1 - t0,
            "msgs_per_s": n / (t1 - t0), "stop_s": t2 - t1, "events": events,
            "scrapes": scrapes,
            "parent_cpu_s": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
            # + the worker processes (joined by the supervisor before stop() returns)
            "fastmta_cpu_s": (cpu1.user + cpu1.system + cpu1.children_user
                              + cpu1.children_system) - (cpu0.user + cpu0.system
                                                         + cpu0.children_user
                                                         + cpu0.children_system)}


async def main_async(args) -> dict:
    async with SimInternet("sink") as sim:
        domains = list(sim.world.domains)
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        hook = ctx.Process(target=serve_hook, args=(child,), daemon=True)
        hook.start()
        url = f"http://127.0.0.1:{parent.recv()}/events"
        workdir = tempfile.mkdtemp(prefix="fastmta-bench-ops-")
        runs = []
        try:
            # warm-up (DNS caches in the sim, page cache), not counted
            await asyncio.to_thread(one_run, sim, domains, min(5000, args.recipients), "off",
                                    workdir, url, args.workers)
            modes = ["off", "on"] + (["hooks"] if args.hooks else [])
            for i in range(args.pairs):
                order = modes if i % 2 == 0 else modes[::-1]
                for mode in order:
                    res = await asyncio.to_thread(one_run, sim, domains, args.recipients, mode,
                                                  workdir, url, args.workers)
                    runs.append(res)
                    if not args.json:
                        print(f"  {res['mode']:5}  {res['msgs_per_s']:8.0f} msgs/s  "
                              f"deliver {res['deliver_s']:.2f}s  stop {res['stop_s']:.2f}s  "
                              f"events {res['events']}  scrapes {res['scrapes']}  "
                              f"CPU pool {res['parent_cpu_s']:.2f}s + workers "
                              f"{res['fastmta_cpu_s'] - res['parent_cpu_s']:.2f}s",
                              flush=True)
        finally:
            parent.send("stop")
            hook_events = parent.recv() if parent.poll(10) else -1
            hook.join(10)
            shutil.rmtree(workdir, ignore_errors=True)
    ratios = []  # on/off within each group of adjacent runs (drift-robust)
    k = len({r["mode"] for r in runs})
    for g in range(0, len(runs), k):
        group = {r["mode"]: r for r in runs[g:g + k]}
        if "on" in group and "off" in group:
            ratios.append(group["on"]["msgs_per_s"] / group["off"]["msgs_per_s"])
    med = {m: statistics.median([r["msgs_per_s"] for r in runs if r["mode"] == m])
           for m in {r["mode"] for r in runs}}
    m_off, m_on = med["off"], med["on"]
    return {"impl": IMPL, "recipients": args.recipients, "workers": args.workers,
            "pairs": args.pairs, "median_off": m_off, "median_on": m_on,
            "median_hooks": med.get("hooks"),
            "cost_pct": 100.0 * (m_off - m_on) / m_off,
            "pair_cost_pct": 100.0 * (1 - statistics.median(ratios)) if ratios else None,
            "pool_cpu_s_on": statistics.median([r["parent_cpu_s"] for r in runs
                                                if r["mode"] == "on"]),
            "pool_cpu_s_off": statistics.median([r["parent_cpu_s"] for r in runs
                                                 if r["mode"] == "off"]),
            "cpu_s_on": statistics.median([r["fastmta_cpu_s"] for r in runs
                                           if r["mode"] == "on"]),
            "cpu_s_off": statistics.median([r["fastmta_cpu_s"] for r in runs
                                            if r["mode"] == "off"]),
            "hooks_cost_pct": 100.0 * (m_off - med["hooks"]) / m_off if "hooks" in med
            else None,
            "catchup_s_on": statistics.median([r["stop_s"] for r in runs if r["mode"] == "on"]),
            "catchup_s_off": statistics.median([r["stop_s"] for r in runs
                                                if r["mode"] == "off"]),
            "webhook_events": hook_events, "runs": runs}


def hook_micro(n: int = 200_000) -> float:
    """CPU per message of the worker-side hooks (``on_result`` + ``intercept``), in us."""
    from types import SimpleNamespace as NS

    from fastmta.config import Config
    from fastmta.engine.worker_ops import WorkerOps
    from fastmta.records import Result

    ops = WorkerOps(NS(cfg=Config(), spool=None, scheduler=None, spec=NS(index=0)))
    site = NS(name="mx1.sink.test", provider=None, label=lambda: "mx1.sink.test")
    job = NS(site=site, item=NS(delivery_id=1, domain="d.sink.test"))
    res = Result(key=b"12345678", outcome="sent", code=250, enhanced="2.0.0",
                 reply="250 2.0.0 ok", mx="mx1.sink.test", time_ms=1)
    t = time.process_time()
    for _ in range(n):
        ops.on_result(job, res)
        ops.intercept(site, job)
    return (time.process_time() - t) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipients", type=int, default=40_000)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--hooks", action="store_true",
                    help="also a third mode: worker hooks + status only (attribution)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.recipients > 1_000_000 or args.pairs > 20:
        sys.exit("refusing: keep benchmark loops bounded")
    res = asyncio.run(main_async(args))
    res["hook_us_per_msg"] = hook_micro()
    if args.json:
        print(json.dumps(res))
        return
    print(f"ops overhead ({res['impl']} core, {res['workers']} workers, "
          f"{res['recipients']} recipients, {res['pairs']} pairs): "
          f"off {res['median_off']:.0f} msgs/s, on {res['median_on']:.0f} msgs/s, "
          f"cost {res['cost_pct']:.1f}% (medians), {res['pair_cost_pct']:.1f}% (median of "
          f"adjacent on/off pairs); pool-process CPU {res['pool_cpu_s_on']:.2f}s on vs "
          f"{res['pool_cpu_s_off']:.2f}s off; fastmta CPU (pool + workers) "
          f"{res['cpu_s_on']:.2f}s on vs {res['cpu_s_off']:.2f}s off = "
          f"{1e6 * (res['cpu_s_on'] - res['cpu_s_off']) / res['recipients']:.1f} us/msg, "
          f"{100 * (res['cpu_s_on'] / res['cpu_s_off'] - 1):+.1f}% CPU per message"
          + (f"; hooks only {res['median_hooks']:.0f} msgs/s = {res['hooks_cost_pct']:.1f}%"
             if res["median_hooks"] else "")
          + f"; stop (exports catching up) {res['catchup_s_on']:.2f}s on vs "
          f"{res['catchup_s_off']:.2f}s off; webhook received {res['webhook_events']} events; "
          f"worker hooks {res['hook_us_per_msg']:.2f} us/msg (micro)")


if __name__ == "__main__":
    main()
