"""The ``unknown`` sub-database: replies no rule recognised, aggregated by template.

Key: SHA-1 of the template (LMDB keys are limited to 511 bytes); value: msgpack of
``{template, count, first_ms, last_ms, sites, example, command, code, enhanced, rule}``.
``record_unknown`` merges a worker's batch (``fastmta.classify.templates.UnknownReplies``)
in one write transaction; ``read_unknown`` lists them (optionally seen since a time).
Read by ``fastmta rules suggest|test``.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

__all__ = ["record_unknown", "read_unknown", "DB"]

DB = "unknown"
_MAX_SITES = 16
_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder(dict)


def _key(template: str) -> bytes:
    return hashlib.sha1(template.encode("utf-8", "replace")).digest()


def record_unknown(spool: Any, entries: list[dict]) -> int:
    """Merge ``entries`` into the spool (one transaction).  Returns the templates written."""
    if not entries:
        return 0
    db = spool._db[DB]

    def fn(txn: Any) -> int:
        for e in entries:
            k = _key(e["template"])
            raw = txn.get(k, db=db)
            if raw is not None:
                old = _dec.decode(raw)
                old["count"] += e["count"]
                old["first_ms"] = min(old["first_ms"], e["first_ms"])
                old["last_ms"] = max(old["last_ms"], e["last_ms"])
                for s in e["sites"]:
                    if s not in old["sites"] and len(old["sites"]) < _MAX_SITES:
                        old["sites"].append(s)
                e = old
            txn.put(k, _enc.encode(e), db=db)
        return len(entries)

    return spool._write(fn)


def read_unknown(spool: Any, since_ms: int = 0) -> list[dict]:
    """Every stored template last seen at or after ``since_ms``, most frequent first."""
    out = []
    with spool._read() as txn:
        for _k, v in txn.cursor(db=spool._db[DB]):
            e = _dec.decode(v)
            if e["last_ms"] >= since_ms:
                out.append(e)
    out.sort(key=lambda e: -e["count"])
    return out
