"""dkimpy verifies fastmta's signatures: every canonicalisation, key type and size,
header sets, and the awkward messages (folded, non-ASCII, trailing blank lines,
dot-leading lines, long lines, empty bodies)."""

from __future__ import annotations

import pytest
from dkim_helpers import tags, verify

import dkim as dkimpy
from fastmta import dkim

CANONS = ["relaxed/relaxed", "relaxed/simple", "simple/relaxed", "simple/simple"]
ALGS = ["rsa-sha256", "ed25519-sha256"]

BASE_HEADERS = (
    b"From: Example Shop <news@shop.example.com>\r\n"
    b"To: Jane Doe <jane@example.net>\r\n"
    b"Subject: Autumn sale\r\n"
    b"Date: Fri, 27 Nov 2026 09:00:00 +0000\r\n"
    b"Message-ID: <1@shop.example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
)

MESSAGES = {
    "plain": BASE_HEADERS + b"\r\nHello Jane,\r\nour sale starts today.\r\n",
    "folded_headers": (
        b"From: Example Shop\r\n <news@shop.example.com>\r\n"
        b"To: a@example.net,\r\n\tb@example.net,  \r\n   c@example.net\r\n"
        b"Subject:   many    spaces\t\tand tabs   \r\n"
        b"List-Unsubscribe: <mailto:u@shop.example.com>,\r\n"
        b" <https://shop.example.com/u/1>\r\n"
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        b"\r\nbody\r\n"
    ),
    "non_ascii_headers": (
        "From: Bücherladen <news@shop.example.com>\r\n"
        "To: Zoë <zoe@example.net>\r\n"
        "Subject: Größte Auswahl – 50 % günstiger 🎉\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\nGrüße aus Köln\r\n"
    ).encode(),
    "trailing_blank_lines": BASE_HEADERS + b"\r\nline\r\n\r\n\r\n\r\n",
    "trailing_whitespace_lines": BASE_HEADERS + b"\r\nline  \r\n \t \r\n  \r\n",
    "dot_leading_lines": BASE_HEADERS + b"\r\n.\r\n..two\r\n.leading dot\r\n. \r\nend\r\n",
    "long_lines": BASE_HEADERS + b"\r\n" + b"x" * 990 + b"\r\n" + (b"word " * 400) + b"\r\n",
    "empty_body": BASE_HEADERS + b"\r\n",
    "no_body_no_blank_line": BASE_HEADERS,
    "body_only_blank_lines": BASE_HEADERS + b"\r\n\r\n\r\n",
    "whitespace_inside_lines": BASE_HEADERS + b"\r\na  b\t\tc \t d\r\n\tindented\r\n",
    "binary_8bit": BASE_HEADERS + b"\r\n\xff\xfe\x00\x01 bytes\r\n",
    "bare_cr_in_body": BASE_HEADERS + b"\r\nbare\rcr\r\n",
    "repeated_headers": (
        b"From: a@shop.example.com\r\nTo: x@example.net\r\nTo: y@example.net\r\n"
        b"Cc: z@example.net\r\nReferences: <1@x>\r\nReferences: <2@x>\r\n\r\nbody\r\n"
    ),
    "empty_header_value": BASE_HEADERS.replace(b"Subject: Autumn sale", b"Subject:")
    + b"\r\nbody\r\n",
    "uppercase_names": b"FROM: a@shop.example.com\r\nSUBJECT: Hi\r\nto: b@example.net\r\n\r\nx\r\n",
}


@pytest.mark.parametrize("name", sorted(MESSAGES))
@pytest.mark.parametrize("canon", CANONS)
@pytest.mark.parametrize("alg", ALGS)
def test_dkimpy_verifies(keys, name, canon, alg):
    msg = MESSAGES[name]
    signer = dkim.Signer("shop.example.com", "s1", keys.pem(alg), alg, canonicalization=canon)
    sig = signer.sign(msg)
    assert sig.startswith(b"DKIM-Signature: ") and sig.endswith(b"\r\n")
    assert verify(sig + msg, signer)
    # A body change breaks it (the verdict is not vacuous).
    has_body = b"\r\n\r\n" in msg or msg.startswith(b"\r\n")
    tampered = msg + (b"tampered\r\n" if has_body else b"\r\ntampered\r\n")
    assert not verify(sig + tampered, signer)


@pytest.mark.parametrize("bits", [1024, 2048, 3072, 4096])
def test_rsa_key_sizes(keys, bits):
    signer = dkim.Signer("shop.example.com", "s1", keys.rsa(bits))
    assert signer.key_bits == bits
    msg = MESSAGES["plain"]
    assert verify(signer.sign(msg) + msg, signer)


def test_folding_lines_are_short_and_b_is_last(keys):
    signer = dkim.Signer("shop.example.com", "s1", keys.rsa(4096))
    sig = signer.sign(MESSAGES["folded_headers"])
    lines = sig[:-2].split(b"\r\n")
    assert all(len(line) <= 78 for line in lines), [len(line) for line in lines]
    assert all(line.startswith(b" ") for line in lines[1:])
    assert lines[-1].startswith(b" ") and b" b=" in sig
    t = tags(sig)
    assert list(t)[-1] == b"b"
    assert b"l" not in t  # never l=
    assert t[b"v"] == b"1" and t[b"a"] == b"rsa-sha256" and t[b"c"] == b"relaxed/relaxed"
    assert t[b"d"] == b"shop.example.com" and t[b"s"] == b"s1"


def test_default_signed_headers_when_present(keys):
    msg = MESSAGES["folded_headers"]
    signer = dkim.Signer("shop.example.com", "s1", keys.rsa())
    h = tags(signer.sign(msg))[b"h"].split(b":")
    # present ones signed (To twice? no: one To field), From oversigned, absent ones not
    assert h.count(b"from") == 2
    assert b"list-unsubscribe" in h and b"list-unsubscribe-post" in h
    assert b"to" in h and b"subject" in h
    assert b"date" not in h and b"reply-to" not in h and b"feedback-id" not in h


def test_every_occurrence_is_signed(keys):
    msg = MESSAGES["repeated_headers"]
    signer = dkim.Signer("shop.example.com", "s1", keys.rsa(), oversign_from=False)
    h = tags(signer.sign(msg))[b"h"].split(b":")
    assert h.count(b"to") == 2 and h.count(b"references") == 2 and h.count(b"from") == 1


def test_custom_header_set(keys):
    msg = b"From: a@shop.example.com\r\nX-Campaign: 42\r\nSubject: s\r\n\r\nbody\r\n"
    signer = dkim.Signer(
        "shop.example.com", "s1", keys.rsa(), headers=["X-Campaign"], oversign_from=False
    )
    sig = signer.sign(msg)
    assert tags(sig)[b"h"] == b"from:x-campaign"  # From is always signed
    assert verify(sig + msg, signer)
    # Subject is not signed: changing it keeps the signature valid; X-Campaign is.
    assert verify(sig + msg.replace(b"Subject: s", b"Subject: changed"), signer)
    assert not verify(sig + msg.replace(b"X-Campaign: 42", b"X-Campaign: 43"), signer)


def test_unsigned_header_change_keeps_signature(keys):
    msg = BASE_HEADERS + b"X-Mailer: a\r\n\r\nbody\r\n"
    signer = dkim.Signer("shop.example.com", "s1", keys.rsa())
    sig = signer.sign(msg)
    assert verify(sig + msg.replace(b"X-Mailer: a", b"X-Mailer: b"), signer)
    assert not verify(sig + msg.replace(b"Subject: Autumn", b"Subject: Winter"), signer)


def test_oversigning_blocks_added_fields(keys):
    msg = MESSAGES["plain"]
    plain = dkim.Signer("shop.example.com", "s1", keys.rsa(), oversign_from=False)
    over = dkim.Signer("shop.example.com", "s1", keys.rsa(), oversign=["Subject"])
    # An attacker prepends a second Subject.  Verifiers pick fields bottom-up, so
    # without oversigning the original Subject is still the one checked.
    forged = b"Subject: You won!\r\n"
    assert verify(plain.sign(msg) + forged + msg, plain)
    assert not verify(over.sign(msg) + forged + msg, over)
    assert tags(over.sign(msg))[b"h"].split(b":").count(b"subject") == 2


def test_chained_rsa_and_ed25519(keys):
    msg = MESSAGES["folded_headers"]
    rsa_signer = dkim.Signer("shop.example.com", "rsa1", keys.rsa())
    ed_signer = dkim.Signer("shop.example.com", "ed1", keys.ed25519(), "ed25519-sha256")
    headers = rsa_signer.sign(msg) + ed_signer.sign(msg)
    signed = headers + msg
    assert verify(signed, rsa_signer, ed_signer, idx=0)
    assert verify(signed, rsa_signer, ed_signer, idx=1)


def test_message_without_final_crlf_verifies_as_transmitted(keys):
    """SMTP DATA ends the content with CRLF; the signature covers what is sent."""
    msg = BASE_HEADERS + b"\r\nlast line without break  "
    for canon in CANONS:
        signer = dkim.Signer("shop.example.com", "s1", keys.rsa(), canonicalization=canon)
        assert verify(signer.sign(msg) + msg + b"\r\n", signer), canon


def test_bare_lf_message_signs_like_crlf(keys):
    crlf = MESSAGES["folded_headers"]
    lf = crlf.replace(b"\r\n", b"\n")
    for canon in CANONS:
        signer = dkim.Signer("shop.example.com", "s1", keys.rsa(), canonicalization=canon)
        assert signer.sign(lf, timestamp=1) == signer.sign(crlf, timestamp=1)
        assert verify(signer.sign(lf) + crlf, signer)


def test_timestamp_and_expiration(keys):
    signer = dkim.Signer(
        "shop.example.com", "s1", keys.rsa(), expiration_s=7 * 86400, clock=lambda: 1.7e9
    )
    t = tags(signer.sign(MESSAGES["plain"]))
    assert t[b"t"] == b"1700000000" and t[b"x"] == b"%d" % (1_700_000_000 + 7 * 86400)
    t2 = tags(signer.sign(MESSAGES["plain"], timestamp=1234))
    assert t2[b"t"] == b"1234"


def test_identity_tag(keys):
    signer = dkim.Signer(
        "shop.example.com", "s1", keys.rsa(), identity="news@mail.shop.example.com"
    )
    sig = signer.sign(MESSAGES["plain"])
    assert tags(sig)[b"i"] == b"news@mail.shop.example.com"
    assert verify(sig + MESSAGES["plain"], signer)
    with pytest.raises(dkim.DkimError, match="identity"):
        dkim.Signer("shop.example.com", "s1", keys.rsa(), identity="x@other.example")
    for bad in ("a;b@shop.example.com", "a\r\nX: y@shop.example.com", "a b@shop.example.com"):
        with pytest.raises(dkim.DkimError, match="invalid local part"):
            dkim.Signer("shop.example.com", "s1", keys.rsa(), identity=bad)


def test_message_without_from_is_refused(keys):
    signer = dkim.Signer("shop.example.com", "s1", keys.rsa())
    with pytest.raises(dkim.DkimMessageError, match="no From"):
        signer.sign(b"To: a@example.net\r\n\r\nbody\r\n")


def test_malformed_header_line_is_refused(keys):
    signer = dkim.Signer("shop.example.com", "s1", keys.rsa())
    with pytest.raises(dkim.DkimMessageError, match="header line 2"):
        signer.sign(b"From: a@example.net\r\nthis is not a header\r\n\r\nbody\r\n")
    with pytest.raises(dkim.DkimMessageError, match="continuation"):
        signer.sign(b" From: a@example.net\r\n\r\nbody\r\n")


@pytest.mark.parametrize("bad", ["Return-Path", "Received", "DKIM-Signature", "Bcc"])
def test_headers_that_change_in_transit_cannot_be_signed(keys, bad):
    with pytest.raises(dkim.DkimError, match="must not be signed"):
        dkim.Signer("shop.example.com", "s1", keys.rsa(), headers=["From", bad])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"domain": "bad domain"}, "signing domain"),
        ({"selector": "bad selector"}, "selector"),
        ({"algorithm": "rsa-sha1"}, "algorithm"),
        ({"canonicalization": "relaxed/loose"}, "canonicalization"),
        ({"headers": ["From", "Bad Name"]}, "header name"),
        # a trailing newline must not slip through "$" (header injection)
        ({"domain": "shop.example.com\nX: y"}, "signing domain"),
        ({"selector": "s1\n"}, "selector"),
        ({"headers": ["From", "Subject\n"]}, "header name"),
        ({"oversign": ["Subject\n"]}, "oversign"),
    ],
)
def test_bad_parameters(keys, kwargs, match):
    args = {"domain": "shop.example.com", "selector": "s1", "private_key_pem": keys.rsa()}
    args.update(kwargs)
    with pytest.raises(dkim.DkimError, match=match):
        dkim.Signer(**args)


def test_idna_domain_is_signed_as_a_label(keys):
    signer = dkim.Signer("bücher.example", "s1", keys.rsa())
    assert signer.domain == "xn--bcher-kva.example"
    msg = b"From: a@xn--bcher-kva.example\r\n\r\nx\r\n"
    assert verify(signer.sign(msg) + msg, signer)


def test_dkimpy_own_signature_checks_out_with_our_dns_record(keys):
    """Our published record works for dkimpy's own signatures too (sanity of the test
    harness: a broken dnsfunc would make every negative test pass vacuously)."""
    signer = dkim.Signer("shop.example.com", "s1", keys.rsa())
    msg = MESSAGES["plain"]
    sig = dkimpy.sign(msg, b"s1", b"shop.example.com", keys.rsa(), include_headers=[b"from"])
    assert verify(sig + msg, signer)
