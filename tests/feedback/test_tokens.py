"""Signed VERP tokens: round trip, and every kind of tampering is unmatched."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from fastmta.feedback import tokens as tk
from fastmta.feedback.apply import match
from fastmta.feedback.parse import Report

KEY = os.urandom(32)


def test_round_trip_and_shape():
    for did, rid in ((1, 0), (7, 123456), (2**32 - 1, 2**32 - 1)):
        t = tk.make(KEY, did, rid)
        assert len(t) == tk.TOKEN_LEN and t == t.lower() and t.isalnum()
        assert tk.verify(KEY, t) == (did, rid)
    t = tk.Tokens(KEY, "Bounces.Example.com", unsubscribe_url="https://u.example.com")
    tok = t.token(3, 4)
    assert t.return_path(tok) == f"b-{tok}@bounces.example.com"
    assert len(t.return_path(tok)) < 50
    assert t.message_id(tok) == f"<m-{tok}@bounces.example.com>"
    lu, post = t.unsubscribe_headers(tok)
    assert lu == (f"List-Unsubscribe: <https://u.example.com/u/{tok}>, "
                  f"<mailto:u-{tok}@bounces.example.com>")
    assert post == "List-Unsubscribe-Post: List-Unsubscribe=One-Click"
    assert t.local_token(f"b-{tok}@BOUNCES.example.com") == ("b", tok)


def test_tampered_tokens_are_unmatched():
    t = tk.make(KEY, 10, 20)
    assert tk.verify(os.urandom(32), t) is None  # another key (forged)
    assert tk.verify(KEY, t[:-1]) is None  # truncated
    assert tk.verify(KEY, t + "a") is None
    assert tk.verify(KEY, t.upper()) is None  # case-mangled
    assert tk.verify(KEY, t[0].upper() + t[1:]) is None
    for i in range(len(t)):  # every single-character edit
        for c in "a7":
            if t[i] != c:
                assert tk.verify(KEY, t[:i] + c + t[i + 1:]) is None
    # another delivery's token cannot be made by editing the ids
    other = tk.make(KEY, 11, 20)
    assert tk.verify(KEY, other[:13] + t[13:]) is None
    for bad in ("", "b-", "!" * 21, "=" * 21, None, 5, "a" * 21):
        assert tk.verify(KEY, bad) is None  # type: ignore[arg-type]


def test_replayed_token_for_another_delivery_conflicts():
    a, b = tk.make(KEY, 1, 5), tk.make(KEY, 2, 5)
    tokens = tk.Tokens(KEY, "bounces.example.com")
    rep = Report("dsn", [], None, None, False, tokens=[f"m-{b}"])
    m = match(rep, KEY, [tokens.return_path(a)], tokens)
    assert m.target is None and "conflicting" in m.why
    m = match(Report("dsn", [], None, None, False, tokens=[f"m-{a}"]), KEY,
              [tokens.return_path(a)], tokens)
    assert m.target == (1, 5)
    forged = Report("dsn", [], None, None, False, tokens=["m-" + "a" * 21])
    assert match(forged, KEY, [], tokens).why.startswith("invalid token")


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=0, max_size=40))
def test_random_strings_never_verify_and_never_raise(s):
    assert tk.verify(KEY, s) is None or tk.make(KEY, *tk.verify(KEY, s)) == s
    tk.candidates(s)
