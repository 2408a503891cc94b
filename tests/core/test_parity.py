"""Compiled core vs pure twin: identical replies, exceptions and classifications.

Hypothesis generates replies (valid and broken) fed whole, byte by byte and split at
random points; every corpus reply is classified by both.  Skipped when the compiled core
is not built (the pure twin is then the only implementation).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastmta import _core_py, core
from fastmta.errors import RemoteProtocolError

IMPLS = core.implementations()
compiled = IMPLS.get("compiled")
needs_both = pytest.mark.skipif(compiled is None, reason="compiled core not built")
CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpora" / "bounces"
if not (CORPUS / "replies.jsonl").exists():
    CORPUS = Path(__file__).resolve().parents[3].parent / "shared" / "corpora" / "bounces"


def run(mod, chunks, commands=("rcpt", "data", None), max_line=200, max_reply=1000):
    """Feed ``chunks``; return (replies as tuples with their classification, error
    message or None, bytes buffered)."""
    p = mod.ReplyParser(max_line=max_line, max_reply=max_reply)
    for c in commands:
        p.expect(c)
    got = []
    err = None
    for ch in chunks:
        try:
            got += p.feed(ch)
        except RemoteProtocolError as exc:
            got += exc.replies
            err = str(exc)
            break
    return (
        [(r.code, r.enhanced, r.lines, r.raw, r.command, mod.classify(r).to_dict()) for r in got],
        err,
        p.buffered,
    )


def splits(data: bytes, points: list[int]) -> list[bytes]:
    cuts = sorted({min(max(p, 0), len(data)) for p in points})
    out, prev = [], 0
    for c in cuts + [len(data)]:
        out.append(data[prev:c])
        prev = c
    return out


line_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=60
).map(lambda s: s.encode("utf-8"))
enh = st.sampled_from([b"", b"5.1.1 ", b"4.7.0 ", b"2.0.0 ", b"5.7.509 ", b"5.1 ", b"5.1.1", b"9.9.9 "])
code = st.sampled_from([b"250", b"354", b"421", b"450", b"452", b"550", b"554", b"199", b"600", b"5x0", b"25"])


@st.composite
def wire(draw):
    """Several replies, mostly well formed, sometimes broken, CRLF or bare LF."""
    out = b""
    for _ in range(draw(st.integers(1, 4))):
        c = draw(code)
        n = draw(st.integers(1, 4))
        for i in range(n):
            cc = c if draw(st.integers(0, 15)) else draw(code)
            sep = b" " if i == n - 1 else b"-"
            if not draw(st.integers(0, 20)):
                sep = draw(st.sampled_from([b"", b"x", b"\t"]))
            eol = draw(st.sampled_from([b"\r\n", b"\n", b"\r\n", b"\r\r\n"]))
            out += cc + sep + draw(enh) + draw(line_text) + eol
    if draw(st.booleans()):
        out += draw(st.binary(max_size=30))
    return out


@needs_both
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=wire(), points=st.lists(st.integers(0, 400), max_size=6))
def test_parser_parity_whole_bytewise_and_random_splits(data, points):
    whole_py = run(_core_py, [data])
    assert run(compiled, [data]) == whole_py
    bytewise = [data[i : i + 1] for i in range(len(data))]
    for mod in (_core_py, compiled):
        r = run(mod, bytewise)
        assert r[:2] == whole_py[:2]
        r = run(mod, splits(data, points))
        assert r[:2] == whole_py[:2]


@needs_both
@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200), st.sampled_from([None, "rcpt", "mail", "connect", "dot", "RCPT", "xyz"]))
def test_classify_parity_on_arbitrary_text(text, command):
    assert compiled.classify(text, command).to_dict() == _core_py.classify(text, command).to_dict()
    assert compiled.extract_codes(text) == _core_py.extract_codes(text)


@needs_both
@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["550", "452", "421", "250", "554", ""]),
    st.sampled_from(["5.1.1", "#5.2.2", "4.7.0", "x5.1.1", "5.7.1234", ""]),
    st.lists(st.sampled_from(["user unknown", "RATE LIMIT", "spamhaus", "mailbox  full", "DMARC",
                              "over\tquota", "é", "(", "-", "not", "domain", "exist"]), max_size=5),
)
def test_classify_parity_on_reply_like_text(code, enh, words):
    text = " ".join([code, enh, *words])
    for cmd in (None, "rcpt", "mail"):
        assert compiled.classify(text, cmd).to_dict() == _core_py.classify(text, cmd).to_dict()


def _corpus():
    if not (CORPUS / "replies.jsonl").exists():
        pytest.skip(f"bounce corpus not found at {CORPUS}")
    with open(CORPUS / "replies.jsonl", encoding="utf-8") as f:
        return [json.loads(line)["reply"] for line in f if line.strip()]


@needs_both
def test_corpus_replies_classify_and_parse_identically():
    replies = _corpus()
    for text in replies:
        for cmd in (None, "rcpt", "mail", "dot", "connect"):
            assert compiled.classify(text, cmd) == _core_py.classify(text, cmd), text
        results = []
        for mod in (_core_py, compiled):
            try:
                r = mod.parse_reply(text, "rcpt")
                results.append((r.code, r.enhanced, r.lines, r.raw, r.command,
                                mod.classify(r).to_dict()))
            except RemoteProtocolError as exc:
                results.append(str(exc))
        assert results[0] == results[1], text


# ---------------------------------------------------------------------------------------
# Hostile input: always RemoteProtocolError, memory bounded
# ---------------------------------------------------------------------------------------

HOSTILE = [
    b"hello\r\n",
    b"25\r\n",
    b"2500 ok\r\n",
    b"250x ok\r\n",
    b"650 no\r\n",
    b"150 no\r\n",
    b"250-a\r\n550 b\r\n",
    b"\r\n",
    b"\x00\x01\x02\r\n",
    b"250-" + b"a" * 300 + b"\r\n",
]


@pytest.mark.parametrize("data", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_input_is_remote_protocol_error(impl, data):
    p = impl.ReplyParser(max_line=256, max_reply=4096)
    with pytest.raises(RemoteProtocolError):
        p.feed(data)
    with pytest.raises(RemoteProtocolError):  # and it stays broken
        p.feed(b"250 ok\r\n")


def test_endless_continuation_is_capped(impl):
    p = impl.ReplyParser(max_line=512, max_reply=8192)
    with pytest.raises(RemoteProtocolError, match="reply longer"):
        for _ in range(10_000):
            p.feed(b"250-PIPELINING and more text to fill the reply\r\n")
    assert p.buffered <= 8192 + 512


def test_endless_line_is_capped(impl):
    p = impl.ReplyParser(max_line=1024)
    with pytest.raises(RemoteProtocolError, match="line longer"):
        for _ in range(10_000):
            p.feed(b"250 " + b"x" * 100)
    assert p.buffered <= 1024 + 2


def test_line_at_the_cap_with_crlf_split_before_lf(impl):
    line = b"250 " + b"y" * 96
    p = impl.ReplyParser(max_line=100)
    assert p.feed(line + b"\r") == []
    (r,) = p.feed(b"\n")
    assert r.code == 250


def test_replies_before_an_error_are_not_lost(impl):
    p = impl.ReplyParser()
    p.expect("dot")
    with pytest.raises(RemoteProtocolError) as info:
        p.feed(b"250 2.0.0 queued\r\ngarbage\r\n")
    assert [(r.code, r.command) for r in info.value.replies] == [(250, "dot")]


def test_enhanced_code_on_continuation_lines(impl):
    p = impl.ReplyParser()
    (r,) = p.feed(b"550-first line\r\n550-5.7.1 second\r\n550 5.7.1 third\r\n")
    assert r.enhanced == "5.7.1"
    assert r.lines == ("first line", "second", "third")


def test_reply_pickles_and_compares(impl):
    import pickle

    r = impl.parse_reply("550 5.1.1 nope", "rcpt")
    assert pickle.loads(pickle.dumps(r)) == r
    assert r.with_command("dot").command == "dot" and r.command == "rcpt"
    c = impl.classify(r)
    assert pickle.loads(pickle.dumps(c)).to_dict() == c.to_dict()


_PATTERNS = sorted(_core_py.default_classifier().rules.patterns)
_ws = st.sampled_from([" ", "  ", "\t", "\r\n", "\x0b", "\x0c", " \t ", "\u00a0", "\u2003"])


@st.composite
def pattern_soup(draw):
    """Rule patterns glued with whitespace runs, case changes, non-ASCII and digits: the
    cases where an automaton and the reference's substring tests could disagree."""
    parts = []
    for _ in range(draw(st.integers(1, 6))):
        p = draw(st.sampled_from(_PATTERNS))
        if draw(st.booleans()):
            p = p.upper()
        if draw(st.integers(0, 3)) == 0:
            cut = draw(st.integers(0, len(p)))
            p = p[:cut] + draw(_ws) + p[cut:]
        parts.append(p)
        parts.append(draw(st.one_of(_ws, st.sampled_from(["", "x", "é", "550 ", "5.1.1", "#4.2.2", "\u4e2d"]))))
    return "".join(parts)


@needs_both
@settings(max_examples=500, deadline=None)
@given(pattern_soup(), st.sampled_from([None, "rcpt", "mail", "connect", "dot"]))
def test_classify_parity_on_pattern_soup(text, command):
    assert compiled.classify(text, command).to_dict() == _core_py.classify(text, command).to_dict()
    # The same text as bytes and as a parsed reply line.
    assert (compiled.classify(text.encode("utf-8"), command).to_dict()
            == _core_py.classify(text.encode("utf-8"), command).to_dict())


def test_bad_limits_and_input_types(impl):
    with pytest.raises(ValueError):
        impl.ReplyParser(max_line=0)
    with pytest.raises(TypeError):
        impl.ReplyParser().feed("250 ok\r\n")
    p = impl.ReplyParser()
    assert p.feed(bytearray(b"250 o")) == [] and p.buffered == 5
    (r,) = p.feed(memoryview(b"k\r\n"))
    assert r.lines == ("ok",) and p.buffered == 0 and p.pending_commands == 0
