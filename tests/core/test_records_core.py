"""The spool's record functions (``rcpt_sent``, ``rcpt_claim``): the compiled core and
its pure twin give the same answers, byte for byte, and the answers are what the spool
means (decoded back with msgspec)."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastmta import core
from fastmta.records import (
    ENCODER,
    EVENT_DECODER,
    RCPT_DECODER,
    AttemptEvent,
    Rcpt,
    RecipientIn,
    Status,
)

IMPLS = core.implementations()
PURE = IMPLS["pure"]

RECORDS = [
    Rcpt("a@b.c"),
    Rcpt("user12345@domain123.example", ("First1", "Last1", "City1"), 12, 12345),
    Rcpt("é@ü.de", ("x" * 40, "y" * 300, ""), 65535, 2**33, Status.PENDING, True, 200, 2**41,
         5, 0, 99, "mailbox_full", "soft", 22, 452, "4.2.2", "r" * 600, "mx.a", "1.2.3.4",
         "lsr", 7, "complained"),
    Rcpt("soft@x.y", reason="greylisted", type="soft", attempts=1, first_attempt_ms=123),
    Rcpt("hard@x.y", reason="user_unknown", type="hard"),
    Rcpt("sent@x.y", status=Status.SENT),
    Rcpt("failed@x.y", status=Status.FAILED),
    Rcpt("ignored@x.y", status=Status.IGNORED, reason="double"),
]
SENT_ARGS = [
    (1_700_000_000_000, 1, 2, 250, "2.0.0", 0, "", "250 2.0.0 ok", "mx.example", "127.0.0.2",
     "TLSv1.3 TLS_AES_256_GCM_SHA384"),
    (5, 2**32 - 1, 0, 0, "", 0, "", "", "", "", ""),
    (2**40, 70_000, 300, 250, "é" * 20, 1, "none", "ü" * 300, "m" * 70_000, "s", "t" * 40),
    (-1, 0, 0, -200, "", -40_000, "", "", "", "", ""),
]
NAMES = [(), ["first", "last"], ("first", "last", "city", "extra")]


def _short(rec: Rcpt, n: int) -> bytes:
    """The record as an older spool wrote it: its first ``n`` array items only."""
    return msgspec.msgpack.encode(msgspec.msgpack.decode(ENCODER.encode(rec))[:n])


def _answer(fn, *args):
    try:
        return fn(*args)
    except Exception as exc:  # both must fail alike
        return type(exc).__mro__[-2]


@pytest.mark.parametrize("name", sorted(IMPLS))
@pytest.mark.parametrize("rec", RECORDS, ids=lambda r: r.email)
def test_sent_agrees_with_the_twin(name, rec):
    raw = ENCODER.encode(rec)
    for args in SENT_ARGS:
        got = IMPLS[name].rcpt_sent(raw, *args)
        assert got == PURE.rcpt_sent(raw, *args)
        if rec.status != Status.PENDING:
            assert got is None
            continue
        new, event, email = got
        assert email == rec.email
        r2, ev = RCPT_DECODER.decode(new), EVENT_DECODER.decode(event)
        assert r2.status == Status.SENT and r2.attempts == rec.attempts + 1
        assert r2.fields == rec.fields and r2.line == rec.line and r2.shard == rec.shard
        assert r2.reason == (rec.reason if rec.type == "soft" else "")
        assert r2.mx == (args[8] or rec.mx) and r2.feedback == rec.feedback
        assert isinstance(ev, AttemptEvent) and ev.outcome == "sent"
        assert (ev.ts_ms, ev.delivery_id, ev.rcpt_id, ev.email) == (*args[:3], rec.email)


@pytest.mark.parametrize("name", sorted(IMPLS))
@pytest.mark.parametrize("rec", RECORDS, ids=lambda r: r.email)
def test_claim_agrees_with_the_twin(name, rec):
    raw = ENCODER.encode(rec)
    for names in NAMES:
        got = IMPLS[name].rcpt_claim(raw, names)
        assert got == PURE.rcpt_claim(raw, names)
        if got is not None:
            assert got[1]["email"] == rec.email
            assert got[1] == {**dict(zip(names, rec.fields, strict=False)), "email": rec.email}


@pytest.mark.parametrize("name", sorted(IMPLS))
@pytest.mark.parametrize("n", range(0, 25))
def test_records_of_older_schemas_and_broken_ones(name, n):
    """A record that stops early takes the defaults for the rest (as msgspec decodes it);
    one too long, too short or not a recipient record fails in both."""
    for rec in (RECORDS[2], Rcpt("p@q")):
        raw = _short(rec, n) if n < 24 else ENCODER.encode(rec) + b"\x00"
        for args in SENT_ARGS[:2]:
            assert _answer(IMPLS[name].rcpt_sent, raw, *args) == _answer(PURE.rcpt_sent, raw, *args)
        assert _answer(IMPLS[name].rcpt_claim, raw, ["a"]) == _answer(PURE.rcpt_claim, raw, ["a"])
    bad = [b"", b"\x90", b"\xdc\x00", b"\x93\x03\xa1a\x00", ENCODER.encode(["x"]),
           ENCODER.encode(RECORDS[1])[:-3]]
    for raw in bad:
        with pytest.raises(Exception):  # noqa: B017 - any decode error, in both
            IMPLS[name].rcpt_sent(raw, *SENT_ARGS[0])
        with pytest.raises(Exception):  # noqa: B017
            IMPLS[name].rcpt_claim(raw, ["a"])


_text = st.text(max_size=40) | st.text(min_size=30, max_size=300)
_int = st.integers(min_value=-(2**62), max_value=2**62)  # timestamps, counts: far from 2**63
_uint = st.integers(min_value=0, max_value=2**62)


@settings(max_examples=300, deadline=None)
@given(email=_text, fields=st.lists(_text, max_size=5).map(tuple),
       ints=st.lists(_uint, min_size=9, max_size=9),
       strs=st.lists(_text, min_size=8, max_size=8), utf8=st.booleans(), soft=st.booleans(),
       args=st.tuples(_int, _uint, _uint, _int, _text, _int, _text, _text, _text, _text, _text))
def test_any_pending_record_agrees(email, fields, ints, strs, utf8, soft, args):
    rec = Rcpt(email, fields, ints[0] % 65536, ints[1], Status.PENDING, utf8, ints[2], ints[3],
               ints[4], ints[5], ints[6], strs[0], "soft" if soft else strs[1], ints[7] % 1000,
               ints[8] % 1000, strs[2], strs[3], strs[4], strs[5], strs[6], ints[0], strs[7])
    raw = ENCODER.encode(rec)
    want_sent = PURE.rcpt_sent(raw, *args)
    want_claim = PURE.rcpt_claim(raw, ("a", "b", "c"))
    for impl in IMPLS.values():
        assert impl.rcpt_sent(raw, *args) == want_sent
        assert impl.rcpt_claim(raw, ("a", "b", "c")) == want_claim


BATCH = [RecipientIn(f"user{i}@domain{i % 7}.example", (f"F{i}", "é" * i, "x" * 40), i % 64, i + 1)
         for i in range(40)] + [
    RecipientIn("ex@a.b", ("a",), 3, 99, exclude="unqualified"),
    RecipientIn("ü@ü.de", (), 65535, 2**40, smtputf8=True),
    RecipientIn("long" * 20 + "@d.e", tuple("abcdefghijklmnopq"), 1, 2),
]


@pytest.mark.parametrize("name", sorted(IMPLS))
@pytest.mark.parametrize("dups", [set(), {0, 5, 41}, frozenset({1})], ids=str)
@pytest.mark.parametrize("rid", [0, 1000, 2**32 - len(BATCH)])
def test_batch_agrees_with_the_twin(name, dups, rid):
    got = IMPLS[name].rcpt_batch(BATCH, 7, rid, 1_700_000_000_000, dups)
    assert got == PURE.rcpt_batch(BATCH, 7, rid, 1_700_000_000_000, dups)
    rcpt_items, ready, domains, excluded = got
    assert [k for k, _ in rcpt_items] == [(7).to_bytes(4, "big") + (rid + i).to_bytes(4, "big")
                                          for i in range(len(BATCH))]
    recs = [RCPT_DECODER.decode(v) for _, v in rcpt_items]
    assert [r.email for r in recs] == [x.email for x in BATCH]
    out = {i for i, _ in excluded}
    assert out == {i for i, x in enumerate(BATCH) if x.exclude or i in dups}
    assert all(recs[i].status == Status.IGNORED and recs[i].done_ms for i in out)
    assert len(ready) == sum(domains.values()) == len(BATCH) - len(out)


@pytest.mark.parametrize("name", sorted(IMPLS))
def test_batch_rejects_what_the_spool_cannot_hold(name):
    with pytest.raises(OverflowError):
        IMPLS[name].rcpt_batch(BATCH, 7, 2**32 - 1, 0, set())
    with pytest.raises(ValueError):  # no "@": never reaches the spool unchecked
        IMPLS[name].rcpt_batch([RecipientIn("nodomain")], 1, 0, 0, set())
    with pytest.raises(OverflowError):
        IMPLS[name].rcpt_batch([RecipientIn("a@b", (), 70_000)], 1, 0, 0, set())


def test_the_compiled_layout_is_the_records_layout():
    """``_core_records.pxi`` knows Rcpt's and AttemptEvent's fields by position: a field
    appended to either (docs/spool.md, schema evolution) must be added there too."""
    assert Rcpt.__struct_fields__[:5] == ("email", "fields", "shard", "line", "status")
    assert len(Rcpt.__struct_fields__) == 22, "update _RCPT_N and rcpt_sent in _core_records.pxi"
    assert len(AttemptEvent.__struct_fields__) == 16, "update _EV_N in _core_records.pxi"
