"""Analysis and injection: every exclusion reason with its line number, warnings."""

from __future__ import annotations

import pytest

from fastmta.delivery import (
    InputError,
    Template,
    TemplateError,
    analyze,
    inject,
    open_recipients,
    reader_from_text,
)
from fastmta.delivery.addresses import check_address
from fastmta.delivery.injection import valid_domains
from fastmta.records import Status
from fastmta.spool import Spool

TPL = (b"From: Shop <news@shop.example>\nTo: {{first}} <{{email}}>\nSubject: Hi {{first}}\n"
       b"Date: Thu, 1 Jan 2026 00:00:00 +0000\nMessage-ID: <x@shop.example>\n"
       b"List-Unsubscribe: <mailto:u@shop.example>\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\n"
       b"\nHello {{first}}\n")

CSV = (
    "email,first\n"                     # line 1
    "ok1@a.example,A\n"                 # 2
    ",B\n"                              # 3 address_not_specified
    "not-an-address,C\n"                # 4 unqualified_address
    "OK1@A.EXAMPLE,D\n"                 # 5 different local case: not a double
    "ok1@A.Example,E\n"                 # 6 double (domain case-insensitive)
    "quar@a.example,F\n"                # 7 address_in_quarantine
    "x@deny.example,G\n"                # 8 denylisted_address (domain)
    "inj@a.example,\"G\r\nBcc: v@a.example\"\n"  # 9-10 invalid_field
    "ok2@b.example,H\n"                 # 11
)
EXPECTED = [
    (3, "address_not_specified"), (4, "unqualified_address"), (6, "double"),
    (7, "address_in_quarantine"), (8, "denylisted_address"), (10, "invalid_field"),
]


def _quarantine(addr):
    if addr.lower() == "quar@a.example":
        return "address_in_quarantine"
    if addr.endswith("@deny.example"):
        return "denylisted_address"
    return None


def test_analyze_every_reason_with_line_numbers():
    exc = []
    a = analyze(reader_from_text(CSV), Template(TPL), quarantine=_quarantine, on_excluded=exc.append)
    assert [(e.line, e.reason) for e in exc] == EXPECTED
    assert a.recipients == 9 and a.to_deliver == 3
    assert a.excluded == {"address_not_specified": 1, "unqualified_address": 1, "double": 1,
                          "address_in_quarantine": 1, "denylisted_address": 1, "invalid_field": 1}
    assert a.warnings == []  # the template has everything


def test_inject_uses_the_spool_quarantine(tmp_path):
    sp = Spool.open(str(tmp_path / "spool"))
    try:
        sp.quarantine_add("quar@a.example")
        sp.quarantine_add("@deny.example", state="denylisted")
        exc = []
        a = inject(sp, reader_from_text(CSV), TPL, on_excluded=exc.append, shards=4)
        assert [(e.line, e.reason) for e in exc] == EXPECTED
        assert a.delivery_id == 1 and a.to_deliver == 3
        recs = list(sp.recipients(1))
        assert [r.line for _, r in recs] == [2, 3, 4, 5, 6, 7, 8, 10, 11]
        pending = [r for _, r in recs if r.status == Status.PENDING]
        assert [r.email for r in pending] == ["ok1@a.example", "OK1@a.example", "ok2@b.example"]
        assert pending[0].fields == ("A",)
        assert sp.delivery(1).state == "active" and sp.delivery(1).fields == ["first"]
        assert sp.kpis(1)["excluded/invalid_field"] == 1
    finally:
        sp.close()


def test_jsonl_malformed_lines_and_missing_fields(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text('{"email": "a@x.example", "first": "A"}\n\nnot json\n[1,2]\n'
                 '{"email": "b@x.example"}\n{"email": null, "first": "Z"}\n'
                 '{"email": "c@x.example", "first": 42}\n')
    exc = []
    with open_recipients(p) as r:
        a = analyze(r, Template(TPL), on_excluded=exc.append)
    assert [(e.line, e.reason) for e in exc] == [(3, "malformed_line"), (4, "malformed_line"),
                                                 (6, "address_not_specified")]
    assert a.to_deliver == 3
    assert any("'first' missing on 1" in w for w in a.warnings)


def test_warnings():
    t = Template(b"From: Shop <news@shop.example>\nTo: {{email}}\n\n" + b"x" * 200_000 + b"\n")
    a = analyze(reader_from_text("email\na@x.example\n"), t, mail_from="bounce@other.example",
                dkim_has_key=lambda d: False)
    text = "\n".join(a.warnings)
    for needle in ("List-Unsubscribe header", "List-Unsubscribe-Post", "no DKIM key for the From domain shop.example",
                   "above 100000", "no Date", "no Message-ID", "no Subject", "not aligned"):
        assert needle in text, needle


def test_unknown_template_field_is_an_error():
    t = Template(b"From: a@shop.example\nSubject: {{nope}}\n\nx\n")
    with pytest.raises(TemplateError, match="nope"):
        analyze(reader_from_text("email,first\na@x.example,A\n"), t)


def test_csv_without_email_column():
    with pytest.raises(InputError, match="no email column"):
        reader_from_text("name,first\nx,y\n")


def test_semicolon_csv_and_validity_limit(tmp_path):
    a = analyze(reader_from_text("Email;first\na@x.example;A\n"), Template(TPL))
    assert a.to_deliver == 1
    sp = Spool.open(str(tmp_path / "spool"))
    try:
        with pytest.raises(Exception, match="3.5 days"):
            inject(sp, reader_from_text(CSV), TPL, validity_s=4 * 86400)
    finally:
        sp.close()


def test_parallel_reader_process_gives_the_same_result(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text(CSV)
    results = []
    for parallel in (False, True):
        sp = Spool.open(str(tmp_path / f"spool{parallel}"))
        try:
            sp.quarantine_add("quar@a.example")
            sp.quarantine_add("@deny.example", state="denylisted")
            exc = []
            with open_recipients(p) as r:
                a = inject(sp, r, TPL, on_excluded=exc.append, parallel=parallel)
            recs = [(r.email, r.status, r.reason, r.line, r.shard, r.fields)
                    for _, r in sp.recipients(a.delivery_id)]
            results.append((a.to_deliver, a.excluded, [(e.line, e.reason, e.detail) for e in exc], recs))
        finally:
            sp.close()
    assert results[0] == results[1]
    assert [(x[0], x[1]) for x in results[1][2]] == EXPECTED


def test_injected_items_render_as_the_engine_will(tmp_path):
    import email
    import email.policy

    sp = Spool.open(str(tmp_path / "spool"))
    try:
        csv_text = "email,first\nann@a.example,Ann\nj\u00f6rg@b.example,J\u00f6rg\n"
        a = inject(sp, reader_from_text(csv_text), TPL, shards=2)
        tpl = Template(sp.template(a.delivery_id))
        items = sp.lease([0, 1], "engine", 10)
        assert len(items) == 2
        for it in items:
            raw = tpl.render(it.fields)  # UTF-8 headers when the address needs SMTPUTF8
            msg = email.message_from_string(raw.decode(), policy=email.policy.default)
            assert msg["To"].addresses[0].addr_spec == it.email
            assert msg["Subject"] == f"Hi {it.fields['first']}"
            assert it.smtputf8 == (not it.email.isascii())
    finally:
        sp.close()


MULTIPART = (b"From: Shop <news@shop.example>\nTo: {{first}} <{{email}}>\nSubject: Hi {{first}}\n"
             b"MIME-Version: 1.0\nContent-Type: multipart/alternative; boundary=\"BND\"\n\n"
             b"--BND\nContent-Type: text/plain\n\nHello {{last}}\n--BND--\n")


def test_injection_of_a_large_mixed_csv_agrees_with_the_analysis(tmp_path):
    """Over several batches of the CSV fast path: simple rows, first sightings of
    domains, IDN and upper-case domains, bad addresses, doubles, blank lines, quoted
    multi-line values, header and body field checks: the injection excludes exactly
    what ``analyze`` (the per-row reference path) excludes, line by line."""
    lines = ["email,first,last"]
    for i in range(12_000):
        k = i % 17
        dom = f"d{i % 300}.example"
        if k == 0:
            lines.append(f"user{i}@{dom.upper()},F{i},L")
        elif k == 1:
            lines.append(f"user{i % 50}@{dom},F,L")  # doubles
        elif k == 2:
            lines.append(f"bad{i}@@{dom},F,L")
        elif k == 3:
            lines.append("")
        elif k == 4:
            lines.append(f'user{i}@{dom},"two\nlines",L')
        elif k == 5:
            lines.append(f"user{i}@b\u00fccher{i % 3}.example,J\u00f6rg,L")
        elif k == 6:
            lines.append(f"user{i}@{dom},F,has --BND inside")
        elif k == 7:
            lines.append(f'user{i}@{dom},"F\rX",L')
        elif k == 8:
            lines.append(f"user{i}@{dom},F")
        else:
            lines.append(f"u.{i}+x@{dom},F{i},L{i}")
    p = tmp_path / "r.csv"
    p.write_text("\n".join(lines) + "\n", newline="")
    with open_recipients(p) as r:  # the MX routing pre-scan: domains of valid addresses
        want = {check_address(e)[0].rpartition("@")[2] for _, e, _, err in r.rows([])
                if not err and not check_address(e)[2]}
    with open_recipients(p) as r:
        assert valid_domains(r) == want and len(want) == 303
    exc_a, exc_i = [], []
    with open_recipients(p) as r:
        a = analyze(r, Template(MULTIPART), on_excluded=exc_a.append)
    sp = Spool.open(str(tmp_path / "spool"))
    try:
        with open_recipients(p) as r:
            b = inject(sp, r, MULTIPART, on_excluded=exc_i.append, shards=8)
        assert [(e.line, e.reason, e.detail) for e in exc_i] == [
            (e.line, e.reason, e.detail) for e in exc_a]
        assert (b.recipients, b.to_deliver, b.excluded, b.domains) == (
            a.recipients, a.to_deliver, a.excluded, a.domains)
        pending = [r for _, r in sp.recipients(b.delivery_id) if r.status == Status.PENDING]
        assert len(pending) == a.to_deliver
        assert {r.email.rpartition("@")[2] for r in pending} >= {
            "d0.example", "bücher0.example".encode("idna").decode()}
        assert all(r.email == r.email.rpartition("@")[0] + "@" + r.email.rpartition("@")[2].lower()
                   for r in pending)
    finally:
        sp.close()


def test_a_byte_that_is_not_utf8_inside_a_quoted_value_names_its_line(tmp_path):
    p = tmp_path / "r.csv"
    p.write_bytes(b"email,first\na@x.example,A\nb@x.example,\"one\ntwo \xe9\"\n")
    sp = Spool.open(str(tmp_path / "spool"))
    try:
        with open_recipients(p) as r, pytest.raises(InputError, match="line 4 is not UTF-8"):
            inject(sp, r, TPL)
    finally:
        sp.close()
