"""DATA framing (``prepare_body``): the compiled core and its pure twin agree, and the
result is a well-formed DATA payload (CRLF only, dot-stuffed, one terminator)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastmta import core

IMPLS = core.implementations()

CASES = [
    b"", b"a", b".", b"..", b"a\r\n", b"a\n", b"a\r", b"\r", b"\n", b"\r\n", b"\r\r\n",
    b"\n\r", b".a\r\n.b\r\n", b"a\r\n.\r\n", b"x\n.y\nz", b"a\r\nb", b"\r\n.", b"..\r\n..",
    b"Subject: x\r\n\r\nbody\r\n" * 3, b"mixed\r\nlf\nand\rcr\r\n.dot\n",
]


def _undo(wire: bytes) -> bytes:
    """What a receiver reads back: strip the terminator and the dot-stuffing."""
    assert wire.endswith(b"\r\n.\r\n") or wire == b".\r\n"
    lines = wire[:-3].split(b"\r\n")  # the payload ends with CRLF: last item is b""
    return b"\r\n".join(ln[1:] if ln.startswith(b".") else ln for ln in lines)


@pytest.mark.parametrize("name", sorted(IMPLS))
@pytest.mark.parametrize("body", CASES)
def test_cases_agree_with_the_twin(name, body):
    got = IMPLS[name].prepare_body(body)
    assert got == IMPLS["pure"].prepare_body(body)
    assert got.endswith(b".\r\n")
    inner = got[:-3]
    assert inner.count(b"\n") == inner.count(b"\r\n") == inner.count(b"\r")


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=64) | st.lists(st.sampled_from([b"a", b" ", b".", b"\r", b"\n",
                                                             b"\r\n", b"\xff"]),
                                            max_size=40).map(b"".join))
def test_random_bodies_agree_and_round_trip(body):
    outs = {name: impl.prepare_body(body) for name, impl in IMPLS.items()}
    assert len(set(outs.values())) == 1, outs
    wire = outs["pure"]
    back = _undo(wire)
    # what comes back is the body with every line break made CRLF (and a final one)
    norm = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if norm and not norm.endswith(b"\r\n"):
        norm += b"\r\n"
    assert back == norm


def test_accepts_bytearray_and_memoryview():
    for impl in IMPLS.values():
        assert impl.prepare_body(bytearray(b"a\n.b")) == b"a\r\n..b\r\n.\r\n"
        assert impl.prepare_body(memoryview(b"x\r\n")) == b"x\r\n.\r\n"
