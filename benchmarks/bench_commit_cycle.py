"""The spool's lease + commit cycle alone, repeated on copies of ONE injected spool.

    PYTHONPATH=$PWD python benchmarks/bench_commit_cycle.py [--recipients 100000] [--runs 3]

The ``cycle_1proc_no_loop`` shape of ``bench_spool.py`` (lease 2,048 over 64 shards,
commit them as ``sent`` in batches of ``commit_batch``, durable), without re-injecting
for every run: the spool is injected once, copied per run.  Prints per run the results
per wall second and per CPU-second, the lease and commit CPU per result, and the bytes
written per result (``/proc/self/io`` wchar: the pages LMDB writes).  On a shared
machine compare trees by alternating runs; the CPU figures are the steadier ones.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_spool as B  # noqa: E402  (the CSV, template and CPU helpers)


def _wchar() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("wchar:")).split()[1])


def seed(path: str, n: int) -> None:
    from fastmta.delivery import inject, open_recipients
    from fastmta.spool import Spool

    csv_path = path + ".csv"
    B.make_csv(csv_path, n)
    sp = Spool.open(path)
    with open_recipients(csv_path) as r:
        inject(sp, r, B.TEMPLATE, shards=64)
    Spool.close_all()
    os.unlink(csv_path)


def cycle(path: str) -> dict:
    from fastmta.records import Result
    from fastmta.spool import Spool

    sp = Spool.open(path)
    b = sp.cfg.commit_batch
    n = txns = 0
    lease_cpu = 0.0
    lease_w = 0
    w0, c0, t0 = _wchar(), B._cpu(), time.perf_counter()
    while True:
        c1, w1 = B._cpu(), _wchar()
        items = sp.lease(list(range(64)), "bench", 2048)
        lease_cpu += B._cpu() - c1
        lease_w += _wchar() - w1
        txns += 1
        if not items:
            break
        for i in range(0, len(items), b):
            sp.commit([Result(key=x.key, outcome="sent", code=250, mx="mx.example",
                              source_ip="127.0.0.2") for x in items[i:i + b]])
            txns += 1
        n += len(items)
    cpu, dt, w = B._cpu() - c0, time.perf_counter() - t0, _wchar() - w0
    Spool.close_all()
    return {"results": n, "per_s": round(n / dt), "per_cpu_s": round(n / cpu),
            "lease_us_cpu": round(lease_cpu / n * 1e6, 2),
            "commit_us_cpu": round((cpu - lease_cpu) / n * 1e6, 2),
            "write_bytes_per_result": round(w / n), "lease_write_bytes_per_result":
            round(lease_w / n), "pages_per_txn": round(w / txns / 4096)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipients", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="fastmta-cycle-")
    try:
        base = os.path.join(work, "seed")
        seed(base, args.recipients)
        for _ in range(args.runs):
            run = os.path.join(work, "run")
            shutil.copytree(base, run)
            print(json.dumps({"load": os.getloadavg()[0], **cycle(run)}), flush=True)
            shutil.rmtree(run)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
