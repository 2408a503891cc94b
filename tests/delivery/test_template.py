"""Template rendering: placeholders, header injection refused, RFC 2047, MIME, SMTPUTF8."""

from __future__ import annotations

import email
import email.policy

import pytest

from fastmta.delivery import HeaderInjectionError, Template, TemplateError, encode_header_value

TPL = (b"From: Shop <news@shop.example>\n"
       b"To: {{first}} {{last}} <{{email}}>\n"
       b"Subject: Hello {{first}}, your {{city}} offer\n"
       b"List-Unsubscribe: <mailto:u@shop.example?subject={{email}}>\n\n"
       b"Dear {{first}},\nfrom {{ city }}.\n")


def parse(raw: bytes):
    return email.message_from_bytes(raw, policy=email.policy.default)


def test_render_ascii():
    t = Template(TPL)
    assert t.fields == ["city", "first", "last"]
    raw = t.render({"email": "a@b.example", "first": "Ann", "last": "Lee", "city": "Oslo"},
                   message_id="<1.2@shop.example>", date_s=1_800_000_000)
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")
    m = parse(raw)
    assert m["To"] == "Ann Lee <a@b.example>" and m["Subject"] == "Hello Ann, your Oslo offer"
    assert m["Message-ID"] == "<1.2@shop.example>" and m["Date"].datetime.year == 2027
    assert m.get_content() == "Dear Ann,\r\nfrom Oslo.\r\n"


@pytest.mark.parametrize("evil", [
    "Ann\r\nBcc: victim@example.com", "Ann\nBcc: v@example.com", "Ann\rX: y",
    "Ann\x00", "Ann\x0bx", "Ann\u2028Bcc: v@example.com", "Ann\u0085x", "Ann\x7f",
])
def test_header_injection_refused(evil):
    t = Template(TPL)
    assert t.check_fields({"first": evil, "last": "x", "city": "y"}) == "first"
    with pytest.raises(HeaderInjectionError, match="first"):
        t.render({"email": "a@b.example", "first": evil, "last": "x", "city": "y"})


def test_body_only_field_may_hold_newlines_normalised():
    t = Template(b"From: a@b.example\nSubject: x\n\n{{text}}\n")
    assert t.check_fields({"text": "line1\nline2\r\n.line3"}) is None
    raw = t.render({"text": "line1\nline2\rline3"})
    assert raw.endswith(b"\r\n\r\nline1\r\nline2\r\nline3\r\n")


def test_multipart_boundary_in_value_refused():
    t = Template(b'From: a@b.example\nContent-Type: multipart/alternative; boundary="BB"\n\n'
                 b"--BB\nContent-Type: text/plain\n\nHi {{first}}\n--BB--\n")
    with pytest.raises(HeaderInjectionError):
        t.render({"first": "x\r\n--BB\r\nContent-Type: text/html\r\n\r\n<evil>"})


def test_non_ascii_headers_rfc2047_and_utf8_body():
    t = Template(TPL)
    f = {"email": "a@b.example", "first": "J\u00f6rg", "last": "M\u00fcller-\u6771\u4eac",
         "city": "K\u00f6ln " * 20}
    raw = t.render(f)
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()
    assert all(len(line) <= 998 for line in head.split(b"\r\n"))
    m = parse(raw)
    assert m["To"].addresses[0].display_name == "J\u00f6rg M\u00fcller-\u6771\u4eac"
    assert m["To"].addresses[0].addr_spec == "a@b.example"
    assert m["Subject"] == f"Hello J\u00f6rg, your {f['city']} offer"
    assert m["Content-Type"].content_type == "text/plain" and m["Content-Type"].params["charset"] == "utf-8"
    assert "J\u00f6rg" in m.get_content()


def test_utf8_address_needs_smtputf8_and_stays_raw():
    v, utf8 = encode_header_value('"J\u00f6rg" <j\u00f6rg@b.example>', address=True)
    assert utf8 and "<j\u00f6rg@b.example>" in v and v.startswith("=?UTF-8?B?")
    assert Template("From: N <n\u00f6@shop.example>\n\nx\n".encode()).smtputf8


def test_quoted_printable_body_encodes_values():
    t = Template(b"From: a@b.example\nContent-Type: text/plain; charset=utf-8\n"
                 b"Content-Transfer-Encoding: quoted-printable\n\nHi {{first}}=21\n")
    m = parse(t.render({"first": "J\u00f6rg"}))
    assert m.get_content() == "Hi J\u00f6rg!\r\n"


@pytest.mark.parametrize("raw,msg", [
    (b"Subject: x\n\nbody", "no From"),
    (b"not a header line\n\nbody", "RFC 5322 headers"),
    (b"From: a@b.example\nSubject: \xff\xfe\n\nx", "not UTF-8"),
])
def test_bad_templates(raw, msg):
    with pytest.raises(TemplateError, match=msg):
        Template(raw)
