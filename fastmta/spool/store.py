"""The spool handle: deliveries (create, state, purge) and periodic maintenance.

``Spool`` = ``SpoolBase`` (environment, transactions, ledger; ``base.py``) +
``ReadingMixin`` (queries; ``reading.py``) + ``QuarantineMixin`` (quarantine rules;
``quarantine.py``) + ``ControlsMixin`` (event appends, operator controls;
``controls.py``) + one mixin per write transaction: ``InjectMixin`` (``inject.py``),
``LeaseMixin`` (``lease.py``), ``CommitMixin`` (``commit.py``), ``ExpiryMixin``
(``expiry.py``).  Status semantics follow ARCHITECTURE.md section 3; see docs/spool.md.
"""

from __future__ import annotations

from typing import Any

import msgspec

from fastmta.records import (
    ENCODER,
    RCPT_DECODER,
    DeliveryEvent,
    DeliveryRecord,
    Status,
)
from fastmta.spool import keys as K
from fastmta.spool.base import _MAX_VALIDITY_MS, SpoolBase, clock_ms
from fastmta.spool.commit import CommitMixin
from fastmta.spool.controls import ControlsMixin
from fastmta.spool.egress_state import EgressStateMixin
from fastmta.spool.errors import DeliveryNotFound, SpoolError
from fastmta.spool.expiry import ExpiryMixin
from fastmta.spool.inbound import InboundMixin
from fastmta.spool.inject import InjectMixin
from fastmta.spool.lease import LeaseMixin
from fastmta.spool.quarantine import QuarantineMixin
from fastmta.spool.reading import ReadingMixin

__all__ = ["Spool"]


class Spool(EgressStateMixin, ControlsMixin, InjectMixin, CommitMixin, LeaseMixin,
            ExpiryMixin, InboundMixin, QuarantineMixin, ReadingMixin, SpoolBase):
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

    # ------------------------------------------------------------------ maintenance
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
            self._fold_kpi_log(txn)  # the delivery's unfolded domain counters too
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
