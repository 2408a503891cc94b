"""Leasing: due work claimed for a worker, lease renewal and recovery.

``lease`` takes due retries (scheduled queue) first, then the ready queue, and records
a ``Lease`` per item; ``recover_leases`` returns the items of dead or expired leases to
their ready queue.  ``LeaseMixin`` is one of ``Spool``'s bases.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import msgspec

from fastmta.core import rcpt_claim
from fastmta.records import (
    ENCODER,
    LEASE_DECODER,
    RCPT_DECODER,
    DeliveryEvent,
    Lease,
    Status,
    WorkItem,
)
from fastmta.spool import keys as K
from fastmta.spool.base import _U32MAX, _Acc, _pid_alive, clock_ms
from fastmta.spool.expiry import ExpiryMixin


class LeaseMixin(ExpiryMixin):
    """Claiming, renewing and recovering leases."""

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
        got = rcpt_claim(raw, d.fields)  # compiled: no Rcpt struct per item
        if got is None:
            return None  # stale queue entry
        if d.expires_ms <= t:
            rec = RCPT_DECODER.decode(raw)
            self._finish_expired(txn, acc, did, rid, rkey, rec, d, t, event=True)
            return None
        lv = acc.lease_values.get(shard)
        if lv is None:  # one encoded Lease per shard and call
            lv = acc.lease_values[shard] = ENCODER.encode(Lease(owner, pid, exp, shard, t))
        acc.leases.append((rkey, lv))
        email, fields, attempts, first_ms, smtputf8, reason = got
        return WorkItem(rkey, did, rid, email, shard, fields, attempts, first_ms,
                        smtputf8 or d.smtputf8, d.mail_from, d.expires_ms, reason)

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


_SKIP = object()
