"""Quarantine and denylist rules (kept in the spool, updated in the result transaction).

- A hard bounce quarantines the address (source ``bounce``).
- Soft errors are counted when a delivery to the address expires; at
  ``quarantine_soft_threshold`` the address is quarantined, below it is ``erroneous``.
- Release: a successful delivery clears ``erroneous`` and bounce quarantines; bounce
  quarantines end after ``quarantine_release_days``; manual entries and the denylist
  stay until removed.  ``@domain`` entries cover a whole domain.  Every release is a
  ``released`` event (reason ``delivered``, ``manual``, ``expired``, or ``cluster:...``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from fastmta.records import ENCODER, QUARANTINE_DECODER, QuarantineEntry, QuarantineEvent, Result
from fastmta.spool.base import _REPLY_MAX, SpoolBase, _Acc, clock_ms
from fastmta.spool.errors import SpoolError


class QuarantineMixin(SpoolBase):
    """Quarantine lookups (injection), updates (results) and administration."""

    # ------------------------------------------------------------------ quarantine
    def _quarantine_reason(self, txn: Any, address: str, t: int) -> str | None:
        qdb = self._db["quarantine"]
        low = address.lower()
        for key in (low, "@" + low.rpartition("@")[2]):
            raw = txn.get(key.encode(), db=qdb)
            if raw is None:
                continue
            e = QUARANTINE_DECODER.decode(raw)
            if e.state == "denylisted":
                return "denylisted_address"
            if e.state == "quarantined" and self._q_active(e, t):
                return "address_in_quarantine"
        return None

    def _q_active(self, e: QuarantineEntry, t: int) -> bool:
        days = self.cfg.quarantine_release_days
        if e.permanent or e.source != "bounce" or days <= 0:
            return True
        return t - e.last_ms < days * 86400 * 1000

    def _q_get(self, txn: Any, low: str) -> QuarantineEntry | None:
        raw = txn.get(low.encode(), db=self._db["quarantine"])
        return QUARANTINE_DECODER.decode(raw) if raw is not None else None

    def _q_put(self, txn: Any, e: QuarantineEntry) -> None:
        txn.put(e.address.encode(), ENCODER.encode(e), db=self._db["quarantine"])

    def _quarantine_on_hard(
        self, txn: Any, acc: _Acc, did: int, email: str, reason: str, res: Result, t: int
    ) -> None:
        low = email.lower()
        e = self._q_get(txn, low)
        if e is not None and e.state == "denylisted":
            return
        e = e or QuarantineEntry(address=low, state="quarantined", first_ms=t)
        e = msgspec.structs.replace(
            e, state="quarantined", reason=reason, bounce_class=res.bounce_class,
            reply=res.reply[:_REPLY_MAX], last_ms=t, hard_count=e.hard_count + 1,
            delivery_id=did, source=e.source or "bounce", first_ms=e.first_ms or t,
        )
        self._q_put(txn, e)
        acc.events.append(QuarantineEvent(ts_ms=t, address=low, kind="quarantined",
                                          reason=reason, delivery_id=did))

    def _quarantine_on_expired(
        self, txn: Any, acc: _Acc, did: int, email: str, reason: str, t: int
    ) -> None:
        low = email.lower()
        e = self._q_get(txn, low)
        if e is not None and e.state in ("denylisted", "quarantined"):
            return
        e = e or QuarantineEntry(address=low, state="erroneous", first_ms=t, source="bounce")
        n = e.soft_count + 1
        state = "quarantined" if n >= self.cfg.quarantine_soft_threshold else "erroneous"
        e = msgspec.structs.replace(e, state=state, soft_count=n, reason=reason, last_ms=t,
                                    delivery_id=did)
        self._q_put(txn, e)
        acc.events.append(QuarantineEvent(ts_ms=t, address=low, kind=state, reason=reason,
                                          delivery_id=did))

    def _quarantine_on_success(self, txn: Any, acc: _Acc, email: str) -> None:
        low = email.lower()
        e = self._q_get(txn, low)
        if e is None or e.state == "denylisted" or e.source != "bounce":
            return
        txn.delete(low.encode(), db=self._db["quarantine"])  # delivered: errors cleared
        acc.events.append(QuarantineEvent(ts_ms=acc.now, address=low, kind="released",
                                          reason="delivered"))

    def quarantine_add(
        self, address: str, *, state: str = "quarantined", reason: str = "manual",
        permanent: bool = True, now_ms: int | None = None, source: str = "manual",
    ) -> QuarantineEntry:
        """Add an address (or ``@domain``) by hand: ``quarantined`` or ``denylisted``
        (``source="bounce"``, not ``permanent``: it ends like a bounce quarantine)."""
        if state not in ("quarantined", "denylisted"):
            raise SpoolError("state must be 'quarantined' or 'denylisted'")
        low = address.strip().lower()
        if "@" not in low:
            raise SpoolError(f"not an address or @domain: {address!r}")
        t = now_ms or clock_ms()

        def fn(txn: Any) -> QuarantineEntry:
            old = self._q_get(txn, low)
            e = QuarantineEntry(address=low, state=state, reason=reason, first_ms=t, last_ms=t,
                                source=source, permanent=permanent,
                                hard_count=old.hard_count if old else 0,
                                soft_count=old.soft_count if old else 0)
            self._q_put(txn, e)
            self._append_events(txn, [QuarantineEvent(ts_ms=t, address=low, kind=state,
                                                      reason=reason)])
            return e

        return self._write(fn)

    def quarantine_remove(
        self, address: str, now_ms: int | None = None, *, reason: str = "manual",
        when: Callable[[QuarantineEntry], bool] | None = None,
    ) -> bool:
        """Release an address (event ``released`` with ``reason``); with ``when``, only
        if the entry satisfies it (checked in the same transaction)."""
        low = address.strip().lower()
        t = now_ms or clock_ms()

        def fn(txn: Any) -> bool:
            if when is not None:
                e = self._q_get(txn, low)
                if e is None or not when(e):
                    return False
            if not txn.delete(low.encode(), db=self._db["quarantine"]):
                return False
            self._append_events(txn, [QuarantineEvent(ts_ms=t, address=low, kind="released",
                                                      reason=reason)])
            return True

        return self._write(fn)

    def quarantine_get(self, address: str) -> QuarantineEntry | None:
        with self._read() as txn:
            return self._q_get(txn, address.strip().lower())

    def quarantine_list(self, state: str | None = None) -> Iterator[QuarantineEntry]:
        with self._read() as txn:
            for _, v in txn.cursor(db=self._db["quarantine"]):
                e = QUARANTINE_DECODER.decode(v)
                if state is None or e.state == state:
                    yield e

    def quarantine_release_expired(self, now_ms: int | None = None) -> int:
        """Delete bounce quarantines older than ``quarantine_release_days``."""
        t = now_ms or clock_ms()

        def fn(txn: Any) -> int:
            gone = []
            cur = txn.cursor(db=self._db["quarantine"])
            ok = cur.first()
            while ok:
                e = QUARANTINE_DECODER.decode(cur.value())
                if e.state == "quarantined" and not self._q_active(e, t):
                    cur.delete()
                    ok = bool(cur.key())
                    gone.append(e.address)
                else:
                    ok = cur.next()
            # the event log says so (a cluster node propagates it: cluster/quarantine.py)
            self._append_events(txn, [QuarantineEvent(ts_ms=t, address=a, kind="released",
                                                      reason="expired") for a in gone])
            return len(gone)

        return self._write(fn)

