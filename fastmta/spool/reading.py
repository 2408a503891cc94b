"""Read-side of the spool: deliveries, recipients, KPIs, events, leases, queues.

Every listing uses short read transactions (a new one every ``chunk`` records), so no
reader pins old pages for long.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from fastmta.records import (
    DELIVERY_DECODER,
    EVENT_DECODER,
    LEASE_DECODER,
    RCPT_DECODER,
    DeliveryRecord,
    Event,
    Lease,
    Rcpt,
)
from fastmta.spool import keys as K
from fastmta.spool.base import SpoolBase, _kpi_log_sum
from fastmta.spool.errors import DeliveryNotFound


class ReadingMixin(SpoolBase):
    """Queries; no writes except ``prune_events``."""

    def delivery(self, did: int) -> DeliveryRecord:
        with self._read() as txn:
            raw = txn.get(K.pack_u32(did), db=self._db["deliveries"])
        if raw is None:
            raise DeliveryNotFound(f"no delivery {did} in spool {self.path}")
        return DELIVERY_DECODER.decode(raw)

    def deliveries(self) -> list[DeliveryRecord]:
        with self._read() as txn:
            return [DELIVERY_DECODER.decode(v) for _, v in txn.cursor(db=self._db["deliveries"])]

    def template(self, did: int) -> bytes:
        with self._read() as txn:
            raw = txn.get(K.pack_u32(did), db=self._db["templates"])
        if raw is None:
            raise DeliveryNotFound(f"no delivery {did} in spool {self.path}")
        return bytes(raw)

    def leases(self, did: int | None = None) -> list[tuple[int, int, Lease]]:
        """Current leases (delivery id, recipient id, lease)."""
        out = []
        with self._read() as txn:
            cur = txn.cursor(db=self._db["lease"])
            ok = cur.set_range(K.pack_u32(did)) if did is not None else cur.first()
            while ok:
                d, r = K.unpack_rcpt(cur.key())
                if did is not None and d != did:
                    break
                out.append((d, r, LEASE_DECODER.decode(cur.value())))
                ok = cur.next()
        return out

    def next_due_ms(self, shards: Iterable[int]) -> int | None:
        """Earliest due time among ``shards`` (0 if something is ready now), or None."""
        best: int | None = None
        with self._read() as txn:
            rc = txn.cursor(db=self._db["ready"])
            sc = txn.cursor(db=self._db["sched"])
            for shard in shards:
                p = K.shard_key(shard)
                if rc.set_key(p):
                    return 0
                if sc.set_key(p):  # first duplicate = earliest due time
                    due = K.unpack_sched(sc.value())[0]
                    best = due if best is None else min(best, due)
        return best

    def shard_backlog(self, shards: Iterable[int]) -> dict[int, int]:
        """Recipients queued (ready + scheduled) per shard of ``shards`` (one read)."""
        out: dict[int, int] = {}
        with self._read() as txn:
            rc = txn.cursor(db=self._db["ready"])
            sc = txn.cursor(db=self._db["sched"])
            for shard in shards:
                p = K.shard_key(shard)
                n = rc.count() if rc.set_key(p) else 0
                if sc.set_key(p):
                    n += sc.count()
                out[shard] = n
        return out

    def kpis(self, did: int) -> dict[str, int]:
        """KPI counters of a delivery (maintained incrementally, never recounted): the
        ``kpi`` table plus the per-domain deltas not yet folded (``kpilog``)."""
        prefix = K.pack_u32(did)
        out: dict[str, int] = {}
        with self._read() as txn:
            cur = txn.cursor(db=self._db["kpi"])
            ok = cur.set_range(prefix)
            while ok:
                k = cur.key()
                if k[:4] != prefix:
                    break
                out[k[4:].decode()] = K.unpack_i64(cur.value())[0]
                ok = cur.next()
            pending = _kpi_log_sum(txn, self._db["kpilog"], did).get(did, {})
        for name, delta in pending.items():
            val = out.get(name, 0) + delta
            if val or name in out:
                out[name] = val
        return out

    def kpi(self, did: int, name: str) -> int:
        """One KPI counter of a delivery (0 when absent): a single lookup (plus the
        unfolded ``kpilog`` records for a ``domain/...`` counter)."""
        key = K.pack_u32(did) + name.encode()
        with self._read() as txn:
            v = txn.get(key, db=self._db["kpi"])
            extra = (_kpi_log_sum(txn, self._db["kpilog"], did).get(did, {}).get(name, 0)
                     if name.startswith("domain/") else 0)
        return (K.unpack_i64(v)[0] if v is not None else 0) + extra

    def recipients(
        self, did: int, *, chunk: int = 5000, start_id: int = 0
    ) -> Iterator[tuple[int, Rcpt]]:
        """Every recipient of a delivery in id order, from ``start_id`` (short read
        transactions)."""
        start = K.pack_rcpt(did, start_id)
        prefix = K.pack_u32(did)
        while True:
            batch = []
            with self._read() as txn:
                cur = txn.cursor(db=self._db["rcpt"])
                ok = cur.set_range(start)
                while ok and len(batch) < chunk:
                    k = cur.key()
                    if k[:4] != prefix:
                        break
                    batch.append((K.unpack_rcpt(k)[1], RCPT_DECODER.decode(cur.value())))
                    ok = cur.next()
            yield from batch
            if len(batch) < chunk:
                return
            start = K.pack_rcpt(did, batch[-1][0] + 1)

    def scan_recipients(
        self, did: int, *, start_id: int = 0, needle: bytes = b"", chunk: int = 2000
    ) -> Iterator[tuple[int, Rcpt | None]]:
        """``recipients`` for filtered listings: a record whose lower-cased stored bytes do
        not contain ``needle`` is yielded as ``(rid, None)`` without being decoded."""
        start = K.pack_rcpt(did, start_id)
        prefix = K.pack_u32(did)
        while True:
            batch: list[tuple[int, Rcpt | None]] = []
            with self._read() as txn:
                cur = txn.cursor(db=self._db["rcpt"])
                ok = cur.set_range(start)
                while ok and len(batch) < chunk:
                    k = cur.key()
                    if k[:4] != prefix:
                        break
                    raw = cur.value()
                    rec = (RCPT_DECODER.decode(raw)
                           if not needle or needle in raw.lower() else None)
                    batch.append((K.unpack_rcpt(k)[1], rec))
                    ok = cur.next()
            yield from batch
            if len(batch) < chunk:
                return
            start = K.pack_rcpt(did, batch[-1][0] + 1)

    def recipient(self, did: int, rid: int) -> Rcpt | None:
        with self._read() as txn:
            raw = txn.get(K.pack_rcpt(did, rid), db=self._db["rcpt"])
        return RCPT_DECODER.decode(raw) if raw is not None else None

    def events(
        self, since: int = 0, *, delivery_id: int | None = None, chunk: int = 5000
    ) -> Iterator[tuple[int, Event]]:
        """Events with sequence number > ``since``, in order (short read transactions)."""
        start = since + 1
        while True:
            batch = []
            with self._read() as txn:
                cur = txn.cursor(db=self._db["events"])
                ok = cur.set_range(K.pack_u64(start))
                while ok and len(batch) < chunk:
                    batch.append((K.unpack_u64(cur.key())[0], EVENT_DECODER.decode(cur.value())))
                    ok = cur.next()
            for seq, ev in batch:
                if delivery_id is None or getattr(ev, "delivery_id", None) == delivery_id:
                    yield seq, ev
            if len(batch) < chunk:
                return
            start = batch[-1][0] + 1

    def events_raw(self, since: int = 0, *, chunk: int = 5000
                   ) -> Iterator[tuple[int, bytes]]:
        """``events`` undecoded: ``(seq, msgpack bytes)`` after ``since``, for readers that
        decode only the fields they need (the dashboard's timeline)."""
        start = since + 1
        while True:
            with self._read() as txn:
                cur = txn.cursor(db=self._db["events"])
                ok = cur.set_range(K.pack_u64(start))
                batch = []
                while ok and len(batch) < chunk:
                    batch.append((K.unpack_u64(cur.key())[0], bytes(cur.value())))
                    ok = cur.next()
            yield from batch
            if len(batch) < chunk:
                return
            start = batch[-1][0] + 1

    def prune_events(self, before_seq: int, *, chunk: int = 50_000) -> int:
        """Delete events with sequence number < ``before_seq`` (after they were exported);
        the per-recipient state keeps the last outcome of every recipient."""
        total = 0
        while True:
            def fn(txn: Any) -> int:
                n = 0
                cur = txn.cursor(db=self._db["events"])
                ok = cur.first()
                while ok and n < chunk and K.unpack_u64(cur.key())[0] < before_seq:
                    cur.delete()
                    ok = bool(cur.key())
                    n += 1
                return n

            n = self._write(fn)
            total += n
            if n < chunk:
                return total

    def queue_counts(self, shards: Iterable[int] | None = None) -> dict[str, int]:
        """Entries in the ready, scheduled and lease tables (whole spool)."""
        with self._read() as txn:
            return {n: txn.stat(self._db[n])["entries"] for n in ("ready", "sched", "lease")}

