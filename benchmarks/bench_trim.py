"""Mapped spool pages vs the RSS trim interval (``spool.base._TRIM_RECORDS``).

Injects N recipients (default 1M) into a fresh spool, then leases and commits 40,000 of
them in worker-sized batches (lease 4,000, commit 256 per transaction) with trims every
T records for several T, printing the CPU per record and the peak of this process's
mapped ``data.mdb`` pages (from /proc/self/smaps).  Linux only.

    python benchmarks/bench_trim.py [--recipients 1000000]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_spool import TEMPLATE, make_csv  # noqa: E402


def mapped_mb() -> int:
    """Resident pages of this process's ``data.mdb`` mappings, MB."""
    kb, cur = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                cur = line.rstrip().endswith("data.mdb")
            elif cur and line.startswith("Rss:"):
                kb += int(line.split()[1])
    return kb // 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipients", type=int, default=1_000_000)
    args = ap.parse_args()
    from fastmta.config import SpoolConfig
    from fastmta.delivery import inject, open_recipients
    from fastmta.records import Result
    from fastmta.spool import Spool, base

    work = tempfile.mkdtemp(prefix="fastmta-bench-trim-")
    try:
        csv_path = os.path.join(work, "r.csv")
        make_csv(csv_path, args.recipients)
        sp = Spool.open(os.path.join(work, "spool"), SpoolConfig())
        with open_recipients(csv_path) as r:
            inject(sp, r, TEMPLATE, shards=64)
        print(f"{args.recipients:,} recipients, spool file "
              f"{sp.info()['file_bytes'] / 2**20:.0f} MB")
        shards = list(range(64))
        for every in (10**12, 4000, 2000, 1000):
            base._TRIM_RECORDS = every
            sp.trim_rss()
            t, n, peak = time.process_time(), 0, 0
            for _ in range(10):
                items = sp.lease(shards, "bench", 4000)
                for i in range(0, len(items), 256):
                    sp.commit([Result(key=x.key, outcome="sent", code=250, mx="mx.example")
                               for x in items[i:i + 256]])
                    peak = max(peak, mapped_mb())
                n += len(items)
            cpu_us = 1e6 * (time.process_time() - t) / max(1, n)
            label = "never" if every >= 10**12 else f"every {every:,} records"
            print(f"trim {label:>22}: {cpu_us:5.1f} us CPU per record (lease + commit), "
                  f"peak mapped spool {peak} MB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
