"""RFC 8058: both list headers are rendered per recipient and covered by the DKIM
signature (verified with dkimpy, no DNS)."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "dkim"))

from dkim_helpers import rsa_pem, tags, verify  # noqa: E402

from fastmta import dkim  # noqa: E402
from fastmta.delivery import Template  # noqa: E402
from fastmta.feedback.tokens import Tokens  # noqa: E402


def test_list_unsubscribe_headers_are_signed():
    tok = Tokens(os.urandom(32), "bounces.shop.example.com", unsubscribe_url="https://u.shop.example.com")
    tpl = Template(b"From: Shop <news@shop.example.com>\nTo: {{email}}\nSubject: Sale\n\nHi\n")
    t = tok.token(4, 2)
    msg = tpl.render({"email": "alice@dest.example"}, message_id=tok.message_id(t),
                     extra_headers=tok.unsubscribe_headers(t))
    head = msg.split(b"\r\n\r\n", 1)[0]
    assert f"List-Unsubscribe: <https://u.shop.example.com/u/{t}>".encode() in head
    assert b"List-Unsubscribe-Post: List-Unsubscribe=One-Click" in head
    assert f"Message-ID: <m-{t}@bounces.shop.example.com>".encode() in head
    signer = dkim.Signer("shop.example.com", "s1", rsa_pem(2048), "rsa-sha256")
    sig = signer.sign(msg)
    signed = [h.strip().lower() for h in tags(sig)[b"h"].split(b":")]
    assert b"list-unsubscribe" in signed and b"list-unsubscribe-post" in signed
    assert verify(sig + msg, signer)
