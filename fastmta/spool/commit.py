"""Results: one durable transaction applies a batch of delivery results.

Per result: the recipient's status record, its queue entries and lease, the KPI
counters, quarantine updates and the attempt event (``_apply``); ``commit_and_lease``
also leases the next items in the same transaction.  ``CommitMixin`` is one of
``Spool``'s bases.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from fastmta.core import rcpt_sent
from fastmta.records import (
    ENCODER,
    RCPT_DECODER,
    AttemptEvent,
    Rcpt,
    Result,
    Status,
    WorkItem,
)
from fastmta.spool import keys as K
from fastmta.spool.base import _REPLY_MAX, CommitStats, _Acc, clock_ms
from fastmta.spool.errors import SpoolError
from fastmta.spool.lease import LeaseMixin


class CommitMixin(LeaseMixin):
    """Applying results (and the lease merged behind them)."""

    # ------------------------------------------------------------------ results
    def commit(self, results: list[Result], now_ms: int | None = None) -> CommitStats:
        """Apply results in ONE durable transaction (statuses, queues, KPIs, quarantine,
        event log).  Idempotent per recipient: a result for a recipient that is already
        final is counted as ``stale`` and changes nothing."""
        t = now_ms or clock_ms()

        def fn(txn: Any) -> CommitStats:
            acc = _Acc(t, txn.stat(self._db["quarantine"])["entries"] > 0)
            for res in results:
                self._apply(txn, acc, res)
            self._flush(txn, acc)
            return CommitStats(applied=acc.applied, stale=acc.stale, unknown=acc.unknown)

        stats = self._write(fn)
        self._maybe_trim(len(results))
        return stats

    def commit_and_lease(
        self, results: list[Result], shards: Iterable[int], owner: str, max_n: int,
        now_ms: int | None = None, lease_s: float | None = None,
    ) -> tuple[CommitStats, list[WorkItem]]:
        """``commit(results)`` then ``lease(...)`` in ONE durable transaction (one fsync
        instead of two; the ResultWriter merges a lease queued behind a batch)."""
        t = now_ms or clock_ms()
        exp = t + int((lease_s if lease_s is not None else self.cfg.lease_s) * 1000)
        shard_list = list(shards)
        order: list[int] = []
        if shard_list and max_n > 0:
            self._rotate = (self._rotate + 1) % len(shard_list)
            order = shard_list[self._rotate:] + shard_list[: self._rotate]

        def fn(txn: Any) -> tuple[CommitStats, list[WorkItem]]:
            acc = _Acc(t, txn.stat(self._db["quarantine"])["entries"] > 0)
            for res in results:
                self._apply(txn, acc, res)
            self._flush(txn, acc)
            stats = CommitStats(applied=acc.applied, stale=acc.stale, unknown=acc.unknown)
            items = self._lease_txn(txn, order, owner, max_n, t, exp) if order else []
            return stats, items

        out = self._write(fn)
        self._maybe_trim(len(results) + len(out[1]))
        return out

    def _apply(self, txn: Any, acc: _Acc, res: Result) -> None:
        db = self._db
        rkey = res.key
        raw = txn.get(rkey, db=db["rcpt"])
        if raw is None:
            acc.unknown += 1
            return
        if res.outcome == "sent":  # the hot path: the record is updated as msgpack bytes
            self._apply_sent(txn, acc, res, rkey, raw)
            return
        rec = RCPT_DECODER.decode(raw)
        had_lease = txn.delete(rkey, db=db["lease"])
        if rec.status != Status.PENDING:
            acc.stale += 1
            return
        did, rid = K.unpack_rcpt(rkey)
        d = self._delivery_in(txn, did, acc)
        if d is None:
            acc.unknown += 1
            return
        if not had_lease:  # lease was recovered meanwhile: take it out of its queue
            self._unqueue(txn, did, rid, rec)
        t = res.time_ms or acc.now
        kd = acc.k(did)
        outcome = res.outcome
        dom = rec.email.rpartition("@")[2]
        reply = res.reply[:_REPLY_MAX]
        common = dict(
            code=res.code, enhanced=res.enhanced, bounce_class=res.bounce_class,
            type=res.type, reply=reply, mx=res.mx or rec.mx,
            source_ip=res.source_ip or rec.source_ip,
        )
        attempt = outcome in ("sent", "hard", "soft")
        if attempt:
            common["attempts"] = rec.attempts + 1
            common["first_attempt_ms"] = rec.first_attempt_ms or t
            common["last_attempt_ms"] = t
            kd["attempts"] += 1
        if outcome == "hard":
            reason = res.reason or "not_defined"
            new = msgspec.structs.replace(
                rec, status=Status.FAILED, done_ms=t, next_attempt_ms=0, reason=reason,
                **common,
            )
            self._count_failed(kd, dom, reason, res.bounce_class)
            kd["failed_hard"] += 1
            self._quarantine_on_hard(txn, acc, did, rec.email, reason, res, t)
        elif outcome == "expired":
            self._finish_expired(txn, acc, did, rid, rkey, rec, d, t, res=res)
            acc.events.append(self._attempt_event(t, did, rid, rec, res, Status.FAILED))
            acc.applied += 1
            return
        elif outcome == "canceled":
            # operator action (cancel a delivery, bounce a site's queue): final failure,
            # no attempt counted, no quarantine (the address did nothing wrong)
            reason = res.reason or "delivery_canceled"
            new = msgspec.structs.replace(rec, status=Status.FAILED, done_ms=t,
                                          next_attempt_ms=0, reason=reason, type="ignored")
            self._count_failed(kd, dom, reason, 0)
            kd["failed_canceled"] += 1
        elif outcome in ("soft", "defer"):
            if outcome == "soft":
                kd["soft_bounces"] += 1
                reason = res.reason or "not_defined"
                kd[f"soft_reason/{reason}"] += 1
                due = res.next_attempt_ms or t + int(self.cfg.retry_s * 1000)
                new = msgspec.structs.replace(rec, reason=reason, last_soft_reason=reason, **common)
            else:
                kd["deferrals"] += 1
                due = res.next_attempt_ms or t + int(self.cfg.defer_s * 1000)
                new = msgspec.structs.replace(rec, deferrals=rec.deferrals + 1)
            if due >= d.expires_ms and t >= d.expires_ms:
                self._finish_expired(txn, acc, did, rid, rkey, new, d, t)
                acc.events.append(self._attempt_event(t, did, rid, rec, res, Status.FAILED))
                acc.applied += 1
                return
            due = min(due, d.expires_ms)  # expires exactly at the end of validity
            new = msgspec.structs.replace(new, next_attempt_ms=due)
            txn.put(K.shard_key(rec.shard), K.pack_sched(due, did, rid), db=db["sched"])
        else:
            raise SpoolError(f"unknown result outcome {outcome!r}")
        txn.put(rkey, ENCODER.encode(new), db=db["rcpt"])
        acc.events.append(self._attempt_event(t, did, rid, rec, res, new.status))
        acc.applied += 1

    def _apply_sent(self, txn: Any, acc: _Acc, res: Result, rkey: bytes, raw: bytes) -> None:
        """A 2xx: the new record and its attempt event come encoded from the compiled
        core (``rcpt_sent``: no struct is decoded or built per result)."""
        db = self._db
        had_lease = txn.delete(rkey, db=db["lease"])
        did, rid = K.unpack_rcpt(rkey)
        t = res.time_ms or acc.now
        out = rcpt_sent(raw, t, did, rid, res.code, res.enhanced, res.bounce_class, res.type,
                        res.reply[:_REPLY_MAX] if res.reply else "", res.mx, res.source_ip,
                        res.tls)
        if out is None:
            acc.stale += 1
            return
        if self._delivery_in(txn, did, acc) is None:
            acc.unknown += 1
            return
        if not had_lease:  # lease was recovered meanwhile: take it out of its queue
            self._unqueue(txn, did, rid, RCPT_DECODER.decode(raw))
        new, event, email = out
        kd = acc.k(did)
        kd["attempts"] += 1
        kd["pending"] -= 1
        kd["sent"] += 1
        kd["domain/" + email[email.rindex("@") + 1:] + "/sent"] += 1
        if acc.q_check:
            self._quarantine_on_success(txn, acc, email)
        txn.put(rkey, new, db=db["rcpt"])
        acc.events.append(event)  # already encoded
        acc.applied += 1

    @staticmethod
    def _attempt_event(t: int, did: int, rid: int, rec: Rcpt, res: Result, status: Status) -> AttemptEvent:
        return AttemptEvent(
            ts_ms=t, delivery_id=did, rcpt_id=rid, email=rec.email, outcome=res.outcome,
            status=status, attempt=rec.attempts + (res.outcome in ("sent", "hard", "soft")),
            code=res.code, enhanced=res.enhanced, bounce_class=res.bounce_class,
            type=res.type, reason=res.reason, reply=res.reply[:_REPLY_MAX], mx=res.mx,
            source_ip=res.source_ip, tls=res.tls,
        )

    def _unqueue(self, txn: Any, did: int, rid: int, rec: Rcpt) -> None:
        skey = K.shard_key(rec.shard)
        txn.delete(skey, K.pack_ready(did, rid), db=self._db["ready"])
        if rec.next_attempt_ms:
            txn.delete(skey, K.pack_sched(rec.next_attempt_ms, did, rid), db=self._db["sched"])
