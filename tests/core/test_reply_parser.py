"""Reply parser: framing, enhanced codes, command pairing, limits (both implementations)."""

from __future__ import annotations

import pytest

from fastmta.errors import RemoteProtocolError


def test_single_line_with_enhanced_code(impl):
    p = impl.ReplyParser()
    p.expect("rcpt")
    (r,) = p.feed(b"550 5.1.1 <a@b.example>: Recipient address rejected\r\n")
    assert (r.code, r.enhanced, r.command) == (550, "5.1.1", "rcpt")
    assert r.lines == ("<a@b.example>: Recipient address rejected",)


def test_multiline_pairs_pipelined_commands_in_order(impl):
    p = impl.ReplyParser()
    for cmd in ("mail", "rcpt", "data"):
        p.expect(cmd)
    out = p.feed(b"250 2.1.0 Ok\r\n452-4.5.3 Too many\r\n452 4.5.3 recipients\r\n354 go\r\n")
    assert [(r.code, r.command) for r in out] == [(250, "mail"), (452, "rcpt"), (354, "data")]
    assert out[1].lines == ("Too many", "recipients")
    assert out[1].raw == "452-4.5.3 Too many\r\n452 4.5.3 recipients"


def test_byte_by_byte_equals_whole(impl):
    data = b"220-mx.example ESMTP\n220 ready\r\n250-mx\r\n250-PIPELINING\r\n250 SIZE 10\r\n"
    whole = impl.ReplyParser().feed(data)
    p = impl.ReplyParser()
    split = [r for i in range(len(data)) for r in p.feed(data[i : i + 1])]
    assert whole == split and len(whole) == 2


def test_code_change_inside_reply_is_an_error(impl):
    with pytest.raises(RemoteProtocolError):
        impl.ReplyParser().feed(b"250-a\r\n251 b\r\n")


def test_overlong_line_without_newline_is_bounded(impl):
    p = impl.ReplyParser(max_line=1024)
    with pytest.raises(RemoteProtocolError):
        for _ in range(100):
            p.feed(b"2" * 100)
