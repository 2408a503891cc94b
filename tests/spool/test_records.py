"""Records: tagged array-like msgpack, round trips, and the schema-evolution rule."""

from __future__ import annotations

import msgspec

from fastmta.records import (
    ENCODER,
    EVENT_DECODER,
    RCPT_DECODER,
    AttemptEvent,
    DeliveryEvent,
    Rcpt,
    Status,
)


def test_rcpt_round_trip_and_tag():
    r = Rcpt(email="a@b.example", fields=("x", "y"), shard=3, line=7, status=Status.SENT)
    raw = ENCODER.encode(r)
    assert msgspec.msgpack.decode(raw)[0] == 2  # integer tag first: tagged from v1
    assert RCPT_DECODER.decode(raw) == r


def test_event_union_decodes_by_tag():
    evs = [AttemptEvent(ts_ms=1, delivery_id=1, rcpt_id=2, email="a@b.example",
                        outcome="sent", status=Status.SENT),
           DeliveryEvent(ts_ms=2, delivery_id=1, kind="created")]
    assert [EVENT_DECODER.decode(ENCODER.encode(e)) for e in evs] == evs


def test_appending_a_field_with_default_reads_old_records():
    """Rule 2 of records.py: a v1 record decodes into a struct with a field appended."""

    class V1(msgspec.Struct, array_like=True, tag=50, tag_field="t"):
        email: str
        shard: int = 0

    class V2(msgspec.Struct, array_like=True, tag=50, tag_field="t"):
        email: str
        shard: int = 0
        added_later: str = "default"

    old = msgspec.msgpack.encode(V1("a@b.example", 4))
    new = msgspec.msgpack.decode(old, type=V2)
    assert new == V2("a@b.example", 4, "default")
