"""The ``egress`` database (issue #17): learned delivery state and warm-up counters.

Keys are ``kind \\x00 name...`` byte strings chosen by ``fastmta.egress.store``; values
are msgpack records.  ``EgressStateMixin`` is one of ``Spool``'s bases; its writes are
plain durable transactions (the worker runs them in its ResultWriter thread).
"""

from __future__ import annotations

from typing import Any

from fastmta.spool.base import SpoolBase


class EgressStateMixin(SpoolBase):
    """Read and write the ``egress`` database (see module docstring)."""

    def egress_put(self, items: dict[bytes, bytes | None]) -> int:
        """Store (or delete, value None) several records in one durable transaction."""
        if not items:
            return 0
        db = self._db["egress"]

        def fn(txn: Any) -> int:
            for k, v in items.items():
                if v is None:
                    txn.delete(k, db=db)
                else:
                    txn.put(k, v, db=db)
            return len(items)

        return self._write(fn)

    def egress_items(self, prefix: bytes = b"") -> list[tuple[bytes, bytes]]:
        """Every record whose key starts with ``prefix``, in key order."""
        db = self._db["egress"]
        out = []
        with self._read() as txn:
            cur = txn.cursor(db=db)
            if not cur.set_range(prefix):
                return out
            for k, v in cur:
                k = bytes(k)
                if not k.startswith(prefix):
                    break
                out.append((k, bytes(v)))
        return out
