"""``feedback.feedparse``: the same ``Message`` tree as ``email.message_from_bytes``
(compat32) on the bounce corpus, the simulator's mail, hostile and mutated input."""

from __future__ import annotations

import email
import email.policy
import os
from email.message import Message
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastmta.feedback import feedparse
from fastmta.sim.feedback import build_arf, build_autoreply, build_dsn

CORPUS = Path(os.environ.get("FASTMTA_BOUNCE_CORPUS",
                             Path(__file__).resolve().parents[3] / "shared/corpora/bounces"))
ORIG = (b"From: News <news@sender.example>\r\nTo: alice@dest.example\r\nSubject: Hi\r\n"
        b"Message-ID: <m-aaaaaaaaaaaaaaaaaaaaa@bounces.example>\r\n\r\nbody\r\n")


def _tree(m: Message) -> tuple:
    p = m._payload
    body = [_tree(x) for x in p] if isinstance(p, list) else p
    return (m._unixfrom, list(m._headers), m.preamble, m.epilogue, m._default_type, body)


def _same(raw: bytes) -> bool:
    """True when the twin gives the standard tree, or declines (Unsupported)."""
    try:
        ref = _tree(email.message_from_bytes(raw, policy=email.policy.compat32))
    except RecursionError:
        return True
    try:
        got = feedparse.message_from_bytes(raw)
    except feedparse.Unsupported:
        return True
    assert _tree(got) == ref
    return False


SIM = [build_dsn("a@b.example", "r@x.example", ORIG, style=s) for s in ("rfc3464", "exim", "qmail")]
SIM += [build_dsn("a@b.example", "r@x.example", ORIG, soft=True), build_arf("a@b.example", ORIG),
        build_autoreply("a@b.example", "r@x.example", ORIG)]
HOSTILE = [
    b"", b"\r\n", b"\x00\xff" * 100, b"From nobody Mon Jan 1\nSubject: x\n\nbody",
    b"Subject: x\nFrom nobody\n\nbody", b" folded first\nSubject: y\n\nz",
    b":nameless\nSubject: y\n\nz", b"Subject: a\rb\r\rbody\r",
    b"Content-Type: multipart/mixed; boundary=b\n\npre\n--b\n\nx\n--b--",
    b"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: multipart/alternative;"
    b" boundary=c\n\n--c\n\ninner\n--b\n\nafter\n--b--\nepi\n",
    b"Content-Type: multipart/mixed; boundary=b\n\nno start boundary\n",
    b"Content-Type: multipart/mixed; boundary=b\n\n--b\n\nnever closed\n",
    b"Content-Type: multipart/mixed\n\n--b\n\nno boundary parameter\n--b--\n",
    b"Content-Type: multipart/digest; boundary=b\n\n--b\n\nSubject: in digest\n\nx\n--b--\n",
    b"Content-Type: message/delivery-status\n\n\n\nA: 1\n\n\nB: 2\nnot a header\n\n",
    b"Content-Type: message/rfc822\n\nSubject: inner\n\n",
    b"Content-Type: multipart/report; boundary=\"x y\"\n\n--x y   \nContent-Type: message/rfc822"
    b"\n\nContent-Type: multipart/mixed; boundary=z\n\n--z\n\na\n--x y--\n",
]


@pytest.mark.skipif(not (CORPUS / "emails").is_dir(), reason="shared corpus not present")
def test_corpus_trees_equal():
    files = sorted((CORPUS / "emails").glob("*.eml"))
    declined = sum(_same(f.read_bytes()) for f in files)
    assert declined <= len(files) // 50  # the twin takes (almost) every real bounce


@pytest.mark.parametrize("raw", SIM + HOSTILE)
def test_sim_and_hostile_trees_equal(raw):
    _same(raw)
    _same(raw.replace(b"\r\n", b"\n"))
    _same(raw.replace(b"\n", b"\r\n"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SIM + HOSTILE), st.lists(st.tuples(
    st.integers(0, 4000), st.sampled_from([b"\n", b"\r", b"\r\n", b"--", b"-", b" ", b":", b"\n\n",
                                           b"--B\n", b"From ", b"\x00", b"\xff", b"=?"])),
    max_size=10))
def test_mutated_trees_equal(seed, edits):
    raw = bytearray(seed)
    for pos, data in edits:
        pos = pos % (len(raw) + 1)
        raw[pos:pos] = data
    _same(bytes(raw))
