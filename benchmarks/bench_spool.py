"""Spool benchmark: injection, lease-and-claim, result commits (1 and 2 processes).

    PYTHONPATH=src python benchmarks/bench_spool.py [--recipients 1000000] [--small 100000]

Every phase runs in a fresh ``spawn`` process, so peak RSS is that phase's own.  All
writes are durable (``sync=True, metasync=True``, the defaults).  Peers measured in the
same run: a bare LMDB loop doing the same writes with no spool logic, so the ratio shows
what the spool's bookkeeping (KPIs, queues, dedupe, events) costs.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import tempfile
import time

CTX = mp.get_context("spawn")


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _cpu() -> float:
    """CPU seconds of this process (all threads): less sensitive to other load than wall
    time, so the bench also prints rates per CPU-second."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _mem() -> dict:
    return {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "rss_anon_mb": round(_status_kb("RssAnon") / 1024, 1),
            "rss_file_mb": round(_status_kb("RssFile") / 1024, 1)}


def make_csv(path: str, n: int, domains: int = 5000) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["email", "first", "last", "city"])
        for i in range(n):
            w.writerow([f"user{i}@domain{i % domains}.example", f"First{i % 997}",
                        f"Last{i % 1009}", f"City{i % 101}"])


TEMPLATE = (b"From: Shop <news@shop.example>\r\nTo: {{first}} {{last}} <{{email}}>\r\n"
            b"Subject: Offers in {{city}}\r\nList-Unsubscribe: <mailto:u@shop.example>\r\n"
            b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\nHello {{first}}\r\n")


# ---------------------------------------------------------------------- phases (children)
def phase_inject(spool_dir: str, csv_path: str, parallel: bool, q) -> None:
    from fastmta.config import SpoolConfig
    from fastmta.delivery import inject, open_recipients
    from fastmta.spool import Spool

    cfg = SpoolConfig()
    sp = Spool.open(spool_dir, cfg)
    t0 = time.perf_counter()
    c0 = _cpu()
    with open_recipients(csv_path) as r:
        a = inject(sp, r, TEMPLATE, shards=64, parallel=parallel)
    dt = time.perf_counter() - t0
    cpu = _cpu() - c0
    info = sp.info()
    q.put({"recipients": a.to_deliver, "seconds": round(dt, 2),
           "recipients_per_s": round(a.to_deliver / dt),
           "per_cpu_s": round(a.to_deliver / cpu), "spool_bytes": info["file_bytes"],
           "bytes_per_recipient": round(info["file_bytes"] / max(1, a.to_deliver), 1),
           "inject_batch": cfg.inject_batch, **_mem()})


def phase_raw_inject(lmdb_dir: str, csv_path: str, q) -> None:
    """Peer: CSV -> msgpack -> LMDB putmulti(append) in 20k-row durable transactions."""
    import lmdb
    import msgspec

    env = lmdb.open(lmdb_dir, map_size=64 * 1024**3, sync=True, metasync=True)
    enc = msgspec.msgpack.Encoder()
    t0 = time.perf_counter()
    n = 0
    with open(csv_path, newline="") as f:
        rd = csv.reader(f)
        next(rd)
        batch = []
        for row in rd:
            batch.append((n.to_bytes(8, "big"), enc.encode(row)))
            n += 1
            if len(batch) == 20_000:
                with env.begin(write=True) as txn:
                    txn.cursor().putmulti(batch, append=True)
                batch = []
        if batch:
            with env.begin(write=True) as txn:
                txn.cursor().putmulti(batch, append=True)
    dt = time.perf_counter() - t0
    q.put({"recipients_per_s": round(n / dt), "seconds": round(dt, 2)})


def phase_lease(spool_dir: str, shards: list[int], batch: int, q) -> None:
    """Lease-and-claim as a worker does it: lease a batch, and (untimed) commit its
    results, so the lease table holds only the in-flight batch, as in the engine."""
    from fastmta.records import Result
    from fastmta.spool import Spool

    sp = Spool.open(spool_dir)
    owner = f"bench-{os.getpid()}"
    lease_s = 0.0
    lease_cpu = 0.0
    n = 0
    while True:
        t0 = time.perf_counter()
        c0 = _cpu()
        items = sp.lease(shards, owner, batch)
        lease_s += time.perf_counter() - t0
        lease_cpu += _cpu() - c0
        if not items:
            break
        n += len(items)
        sp.commit([Result(key=i.key, outcome="sent", code=250) for i in items])
    q.put({"leased": n, "lease_seconds": round(lease_s, 2), "leases_per_s": round(n / lease_s),
           "per_cpu_s": round(n / max(lease_cpu, 1e-9)),
           "batch": batch, **_mem()})


def phase_cycle(spool_dir: str, shards: list[int], q, barrier) -> None:
    """The spool alone, no event loop: lease 2048, commit them in batches of
    ``commit_batch``, repeat (what a worker's writer thread does)."""
    from fastmta.records import Result
    from fastmta.spool import Spool

    sp = Spool.open(spool_dir)
    owner = f"bench-{os.getpid()}"
    b = sp.cfg.commit_batch
    barrier.wait()
    t0 = time.perf_counter()
    c0 = _cpu()
    n = 0
    lease_cpu = 0.0  # lease and commit CPU apart (lease_us_cpu, commit_us_cpu)
    while True:
        c1 = _cpu()
        items = sp.lease(shards, owner, 2048)
        lease_cpu += _cpu() - c1
        if not items:
            break
        for i in range(0, len(items), b):
            sp.commit([Result(key=x.key, outcome="sent", code=250, mx="mx.example",
                              source_ip="127.0.0.2") for x in items[i:i + b]])
        n += len(items)
    dt = time.perf_counter() - t0
    cpu = _cpu() - c0
    q.put({"results": n, "seconds": round(dt, 2), "commits_per_s": round(n / dt),
           "per_cpu_s": round(n / cpu), "lease_us_cpu": round(lease_cpu / n * 1e6, 2),
           "commit_us_cpu": round((cpu - lease_cpu) / n * 1e6, 2), **_mem()})


def phase_commit(spool_dir: str, shards: list[int], group: int, loop: str, q, barrier) -> None:
    """Result commits through ResultWriter (default batching), shaped like a worker:
    lease ``writer_queue`` items through the writer thread, then 1,024 concurrent tasks
    each submit their share one result at a time (or ``group`` at once with
    ``submit_many``, as for a multi-recipient transaction) and await durability."""
    from fastmta.records import Result
    from fastmta.spool import ResultWriter, Spool

    sp = Spool.open(spool_dir)
    owner = f"bench-{os.getpid()}"

    async def main() -> tuple[float, int, float, float]:
        async with ResultWriter(sp) as w:
            done = 0
            lease_s = 0.0
            tasks = 1024
            barrier.wait()
            t0 = time.perf_counter()
            c0 = _cpu()

            async def worker(items: list) -> None:
                res = [Result(key=it.key, outcome="sent", code=250, mx="mx.example",
                              source_ip="127.0.0.2") for it in items]
                if group <= 1:
                    for r in res:
                        await w.submit(r)
                else:
                    for i in range(0, len(res), group):
                        await w.submit_many(res[i:i + group])

            while True:
                t = time.perf_counter()
                items = await w.run(sp.lease, shards, owner, w.queue_size)
                lease_s += time.perf_counter() - t
                if not items:
                    break
                await asyncio.gather(*(worker(items[i::tasks]) for i in range(tasks)))
                done += len(items)
            return time.perf_counter() - t0, done, lease_s, _cpu() - c0

    if loop == "uvloop":
        import uvloop

        dt, n, lease_s, cpu = uvloop.run(main())
    else:
        dt, n, lease_s, cpu = asyncio.run(main())
    q.put({"results": n, "seconds": round(dt, 2), "commits_per_s": round(n / dt),
           "per_cpu_s": round(n / cpu), "lease_s": round(lease_s, 2),
           "commit_batch": sp.cfg.commit_batch,
           "submit": f"submit_many({group})" if group > 1 else "submit (one result per await)",
           "loop": loop, "commit_window_ms": sp.cfg.commit_window_ms, **_mem()})


def phase_writer_path(spool_dir: str, shards: list[int], group: int, commit_batch: int | None,
                      lease_batch: int, q, barrier) -> None:
    """Result commits the way the engine's worker makes them: a fetch task leases
    ``lease_batch`` (1,000) items at a time through the writer (up to 10,000 in flight, ``WorkerSpec``);
    a sender task hands the results over in groups of ``group`` per loop iteration with
    ``ResultWriter.hand`` (one callback per group, no future), and waits at the gate
    while ``2 x commit_batch`` results are not yet durable (``Worker.max_uncommitted``).
    Every result counted was reported durable by the writer."""
    from fastmta.records import Result
    from fastmta.spool import ResultWriter, Spool

    sp = Spool.open(spool_dir)
    owner = f"bench-{os.getpid()}"

    async def main() -> dict:
        async with ResultWriter(sp, commit_batch=commit_batch) as w:
            gate = 2 * w.commit_batch
            st = {"unc": 0, "done": 0, "inflight": 0, "eof": False}
            ready: list = []
            moved = asyncio.Event()
            got = asyncio.Event()

            def committed(n: int):
                def cb(exc: BaseException | None) -> None:
                    if exc is not None:
                        raise exc
                    st["unc"] -= n
                    st["done"] += n
                    st["inflight"] -= n
                    moved.set()
                return cb

            async def fetch() -> None:
                while True:
                    while st["inflight"] > 10_000 - 250:
                        moved.clear()
                        await moved.wait()
                    items = await w.run(sp.lease, shards, owner,
                                        min(lease_batch, 10_000 - st["inflight"]))
                    if not items:
                        st["eof"] = True
                        got.set()
                        return
                    st["inflight"] += len(items)
                    ready.extend(items)
                    got.set()

            async def send() -> None:
                while True:
                    if not ready:
                        if st["eof"]:
                            return
                        got.clear()
                        await got.wait()
                        continue
                    while st["unc"] >= gate:
                        moved.clear()
                        await moved.wait()
                    grp = ready[:group]
                    del ready[:group]
                    st["unc"] += len(grp)
                    res = [Result(key=it.key, outcome="sent", code=250, mx="mx.example",
                                  source_ip="127.0.0.2") for it in grp]
                    if hasattr(w, "hand"):
                        w.hand(res, committed(len(grp)))
                    else:  # before ResultWriter.hand: what the worker did then
                        cb = committed(len(grp))
                        asyncio.ensure_future(w.submit_many(res)).add_done_callback(
                            lambda f, cb=cb: cb(f.exception()))
                    await asyncio.sleep(0)  # one group per loop iteration

            barrier.wait()
            t0 = time.perf_counter()
            c0 = _cpu()
            await asyncio.gather(fetch(), send())
            while st["unc"]:
                moved.clear()
                await moved.wait()
            return {"results": st["done"], "seconds": round(time.perf_counter() - t0, 2),
                    "cpu": _cpu() - c0, "commits": w.commits,
                    "merged_batches": getattr(w, "merged_batches", 0),
                    "merged_leases": w.merged_leases, "gate": gate, "lease_batch": lease_batch}

    import uvloop

    r = uvloop.run(main())
    cpu = r.pop("cpu")
    r.update({"commits_per_s": round(r["results"] / r["seconds"]),
              "per_cpu_s": round(r["results"] / cpu), "group": group,
              "results_per_commit": round(r["results"] / max(1, r["commits"])),
              "commit_batch": commit_batch or sp.cfg.commit_batch,
              "commit_window_ms": sp.cfg.commit_window_ms, **_mem()})
    q.put(r)


def phase_raw_commit(lmdb_dir: str, n: int, q, barrier) -> None:
    """Peer: read-modify-write of n ~60-byte msgpack records, 256 per durable txn."""
    import lmdb
    import msgspec

    env = lmdb.open(lmdb_dir, map_size=16 * 1024**3, sync=True, metasync=True)
    enc = msgspec.msgpack.Encoder()
    dec = msgspec.msgpack.Decoder()
    rec = enc.encode(["user@domain.example", ["a", "b", "c"], 3, 4, 0, 0, 0])
    with env.begin(write=True) as txn:
        txn.cursor().putmulti(((i.to_bytes(8, "big"), rec) for i in range(n)), append=True)
    barrier.wait()
    t0 = time.perf_counter()
    for start in range(0, n, 256):
        with env.begin(write=True) as txn:
            for i in range(start, min(n, start + 256)):
                k = i.to_bytes(8, "big")
                v = dec.decode(txn.get(k))
                v[4] = 1
                txn.put(k, enc.encode(v))
    dt = time.perf_counter() - t0
    q.put({"commits_per_s": round(n / dt), "seconds": round(dt, 2)})


# ---------------------------------------------------------------------- driver
def run_phase(target, *args, procs: int = 1, arg_per_proc=None, timeout: float = 1800):
    q = CTX.Queue()
    barrier = CTX.Barrier(procs) if procs > 1 or arg_per_proc is not None else None
    ps = []
    for i in range(procs):
        a = list(args)
        if arg_per_proc is not None:
            a = list(arg_per_proc[i])
        a.append(q)
        if barrier is not None:
            a.append(barrier)
        p = CTX.Process(target=target, args=tuple(a))
        p.start()
        ps.append(p)
    out = [q.get(timeout=timeout) for _ in ps]
    for p in ps:
        p.join(60)
    return out


def inject_run(n: int, work: str, parallel: bool = False) -> dict:
    csv_path = os.path.join(work, f"r{n}.csv")
    if not os.path.exists(csv_path):
        make_csv(csv_path, n)
    spool = os.path.join(work, f"spool{n}{'p' if parallel else ''}")
    (res,) = run_phase(phase_inject, spool, csv_path, parallel)
    res["parallel_reader"] = parallel
    raw = os.path.join(work, f"raw{n}")
    os.makedirs(raw)
    (peer,) = run_phase(phase_raw_inject, raw, csv_path)
    res["peer_raw_lmdb_per_s"] = peer["recipients_per_s"]
    res["ratio_vs_peer"] = round(res["recipients_per_s"] / peer["recipients_per_s"], 2)
    shutil.rmtree(raw)
    return res


def inject_phases(args, work: str, report: dict) -> None:
    from fastmta.delivery import Template

    tpl = Template(TEMPLATE + b"Lorem ipsum dolor sit amet " * 100 + b"\r\n")
    f = {"email": "user1@domain1.example", "first": "First1", "last": "Last1", "city": "City1"}
    t0 = time.perf_counter()
    for _ in range(50_000):
        tpl.render(f)
    rps = round(50_000 / (time.perf_counter() - t0))
    report["render_per_s"] = rps
    print(f"render (3 KB template, 4 fields, Date + Message-ID added): {rps}/s", flush=True)
    for n in (args.small, args.recipients):
        r = inject_run(n, work)
        report[f"inject_{n}"] = r
        print(f"inject {n}: {r}", flush=True)
    r = inject_run(args.recipients, work, parallel=True)
    report[f"inject_{args.recipients}_parallel_reader"] = r
    print(f"inject {args.recipients} with a reader process: {r}", flush=True)
    shutil.rmtree(os.path.join(work, f"spool{args.recipients}p"), ignore_errors=True)
    big = os.path.join(work, f"spool{args.recipients}")
    (lease,) = run_phase(phase_lease, big, list(range(64)), 1000)
    report["lease_and_claim"] = lease
    print(f"lease-and-claim (batches of 1000 over 64 shards): {lease}", flush=True)


COMMIT_RUNS = ("writer_path_1proc", "writer_path_2proc_one_env", "cycle_1proc_no_loop", "commits_1proc_asyncio_submit", "commits_1proc_uvloop_submit",
               "commits_1proc_asyncio_submit_many8", "commits_2proc_one_env",
               "commits_2proc_two_envs", "cycle_2proc_one_env_no_loop",
               "cycle_2proc_two_envs_no_loop")


def commit_phases(args, work: str, report: dict) -> None:
    # commits: fresh spool with commit_n recipients per run
    csv_path = os.path.join(work, "c.csv")
    make_csv(csv_path, args.commit_n)
    halves = [list(range(0, 64, 2)), list(range(1, 64, 2))]
    runs = [  # (name, phase, processes, per-process args, separate envs)
        ("writer_path_1proc", phase_writer_path, 1,
         [(list(range(64)), 64, args.commit_batch, args.lease_batch)], False),
        ("writer_path_2proc_one_env", phase_writer_path, 2,
         [(h, 64, args.commit_batch, args.lease_batch) for h in halves], False),
        ("cycle_1proc_no_loop", phase_cycle, 1, [(list(range(64)),)], False),
        ("commits_1proc_asyncio_submit", phase_commit, 1, [(list(range(64)), 1, "asyncio")], False),
        ("commits_1proc_uvloop_submit", phase_commit, 1, [(list(range(64)), 1, "uvloop")], False),
        ("commits_1proc_asyncio_submit_many8", phase_commit, 1, [(list(range(64)), 8, "asyncio")], False),
        ("commits_2proc_one_env", phase_commit, 2, [(h, 1, "asyncio") for h in halves], False),
        ("commits_2proc_two_envs", phase_commit, 2, [(h, 1, "asyncio") for h in halves], True),
        ("cycle_2proc_one_env_no_loop", phase_cycle, 2, [(h,) for h in halves], False),
        ("cycle_2proc_two_envs_no_loop", phase_cycle, 2, [(h,) for h in halves], True),
    ]
    for name, phase, procs, per, separate in runs:
        if args.runs and name not in args.runs:
            continue
        spools = []
        for i in range(2 if separate else 1):
            sp_dir = os.path.join(work, f"{name}{i}")
            run_phase(phase_inject, sp_dir, csv_path, False)
            spools.append(sp_dir)
        arg_per_proc = [(spools[i if separate else 0], *per[i]) for i in range(procs)]
        res = run_phase(phase, procs=procs, arg_per_proc=arg_per_proc)
        total = sum(r["results"] for r in res)
        secs = max(r["seconds"] for r in res)
        agg = {"processes": procs, "results": total, "seconds": secs,
               "commits_per_s": round(total / secs), "per_process": res}
        report[name] = agg
        print(f"{name}: {agg['commits_per_s']}/s {res}", flush=True)
        for sp_dir in spools:
            shutil.rmtree(sp_dir, ignore_errors=True)
    # peers: bare LMDB read-modify-write, 256 per durable txn
    for procs in (1, 2):
        dirs = []
        for i in range(procs):
            d = os.path.join(work, f"rawc{procs}_{i}")
            os.makedirs(d)
            dirs.append((d, args.commit_n // procs))
        res = run_phase(phase_raw_commit, procs=procs, arg_per_proc=dirs)
        total = args.commit_n
        secs = max(r["seconds"] for r in res)
        report[f"peer_raw_commits_{procs}proc"] = round(total / secs)
        print(f"peer: bare LMDB rmw, 256/txn, {procs} process(es) (own env each): "
              f"{round(total / secs)}/s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--recipients", type=int, default=1_000_000)
    ap.add_argument("--small", type=int, default=100_000)
    ap.add_argument("--commit-n", type=int, default=200_000, help="results per commit run")
    ap.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    ap.add_argument("--only", choices=("all", "inject", "commits"), default="all",
                    help="run only the injection (and lease) phases, or only the commits")
    ap.add_argument("--runs", nargs="*", choices=COMMIT_RUNS, default=None,
                    help="commit runs to do (default: all)")
    ap.add_argument("--commit-batch", type=int, default=None,
                    help="writer_path runs: ResultWriter commit_batch (default: [spool] commit_batch)")
    ap.add_argument("--lease-batch", type=int, default=1000,
                    help="writer_path runs: items per lease (WorkerSpec.lease_batch)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from fastmta.config import SpoolConfig

    cfg = SpoolConfig()
    work = tempfile.mkdtemp(prefix="bench-spool-", dir=args.dir)
    report: dict = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average": os.getloadavg(),
                    "note": "2 cores shared with other helpers' work: figures are under contention"},
        "settings": {"sync": cfg.sync, "metasync": cfg.metasync, "map_size_bytes": cfg.map_size_bytes,
                     "commit_batch": cfg.commit_batch, "commit_window_ms": cfg.commit_window_ms,
                     "inject_batch": cfg.inject_batch, "writer_queue": cfg.writer_queue,
                     "shards": 64, "fields": 3, "domains": 5000},
    }
    try:
        print(f"settings: {report['settings']}; load average {os.getloadavg()}", flush=True)
        if args.only in ("all", "inject"):
            inject_phases(args, work, report)
        if args.only in ("all", "commits"):
            commit_phases(args, work, report)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
