"""The charts' history (``fastmta.http.timeline``), pure: buckets from event-log records,
zero fill, merged steps, bounded memory, async bounces.  No spool, no sockets."""

from __future__ import annotations

import msgspec

from fastmta.http import timeline as tl
from fastmta.records import (
    AttemptEvent,
    DeliveryEvent,
    FeedbackEvent,
    QuarantineEvent,
    Status,
)

T0 = 1_700_000_000_000  # ms


def att(ts_ms: int, outcome: str, did: int = 1) -> AttemptEvent:
    return AttemptEvent(ts_ms, did, 1, "a@b.example", outcome, Status.PENDING)


def build(events) -> dict[int, tl.Series]:
    series: dict[int, tl.Series] = {}
    for ev in events:
        tl.apply_event(series, ev)
    return series


def test_buckets_zero_fill_and_status_over_time():
    s = build([DeliveryEvent(ts_ms=T0, delivery_id=1, kind="received", count=10),
               att(T0 + 100, "sent"), att(T0 + 900, "sent"), att(T0 + 1500, "soft"),
               att(T0 + 3200, "hard"), att(T0 + 3300, "defer"), att(T0 + 3400, "sent", did=2)])
    p = s[1].points()
    assert p["step_s"] == 1 and p["t"] == [T0 // 1000 + i for i in range(4)]
    assert p["sent"] == [2, 0, 0, 0] and p["failed"] == [0, 0, 0, 1]
    assert p["soft"] == [0, 1, 0, 0] and p["deferred"] == [0, 0, 0, 1]
    assert p["cum_sent"] == [2, 2, 2, 2] and p["cum_failed"] == [0, 0, 0, 1]
    assert p["pending"] == [8, 8, 8, 7] and p["rate"] == [2.0, 0.0, 0.0, 1.0]
    assert sum(s[2].points()["sent"]) == 1  # per delivery
    coarse = s[1].points(step=2)
    assert coarse["step_s"] == 2 and coarse["sent"] == [2, 0] and coarse["failed"] == [0, 1]
    assert coarse["rate"] == [1.0, 0.5]


def test_unknown_records_and_outcomes_are_ignored():
    s = build([att(T0, "nonsense"), DeliveryEvent(ts_ms=T0, delivery_id=1, kind="paused")])
    assert s == {}
    assert tl.Series().points()["t"] == []


def test_async_bounce_moves_a_sent_recipient_to_failed():
    s = build([att(T0, "sent"),
               FeedbackEvent(ts_ms=T0 + 5000, kind="bounce_async", delivery_id=1, rcpt_id=1,
                             status=Status.FAILED),
               FeedbackEvent(ts_ms=T0 + 6000, kind="complaint", delivery_id=1, rcpt_id=1)])
    p = s[1].points()
    assert p["cum_sent"][-1] == 0 and p["cum_failed"][-1] == 1


def test_memory_is_bounded_on_a_long_campaign():
    ser = tl.Series()
    days = 3
    for i in range(0, days * 86400, 7):  # one outcome every 7 s for 3 days
        ser.add(T0 + i * 1000, 0)
    assert len(ser.buckets) <= tl.MAX_BUCKETS and ser.step > 1
    p = ser.points()
    assert len(p["t"]) <= tl.MAX_POINTS
    assert sum(p["sent"]) == len(range(0, days * 86400, 7))  # nothing lost by merging
    assert all(b - a == p["step_s"] for a, b in zip(p["t"], p["t"][1:], strict=False))


def test_raw_heads_count_like_the_decoded_records():
    """``apply_raw`` (prefix decoding of the stored bytes) == ``apply_event``, for every
    record kind, whatever the field values (the heads follow the records' layout)."""
    enc = msgspec.msgpack.Encoder()
    evs = [DeliveryEvent(ts_ms=T0, delivery_id=1, kind="received", count=7, text="x" * 300),
           DeliveryEvent(ts_ms=T0, delivery_id=1, kind="paused"),
           FeedbackEvent(ts_ms=T0 + 9000, kind="bounce_async", delivery_id=1, rcpt_id=2,
                         email="a@b.example", status=Status.FAILED, reason="r", text="t"),
           FeedbackEvent(ts_ms=T0 + 9000, kind="complaint", delivery_id=1, rcpt_id=2),
           QuarantineEvent(ts_ms=T0, address="a@b.example", kind="quarantined")]
    for i, o in enumerate(["sent", "hard", "soft", "defer", "expired", "canceled", "sent"]):
        evs.append(AttemptEvent(T0 + i * 1500, 1 + i % 2, i, f"u{i}@b.example", o,
                                Status.SENT, 1, 250, "2.0.0", 10, "hard", "why",
                                "250 " + "y" * 500, "mx", "127.0.0.5", "TLSv1.3"))
    a: dict = {}
    b: dict = {}
    for ev in evs:
        tl.apply_event(a, ev)
        tl.apply_raw(b, enc.encode(ev))
    assert a.keys() == b.keys() == {1, 2}
    for did in a:
        assert a[did].buckets == b[did].buckets and a[did].buckets
