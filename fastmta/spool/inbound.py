"""Inbound feedback: the signing key, stored inbound mail and its effects, one durable
transaction per batch (``fastmta.feedback`` decides, this module writes).

Layout of the ``inbound`` database (append-only, new in schema 2):

- ``b"m" + id:u64`` -> ``InboundRecord`` (what arrived and what it did)
- ``b"r" + id:u64`` -> raw bytes (truncated copy, for audit; purged after ``keep_raw``)
- ``b"d" + digest``  -> id:u64 (idempotence: an effect already applied)
- ``b"k" + name``    -> i64 (global counters: received, matched, unmatched, duplicate...)

The signing key of the tokens is ``meta["feedback_key"]`` (32 random bytes, made once).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from fastmta.records import (
    ENCODER,
    INBOUND_DECODER,
    RCPT_DECODER,
    FeedbackEvent,
    InboundRecord,
    QuarantineEntry,
    QuarantineEvent,
    Rcpt,
)
from fastmta.spool import keys as K
from fastmta.spool.base import _REPLY_MAX, _Acc, clock_ms
from fastmta.spool.quarantine import QuarantineMixin


class Decision(msgspec.Struct, kw_only=True):
    """What one inbound message does to its recipient (made by ``feedback.apply``)."""

    effect: str  # failed | complained | reason_updated | recorded | unsubscribed | none
    rcpt: Rcpt | None = None  # the new recipient record (None = unchanged)
    kpi: dict[str, int] = msgspec.field(default_factory=dict)
    denylist: str = ""  # reason: complaint | unsubscribed
    quarantine: str = ""  # reason of a hard-bounce quarantine
    bounce_class: int = 0
    event: FeedbackEvent | None = None


class InboundItem(msgspec.Struct, kw_only=True):
    """One inbound message to store (and apply, when ``target`` is set)."""

    record: InboundRecord  # id and ts filled in by the spool
    raw: bytes = b""
    target: tuple[int, int] | None = None  # (delivery_id, rcpt_id) of a verified token
    dedupe: bytes = b""  # digest of (target, effect class): applied once
    decide: Callable[[Rcpt], Decision] | None = None


class InboundMixin(QuarantineMixin):
    """Inbound feedback storage and application."""

    def feedback_key(self) -> bytes:
        """The token signing key (created on first use; the same for every process)."""
        with self._read() as txn:
            key = txn.get(b"feedback_key", db=self._db["meta"])
        if key is not None:
            return bytes(key)
        new = os.urandom(32)

        def fn(txn: Any) -> bytes:
            old = txn.get(b"feedback_key", db=self._db["meta"])
            if old is not None:
                return bytes(old)
            txn.put(b"feedback_key", new, db=self._db["meta"])
            return new

        return self._write(fn)

    def inbound_commit(self, items: list[InboundItem], now_ms: int | None = None
                       ) -> list[InboundRecord]:
        """Store every item and apply the matched ones, in ONE durable transaction."""
        t = now_ms or clock_ms()

        def fn(txn: Any) -> list[InboundRecord]:
            db = self._db["inbound"]
            meta = self._db["meta"]
            raw_last = txn.get(b"inbound_last", db=meta)
            last = K.unpack_u64(raw_last)[0] if raw_last else 0
            acc = _Acc(t)
            counters: dict[str, int] = {}
            out = []
            for item in items:
                last += 1
                rec = msgspec.structs.replace(item.record, id=last, ts_ms=item.record.ts_ms or t)
                rec = self._inbound_apply(txn, acc, rec, item, t, counters)
                idk = K.pack_u64(last)
                txn.put(b"m" + idk, ENCODER.encode(rec), db=db)
                if item.raw:
                    txn.put(b"r" + idk, item.raw, db=db)
                counters["received"] = counters.get("received", 0) + 1
                counters[f"kind/{rec.kind or 'other'}"] = counters.get(f"kind/{rec.kind or 'other'}", 0) + 1
                counters[f"effect/{rec.effect}"] = counters.get(f"effect/{rec.effect}", 0) + 1
                out.append(rec)
            for name, delta in counters.items():
                key = b"k" + name.encode()
                raw = txn.get(key, db=db)
                txn.put(key, K.pack_i64((K.unpack_i64(raw)[0] if raw else 0) + delta), db=db)
            txn.put(b"inbound_last", K.pack_u64(last), db=meta)
            self._flush(txn, acc)
            return out

        return self._write(fn)

    def _inbound_apply(self, txn: Any, acc: _Acc, rec: InboundRecord, item: InboundItem,
                       t: int, counters: dict[str, int]) -> InboundRecord:
        if item.target is None or item.decide is None:
            return msgspec.structs.replace(rec, matched=False,
                                           effect=rec.effect or "unmatched")
        did, rid = item.target
        rkey = K.pack_rcpt(did, rid)
        raw = txn.get(rkey, db=self._db["rcpt"])
        if raw is None:
            return msgspec.structs.replace(rec, matched=False, effect="unmatched",
                                           why="token of a recipient not in this spool")
        rcpt = RCPT_DECODER.decode(raw)
        named = [a.lower() for a in (rec.email.split(",") if rec.email else [])]
        if named and rcpt.email.lower() not in named:
            return msgspec.structs.replace(
                rec, matched=False, effect="unmatched",
                why="the token names another recipient than the report")
        rec = msgspec.structs.replace(rec, matched=True, delivery_id=did, rcpt_id=rid,
                                      email=rcpt.email)
        db = self._db["inbound"]
        if item.dedupe:
            if txn.get(b"d" + item.dedupe, db=db) is not None:
                return msgspec.structs.replace(rec, effect="duplicate")
            txn.put(b"d" + item.dedupe, K.pack_u64(rec.id), db=db)
        d = item.decide(rcpt)
        if d.rcpt is not None:
            txn.put(rkey, ENCODER.encode(d.rcpt), db=self._db["rcpt"])
        kd = acc.k(did)
        for name, delta in d.kpi.items():
            kd[name] += delta
        low = rcpt.email.lower()
        if d.denylist:
            self._denylist_feedback(txn, acc, low, d.denylist, did, t)
        elif d.quarantine:
            self._quarantine_feedback(txn, acc, low, d.quarantine, d.bounce_class, did, t)
        if d.event is not None:
            acc.events.append(msgspec.structs.replace(d.event, ts_ms=t, inbound_id=rec.id))
        return msgspec.structs.replace(rec, effect=d.effect)

    def _denylist_feedback(self, txn: Any, acc: _Acc, low: str, reason: str, did: int,
                           t: int) -> None:
        old = self._q_get(txn, low)
        if old is not None and old.state == "denylisted":
            return
        e = QuarantineEntry(address=low, state="denylisted", reason=reason, first_ms=t,
                            last_ms=t, delivery_id=did, source="feedback", permanent=True,
                            hard_count=old.hard_count if old else 0,
                            soft_count=old.soft_count if old else 0)
        self._q_put(txn, e)
        acc.events.append(QuarantineEvent(ts_ms=t, address=low, kind="denylisted",
                                          reason=reason, delivery_id=did))

    def _quarantine_feedback(self, txn: Any, acc: _Acc, low: str, reason: str, bclass: int,
                             did: int, t: int) -> None:
        e = self._q_get(txn, low)
        if e is not None and e.state == "denylisted":
            return
        e = e or QuarantineEntry(address=low, state="quarantined", first_ms=t)
        e = msgspec.structs.replace(
            e, state="quarantined", reason=reason, bounce_class=bclass,
            reply="asynchronous bounce"[:_REPLY_MAX], last_ms=t,
            hard_count=e.hard_count + 1, delivery_id=did, source=e.source or "bounce",
            first_ms=e.first_ms or t)
        self._q_put(txn, e)
        acc.events.append(QuarantineEvent(ts_ms=t, address=low, kind="quarantined",
                                          reason=reason, delivery_id=did))

    # ------------------------------------------------------------------ reading
    def inbound_counters(self) -> dict[str, int]:
        out: dict[str, int] = {}
        with self._read() as txn:
            cur = txn.cursor(db=self._db["inbound"])
            ok = cur.set_range(b"k")
            while ok:
                k = cur.key()
                if k[:1] != b"k":
                    break
                out[k[1:].decode()] = K.unpack_i64(cur.value())[0]
                ok = cur.next()
        return out

    def inbound_list(self, *, effect: str | None = None, after: int = 0,
                     limit: int = 0) -> Iterator[InboundRecord]:
        """Stored inbound records in arrival order (``effect`` filters, e.g. unmatched)."""
        n = 0
        with self._read() as txn:
            cur = txn.cursor(db=self._db["inbound"])
            ok = cur.set_range(b"m" + K.pack_u64(after + 1))
            while ok:
                k = cur.key()
                if k[:1] != b"m":
                    break
                rec = INBOUND_DECODER.decode(cur.value())
                if effect is None or rec.effect == effect:
                    yield rec
                    n += 1
                    if limit and n >= limit:
                        return
                ok = cur.next()

    def inbound_get(self, inbound_id: int) -> tuple[InboundRecord, bytes] | None:
        idk = K.pack_u64(inbound_id)
        with self._read() as txn:
            raw = txn.get(b"m" + idk, db=self._db["inbound"])
            if raw is None:
                return None
            body = txn.get(b"r" + idk, db=self._db["inbound"])
            return INBOUND_DECODER.decode(raw), bytes(body or b"")

    def inbound_purge_raw(self, older_than_ms: int) -> int:
        """Delete stored raw copies received before ``older_than_ms`` (records stay)."""

        def fn(txn: Any) -> int:
            db = self._db["inbound"]
            cur = txn.cursor(db=db)
            n = 0
            ok = cur.set_range(b"m")
            doomed = []
            while ok and cur.key()[:1] == b"m":
                rec = INBOUND_DECODER.decode(cur.value())
                if rec.ts_ms >= older_than_ms:
                    break
                doomed.append(b"r" + cur.key()[1:9])
                ok = cur.next()
            for k in doomed:
                n += bool(txn.delete(k, db=db))
            return n

        return self._write(fn)
