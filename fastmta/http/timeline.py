"""A delivery's past, for the dashboard's charts: per-interval counts of outcomes and the
status over time, derived from the spool's durable event log (``records.AttemptEvent``,
the reception and async-bounce events), so a page opened after (or during) a send shows
the whole delivery, not only what happened while it was open.

``Timelines`` reads the log incrementally (only events after the last sequence number
it saw; one pass serves every delivery) and keeps, per delivery, counters per bucket of
``step`` seconds (1 s at first; the step doubles whenever a delivery spans more than
``MAX_BUCKETS`` buckets, so memory stays bounded on a campaign of days).  The log may be
pruned (``fastmta events prune``): history then starts at the oldest event kept."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec

from fastmta.records import AttemptEvent, DeliveryEvent, FeedbackEvent, Status

MAX_BUCKETS = 4096
MAX_POINTS = 1200  # points per answer (buckets merged for longer spans)
UPDATE_BUDGET_S = 0.25  # log reading per request
#: bucket columns: outcome counts in the interval, then "received" (reception events)
COLS = ("sent", "failed", "soft", "deferred", "received")
_OUTCOME_COL = {"sent": 0, "hard": 1, "canceled": 1, "expired": 1, "soft": 2, "defer": 3}


@dataclass
class Series:
    """One delivery's buckets: ``{bucket index: [sent, failed, soft, deferred, received]}``
    with ``bucket index = epoch seconds // step``."""

    step: int = 1
    buckets: dict[int, list[int]] = field(default_factory=dict)

    def add(self, ts_ms: int, col: int, n: int = 1) -> None:
        k = ts_ms // 1000 // self.step
        b = self.buckets.get(k)
        if b is None:
            b = self.buckets[k] = [0, 0, 0, 0, 0]
            if len(self.buckets) > MAX_BUCKETS and self._span() > MAX_BUCKETS:
                self._coarsen()
                b = self.buckets[ts_ms // 1000 // self.step]
        b[col] += n

    def _span(self) -> int:
        return max(self.buckets) - min(self.buckets) + 1

    def _coarsen(self) -> None:
        self.step *= 2
        merged: dict[int, list[int]] = {}
        for k, b in self.buckets.items():
            m = merged.setdefault(k // 2, [0, 0, 0, 0, 0])
            for i, v in enumerate(b):
                m[i] += v
        self.buckets = merged

    def points(self, step: int = 0) -> dict[str, Any]:
        """The series, zero-filled from the first to the last bucket, at ``step`` seconds
        (rounded up to a multiple of the kept step; coarser if it would exceed
        ``MAX_POINTS``): per-interval counts, the cumulative ``cum_sent`` /
        ``cum_failed`` and ``pending`` (received - sent - failed) at each interval's end,
        ``rate`` (final outcomes per second)."""
        out: dict[str, Any] = {"step_s": self.step, "t": [], "rate": [], "cum_sent": [],
                               "cum_failed": [], "pending": []}
        for c in COLS:
            out[c] = []
        if not self.buckets:
            return out
        lo, hi = min(self.buckets), max(self.buckets)
        factor = max(1, -(-max(step, self.step) // self.step))
        while (hi - lo) // factor + 1 > MAX_POINTS:
            factor *= 2
        s = self.step * factor
        out["step_s"] = s
        cum = [0, 0, 0]  # sent, failed, received
        lo_f = lo // factor
        for g in range(lo_f, hi // factor + 1):
            acc = [0, 0, 0, 0, 0]
            for k in range(g * factor, (g + 1) * factor):
                b = self.buckets.get(k)
                if b is not None:
                    for i, v in enumerate(b):
                        acc[i] += v
            for c, v in zip(COLS, acc, strict=True):
                out[c].append(v)
            cum[0] += acc[0]
            cum[1] += acc[1]
            cum[2] += acc[4]
            out["t"].append(g * s)
            out["rate"].append(round((acc[0] + acc[1]) / s, 3))
            out["cum_sent"].append(cum[0])
            out["cum_failed"].append(cum[1])
            out["pending"].append(max(0, cum[2] - cum[0] - cum[1]))
        return out


def apply_event(series: dict[int, Series], ev: object) -> None:
    """Count one event-log record into its delivery's series (pure)."""
    if isinstance(ev, AttemptEvent):
        col = _OUTCOME_COL.get(ev.outcome)
        if col is not None:
            series.setdefault(ev.delivery_id, Series()).add(ev.ts_ms, col)
    elif isinstance(ev, DeliveryEvent):
        if ev.kind == "received" and ev.count:
            series.setdefault(ev.delivery_id, Series()).add(ev.ts_ms, 4, ev.count)
    elif isinstance(ev, FeedbackEvent):
        if ev.kind == "bounce_async" and ev.status == Status.FAILED and ev.delivery_id:
            s = series.setdefault(ev.delivery_id, Series())
            s.add(ev.ts_ms, 0, -1)  # a sent recipient became failed (fastmta.feedback)
            s.add(ev.ts_ms, 1, 1)


# The leading fields of the event records (array-like msgspec structs: decoding a
# prefix ignores the rest), ~4x cheaper than decoding whole events with their reply
# texts; tests/httpapi/test_timeline_unit.py checks them against the full records.
class _AttemptHead(msgspec.Struct, array_like=True):
    t: int
    ts_ms: int
    delivery_id: int
    rcpt_id: int
    email: str
    outcome: str


class _DeliveryHead(msgspec.Struct, array_like=True):
    t: int
    ts_ms: int
    delivery_id: int
    kind: str
    count: int = 0


class _FeedbackHead(msgspec.Struct, array_like=True):
    t: int
    ts_ms: int
    kind: str
    delivery_id: int = 0
    rcpt_id: int = 0
    email: str = ""
    status: int = int(Status.SENT)


_ATT, _DLV, _FB = tuple(cls.__struct_config__.tag  # type: ignore[attr-defined]
                        for cls in (AttemptEvent, DeliveryEvent, FeedbackEvent))
ATTEMPT_TAG, DELIVERY_TAG, FEEDBACK_TAG = _ATT, _DLV, _FB
_HEADS = {_ATT: msgspec.msgpack.Decoder(_AttemptHead),
          _DLV: msgspec.msgpack.Decoder(_DeliveryHead),
          _FB: msgspec.msgpack.Decoder(_FeedbackHead)}


def head(raw: bytes):
    """``(tag, leading fields)`` of an attempt, delivery or feedback record's bytes, or
    ``(tag, None)`` for the other records."""
    b0 = raw[0]
    tag = raw[1] if 0x90 <= b0 <= 0x9F else raw[3] if b0 == 0xDC else -1
    dec = _HEADS.get(tag)
    return tag, (dec.decode(raw) if dec is not None else None)


def apply_raw(series: dict[int, Series], raw: bytes) -> None:
    """``apply_event`` on a stored record's bytes, decoding only its leading fields."""
    tag, h = head(raw)
    if h is None:
        return
    if tag == _ATT:
        col = _OUTCOME_COL.get(h.outcome)
        if col is not None:
            series.setdefault(h.delivery_id, Series()).add(h.ts_ms, col)
    elif tag == _DLV:
        if h.kind == "received" and h.count:
            series.setdefault(h.delivery_id, Series()).add(h.ts_ms, 4, h.count)
    elif h.kind == "bounce_async" and h.status == Status.FAILED and h.delivery_id:
        s = series.setdefault(h.delivery_id, Series())
        s.add(h.ts_ms, 0, -1)
        s.add(h.ts_ms, 1, 1)


class Timelines:
    """Every delivery's series, kept current from the spool's event log."""

    def __init__(self, spool) -> None:
        self.spool = spool
        self.last_seq = 0
        self.series: dict[int, Series] = {}
        self._lock = threading.Lock()

    def update(self, budget_s: float | None = UPDATE_BUDGET_S) -> tuple[int, bool]:
        """Read the events appended since the last call, for at most ``budget_s``
        (a first call on a long log continues on the next ones); returns the last seq
        seen and whether the log's end was reached."""
        deadline = time.perf_counter() + budget_s if budget_s else None
        with self._lock:
            n = 0
            for seq, raw in self.spool.events_raw(since=self.last_seq, chunk=2000):
                apply_raw(self.series, raw)
                self.last_seq = seq
                n += 1
                if deadline is not None and not n & 1023 and time.perf_counter() > deadline:
                    return self.last_seq, False
            return self.last_seq, True

    def of(self, did: int, step: int = 0) -> dict[str, Any]:
        """One delivery's chart data (blocking: call it in a thread); ``complete`` false
        while the server is still reading a long log (the next call continues)."""
        self.spool.delivery(did)  # DeliveryNotFound -> 404
        seq, complete = self.update()
        with self._lock:
            s = self.series.get(did) or Series()
            pts = s.points(step)
        return {"delivery_id": did, "last_seq": seq, "complete": complete,
                "columns": list(COLS), **pts}
