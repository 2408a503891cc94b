"""Injection from CSV, taken apart: reading + checks, the spool's half, the whole.

    PYTHONPATH=$PWD python benchmarks/bench_inject.py [--recipients 300000] [--runs 3]
        [--parts read,spool,whole,parallel] [--batch 20000]

Same input as ``bench_spool.py --only inject`` (its generator: ``email,first,last,city``,
5,000 domains; 64 shards, hash routing, durable commits).  Each part runs ``--runs``
times in this process and prints the best CPU time per recipient (process time: the
steadier figure on a shared machine), the wall rate of that run, the bytes the process
wrote (``/proc/self/io``: LMDB's page writes, so write amplification shows) and the
load average.  Run it once per tree (``PYTHONPATH``) to compare two versions.

- ``read``: ``open_recipients`` + the checks and routing, items collected in batches of
  20,000 (what ``inject`` hands to the spool), no spool;
- ``spool``: ``Spool.add_recipients`` of items prepared beforehand;
- ``whole``: ``inject()`` as ``fastmta inject --route domain`` does it;
- ``parallel``: the same with the reader process (``parallel=True``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_spool import TEMPLATE, make_csv  # noqa: E402


def _written() -> int:
    with open("/proc/self/io") as f:
        return int(dict(ln.split(": ") for ln in f.read().splitlines())["wchar"])


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


def _items(path: str):
    from fastmta.delivery import injection
    from fastmta.delivery.analysis import _columns, _Prechecker
    from fastmta.delivery.recipients import open_recipients
    from fastmta.delivery.template import Template

    r = open_recipients(path)
    pre = _Prechecker(Template(TEMPLATE), _columns(r))
    if hasattr(injection, "_csv_batches"):
        return r, itertools.chain.from_iterable(injection._csv_batches(
            pre, r, injection.HashShard(64), {"smtputf8": 0}, {}))
    return r, injection._items(pre, pre.rows(r), injection.HashShard(64), {"smtputf8": 0}, {})


def part_read(path: str, work: str, batch: int) -> int:
    r, it = _items(path)
    n = 0
    with r:
        while True:
            b = list(itertools.islice(it, 20_000))
            if not b:
                return n
            n += len(b)


def _spool(work: str, batch: int):
    from fastmta.config import SpoolConfig
    from fastmta.spool import Spool

    d = os.path.join(work, "spool")
    shutil.rmtree(d, ignore_errors=True)
    return Spool.open(d, SpoolConfig(inject_batch=batch))


def part_spool(path: str, work: str, batch: int, prepared: list) -> int:
    from fastmta.records import DeliveryRecord

    sp = _spool(work, batch)
    t = int(time.time() * 1000)
    did = sp.create_delivery(DeliveryRecord(name="bench", mail_from="news@shop.example",
                                            created_ms=t, expires_ms=t + 86_400_000,
                                            fields=["first", "last", "city"]), TEMPLATE)
    st = sp.add_recipients(did, prepared)
    sp.close()
    return st.added


def part_whole(path: str, work: str, batch: int, parallel: bool = False) -> int:
    from fastmta.delivery import inject, open_recipients

    sp = _spool(work, batch)
    with open_recipients(path) as r:
        a = inject(sp, r, TEMPLATE, shards=64, parallel=parallel)
    sp.close()
    return a.to_deliver


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipients", type=int, default=300_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--parts", default="read,spool,whole,parallel")
    ap.add_argument("--batch", type=int, default=20_000, help="inject_batch (per transaction)")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="fastmta-inject-")
    path = os.path.join(work, f"r{args.recipients}.csv")
    if not os.path.exists(path):
        make_csv(path, args.recipients)
    prepared: list = []
    if "spool" in args.parts:
        r, it = _items(path)
        with r:
            prepared = list(it)
    out = {}
    for part in args.parts.split(","):
        best = None
        for _ in range(args.runs):
            w0, c0, t0 = _written(), _cpu(), time.perf_counter()
            if part == "read":
                n = part_read(path, work, args.batch)
            elif part == "spool":
                n = part_spool(path, work, args.batch, prepared)
            elif part == "parallel":
                n = part_whole(path, work, args.batch, parallel=True)
            else:
                n = part_whole(path, work, args.batch)
            wall, cpu, wrote = time.perf_counter() - t0, _cpu() - c0, _written() - w0
            if best is None or cpu < best[1]:
                best = (wall, cpu, wrote, n)
        wall, cpu, wrote, n = best
        out[part] = {"us_cpu_per_rcpt": round(cpu / n * 1e6, 2), "per_cpu_s": round(n / cpu),
                     "per_s_wall": round(n / wall), "written_bytes_per_rcpt": round(wrote / n),
                     "load": round(os.getloadavg()[0], 1)}
        print(f"{part:8s} {json.dumps(out[part])}", flush=True)
    print(json.dumps({"utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
                      "recipients": args.recipients, "batch": args.batch,
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                      **out}))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
