"""Cost of the HTTP API + live dashboard (issue #19), and the recipients endpoint on a
million recipients.

1. **Overhead**: the same 100k send on the simulated internet (``sink`` profile), in
   alternating runs without and with the HTTP server (in the pool's process, as ``fastmta
   run --http`` does) *and* a headless Debian chromium showing the delivery page and the
   sites page live (SSE summary stream, report refresh each second, sites each 3 s).
   fastmta's CPU = this process (supervisor + HTTP server) + the worker processes.
   Chromium is the operator's browser, not fastmta: its CPU is measured and printed apart.
2. **Recipients**: a 1,000,000-recipient delivery (2 % failed ``user_unknown``, results
   committed through the spool), then filtered pages through the real HTTP server:
   ``status=failed``, ``reason`` (common and 0.01 %), ``domain`` (0.1 %, alone and with
   ``status``), ``q``, and from a cursor half-way; the recipients index
   (``fastmta.http.rcpt_index``) is waited for first, and its build time printed.
   ``--timeline``: then half the recipients are committed sent (~500k events) and the
   charts' timeline is read through the server: calls until it has read the whole log,
   then the cost of a refresh.

    python benchmarks/bench_http.py [--recipients 100000] [--pairs 2] [--rcpt-million 1000000]

Loopback only; figures on a shared machine are noisy (the load average is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

import httpx
import msgspec

from fastmta import IMPL, WorkerPool
from fastmta.http.server import HttpServer
from fastmta.sim import SimInternet
from fastmta.sim.config import sim_config
from fastmta.spool import Spool

MESSAGE = (b"From: Bench <bench@sender.example>\nTo: {{email}}\nSubject: Bench\n\n"
           + b"x" * 2000 + b"\n")
CHROMIUM = os.environ.get("FASTMTA_CHROMIUM", "/usr/bin/chromium")

BROWSER = textwrap.dedent("""
    import sys, time, psutil
    from playwright.sync_api import sync_playwright
    url, did = sys.argv[1], sys.argv[2]
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=sys.argv[3], args=["--no-sandbox"])
        page = b.new_page()
        page.goto(url + "/deliveries/" + did)
        sites = b.new_page()
        sites.goto(url + "/sites")
        page.wait_for_selector("body[data-loaded='1']")
        me = psutil.Process()
        procs = [c for c in me.children(recursive=True)]
        t0 = sum(sum(x.cpu_times()[:2]) for x in procs if x.is_running())
        print("ready", flush=True)
        sys.stdin.readline()
        t1 = 0.0
        for x in procs:
            try:
                t1 += sum(x.cpu_times()[:2])
            except psutil.Error:
                pass
        sent = page.get_attribute("[data-kpi=sent]", "data-value")
        print(f"{t1 - t0:.3f} {sent}", flush=True)
        b.close()
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_run(sim, domains, n: int, mode: str, workdir: str, workers: int) -> dict:
    cfg = sim_config(sim, validity_s=600.0, retry_s=5.0, workers=workers)
    spool = os.path.join(workdir, "spool")
    rows = ({"email": f"b{i}@{domains[i % len(domains)]}"} for i in range(n))
    pool = WorkerPool(cfg, spool=spool).open()
    h = pool.submit(rows, MESSAGE)
    srv = browser = serve = None
    chromium_cpu, shown, serve_cpu = None, None, None
    if mode == "on":
        srv = HttpServer(cfg, spool, "127.0.0.1:0", token="bench").start()
        url = srv.url
    elif mode == "serve":  # the same server as its own process: its CPU measured exactly
        import psutil

        port = free_port()
        serve = subprocess.Popen([sys.executable, "-m", "fastmta", "serve", "--listen",
                                  f"127.0.0.1:{port}", "--spool", spool, "--token", "bench"],
                                 stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(url + "/api/v1/status", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        sp = psutil.Process(serve.pid)
        serve0 = sum(sp.cpu_times()[:2])
    if mode in ("on", "serve"):
        browser = subprocess.Popen([sys.executable, "-c", BROWSER, url, str(h.id),
                                    CHROMIUM], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   text=True)
        assert browser.stdout.readline().strip() == "ready"
    t0 = time.perf_counter()
    cpu0 = os.times()
    pool.start()
    st = h.wait(timeout_s=900, poll_s=0.05)
    t1 = time.perf_counter()
    pool.stop(drain=True)
    cpu1 = os.times()
    if browser is not None:
        time.sleep(1.5)  # the page's last refresh (for the check below), not timed
        browser.stdin.write("\n")
        browser.stdin.flush()
        out = browser.stdout.readline().split()
        chromium_cpu, shown = float(out[0]), out[1]
        browser.wait(30)
        if srv is not None:
            srv.stop()
        if serve is not None:
            serve_cpu = sum(sp.cpu_times()[:2]) - serve0
            serve.terminate()
            serve.wait(30)
    pool.close()
    Spool.close_all()
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    assert st["sent"] == n, st
    if shown is not None:
        assert int(shown) == n, shown  # the dashboard followed to the end
    return {"mode": mode, "n": n, "deliver_s": t1 - t0, "msgs_per_s": n / (t1 - t0),
            "parent_cpu_s": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
            "fastmta_cpu_s": (cpu1.user + cpu1.system + cpu1.children_user
                              + cpu1.children_system) - (cpu0.user + cpu0.system
                                                         + cpu0.children_user
                                                         + cpu0.children_system),
            "chromium_cpu_s": chromium_cpu, "serve_cpu_s": serve_cpu}


async def overhead(args) -> dict:
    async with SimInternet("sink") as sim:
        domains = list(sim.world.domains)
        workdir = tempfile.mkdtemp(prefix="fastmta-bench-http-")
        runs = []
        try:
            await asyncio.to_thread(one_run, sim, domains, min(5000, args.recipients), "off",
                                    workdir, args.workers)  # warm-up
            modes = ["off", "on"] + (["serve"] if args.serve else [])
            for i in range(args.pairs):
                for mode in (modes if i % 2 == 0 else modes[::-1]):
                    r = await asyncio.to_thread(one_run, sim, domains, args.recipients, mode,
                                                workdir, args.workers)
                    runs.append(r)
                    print(f"  {mode:3}  {r['msgs_per_s']:7.0f} msgs/s  CPU fastmta "
                          f"{r['fastmta_cpu_s']:.2f}s (pool+http {r['parent_cpu_s']:.2f}s)"
                          + (f"  chromium {r['chromium_cpu_s']:.2f}s" if r["chromium_cpu_s"]
                             is not None else "")
                          + (f"  serve process {r['serve_cpu_s']:.2f}s" if r["serve_cpu_s"]
                             is not None else "") + f"  load {os.getloadavg()[0]:.1f}",
                          flush=True)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def med(mode, k):
        return statistics.median(r[k] for r in runs if r["mode"] == mode)

    serve = [r["serve_cpu_s"] for r in runs if r["mode"] == "serve"]
    return {"serve_cpu": statistics.median(serve) if serve else None,
            "serve_total": statistics.median(r["fastmta_cpu_s"] + r["serve_cpu_s"]
                                             for r in runs if r["mode"] == "serve")
            if serve else None,
            "cpu_off": med("off", "fastmta_cpu_s"), "cpu_on": med("on", "fastmta_cpu_s"),
            "pool_off": med("off", "parent_cpu_s"), "pool_on": med("on", "parent_cpu_s"),
            "rate_off": med("off", "msgs_per_s"), "rate_on": med("on", "msgs_per_s"),
            "chromium": med("on", "chromium_cpu_s"), "runs": runs}


def wait_index(url: str, did: int) -> float | None:
    """Seconds from the first filtered query until the recipients index answers (None:
    a server without the index)."""
    t = time.perf_counter()
    with httpx.Client(base_url=url, timeout=30) as c:
        for _ in range(600):  # bounded: 600 x 0.1 s
            body = c.get(f"/api/v1/deliveries/{did}/recipients",
                         params={"status": "failed", "limit": 1}).json()
            if body.get("indexed") is None:
                return None
            if body["indexed"]:
                return time.perf_counter() - t
            time.sleep(0.1)
    raise RuntimeError("the recipients index was not ready after 60 s")


def timeline_bench(spool, url: str, did: int, n: int) -> dict:
    """Every other recipient sent (events in the log for ~all of them), then the charts'
    timeline through the server: calls until it has read the whole log (each bounded),
    then the p50 / p95 of a refresh (no new events)."""
    from fastmta.records import Result
    from fastmta.spool.keys import pack_rcpt

    t = time.perf_counter()
    batch = []
    for rid in range(1, n, 2):
        batch.append(Result(key=pack_rcpt(did, rid), outcome="sent", code=250,
                            time_ms=int(time.time() * 1000)))
        if len(batch) == 5000:
            spool.commit(batch)
            batch = []
    if batch:
        spool.commit(batch)
    commit_s = time.perf_counter() - t
    events = spool.last_event_seq()
    with httpx.Client(base_url=url, timeout=60) as c:
        t = time.perf_counter()
        first_ms = None
        calls = 0
        while calls < 1000:  # bounded
            calls += 1
            t1 = time.perf_counter()
            body = c.get(f"/api/v1/deliveries/{did}/timeline").json()
            if first_ms is None:
                first_ms = (time.perf_counter() - t1) * 1000
            if body.get("complete", True):
                break
        catch_up_s = time.perf_counter() - t
        times = []
        for _ in range(20):
            t1 = time.perf_counter()
            c.get(f"/api/v1/deliveries/{did}/timeline")
            times.append((time.perf_counter() - t1) * 1000)
        times.sort()
    return {"events": events, "commit_s": commit_s, "calls": calls, "first_ms": first_ms,
            "catch_up_s": catch_up_s, "p50_ms": times[10], "p95_ms": times[18],
            "sent": sum(body["sent"]), "points": len(body["t"])}


def recipients_bench(n: int, with_timeline: bool = False) -> dict:
    from fastmta.config import Config
    from fastmta.engine import entry as engine
    from fastmta.records import Result
    from fastmta.spool.keys import pack_rcpt

    workdir = tempfile.mkdtemp(prefix="fastmta-bench-rcpt-")
    try:
        cfg = Config()
        path = os.path.join(workdir, "r.csv")
        with open(path, "w") as f:
            f.write("email\n")
            for i in range(n):
                f.write(f"user{i}@d{i % 1000}.example\n")
        spool_path = os.path.join(workdir, "spool")
        spool = Spool.open(spool_path, cfg.spool)
        t = time.perf_counter()
        a = asyncio.run(engine.inject_file(spool, cfg, path, MESSAGE, route_by_mx=False))
        inject_s = time.perf_counter() - t
        did = a.delivery_id
        batch = []
        for rid in range(0, n, 50):  # 2 % hard bounces, spread over the delivery
            rare = rid % 10_000 == 0  # 0.01 %: a rare reason
            batch.append(Result(key=pack_rcpt(did, rid), outcome="hard", code=550,
                                enhanced="5.7.1" if rare else "5.1.1", bounce_class=10,
                                type="hard", reason="policy_block" if rare else
                                "user_unknown", reply="550 5.1.1 unknown user",
                                time_ms=int(time.time() * 1000)))
            if len(batch) == 2000:
                spool.commit(batch)
                batch = []
        if batch:
            spool.commit(batch)
        srv = HttpServer(cfg, spool_path, "127.0.0.1:0", token="bench").start()
        index_s = wait_index(srv.url, did)
        queries = {
            "status=failed": {"status": "failed"},
            "reason=user_unknown": {"reason": "user_unknown"},
            "domain (0.1 %)": {"domain": "d7.example"},
            "domain (0.1 %) + failed": {"domain": "d0.example", "status": "failed"},
            "reason (0.01 %)": {"reason": "policy_block"},
            "q=user12345": {"q": "user12345"},
            "failed from cursor n/2": {"status": "failed", "cursor": n // 2},
            "no filter": {},
        }
        out = {}
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            for name, q in queries.items():
                times, counts = [], []
                for _ in range(20):
                    t = time.perf_counter()
                    r = c.get(f"/api/v1/deliveries/{did}/recipients", params={**q, "limit": 50})
                    times.append((time.perf_counter() - t) * 1000)
                    body = msgspec.json.decode(r.content)
                    counts.append((body["count"], body["scanned"]))
                times.sort()
                out[name] = {"p50_ms": times[10], "p95_ms": times[18], "max_ms": times[-1],
                             "items": counts[0][0], "scanned": counts[0][1],
                             "indexed": body.get("indexed")}
        timeline = timeline_bench(spool, srv.url, did, n) if with_timeline else None
        srv.stop()
        return {"recipients": n, "inject_s": inject_s, "index_s": index_s, "queries": out,
                "timeline": timeline}
    finally:
        Spool.close_all()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipients", type=int, default=100_000)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rcpt-million", type=int, default=1_000_000)
    ap.add_argument("--skip-overhead", action="store_true")
    ap.add_argument("--timeline", action="store_true",
                    help="also: the charts' timeline on the 1M delivery's event log")
    ap.add_argument("--serve", action="store_true",
                    help="a third mode: `fastmta serve` as its own process (exact CPU)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.recipients > 1_000_000 or args.pairs > 10 or args.rcpt_million > 2_000_000:
        sys.exit("refusing: keep benchmark loops bounded")
    res: dict = {"impl": IMPL, "load_before": os.getloadavg()}
    if not args.skip_overhead:
        o = asyncio.run(overhead(args))
        res["overhead"] = o
        print(f"HTTP + dashboard overhead ({IMPL} core, {args.workers} workers, "
              f"{args.recipients} recipients, {args.pairs} pairs): fastmta CPU "
              f"{o['cpu_on']:.2f}s on vs {o['cpu_off']:.2f}s off = "
              f"{100 * (o['cpu_on'] / o['cpu_off'] - 1):+.1f}% (medians); pool process "
              f"{o['pool_on']:.2f}s vs {o['pool_off']:.2f}s; throughput {o['rate_on']:.0f} vs "
              f"{o['rate_off']:.0f} msgs/s; chromium (not fastmta) {o['chromium']:.2f}s"
              + (f"; `fastmta serve` as its own process: {o['serve_cpu']:.2f}s = "
                 f"{100 * o['serve_cpu'] / o['cpu_off']:.1f}% of the send's CPU (off)"
                 if o["serve_cpu"] is not None else ""))
    if args.rcpt_million:
        r = recipients_bench(args.rcpt_million, args.timeline)
        res["recipients"] = r
        print(f"recipients endpoint on {r['recipients']:,} recipients (injected in "
              f"{r['inject_s']:.0f}s), limit 50; recipients index "
              + (f"ready {r['index_s']:.2f}s after the first filtered query:"
                 if r["index_s"] is not None else "absent:"))
        for name, q in r["queries"].items():
            print(f"  {name:24} p50 {q['p50_ms']:6.1f} ms  p95 {q['p95_ms']:6.1f} ms  max "
                  f"{q['max_ms']:6.1f} ms  ({q['items']} items, {q['scanned']} scanned"
                  + (", indexed)" if q["indexed"] else ")"))
        tl = r["timeline"]
        if tl:
            print(f"timeline on {tl['events']:,} events ({tl['sent']:,} sent committed in "
                  f"{tl['commit_s']:.0f}s): whole log read after {tl['calls']} calls in "
                  f"{tl['catch_up_s']:.2f}s (first answer {tl['first_ms']:.0f} ms); then a "
                  f"refresh p50 {tl['p50_ms']:.1f} ms p95 {tl['p95_ms']:.1f} ms "
                  f"({tl['points']} points)")
    res["load_after"] = os.getloadavg()
    print(f"load average before {res['load_before'][0]:.1f}, after {res['load_after'][0]:.1f}")
    if args.json:
        print(json.dumps(res, default=str))


if __name__ == "__main__":
    main()
