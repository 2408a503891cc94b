"""Spool extensions for operations (issue #8): appending events, operator controls.

``ControlsMixin`` is one of ``Spool``'s bases.  The ``control`` database holds operator
requests (``fastmta.ops.admin``): key (str) -> msgpack value, plus a generation counter
that every change bumps, so workers poll one key.
"""

from __future__ import annotations

from typing import Any

from fastmta.spool import keys as K
from fastmta.spool.base import SpoolBase

_GEN = b"\x00gen"


class ControlsMixin(SpoolBase):
    """Event-log appends and the operator control table (see module docstring)."""

    def append_events(self, events: list[Any]) -> int:
        """Append records of the ``Event`` union to the event log in one durable
        transaction (site and admin events).  Returns the last sequence number."""
        def fn(txn: Any) -> int:
            self._append_events(txn, events)
            cur = txn.cursor(db=self._db["events"])
            return K.unpack_u64(cur.key())[0] if cur.last() else 0

        return self._write(fn)

    def last_event_seq(self) -> int:
        """Sequence number of the newest event (0 when the log is empty)."""
        with self._read() as txn:
            cur = txn.cursor(db=self._db["events"])
            return K.unpack_u64(cur.key())[0] if cur.last() else 0

    def control_put(self, key: str, value: bytes | None, events: list[Any] = ()) -> int:
        """Set (or delete, ``value=None``) an operator control and append ``events`` in the
        same durable transaction; bumps the control generation, which is returned."""
        def fn(txn: Any) -> int:
            db = self._db["control"]
            if value is None:
                txn.delete(key.encode(), db=db)
            else:
                txn.put(key.encode(), value, db=db)
            raw = txn.get(_GEN, db=db)
            gen = (K.unpack_u64(raw)[0] if raw else 0) + 1
            txn.put(_GEN, K.pack_u64(gen), db=db)
            self._append_events(txn, list(events))
            return gen

        return self._write(fn)

    def control_gen(self) -> int:
        """Generation of the operator controls (changes on every ``control_put``)."""
        with self._read() as txn:
            raw = txn.get(_GEN, db=self._db["control"])
        return K.unpack_u64(raw)[0] if raw else 0

    def controls(self, prefix: str = "") -> dict[str, bytes]:
        """Operator controls whose key starts with ``prefix``."""
        out: dict[str, bytes] = {}
        p = prefix.encode()
        with self._read() as txn:
            cur = txn.cursor(db=self._db["control"])
            ok = cur.set_range(p) if p else cur.first()
            while ok:
                k = cur.key()
                if not k.startswith(p):
                    break
                if not k.startswith(b"\x00"):
                    out[k.decode()] = bytes(cur.value())
                ok = cur.next()
        return out
