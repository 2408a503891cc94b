"""End of a delivery's validity period: pending recipients become ``failed``/``expired``.

The same transition at lease time (``_claim``), when a result comes back (``_apply``)
and in the supervisor's sweep (``expire_due``); ``ExpiryMixin`` is one of ``Spool``'s
bases.
"""

from __future__ import annotations

from typing import Any

import msgspec

from fastmta.records import (
    ENCODER,
    RCPT_DECODER,
    AttemptEvent,
    DeliveryEvent,
    DeliveryRecord,
    Rcpt,
    Result,
    Status,
)
from fastmta.spool import keys as K
from fastmta.spool.base import _REPLY_MAX, _Acc, clock_ms
from fastmta.spool.quarantine import QuarantineMixin
from fastmta.spool.reading import ReadingMixin


class ExpiryMixin(QuarantineMixin, ReadingMixin):
    """Validity-end transition of one recipient and the sweep over the queues."""

    # ------------------------------------------------------------------ expiry
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
