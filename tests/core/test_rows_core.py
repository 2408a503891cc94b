"""The CSV fast path of injection (``csv_rows``): the compiled core and its pure twin
take the same records as simple, hand back the same others, and what they take is what
the full checks decide."""

from __future__ import annotations

import csv
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastmta import core
from fastmta.delivery.addresses import check_address, has_control

IMPLS = core.implementations()
PURE = IMPLS["pure"]

DOMAINS = {"x.example": ("x.example", 3), "X.Example": ("x.example", 3),
           "b\u00fccher.example": ("xn--bcher-kva.example", 9), "y.example": ("y.example", 60)}

TEXT = (
    "email,first,last\n"
    "a@x.example,A,B\n"                       # simple
    "a.b+c@X.Example,A,B\n"                   # simple, domain normalised
    "a@unknown.example,A,B\n"                 # domain not memoised yet
    " a@x.example,A,B\n"                      # space: full checks
    "a..b@x.example,A,B\n"                    # bad dot-atom
    ".a@x.example,A,B\n"
    "a.@x.example,A,B\n"
    "@x.example,A,B\n"
    "a@,A,B\n"
    "a@x.example@y.example,A,B\n"
    "\"q\"@x.example,A,B\n"                   # quoted local part
    "\u00e9@x.example,A,B\n"                  # UTF-8 local part
    "a@b\u00fccher.example,A,B\n"             # IDN domain as written
    "a@x.example,Jos\u00e9,\u0141\u00f3d\u017a\n"  # non-ASCII fields stay simple
    "a@x.example,A\rB,C\n"                    # bare CR: csv splits the line
    "a@x.example,\"A\nB\",C\n"                # multi-line record
    "a@x.example,A\x01,B\n"                   # control char in a header field
    "a@x.example,A,B\x7f\n"                   # in a body field
    "a@x.example,A\u2028,B\n"
    "a@x.example,--BOUNDARY,B\n"              # the MIME boundary: checked in body fields only
    "a@x.example,A,x--BOUNDARYx\n"
    "a@x.example,A\udce9,B\n"                 # a byte that was not UTF-8
    "a@x.example,A,B,C\n"                     # column count
    "\n"                                      # blank
    "a@x.example\n"
    + "u" * 65 + "@x.example,A,B\n"           # local part too long
    + "u" * 64 + "@" + "y" * 180 + ".example,A,B\n"
    "last@y.example,Z,Z\n"
)


def _run(impl, text, n, **kw):
    rd = csv.reader(io.StringIO(text, newline=""), strict=False)
    next(rd)
    out, last = [], rd.line_num
    while True:
        items, slow, last = impl.csv_rows(rd, n, last, 3, 0, kw.get("pick", (1, 2)),
                                          kw.get("hidx", (0,)), kw.get("bidx", (1,)),
                                          kw.get("marker", "--BOUNDARY"), dict(DOMAINS))
        out.append((items, slow, last))
        if len(items) < n:
            return out


@pytest.mark.parametrize("n", [1, 3, 1000])
@pytest.mark.parametrize("name", sorted(IMPLS))
def test_rows_agree_with_the_twin(name, n):
    assert _run(IMPLS[name], TEXT, n) == _run(PURE, TEXT, n)


@pytest.mark.parametrize("name", sorted(IMPLS))
def test_what_is_simple(name):
    ((items, slow, last),) = _run(IMPLS[name], TEXT, 1000)
    taken = [(x.email, x.fields, x.shard, x.line) for x in items if x is not None]
    assert taken == [
        ("a@x.example", ("A", "B"), 3, 2),
        ("a.b+c@x.example", ("A", "B"), 3, 3),
        ("q@x.example", ("A", "B"), 3, 12),  # csv took the quotes off
        ("a@x.example", ("Jos\u00e9", "\u0141\u00f3d\u017a"), 3, 15),
        ("a@x.example", ("A", "B\x7f"), 3, 21),  # body fields may hold control characters
        ("a@x.example", ("--BOUNDARY", "B"), 3, 23),
        ("last@y.example", ("Z", "Z"), 60, 31),
    ]
    assert last == 31
    # a bare CR ends a line for csv; the quoted line break makes one record of 18-19
    assert [(first, line) for _, first, line, _ in slow if line != first] == [(18, 19)]
    assert [line for _, _, line, _ in slow] == [
        4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 16, 17, 19, 20, 22, 24, 25, 26, 27, 28, 29, 30]
    assert all(items[pos] is None for pos, _, _, _ in slow)
    assert len(items) == len([r for r in csv.reader(io.StringIO(TEXT, newline=""))]) - 1


@pytest.mark.parametrize("name", sorted(IMPLS))
def test_no_marker_no_body_check(name):
    ((items, _, _),) = _run(IMPLS[name], "email,first,last\na@x.example,--BOUNDARY,B\n", 10,
                            marker="")
    assert items[0] is not None and items[0].fields == ("--BOUNDARY", "B")


@pytest.mark.parametrize("name", sorted(IMPLS))
def test_bad_indexes_are_refused(name):
    rd = csv.reader(io.StringIO("a,b\n"))
    with pytest.raises(IndexError):
        IMPLS[name].csv_rows(rd, 10, 0, 2, 0, (2,), (), (), "", {})
    with pytest.raises(IndexError):
        IMPLS[name].csv_rows(rd, 10, 0, 2, 0, (1,), (1,), (), "", {})


_chars = st.sampled_from(list("ab.@-+_\"\\ \t,\nZ\x00\x7f\u00e9\u2028\udce9") + ["x.example"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.lists(_chars, max_size=12).map("".join),
                          st.lists(_chars, max_size=6).map("".join)), max_size=8))
def test_any_records_agree_and_simple_means_valid(rows):
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["email", "first", "last"])
    for email, first in rows:
        w.writerow([email, first, "L"])
    text = buf.getvalue()
    got = {name: _run(impl, text, 4) for name, impl in IMPLS.items()}
    assert all(g == got["pure"] for g in got.values())
    for items, _, _ in got["pure"]:
        for x in items:
            if x is None:
                continue
            norm, utf8, err = check_address(x.email)
            assert not err and not utf8 and norm == x.email
            assert not has_control(x.fields[0])
