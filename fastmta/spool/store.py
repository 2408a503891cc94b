"""Spool operations: deliveries, injection, leasing, results, expiry, purge.

``Spool`` = ``SpoolBase`` (environment, transactions, ledger) + ``ReadingMixin``
(queries) + ``QuarantineMixin`` (quarantine rules) + the write operations below.
Status semantics follow ARCHITECTURE.md section 3; see docs/spool.md.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from fastmta.records import (
    ENCODER,
    LEASE_DECODER,
    RCPT_DECODER,
    AttemptEvent,
    DeliveryEvent,
    DeliveryRecord,
    Lease,
    Rcpt,
    RecipientIn,
    Result,
    Status,
    WorkItem,
)
from fastmta.spool import keys as K
from fastmta.spool.base import (
    _MAX_VALIDITY_MS,
    _REPLY_MAX,
    _U32MAX,
    CommitStats,
    InjectStats,
    SpoolBase,
    _Acc,
    _pid_alive,
    clock_ms,
    dedupe_hash,
    now_ms,
)
from fastmta.spool.controls import ControlsMixin
from fastmta.spool.errors import DeliveryNotFound, SpoolError, SpoolFullError
from fastmta.spool.quarantine import QuarantineMixin
from fastmta.spool.reading import ReadingMixin

__all__ = ["CommitStats", "InjectStats", "Spool", "clock_ms", "dedupe_hash", "now_ms"]


class Spool(ControlsMixin, QuarantineMixin, ReadingMixin, SpoolBase):
    """Handle on one spool directory.  Use ``Spool.open``; never share across processes."""

    # ------------------------------------------------------------------ deliveries
    def create_delivery(self, rec: DeliveryRecord, template: bytes) -> int:
        """Store a delivery and its template (once); returns the new delivery id."""
        now = clock_ms()
        created = rec.created_ms or now
        expires = rec.expires_ms or created + 3 * 86400 * 1000
        if expires - created > _MAX_VALIDITY_MS:
            raise SpoolError("validity period longer than 3.5 days")

        def fn(txn: Any) -> int:
            meta = self._db["meta"]
            raw = txn.get(b"next_did", db=meta)
            did = K.unpack_u32(raw)[0] if raw else 1
            txn.put(b"next_did", K.pack_u32(did + 1), db=meta)
            r = msgspec.structs.replace(rec, id=did, created_ms=created, expires_ms=expires)
            txn.put(K.pack_u32(did), ENCODER.encode(r), db=self._db["deliveries"])
            txn.put(K.pack_u32(did), template, db=self._db["templates"])
            self._append_events(txn, [DeliveryEvent(ts_ms=now, delivery_id=did, kind="created")])
            return did

        return self._write(fn)

    def set_state(self, did: int, state: str, reason: str = "") -> DeliveryRecord:
        """Change a delivery's state: ``active``, ``paused`` (lease skips it),
        ``cancelled`` (lease skips it), ``injecting``."""
        if state not in ("injecting", "active", "paused", "cancelled"):
            raise SpoolError(f"unknown delivery state {state!r}")

        def fn(txn: Any) -> DeliveryRecord:
            rec = self._delivery_in(txn, did)
            if rec is None:
                raise DeliveryNotFound(f"no delivery {did} in spool {self.path}")
            rec = msgspec.structs.replace(rec, state=state, paused_reason=reason)
            txn.put(K.pack_u32(did), ENCODER.encode(rec), db=self._db["deliveries"])
            ev = DeliveryEvent(ts_ms=clock_ms(), delivery_id=did, kind=state, text=reason)
            self._append_events(txn, [ev])
            return rec

        return self._write(fn)

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
        rcpt_items: list[tuple[bytes, bytes]] = []
        ready_keys: list[tuple[bytes, bytes]] = []
        excluded: list[tuple[RecipientIn, str]] = []
        domains: defaultdict[str, int] = defaultdict(int)
        encode = ENCODER.encode
        pack_rcpt = K.pack_rcpt
        pack_ready = K.pack_ready
        shard_key = K.shard_key
        added = 0
        for idx, item in enumerate(chunk):
            email = item.email
            reason = item.exclude
            if not reason:
                if dups and idx in dups:
                    reason = "double"
                elif check_q:
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
                ready_keys.append((shard_key(item.shard), pack_ready(did, rid)))
                domains[email[email.rindex("@") + 1:]] += 1
                added += 1
            rcpt_items.append((pack_rcpt(did, rid), encode(rec)))
            rid += 1
        cur = txn.cursor(db=db["rcpt"])
        append = not cur.last() or cur.key() < rcpt_items[0][0]
        cur.putmulti(rcpt_items, append=append)
        if ready_keys:
            ready_keys.sort()
            txn.cursor(db=db["ready"]).putmulti(ready_keys, dupdata=True)
        kd["recipients"] += len(chunk)
        kd["to_deliver"] += added
        kd["pending"] += added
        kd["excluded"] += len(excluded)
        for dom, n in domains.items():
            kd[f"domain/{dom}/to_deliver"] += n
        last_line = chunk[-1].line
        if last_line > d.injected_line:
            d2 = msgspec.structs.replace(d, injected_line=last_line)
            txn.put(did4, encode(d2), db=db["deliveries"])
        # reception: one event per durable injection batch (not per recipient)
        acc.events.append(DeliveryEvent(ts_ms=t0, delivery_id=did, kind="received",
                                        count=added, text=f"lines {chunk[0].line}-{last_line}; "
                                        f"excluded {len(excluded)}"))
        self._flush(txn, acc)
        return added, excluded, chunk

    def _find_doubles(self, txn: Any, did4: bytes, chunk: list[RecipientIn]) -> set[int]:
        """Indexes of the chunk's duplicates (of earlier items or of earlier chunks), and
        record the others in ``seen``.  Fast path: one sorted ``putmulti`` in a nested
        transaction; only if it finds an existing key are the items checked one by one."""
        blake = hashlib.blake2b
        dups: set[int] = set()
        first: dict[bytes, int] = {}
        for idx, item in enumerate(chunk):
            if item.exclude:
                continue
            h = blake(item.email.encode(), digest_size=8).digest()
            if h in first:
                dups.add(idx)
            else:
                first[h] = idx
        if not first:
            return dups
        seen_db = self._db["seen"]
        sub = self._env.begin(write=True, parent=txn)
        try:
            consumed, added = sub.cursor(db=seen_db).putmulti(
                [(did4, h) for h in sorted(first)], dupdata=False)
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

    # ------------------------------------------------------------------ leasing
    def lease(
        self,
        shards: Iterable[int],
        owner: str,
        max_n: int,
        now_ms: int | None = None,
        lease_s: float | None = None,
    ) -> list[WorkItem]:
        """Claim up to ``max_n`` due items of ``shards`` for ``owner``: due retries first
        (scheduled queue, by due time), then the ready queue (FIFO by delivery, recipient).
        Items of paused/cancelled deliveries stay queued; items past their delivery's
        validity become ``failed``/``expired`` here instead of being returned."""
        t = now_ms or clock_ms()
        exp = t + int((lease_s if lease_s is not None else self.cfg.lease_s) * 1000)
        shard_list = list(shards)
        if not shard_list or max_n <= 0:
            return []
        self._rotate = (self._rotate + 1) % len(shard_list)
        order = shard_list[self._rotate:] + shard_list[: self._rotate]
        out = self._write(lambda txn: self._lease_txn(txn, order, owner, max_n, t, exp))
        self._maybe_trim(len(out))  # outside the transaction
        return out

    def _lease_txn(
        self, txn: Any, shards: list[int], owner: str, max_n: int, t: int, exp: int
    ) -> list[WorkItem]:
        acc = _Acc(t)
        out: list[WorkItem] = []
        pid = self.pid
        per_shard = max(1, -(-max_n // len(shards)))  # fair share first, then fill
        for shard in shards:
            room = max_n - len(out)
            if room <= 0:
                break
            self._lease_shard(txn, acc, shard, owner, pid, min(room, per_shard), t, exp, out)
        for shard in shards:
            room = max_n - len(out)
            if room <= 0:
                break
            self._lease_shard(txn, acc, shard, owner, pid, room, t, exp, out)
        if acc.leases:
            acc.leases.sort()
            txn.cursor(db=self._db["lease"]).putmulti(acc.leases)
        self._flush(txn, acc)
        return out

    def _lease_shard(
        self, txn: Any, acc: _Acc, shard: int, owner: str, pid: int, limit: int,
        t: int, exp: int, out: list[WorkItem],
    ) -> int:
        db = self._db
        got = 0
        skey = K.shard_key(shard)
        # 1. scheduled items that are due (duplicates sorted by due time)
        cur = txn.cursor(db=db["sched"])
        ok = cur.set_key(skey)
        while ok and got < limit:
            due, did, rid = K.unpack_sched(cur.value())
            if due > t:
                break
            r = self._claim(txn, acc, did, rid, shard, owner, pid, t, exp)
            if r is _SKIP:
                ok = cur.next_dup()
                continue
            cur.delete()
            ok = cur.key() == skey
            if r is not None:
                out.append(r)
                got += 1
        # 2. ready queue (duplicates sorted by delivery, recipient)
        cur = txn.cursor(db=db["ready"])
        ok = cur.set_key(skey)
        while ok and got < limit:
            did, rid = K.unpack_ready(cur.value())
            r = self._claim(txn, acc, did, rid, shard, owner, pid, t, exp)
            if r is _SKIP:  # delivery paused: jump over its items
                ok = did < _U32MAX and cur.set_range_dup(skey, K.pack_ready(did + 1, 0))
                continue
            cur.delete()
            ok = cur.key() == skey
            if r is not None:
                out.append(r)
                got += 1
        return got

    def _claim(
        self, txn: Any, acc: _Acc, did: int, rid: int, shard: int, owner: str, pid: int,
        t: int, exp: int,
    ) -> Any:
        d = self._delivery_in(txn, did, acc)
        if d is None:
            return None  # orphan queue entry: drop it
        if d.state in ("paused", "cancelled"):
            return _SKIP
        rkey = K.pack_rcpt(did, rid)
        raw = txn.get(rkey, db=self._db["rcpt"])
        if raw is None:
            return None
        rec = RCPT_DECODER.decode(raw)
        if rec.status != Status.PENDING:
            return None  # stale queue entry
        if d.expires_ms <= t:
            self._finish_expired(txn, acc, did, rid, rkey, rec, d, t, event=True)
            return None
        lv = acc.lease_values.get(shard)
        if lv is None:  # one encoded Lease per shard and call
            lv = acc.lease_values[shard] = ENCODER.encode(Lease(owner, pid, exp, shard, t))
        acc.leases.append((rkey, lv))
        fields = dict(zip(d.fields, rec.fields, strict=False)) if d.fields else {}
        fields["email"] = rec.email  # ready for Template.render
        return WorkItem(rkey, did, rid, rec.email, shard, fields, rec.attempts,
                        rec.first_attempt_ms, rec.smtputf8 or d.smtputf8, d.mail_from,
                        d.expires_ms, rec.reason)

    def maintenance(self, now_ms: int | None = None) -> dict[str, int]:
        """Periodic housekeeping for the supervisor: recover dead/expired leases, expire
        recipients past their validity, release old bounce quarantines."""
        t = now_ms or clock_ms()
        out = {"recovered": self.recover_leases(now_ms=t), "expired": 0,
               "released": self.quarantine_release_expired(now_ms=t)}
        while True:
            n = self.expire_due(now_ms=t)
            out["expired"] += n
            if n < 50_000:
                return out

    def renew_leases(self, owner: str, now_ms: int | None = None, lease_s: float | None = None) -> int:
        """Extend every lease of ``owner`` to ``now + lease_s`` (a live worker whose
        deliveries take long calls this so its work is not recovered under it)."""
        t = now_ms or clock_ms()
        exp = t + int((lease_s if lease_s is not None else self.cfg.lease_s) * 1000)

        def fn(txn: Any) -> int:
            cur = txn.cursor(db=self._db["lease"])
            upd = []
            for k, v in cur:
                lease = LEASE_DECODER.decode(v)
                if lease.owner == owner:
                    upd.append((k, ENCODER.encode(msgspec.structs.replace(lease, expires_ms=exp))))
            if upd:
                cur.putmulti(upd)
            return len(upd)

        return self._write(fn)

    def recover_leases(self, owner: str | None = None, now_ms: int | None = None) -> int:
        """Return leased items to their ready queue: all of ``owner``'s, or (owner None)
        those whose lease expired or whose holder process is gone.  Returns the count."""
        t = now_ms or clock_ms()
        alive: dict[int, bool] = {}

        def dead(lease: Lease) -> bool:
            if owner is not None:
                return lease.owner == owner
            if lease.expires_ms <= t:
                return True
            if lease.pid not in alive:
                alive[lease.pid] = _pid_alive(lease.pid)
            return not alive[lease.pid]

        def fn(txn: Any) -> int:
            db = self._db
            n = 0
            cur = txn.cursor(db=db["lease"])
            ok = cur.first()
            recovered: dict[int, int] = defaultdict(int)
            while ok:
                lease = LEASE_DECODER.decode(cur.value())
                if not dead(lease):
                    ok = cur.next()
                    continue
                k = cur.key()
                did, rid = K.unpack_rcpt(k)
                raw = txn.get(k, db=db["rcpt"])
                if raw is not None and RCPT_DECODER.decode(raw).status == Status.PENDING:
                    txn.put(K.shard_key(lease.shard), K.pack_ready(did, rid), db=db["ready"])
                    recovered[did] += 1
                    n += 1
                cur.delete()
                ok = bool(cur.key())
            evs = [DeliveryEvent(ts_ms=t, delivery_id=d, kind="recovered", count=c)
                   for d, c in recovered.items()]
            self._append_events(txn, evs)
            return n

        return self._write(fn)

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
        if outcome == "sent":  # the hot path, kept lean: positional construction
            email = rec.email
            reply = res.reply[:_REPLY_MAX] if res.reply else ""
            attempts = rec.attempts + 1
            new = Rcpt(
                email, rec.fields, rec.shard, rec.line, Status.SENT, rec.smtputf8, attempts,
                rec.first_attempt_ms or t, t, t, 0,
                rec.reason if rec.type == "soft" else "",  # a soft reason stays as history
                res.type, res.bounce_class, res.code, res.enhanced, reply,
                res.mx or rec.mx, res.source_ip or rec.source_ip, rec.last_soft_reason,
                rec.deferrals,
            )
            kd["attempts"] += 1
            kd["pending"] -= 1
            kd["sent"] += 1
            kd["domain/" + email[email.rindex("@") + 1:] + "/sent"] += 1
            if acc.q_check:
                self._quarantine_on_success(txn, acc, email)
            txn.put(rkey, ENCODER.encode(new), db=db["rcpt"])
            acc.events.append(AttemptEvent(
                t, did, rid, email, outcome, Status.SENT, attempts, res.code, res.enhanced,
                res.bounce_class, res.type, "", reply, res.mx, res.source_ip, res.tls,
            ))
            acc.applied += 1
            return
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

    @staticmethod
    def _attempt_event(t: int, did: int, rid: int, rec: Rcpt, res: Result, status: Status) -> AttemptEvent:
        return AttemptEvent(
            ts_ms=t, delivery_id=did, rcpt_id=rid, email=rec.email, outcome=res.outcome,
            status=status, attempt=rec.attempts + (res.outcome in ("sent", "hard", "soft")),
            code=res.code, enhanced=res.enhanced, bounce_class=res.bounce_class,
            type=res.type, reason=res.reason, reply=res.reply[:_REPLY_MAX], mx=res.mx,
            source_ip=res.source_ip, tls=res.tls,
        )

    @staticmethod
    def _count_failed(kd: defaultdict[str, int], dom: str, reason: str, bclass: int) -> None:
        kd["pending"] -= 1
        kd["failed"] += 1
        kd[f"reason/{reason}"] += 1
        if bclass:
            kd[f"class/{bclass}"] += 1
        kd[f"domain/{dom}/failed"] += 1

    def _unqueue(self, txn: Any, did: int, rid: int, rec: Rcpt) -> None:
        skey = K.shard_key(rec.shard)
        txn.delete(skey, K.pack_ready(did, rid), db=self._db["ready"])
        if rec.next_attempt_ms:
            txn.delete(skey, K.pack_sched(rec.next_attempt_ms, did, rid), db=self._db["sched"])

    def _finish_expired(
        self, txn: Any, acc: _Acc, did: int, rid: int, rkey: bytes, rec: Rcpt,
        d: DeliveryRecord, t: int, res: Result | None = None, event: bool = False,
    ) -> None:
        """Validity period over while pending: failed / expired, last soft reason kept."""
        last_soft = rec.last_soft_reason or (rec.reason if rec.type == "soft" else "")
        upd: dict[str, Any] = {}
        if res is not None and res.code:
            upd = dict(code=res.code, enhanced=res.enhanced, reply=res.reply[:_REPLY_MAX])
        bclass = rec.bounce_class if rec.type == "soft" else 0
        new = msgspec.structs.replace(
            rec, status=Status.FAILED, done_ms=t, next_attempt_ms=0, reason="expired",
            type="soft", last_soft_reason=last_soft, bounce_class=bclass, **upd,
        )
        txn.put(rkey, ENCODER.encode(new), db=self._db["rcpt"])
        kd = acc.k(did)
        self._count_failed(kd, rec.email.rpartition("@")[2], "expired", bclass)
        kd["failed_expired"] += 1
        if event:  # expired in the spool (lease time, sweep): per-recipient event too
            acc.events.append(AttemptEvent(
                ts_ms=t, delivery_id=did, rcpt_id=rid, email=rec.email, outcome="expired",
                status=Status.FAILED, attempt=rec.attempts, code=new.code,
                enhanced=new.enhanced, bounce_class=bclass, type="soft",
                reason=last_soft or "expired", reply=new.reply, mx=rec.mx,
                source_ip=rec.source_ip))
        if last_soft:
            self._quarantine_on_expired(txn, acc, did, rec.email, last_soft, t)

    def expire_due(self, now_ms: int | None = None, limit: int = 50_000) -> int:
        """Sweep: every pending recipient of a delivery whose validity ended becomes
        failed/expired (queued items; leased ones expire when their result comes back
        or their lease is recovered).  Returns how many; call until it returns < limit."""
        t = now_ms or clock_ms()
        expired = [d for d in self.deliveries() if d.expires_ms <= t]
        if not expired:
            return 0
        ids = {d.id for d in expired}

        def fn(txn: Any) -> int:
            acc = _Acc(t)
            n = 0
            for dbname in ("ready", "sched"):
                cur = txn.cursor(db=self._db[dbname])
                ok = cur.first()
                while ok and n < limit:
                    v = cur.value()
                    if dbname == "ready":
                        did, rid = K.unpack_ready(v)
                    else:
                        _, did, rid = K.unpack_sched(v)
                    if did not in ids:
                        ok = cur.next()
                        continue
                    rkey = K.pack_rcpt(did, rid)
                    raw = txn.get(rkey, db=self._db["rcpt"])
                    if raw is not None:
                        rec = RCPT_DECODER.decode(raw)
                        if rec.status == Status.PENDING:
                            d = self._delivery_in(txn, did, acc)
                            assert d is not None
                            self._finish_expired(txn, acc, did, rid, rkey, rec, d, t,
                                                 event=True)
                            n += 1
                    cur.delete()
                    ok = bool(cur.key())
            if n:
                for did in ids:
                    if did in acc.kpi:
                        acc.events.append(DeliveryEvent(
                            ts_ms=t, delivery_id=did, kind="expired",
                            count=-acc.kpi[did].get("pending", 0)))
            self._flush(txn, acc)
            return n

        return self._write(fn)

    # ------------------------------------------------------------------ purge
    def purge_delivery(self, did: int, *, chunk: int = 20_000) -> int:
        """Delete a delivery and everything about it (frees space).  Events stay."""
        n_total = 0
        prefix = K.pack_u32(did)
        while True:
            def fn(txn: Any) -> int:
                n = 0
                cur = txn.cursor(db=self._db["rcpt"])
                ok = cur.set_range(prefix)
                while ok and n < chunk:
                    k = cur.key()
                    if k[:4] != prefix:
                        break
                    rec = RCPT_DECODER.decode(cur.value())
                    rid = K.unpack_rcpt(k)[1]
                    if rec.status == Status.PENDING:
                        self._unqueue(txn, did, rid, rec)
                        txn.delete(k, db=self._db["lease"])
                    cur.delete()
                    ok = bool(cur.key())
                    n += 1
                return n

            n = self._write(fn)
            n_total += n
            if n < chunk:
                break

        def rest(txn: Any) -> None:
            txn.delete(prefix, db=self._db["seen"])  # all digests of the delivery
            for name in ("kpi",):
                cur = txn.cursor(db=self._db[name])
                ok = cur.set_range(prefix)
                while ok and cur.key()[:4] == prefix:
                    cur.delete()
                    ok = bool(cur.key())
            txn.delete(prefix, db=self._db["templates"])
            txn.delete(prefix, db=self._db["deliveries"])
            self._append_events(txn, [DeliveryEvent(ts_ms=clock_ms(), delivery_id=did,
                                                    kind="purged", count=n_total)])

        self._write(rest)
        return n_total


_SKIP = object()
