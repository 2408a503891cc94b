"""A recipients index for the dashboard's and the API's filtered pages (status, reason,
domain) on large deliveries: built on the first filtered query, in memory, and kept
current from the spool's event log -- the spool's commit path is not touched.

Per indexed delivery: one byte per recipient id for the status, one for the failure
``reason`` and one for ``last_soft_reason`` (interned; 255 = one of the rarer reasons
past the first 254, checked on the record), and per domain the sorted recipient ids.
~3 bytes + 4 per recipient: ~7 MB for a million.  A query finds candidates with
``bytearray.find`` (C speed) or ``bisect`` on the domain's ids, in id order from the
cursor, and every candidate is re-read from the spool and checked against the full
filter before it is returned, so the answer is exact even if the index lags.

Keeping current: the event-log position is noted *before* the build scans the recipient
table; each later query first reads the events after that position and re-reads the
recipients they name (``AttemptEvent``, async ``FeedbackEvent``), and scans the ids
added by new injection batches (``DeliveryEvent received``).  That catch-up has a time
budget: a query that cannot finish it answers with the bounded scan
(``recipients_page``) and the next one continues.  The build itself runs in a daemon
thread; until it is done, queries use the scan."""

from __future__ import annotations

import threading
import time
from array import array
from bisect import bisect_left
from collections.abc import Iterator

from fastmta.http.timeline import DELIVERY_TAG, head
from fastmta.records import Rcpt, Status

NONE = 255  # status byte of an id without a record
OTHER = 255  # reason byte: a reason past the first 254 distinct ones
MIN_RECIPIENTS = 20_000  # smaller deliveries: the scan is fast enough
CATCHUP_BUDGET_S = 0.03


class DeliveryIndex:
    """One delivery's index (see the module doc).  Not thread-safe by itself."""

    def __init__(self, did: int) -> None:
        self.did = did
        self.next_id = 0  # ids below this were scanned
        self.status = bytearray()
        self.reason = bytearray()
        self.soft = bytearray()
        self.reasons: dict[str, int] = {"": 0}
        self.domains: dict[str, array] = {}

    def _rid(self, s: str) -> int:
        r = self.reasons.get(s)
        if r is None:
            if len(self.reasons) >= OTHER:
                return OTHER
            r = self.reasons[s] = len(self.reasons)
        return r

    def _grow(self, rid: int) -> None:
        if rid >= len(self.status):
            extra = rid + 1 - len(self.status) + max(1024, len(self.status) // 4)
            self.status.extend(bytes([NONE]) * extra)
            self.reason.extend(bytes(extra))
            self.soft.extend(bytes(extra))

    def put(self, rid: int, rec: Rcpt | None, *, new: bool) -> None:
        """Record ``rec`` (None: the id has no record); ``new`` = first time seen."""
        self._grow(rid)
        if rec is None:
            self.status[rid] = NONE
            return
        self.status[rid] = int(rec.status)
        self.reason[rid] = self._rid(rec.reason)
        self.soft[rid] = self._rid(rec.last_soft_reason)
        if new:
            dom = rec.email.rpartition("@")[2].lower()
            ids = self.domains.get(dom)
            if ids is None:
                ids = self.domains[dom] = array("I")
            ids.append(rid)  # ids arrive in increasing order

    def candidates(self, *, status: str, reason: str, domain: str,
                   start: int) -> Iterator[int]:
        """Ids >= ``start`` that may match, in order (the caller checks the record)."""
        st = None
        if status:
            st = int(Status.IGNORED if status == "excluded" else Status[status.upper()])
        rcode = None
        if reason:
            rcode = self.reasons.get(reason, OTHER if len(self.reasons) >= OTHER else -1)
            if rcode == -1:
                return
        status_b, reason_b, soft_b = self.status, self.reason, self.soft
        end = self.next_id

        def ok(rid: int) -> bool:
            if st is not None and status_b[rid] != st:
                return False
            if rcode is not None and reason_b[rid] != rcode and soft_b[rid] != rcode:
                return False
            return status_b[rid] != NONE

        if domain:
            ids = self.domains.get(domain.lower())
            if ids is None:
                return
            for i in range(bisect_left(ids, start), len(ids)):
                if ok(ids[i]):
                    yield ids[i]
            return
        if rcode is not None:  # the rarer of the two: walk both reason columns at once
            key = bytes([rcode])
            a, b = reason_b.find(key, start, end), soft_b.find(key, start, end)
            while a >= 0 or b >= 0:
                rid = min(x for x in (a, b) if x >= 0)
                if ok(rid):
                    yield rid
                if a == rid:
                    a = reason_b.find(key, rid + 1, end)
                if b == rid:
                    b = soft_b.find(key, rid + 1, end)
            return
        if st is not None:
            key = bytes([st])
            rid = status_b.find(key, start, end)
            while rid >= 0:
                yield rid
                rid = status_b.find(key, rid + 1, end)
            return
        for rid in range(start, end):  # pragma: no cover - unfiltered pages use the scan
            if status_b[rid] != NONE:
                yield rid


class RecipientIndexes:
    """Every indexed delivery of one spool, kept current from its event log."""

    def __init__(self, spool, *, min_recipients: int = MIN_RECIPIENTS) -> None:
        self.spool = spool
        self.min_recipients = min_recipients
        self.ready: dict[int, DeliveryIndex] = {}
        self.building: set[int] = set()
        self.last_seq: dict[int, int] = {}  # per delivery: events applied up to here
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ building
    def wanted(self, did: int) -> bool:
        """Worth an index: one exists or is being built, or a big delivery (the spool's
        ``recipients`` KPI, read only until then)."""
        if did in self.ready or did in self.building:
            return True
        return self.spool.kpis(did).get("recipients", 0) >= self.min_recipients

    def get(self, did: int, budget_s: float = CATCHUP_BUDGET_S) -> DeliveryIndex | None:
        """The delivery's index, current; None while it is being built or caught up
        (start the build on first call).  Blocking: call it in a thread."""
        with self._lock:
            idx = self.ready.get(did)
            if idx is None:
                if did not in self.building:
                    self.building.add(did)
                    threading.Thread(target=self._build, args=(did,), daemon=True,
                                     name=f"rcpt-index-{did}").start()
                return None
            return idx if self._catch_up(idx, time.perf_counter() + budget_s) else None

    def _build(self, did: int) -> None:
        try:
            seq0 = self.spool.last_event_seq()  # before the scan: nothing is missed
            idx = DeliveryIndex(did)
            self._scan(idx)
            with self._lock:
                self.last_seq[did] = seq0
                self.ready[did] = idx
        finally:
            with self._lock:
                self.building.discard(did)

    def _scan(self, idx: DeliveryIndex) -> None:
        last = idx.next_id - 1
        for rid, rec in self.spool.scan_recipients(idx.did, start_id=idx.next_id,
                                                   chunk=5000):
            idx.put(rid, rec, new=True)
            last = rid
        idx.next_id = max(idx.next_id, last + 1)

    def _catch_up(self, idx: DeliveryIndex, deadline: float) -> bool:
        """Apply the events after the index's position (lock held); False if the
        deadline came first (the position kept: the next call continues)."""
        did = idx.did
        seq = self.last_seq[did]
        touched: set[int] = set()
        grown = False
        n = 0
        done = True
        for s, raw in self.spool.events_raw(since=seq, chunk=2000):
            tag, h = head(raw)  # leading fields only: no reply text decoded
            if h is not None and h.delivery_id == did:
                if tag == DELIVERY_TAG:
                    grown = grown or h.kind == "received"
                else:  # an attempt or feedback names its recipient
                    touched.add(h.rcpt_id)
            seq = s
            n += 1
            if not n & 1023 and time.perf_counter() > deadline:
                done = False
                break
        if grown:
            self._scan(idx)
        for rid in sorted(touched):
            if rid < idx.next_id:
                idx.put(rid, self.spool.recipient(did, rid), new=False)
        self.last_seq[did] = seq
        return done

    def forget(self, did: int) -> None:
        with self._lock:
            self.ready.pop(did, None)
            self.last_seq.pop(did, None)
