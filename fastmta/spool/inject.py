"""Injection: recipients streamed into a delivery in durable batches.

Each batch is one write transaction: duplicates (the ``seen`` digests), quarantined and
denylisted addresses are excluded, the others go to their shard's ready queue as
``pending``.  ``InjectMixin`` is one of ``Spool``'s bases.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from fastmta.core import rcpt_batch
from fastmta.records import (
    ENCODER,
    DeliveryEvent,
    Rcpt,
    RecipientIn,
    Status,
)
from fastmta.spool import keys as K
from fastmta.spool.base import InjectStats, _Acc, clock_ms
from fastmta.spool.errors import DeliveryNotFound, SpoolFullError
from fastmta.spool.quarantine import QuarantineMixin
from fastmta.spool.reading import ReadingMixin


class InjectMixin(QuarantineMixin, ReadingMixin):
    """Adding recipients to a delivery (and the exclusion check behind it)."""

    # ------------------------------------------------------------------ injection
    def add_recipients(
        self,
        did: int,
        items: Iterable[RecipientIn],
        *,
        on_excluded: Callable[[RecipientIn, str], None] | None = None,
        batch: int | None = None,
        now_ms: int | None = None,
    ) -> InjectStats:
        """Add recipients, streamed in transactions of ``batch`` items; each batch is
        durable (``pending``) before the next starts.  Excludes duplicates, quarantined and
        denylisted addresses (items arriving with ``exclude`` set keep that reason).
        Items whose ``line`` is at or before the delivery's ``injected_line`` were injected
        by an earlier, interrupted call and are skipped (resume by re-reading the input).
        Raises ``SpoolFullError`` (with ``.added``) when the map is full."""
        batch = batch or self.cfg.inject_batch
        stats = InjectStats()
        it = iter(items)
        d = self.delivery(did)
        resume_line = d.injected_line
        t0 = now_ms or clock_ms()
        while True:
            chunk = list(itertools.islice(it, batch))
            if not chunk:
                break
            if resume_line and chunk[-1].line <= resume_line:
                stats.skipped += len(chunk)  # certainly injected already
                continue
            try:
                res = self._write(lambda txn, c=chunk: self._inject_chunk(txn, did, c, t0))
            except SpoolFullError as exc:
                exc.added = stats.added
                raise
            n_in = len(chunk)
            added, excluded, chunk = res
            self.trim_rss()  # keep RSS flat over millions of recipients
            stats.skipped += n_in - len(chunk)
            if not chunk:
                continue
            stats.recipients += len(chunk)
            stats.added += added
            stats.last_line = chunk[-1].line
            for item, reason in excluded:
                stats.excluded[reason] = stats.excluded.get(reason, 0) + 1
                if on_excluded is not None:
                    on_excluded(item, reason)
        return stats

    def _inject_chunk(
        self, txn: Any, did: int, chunk: list[RecipientIn], t0: int
    ) -> tuple[int, list[tuple[RecipientIn, str]], list[RecipientIn]]:
        db = self._db
        acc = _Acc(t0)
        d = self._delivery_in(txn, did, acc)
        if d is None:
            raise DeliveryNotFound(f"no delivery {did} in spool {self.path}")
        # The resume point is read here, in the write transaction: a reader may lag one
        # commit behind after a writer was killed mid-commit (LMDB fixes the shared txn
        # id only when the next writer takes the lock).
        if d.injected_line and chunk[0].line <= d.injected_line:
            chunk = [x for x in chunk if x.line > d.injected_line]
            if not chunk:
                return 0, [], chunk
        kd = acc.k(did)
        raw = txn.get(K.pack_u32(did) + b"recipients", db=db["kpi"])
        rid = K.unpack_i64(raw)[0] if raw else 0
        did4 = K.pack_u32(did)
        check_q = txn.stat(db["quarantine"])["entries"] > 0
        dups = self._find_doubles(txn, did4, chunk)
        if check_q:  # look every address up in the quarantine / denylist
            rcpt_items, ready_keys, domains, excluded = self._encode_checked(
                txn, did, rid, t0, chunk, dups, kd)
        else:  # the common case: one call into the compiled core for the batch
            rcpt_items, ready_keys, domains, exc = rcpt_batch(chunk, did, rid, t0, dups)
            excluded = [(chunk[i], reason) for i, reason in exc]
            for _, reason in excluded:
                kd["excluded/" + reason] += 1
        added = len(ready_keys)
        cur = txn.cursor(db=db["rcpt"])
        append = not cur.last() or cur.key() < rcpt_items[0][0]
        cur.putmulti(rcpt_items, append=append)
        if ready_keys:
            # in id order, so each is appended after its shard's last entry (APPENDDUP;
            # no sort needed) unless an older delivery is being resumed
            rcur = txn.cursor(db=db["ready"])
            if rcur.putmulti(ready_keys, dupdata=True, append=True)[1] < len(ready_keys):
                rcur.putmulti(ready_keys, dupdata=True)  # the ones not appended
        kd["recipients"] += len(chunk)
        kd["to_deliver"] += added
        kd["pending"] += added
        kd["excluded"] += len(excluded)
        for dom, n in domains.items():
            kd[f"domain/{dom}/to_deliver"] += n
        last_line = chunk[-1].line
        if last_line > d.injected_line:
            d2 = msgspec.structs.replace(d, injected_line=last_line)
            txn.put(did4, ENCODER.encode(d2), db=db["deliveries"])
        # reception: one event per durable injection batch (not per recipient)
        acc.events.append(DeliveryEvent(ts_ms=t0, delivery_id=did, kind="received",
                                        count=added, text=f"lines {chunk[0].line}-{last_line}; "
                                        f"excluded {len(excluded)}"))
        self._flush(txn, acc)
        return added, excluded, chunk

    def _encode_checked(
        self, txn: Any, did: int, rid: int, t0: int, chunk: list[RecipientIn], dups: set[int],
        kd: defaultdict[str, int],
    ) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]], dict[str, int],
               list[tuple[RecipientIn, str]]]:
        """``rcpt_batch`` with a quarantine/denylist look-up per address."""
        rcpt_items: list[tuple[bytes, bytes]] = []
        ready_keys: list[tuple[bytes, bytes]] = []
        excluded: list[tuple[RecipientIn, str]] = []
        domains: defaultdict[str, int] = defaultdict(int)
        encode = ENCODER.encode
        for idx, item in enumerate(chunk):
            email = item.email
            reason = item.exclude
            if not reason:
                if dups and idx in dups:
                    reason = "double"
                else:
                    reason = self._quarantine_reason(txn, email, t0) or ""
            if reason:
                rec = Rcpt(email=email, fields=item.fields, shard=item.shard, line=item.line,
                           status=Status.IGNORED, done_ms=t0, reason=reason,
                           smtputf8=item.smtputf8)
                excluded.append((item, reason))
                kd["excluded/" + reason] += 1
            else:
                rec = Rcpt(email, item.fields, item.shard, item.line, Status.PENDING,
                           item.smtputf8)
                ready_keys.append((K.shard_key(item.shard), K.pack_ready(did, rid)))
                domains[email[email.rindex("@") + 1:]] += 1
            rcpt_items.append((K.pack_rcpt(did, rid), encode(rec)))
            rid += 1
        return rcpt_items, ready_keys, domains, excluded

    def _find_doubles(self, txn: Any, did4: bytes, chunk: list[RecipientIn]) -> set[int]:
        """Indexes of the chunk's duplicates (of earlier items or of earlier chunks), and
        record the others in ``seen``.  Fast path: one ``putmulti`` in a nested
        transaction; only if it finds an existing key are the items checked one by one."""
        blake = hashlib.blake2b
        dups: set[int] = set()
        if any(item.exclude for item in chunk):
            first: dict[bytes, int] = {}
            for idx, item in enumerate(chunk):
                if item.exclude:
                    continue
                h = blake(item.email.encode(), digest_size=8).digest()
                if h in first:
                    dups.add(idx)
                else:
                    first[h] = idx
        else:  # the common case, without a Python step per item
            hs = [blake(item.email.encode(), digest_size=8).digest() for item in chunk]
            first = dict(zip(reversed(hs), range(len(hs) - 1, -1, -1), strict=True))  # first index wins
            if len(first) < len(hs):
                dups = {idx for idx, h in enumerate(hs) if first[h] != idx}
        if not first:
            return dups
        seen_db = self._db["seen"]
        sub = self._env.begin(write=True, parent=txn)
        try:
            # in input order: sorting the random digests first costs more than it saves
            consumed, added = sub.cursor(db=seen_db).putmulti(
                zip(itertools.repeat(did4), first), dupdata=False)
        except BaseException:
            sub.abort()
            raise
        if added == len(first):
            sub.commit()
            return dups
        sub.abort()
        put = txn.put
        for h, idx in sorted(first.items(), key=lambda kv: kv[1]):
            if not put(did4, h, dupdata=False, db=seen_db):
                dups.add(idx)
        return dups

    def precheck(self, address: str, *, now_ms: int | None = None) -> str | None:
        """Exclusion reason from the quarantine/denylist for ``address`` (analysis)."""
        with self._read() as txn:
            return self._quarantine_reason(txn, address, now_ms or clock_ms())
