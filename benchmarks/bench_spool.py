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
import sys
import tempfile
import time

CTX = mp.get_context("spawn")


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


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
    with open_recipients(csv_path) as r:
        a = inject(sp, r, TEMPLATE, shards=64, parallel=parallel)
    dt = time.perf_counter() - t0
    info = sp.info()
    q.put({"recipients": a.to_deliver, "seconds": round(dt, 2),
           "recipients_per_s": round(a.to_deliver / dt), "spool_bytes": info["file_bytes"],
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
    n = 0
    while True:
        t0 = time.perf_counter()
        items = sp.lease(shards, owner, batch)
        lease_s += time.perf_counter() - t0
        if not items:
            break
        n += len(items)
        sp.commit([Result(key=i.key, outcome="sent", code=250) for i in items])
    q.put({"leased": n, "lease_seconds": round(lease_s, 2), "leases_per_s": round(n / lease_s),
           "batch": batch, **_mem()})


def phase_commit(spool_dir: str, shards: list[int], group: int, q, barrier) -> None:
    """Engine-shaped result commits through ResultWriter (default batching): a feeder
    leases batches of 2048 (through the writer thread) while at most ``writer_queue``
    items are in flight; concurrent tasks submit one result each (or ``group`` at once,
    as for a multi-recipient transaction) and await durability."""
    from fastmta.records import Result
    from fastmta.spool import ResultWriter, Spool

    sp = Spool.open(spool_dir)
    owner = f"bench-{os.getpid()}"

    async def main() -> tuple[float, int, float]:
        async with ResultWriter(sp) as w:
            inflight = w.queue_size
            work: asyncio.Queue = asyncio.Queue(maxsize=inflight)
            conc = max(1, inflight // max(1, group))
            done = 0
            lease_s = 0.0
            barrier.wait()
            t0 = time.perf_counter()

            async def feeder() -> None:
                nonlocal lease_s
                while True:
                    t = time.perf_counter()
                    items = await w.run(sp.lease, shards, owner, 2048)
                    lease_s += time.perf_counter() - t
                    if not items:
                        break
                    for it in items:
                        await work.put(it)
                for _ in range(conc):
                    await work.put(None)

            async def worker() -> None:
                nonlocal done
                while True:
                    batch = []
                    while len(batch) < group:
                        it = await work.get()
                        if it is None:
                            break
                        batch.append(Result(key=it.key, outcome="sent", code=250,
                                            mx="mx.example", source_ip="127.0.0.2"))
                    if batch:
                        if group == 1:
                            await w.submit(batch[0])
                        else:
                            await w.submit_many(batch)
                        done += len(batch)
                    if len(batch) < group:
                        return

            await asyncio.gather(feeder(), *(worker() for _ in range(conc)))
            return time.perf_counter() - t0, done, lease_s

    dt, n, lease_s = asyncio.run(main())
    q.put({"results": n, "seconds": round(dt, 2), "commits_per_s": round(n / dt),
           "lease_wait_s": round(lease_s, 2), "commit_batch": sp.cfg.commit_batch,
           "submit": f"submit_many({group})" if group > 1 else "submit (one result per await)",
           "commit_window_ms": sp.cfg.commit_window_ms, **_mem()})


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--recipients", type=int, default=1_000_000)
    ap.add_argument("--small", type=int, default=100_000)
    ap.add_argument("--commit-n", type=int, default=400_000, help="results per commit run")
    ap.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
    from fastmta.config import SpoolConfig

    cfg = SpoolConfig()
    work = tempfile.mkdtemp(prefix="bench-spool-", dir=args.dir)
    report: dict = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "note": "2 cores shared with other helpers' work: figures are under contention"},
        "settings": {"sync": cfg.sync, "metasync": cfg.metasync, "map_size_bytes": cfg.map_size_bytes,
                     "commit_batch": cfg.commit_batch, "commit_window_ms": cfg.commit_window_ms,
                     "inject_batch": cfg.inject_batch, "writer_queue": cfg.writer_queue,
                     "shards": 64, "fields": 3, "domains": 5000},
    }
    try:
        print(f"settings: {report['settings']}", flush=True)
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

        # commits: fresh spool with commit_n recipients, one process, then two processes
        for procs in (1, 2):
            csv_path = os.path.join(work, f"c{procs}.csv")
            make_csv(csv_path, args.commit_n)
            spool = os.path.join(work, f"commit{procs}")
            for group in (1, 8):
                spool = os.path.join(work, f"commit{procs}_{group}")
                run_phase(phase_inject, spool, csv_path, False)
                shard_sets = [list(range(64))] if procs == 1 else [list(range(0, 64, 2)), list(range(1, 64, 2))]
                res = run_phase(phase_commit, procs=procs,
                                arg_per_proc=[(spool, s, group) for s in shard_sets])
                total = sum(r["results"] for r in res)
                secs = max(r["seconds"] for r in res)
                agg = {"processes": procs, "results": total, "seconds": secs,
                       "commits_per_s": round(total / secs), "per_process": res}
                report[f"commits_{procs}proc_one_env_group{group}"] = agg
                print(f"result commits, {procs} process(es), one env, {res[0]['submit']}: "
                      f"{agg['commits_per_s']}/s {res}", flush=True)
                shutil.rmtree(spool, ignore_errors=True)
        # the one-env-vs-env-per-shard question: two processes, two separate envs
        csv_path = os.path.join(work, "c2.csv")
        envs = []
        for i in range(2):
            spool = os.path.join(work, f"split{i}")
            run_phase(phase_inject, spool, csv_path, False)
            envs.append((spool, list(range(i, 64, 2)), 1))
        res = run_phase(phase_commit, procs=2, arg_per_proc=envs)
        total = sum(r["results"] for r in res)
        secs = max(r["seconds"] for r in res)
        report["commits_2proc_two_envs"] = {"commits_per_s": round(total / secs), "results": total,
                                            "seconds": secs}
        print(f"result commits, 2 processes, one env each: {round(total / secs)}/s", flush=True)
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
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
