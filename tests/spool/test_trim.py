"""Mapped spool pages: a process unmaps them once it maps a set amount more file
memory than at open (``spool.base._maybe_trim``), not after a fixed count of records."""

from __future__ import annotations

import os

from helpers import make_delivery

from fastmta.records import Result
from fastmta.spool import base


def _mapped_data_kb(path: str) -> int:
    """Resident kB of this process's mappings of the spool's data.mdb (smaps)."""
    data = os.path.join(path, "data.mdb")
    kb, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5:
                inside = line.rstrip().endswith(data)
            elif inside and line.startswith("Rss:"):
                kb += int(head[1])
    return kb


def test_mapped_pages_are_unmapped_by_size(spool, monkeypatch):
    did = make_delivery(spool, 30_000, shards=8, domains=50)
    trims = []
    real = spool.trim_rss
    monkeypatch.setattr(spool, "trim_rss", lambda: (trims.append(1), real()))
    monkeypatch.setattr(base, "_TRIM_MAPPED_BYTES", 2 * 1024 * 1024)
    spool._mapped_base = base._mapped_file_bytes()
    real()  # start from nothing mapped
    peak = 0
    done = 0
    while items := spool.lease(range(8), "w", 1000):
        spool.commit([Result(key=i.key, outcome="sent", code=250) for i in items])
        done += len(items)
        peak = max(peak, _mapped_data_kb(spool.path))
    assert done == 30_000 and spool.kpis(did)["sent"] == 30_000
    # 30k records of ~100 bytes spread over the file: well past 2 MB of mapped pages,
    # so trims happened, but fewer than one per 1,000 records (the old fixed interval)
    assert 1 <= len(trims) < 60
    # between two checks (1,000 records) a process maps at most ~8 KB per record
    assert peak < 2 * 1024 + 8 * 1000 + 4 * 1024, peak


def test_no_trim_while_little_is_mapped(spool, monkeypatch):
    make_delivery(spool, 5_000, shards=4)
    trims = []
    monkeypatch.setattr(spool, "trim_rss", lambda: trims.append(1))
    spool._mapped_base = base._mapped_file_bytes()
    while items := spool.lease(range(4), "w", 1000):
        spool.commit([Result(key=i.key, outcome="sent", code=250) for i in items])
    assert trims == []  # a 5,000-recipient spool maps far less than 32 MB
