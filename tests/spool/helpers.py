"""Helpers shared by the spool tests (importable from spawned children)."""

from __future__ import annotations

import os

from fastmta.config import SpoolConfig
from fastmta.records import DeliveryRecord, RecipientIn
from fastmta.spool import Spool, now_ms

FAST = dict(sync=False, metasync=False, map_size_bytes=256 * 1024**2)


def open_spool(path: str, **cfg: object) -> Spool:
    """A spool for tests (fsync off unless asked: durability is LMDB's, not ours)."""
    opts = dict(FAST)
    opts.update(cfg)
    return Spool.open(path, SpoolConfig(**opts))


def make_delivery(sp: Spool, n: int, *, shards: int = 4, domains: int = 3,
                  validity_s: float = 3 * 86400, fields: tuple[str, ...] = ("first",)) -> int:
    t = now_ms()
    did = sp.create_delivery(
        DeliveryRecord(mail_from="news@example.com", created_ms=t,
                       expires_ms=t + int(validity_s * 1000), fields=list(fields)),
        b"From: news@example.com\r\nSubject: hi {{first}}\r\n\r\nbody\r\n",
    )
    sp.add_recipients(did, (
        RecipientIn(email=f"u{i}@d{i % domains}.example", fields=(f"F{i}",) * len(fields),
                    shard=i % shards, line=i + 2)
        for i in range(n)
    ))
    return did


def sink_append(path: str, keys: list[bytes]) -> None:
    """The 'remote MX' of the crash tests: an append-only file of delivered keys, fsynced
    before the delivery counts as done (like a 250 after the dot)."""
    with open(path, "ab") as f:
        f.write(b"".join(k.hex().encode() + b"\n" for k in keys))
        f.flush()
        os.fsync(f.fileno())


def sink_counts(path: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    if not os.path.exists(path):
        return counts
    with open(path) as f:
        for line in f:
            k = line.strip()
            if k:
                counts[k] = counts.get(k, 0) + 1
    return counts
