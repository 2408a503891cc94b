"""One page of a delivery's recipients, filtered, with a resumable cursor.

The scan walks the recipient table in id order from the cursor and stops when the page is
full, after ``max_scan`` records *or* after ``budget_s`` of scanning, so every request has
a bounded cost even on a million recipients and a filter that matches nothing: the answer then has fewer items
(maybe none), ``next_cursor`` set, and ``complete`` false.  ``next_cursor`` is null when
the end of the delivery was reached.

With an ``index`` (``rcpt_index.DeliveryIndex``, big deliveries and a status / reason /
domain filter), the page walks the index's candidates instead and re-reads each one, so
a rare filter returns full pages at once (``"indexed": true`` in the answer).
"""

from __future__ import annotations

import time
from typing import Any

from fastmta.ops.report import fmt_time
from fastmta.records import STATUS_NAMES, Rcpt

STATUSES = frozenset(STATUS_NAMES.values()) | {"excluded"}
MAX_SCAN = 50_000
BUDGET_S = 0.04  # scanning time per request (checked every 256 records)


def row(rid: int, rec: Rcpt, field_names: list[str]) -> dict[str, Any]:
    return {
        "rcpt_id": rid, "email": rec.email, "status": rec.status_name, "line": rec.line,
        "reason": rec.reason, "attempts": rec.attempts, "code": rec.code,
        "enhanced": rec.enhanced, "reply": rec.reply, "mx": rec.mx,
        "bounce_class": rec.bounce_class, "source_ip": rec.source_ip,
        "first_attempt": fmt_time(rec.first_attempt_ms),
        "last_attempt": fmt_time(rec.last_attempt_ms), "done": fmt_time(rec.done_ms),
        "last_soft_reason": rec.last_soft_reason,
        "fields": dict(zip(field_names, rec.fields, strict=False)),
    }


def _indexed(spool, d, index, *, status: str, reason: str, domain: str, q: str,
             cursor: int, limit: int, max_scan: int, budget_s: float | None
             ) -> dict[str, Any]:
    match = _matcher(status, reason, domain, q)
    items: list[dict[str, Any]] = []
    scanned = 0
    next_cursor: int | None = None
    last = cursor - 1
    deadline = time.perf_counter() + budget_s if budget_s else None
    for rid in index.candidates(status=status, reason=reason, domain=domain, start=cursor):
        if scanned >= max_scan or len(items) >= limit or (
                deadline is not None and not scanned & 63 and scanned
                and time.perf_counter() > deadline):
            next_cursor = rid
            break
        scanned += 1
        last = rid
        rec = spool.recipient(d.id, rid)
        if rec is not None and match(rec):
            items.append(row(rid, rec, d.fields))
    return {"delivery_id": d.id, "items": items, "count": len(items), "scanned": scanned,
            "next_cursor": next_cursor, "complete": next_cursor is None,
            "last_scanned": last if scanned else None, "indexed": True}


def _matcher(status: str, reason: str, domain: str, q: str):
    want_status = "ignored" if status == "excluded" else status
    dom = domain.lower()
    ql = q.lower()

    def match(rec: Rcpt) -> bool:
        if want_status and rec.status_name != want_status:
            return False
        if reason and rec.reason != reason and rec.last_soft_reason != reason:
            return False
        if dom and rec.email.rpartition("@")[2].lower() != dom:
            return False
        return not ql or ql in rec.email.lower()

    return match


def page(spool, did: int, *, status: str = "", reason: str = "", domain: str = "",
         q: str = "", cursor: int = 0, limit: int = 50, max_scan: int = MAX_SCAN,
         budget_s: float | None = BUDGET_S, index=None) -> dict[str, Any]:
    """Filtered recipients from ``cursor`` (a recipient id); see the module doc."""
    d = spool.delivery(did)
    if index is not None and (status or reason or domain):
        return _indexed(spool, d, index, status=status, reason=reason, domain=domain, q=q,
                        cursor=cursor, limit=limit, max_scan=max_scan, budget_s=budget_s)
    dom = domain.lower()
    ql = q.lower()
    match = _matcher(status, reason, domain, q)
    items: list[dict[str, Any]] = []
    scanned = 0
    next_cursor: int | None = None
    last = cursor - 1
    chunk = min(max_scan, 512)
    # a domain or substring filter skips, undecoded, the records that cannot match
    needle = ("@" + dom).encode() if dom else ql.encode()
    deadline = time.perf_counter() + budget_s if budget_s else None
    for rid, rec in spool.scan_recipients(did, start_id=cursor, needle=needle, chunk=chunk):
        if scanned >= max_scan or len(items) >= limit or (
                deadline is not None and not scanned & 255 and scanned
                and time.perf_counter() > deadline):
            next_cursor = rid
            break
        scanned += 1
        last = rid
        if rec is None or not match(rec):
            continue
        items.append(row(rid, rec, d.fields))
    return {"delivery_id": did, "items": items, "count": len(items), "scanned": scanned,
            "next_cursor": next_cursor, "complete": next_cursor is None,
            "last_scanned": last if scanned else None, "indexed": False}
