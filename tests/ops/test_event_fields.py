"""Field parity between the spool's event-log records (``fastmta.records``) and the
public events (``fastmta.ops.events``): every stored field reaches the public event
(under its own name, or through the documented mapping below) with its value, and no
public field is left without a source.  Pure: no spool, no sockets."""

from __future__ import annotations

import msgspec
import pytest

from fastmta.ops import events as ev
from fastmta.records import (
    AdminEvent,
    AttemptEvent,
    DeliveryEvent,
    FeedbackEvent,
    QuarantineEvent,
    SiteEvent,
    Status,
)

#: stored fields that do not appear under their own name, and why
MAPPED = {
    AttemptEvent: {"outcome": "the type tag", "status": "implied by the type tag",
                   "type": "bounce_type (hard / ignored) of a bounce",
                   "bounce_class": "only on bounce, transient, expiration",
                   "reason": "not on delivery"},
    DeliveryEvent: {"kind": "reception, or DeliveryState.kind"},
    FeedbackEvent: {"kind": "the type tag", "type": "bounce_type",
                    "status": "the status name (lower case)"},
}
#: public fields computed rather than copied
COMPUTED = {"seq", "type"}


def _fields(cls) -> list[str]:
    return list(cls.__struct_fields__)


def _sample(cls, **fixed):
    """A stored record with a distinct non-default value in every field."""
    vals = {}
    for i, f in enumerate(msgspec.structs.fields(cls)):
        if f.name in fixed:
            vals[f.name] = fixed[f.name]
        elif f.type is int:
            vals[f.name] = 1000 + i
        elif f.type is float:
            vals[f.name] = 0.5 + i
        elif f.type is str:
            vals[f.name] = f"{f.name}-value"
        elif f.type is Status:
            vals[f.name] = Status.FAILED
        else:  # pragma: no cover - a new field type: extend this test
            raise AssertionError(f"{cls.__name__}.{f.name}: type {f.type} not sampled")
    return cls(**vals)


CASES = [
    (AttemptEvent, {"outcome": "sent"}, ev.Delivery),
    (AttemptEvent, {"outcome": "hard"}, ev.Bounce),
    (AttemptEvent, {"outcome": "canceled"}, ev.Bounce),
    (AttemptEvent, {"outcome": "soft"}, ev.Transient),
    (AttemptEvent, {"outcome": "defer"}, ev.Deferral),
    (AttemptEvent, {"outcome": "expired"}, ev.Expiration),
    (DeliveryEvent, {"kind": "received"}, ev.Reception),
    (DeliveryEvent, {"kind": "paused"}, ev.DeliveryState),
    (SiteEvent, {}, ev.SiteChange),
    (AdminEvent, {}, ev.AdminAction),
    (QuarantineEvent, {}, ev.QuarantineChange),
    (FeedbackEvent, {"kind": "bounce_async"}, ev.AsyncBounce),
    (FeedbackEvent, {"kind": "complaint"}, ev.Complaint),
    (FeedbackEvent, {"kind": "autoreply"}, ev.AutoReply),
    (FeedbackEvent, {"kind": "unsubscribe"}, ev.Unsubscribe),
]


@pytest.mark.parametrize(("stored", "fixed", "public"), CASES,
                         ids=[f"{c[0].__name__}-{c[2].__name__}" for c in CASES])
def test_every_stored_field_reaches_the_public_event(stored, fixed, public):
    rec = _sample(stored, **fixed)
    out = ev.from_stored(77, rec)
    assert type(out) is public
    pub = set(_fields(public))
    mapped = MAPPED.get(stored, {})
    for name in _fields(stored):
        if name in mapped:  # converted (test_mapped_fields_carry_their_meaning)
            continue
        assert name in pub, (f"{stored.__name__}.{name} is lost on the way to "
                             f"{public.__name__}: add it to the public event")
        assert getattr(out, name) == getattr(rec, name), f"{public.__name__}.{name}"
    assert out.seq == 77


@pytest.mark.parametrize(("stored", "fixed", "public"), CASES,
                         ids=[f"{c[0].__name__}-{c[2].__name__}" for c in CASES])
def test_no_public_field_without_a_source(stored, fixed, public):
    rec = _sample(stored, **fixed)
    out = ev.from_stored(1, rec)
    src = set(_fields(stored))
    derived = {"bounce_type", "status", "bounce_class", "kind", "reason"}
    for name in _fields(public):
        if name in COMPUTED:
            continue
        assert name in src or name in derived, f"{public.__name__}.{name} has no source"
    d = ev.to_dict(out)
    assert d["type"] == ev.event_type(out) and set(d) == set(_fields(public)) | {"type"}


def test_mapped_fields_carry_their_meaning():
    hard = ev.from_stored(1, _sample(AttemptEvent, outcome="hard"))
    canceled = ev.from_stored(2, _sample(AttemptEvent, outcome="canceled"))
    assert (hard.bounce_type, canceled.bounce_type) == ("hard", "ignored")
    fb = ev.from_stored(3, _sample(FeedbackEvent, kind="complaint"))
    assert fb.status == "failed" and fb.bounce_type == "type-value"
    assert ev.from_stored(4, _sample(DeliveryEvent, kind="paused")).kind == "paused"
    assert ev.from_stored(5, _sample(AttemptEvent, outcome="nonsense")) is None
