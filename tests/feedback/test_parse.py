"""``fastmta inbound parse``: RFC 3464, ARF, auto-replies, non-standard bounces, bounds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastmta.feedback.mime import Limits
from fastmta.feedback.parse import parse
from fastmta.sim.feedback import build_arf, build_autoreply, build_dsn

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
CORPUS = Path(os.environ.get("FASTMTA_BOUNCE_CORPUS",
                             Path(__file__).resolve().parents[3] / "shared/corpora/bounces"))
ORIG = (b"From: News <news@sender.example>\r\nTo: alice@dest.example\r\nSubject: Hi\r\n"
        b"Message-ID: <m-aaaaaaaaaaaaaaaaaaaaa@bounces.example>\r\n\r\nbody\r\n")

MULTI = b"""From: MAILER-DAEMON@mx.example.net
To: b-xyz@bounces.example
Subject: Delivery Status Notification
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain

Some failed.

--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net

Final-Recipient: rfc822; one@example.net
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550 5.1.1 <one@example.net>: Recipient address rejected: User unknown

Final-Recipient: rfc822;two@example.net
Original-Recipient: rfc822;two@example.net
Action: delayed
Status: 4.2.2
Diagnostic-Code: smtp; 452 4.2.2 Mailbox full

Final-Recipient: RFC822; <three@example.net>
Action: delivered
Status: 2.0.0

--B--
"""


def test_rfc3464_every_block():
    r = parse(MULTI)
    assert r.kind == "dsn"
    got = [(x.email, x.status, x.action, x.type) for x in r.recipients]
    assert got == [("one@example.net", "5.1.1", "failed", "hard"),
                   ("two@example.net", "4.2.2", "delayed", "soft"),
                   ("three@example.net", "2.0.0", "delivered", "ignored")]
    assert r.recipients[0].bounce_class == 10 and r.recipients[0].reason == "user_unknown"
    assert r.recipients[1].reason == "mailbox_full"


@pytest.mark.parametrize("style", ["rfc3464", "exim", "qmail"])
def test_styles_of_the_sim(style):
    r = parse(build_dsn("alice@dest.example", "b-x@bounces.example", ORIG, style=style))
    assert r.kind == "dsn"
    assert [x.email for x in r.recipients] == ["alice@dest.example"]
    assert r.recipients[0].type == "hard" and r.recipients[0].status.startswith("5")
    assert "m-aaaaaaaaaaaaaaaaaaaaa" in r.tokens


def test_arf_and_redacted_recipient():
    r = parse(build_arf("alice@dest.example", ORIG, redact=False))
    assert (r.kind, r.feedback_type) == ("arf", "abuse")
    assert [x.email for x in r.recipients] == ["alice@dest.example"]
    r = parse(build_arf("alice@dest.example", ORIG, feedback_type="fraud"))
    assert r.feedback_type == "fraud" and r.recipients == []  # redacted: token only
    assert "m-aaaaaaaaaaaaaaaaaaaaa" in r.tokens
    with_rcpt = build_arf("alice@dest.example", ORIG).replace(
        b"Version: 1\r\n", b"Version: 1\r\nOriginal-Rcpt-To: <bob@dest.example>\r\n")
    assert [x.email for x in parse(with_rcpt).recipients] == ["bob@dest.example"]


@pytest.mark.parametrize("subject", ["Out of Office: Hi", "Réponse automatique : Hi",
                                     "Abwesenheitsnotiz: Hi", "Respuesta automática: Hi",
                                     "自動応答: Hi"])
def test_autoreplies(subject):
    raw = build_autoreply("alice@dest.example", "b-x@bounces.example", ORIG)
    raw = raw.replace(b"Subject: Out of Office: Hi", f"Subject: {subject}".encode())
    raw = raw.replace(b"Auto-Submitted: auto-replied\r\n", b"")
    r = parse(raw)
    assert r.kind == "autoreply", subject
    assert (r.recipients[0].bounce_class, r.recipients[0].type) == (60, "ignored")


def test_rfc3834_header_and_challenge():
    raw = (b"From: alice@dest.example\r\nTo: b-x@bounces.example\r\nSubject: Re: Hi\r\n"
           b"Auto-Submitted: auto-replied\r\n\r\nI am on vacation.\r\n")
    assert parse(raw).kind == "autoreply"
    raw = (b"From: alice@dest.example\r\nTo: b-x@bounces.example\r\nSubject: Please verify\r\n"
           b"Auto-Submitted: auto-replied\r\n\r\nYour message is held. Please confirm you "
           b"are a human by replying.\r\n")
    r = parse(raw)
    assert r.kind == "autoreply" and r.recipients[0].bounce_class == 100


def test_plain_mail_is_other_with_a_reason():
    r = parse(b"From: a@b.example\r\nTo: c@d.example\r\nSubject: lunch?\r\n\r\nnoon?\r\n")
    assert r.kind == "other" and r.why


def test_bounds_big_deep_garbage():
    big = MULTI.replace(b"--B--\n", b"--B\nContent-Type: text/plain\n\n" +
                        b"x" * 80 + b"\n") + (b"y" * 79 + b"\n") * (50 * 1024 * 1024 // 80)
    assert len(big) >= 50 * 1024 * 1024
    t0 = time.process_time()
    r = parse(big)
    assert r.kind == "dsn" and r.truncated and len(r.recipients) == 3
    assert time.process_time() - t0 < 30  # bounded: the window, not the size
    deep = b"From: x@y.example\r\nSubject: deep\r\n"
    for i in range(500):
        deep += f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n'.encode()
    r = parse(deep)
    assert r.kind == "other"
    for raw in (b"", b"\x00\xff" * 1000, os.urandom(5000),
                b"Content-Type: text/plain; charset=x-unknown-42\r\n\r\n\xff\xfe",
                b"Content-Type: multipart/report; boundary=\r\n\r\n--\r\n--\r\n",
                MULTI.replace(b"Content-Type: text/plain", b"Content-Type: text/plain; charset=bogus")):
        r = parse(raw)
        json.dumps(msgspec.to_builtins(r))


SEEDS = [MULTI, build_arf("a@b.example", ORIG), build_dsn("a@b.example", "r@x.example", ORIG,
                                                          style="exim")]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 4000), st.binary(max_size=20)),
                                        max_size=8), st.binary(max_size=300))
def test_fuzz_mutations_always_give_a_result(seed, edits, tail):
    raw = bytearray(seed)
    for pos, data in edits:
        pos = pos % (len(raw) + 1)
        raw[pos:pos + len(data)] = data
    r = parse(bytes(raw) + tail, Limits(time_s=1.0))
    assert r.kind in ("dsn", "arf", "autoreply", "other")
    d = r.contract()
    json.dumps(d)
    for x in d["recipients"]:
        assert x["type"] in ("hard", "soft", "ignored")


def test_cli_contract_on_file_and_stdin(tmp_path):
    f = tmp_path / "dsn.eml"
    f.write_bytes(MULTI)
    out = subprocess.run([sys.executable, "-m", "fastmta", "inbound", "parse", "--json", str(f)],
                         capture_output=True, check=True, text=True, env=ENV).stdout
    d = json.loads(out)
    assert set(d) >= {"kind", "recipients", "feedback_type", "delivery", "matched"}
    assert d["kind"] == "dsn" and d["matched"] is False and d["delivery"] is None
    assert set(d["recipients"][0]) == {"email", "status", "action", "type", "bounce_class",
                                       "reason", "diagnostic"}
    out = subprocess.run([sys.executable, "-m", "fastmta", "inbound", "parse", "--json", "-"],
                         input=b"\x00garbage", capture_output=True, check=True, env=ENV).stdout
    assert json.loads(out)["kind"] == "other"


@pytest.mark.skipif(not (CORPUS / "labels.jsonl").exists(), reason="shared corpus absent")
def test_shared_corpus_floor():
    """Regression floor on the Sisimai corpus (benchmarks/feedback_corpus.py has the figures)."""
    out = subprocess.run([sys.executable, "benchmarks/feedback_corpus.py", "--corpus",
                          str(CORPUS), "--json", "/dev/stdout"], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2]).stdout
    d = json.loads(out[out.index("{"):])["fastmta"]
    assert d["kind_pct"] >= 95 and d["recipients_found_pct"] >= 95
    assert d["recipients_precision_pct"] >= 95 and d["arf_feedback_type_pct"] >= 95
    # 87.5: five Sisimai `norelaying` DSNs are labelled soft; issue 16 calls "will not relay
    # for it" hard (lead's decision, branch issue16c: 88.31 -> 87.52%)
    assert d["hard_soft_pct"] >= 87.5


def test_multipart_with_a_wrong_boundary_is_resplit():
    broken = MULTI.replace(b'boundary="B"', b'boundary="NOT-THE-ONE"')
    broken = broken.replace(b"\n--B", b"\n--realboundary42").replace(b"--B\n", b"--realboundary42\n")
    r = parse(broken)
    assert r.kind == "dsn"
    assert [x.email for x in r.recipients] == ["one@example.net", "two@example.net",
                                               "three@example.net"]


def test_wrong_boundary_with_content_description_first():
    broken = MULTI.replace(b'boundary="B"', b'boundary="NOT-THE-ONE"')
    broken = broken.replace(b"\n--B\nContent-Type", b"\n--real42xyz\nContent-Description: x\nContent-Type")
    broken = broken.replace(b"--B\n", b"--real42xyz\n")
    assert parse(broken).kind == "dsn"
    assert len(parse(broken).recipients) == 3


def _plain_bounce(reason: str, extra: str = "") -> bytes:
    return (f"From: MAILER-DAEMON@mx.example.net\nTo: b-x@bounces.example\n"
            f"Subject: Undelivered Mail Returned to Sender\n\n"
            f"This is the mail system at host mx.example.net.\n\n"
            f"<bob@dest.example>: {reason}{extra}\n").encode()


@pytest.mark.parametrize("reason,phase,typ", [
    # a recipient refused at RCPT TO: the address does not exist (hard)
    ("host mx.dest.example said: 550 User unknown", " (in reply to RCPT TO command)", "hard"),
    # "user unknown" answered to the end of DATA refuses the message (a filter): soft
    ("host mx.dest.example said: 550 User unknown", " (in reply to end of DATA command)", "soft"),
    # an x.1.1 address status is believed whatever the phase
    ("host mx.dest.example said: 550 5.1.1 User unknown", " (in reply to end of DATA command)",
     "hard"),
])
def test_user_unknown_after_data_is_not_an_address_failure(reason, phase, typ):
    r = parse(_plain_bounce(reason, phase))
    assert r.kind == "dsn" and r.recipients[0].email == "bob@dest.example"
    assert r.recipients[0].type == typ


@pytest.mark.parametrize("diag,typ", [
    ("Host or domain name not found. Name service error for name=dest.example type=A: "
     "Host not found", "hard"),
    ("Host or domain name not found. Name service error for name=dest.example type=MX: "
     "Host not found, try again", "soft"),
    ("No such domain.", "hard"),
    ("an MX or SRV record indicated no SMTP service", "hard"),
])
def test_unknown_domain_with_a_status_only(diag, typ):
    ds = (b"From: MAILER-DAEMON@mx.example.net\nTo: b-x@bounces.example\nSubject: failure\n"
          b"MIME-Version: 1.0\nContent-Type: multipart/report; report-type=delivery-status; "
          b'boundary="Q"\n\n--Q\nContent-Type: text/plain\n\nfailed\n\n--Q\n'
          b"Content-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.net\n\n"
          b"Final-Recipient: rfc822; bob@dest.example\nAction: failed\nStatus: 5.4.4\n"
          b"Diagnostic-Code: X-Postfix; " + diag.encode() + b"\n\n--Q--\n")
    r = parse(ds)
    assert r.recipients[0].type == typ, r.recipients[0]
    assert r.recipients[0].bounce_class == 21


def test_exchange_ndr_without_bounce_subject():
    raw = (b"From: System Administrator <postmaster@example.net>\nTo: b-x@bounces.example\n"
           b"Subject: E\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"Z\"\n\n"
           b"--Z\nContent-Type: text/plain\n\nYour message\n\n  To: bob@dest.example\n\n"
           b"did not reach the following recipient(s):\n\nbob@dest.example on 1/1/2020\n"
           b"    The recipient name is not recognized\n    Unknown Recipient\n\n"
           b"--Z\nContent-Type: message/rfc822\n\nFrom: news@sender.example\nTo: bob@dest.example\n"
           b"Subject: hi\n\nbody\n--Z--\n")
    r = parse(raw)
    assert r.kind == "dsn" and [x.email for x in r.recipients] == ["bob@dest.example"]
    assert r.recipients[0].type == "hard"


def test_ses_notification_with_control_characters():
    inner = json.dumps({"notificationType": "Bounce", "bounce": {
        "bounceType": "Permanent", "bouncedRecipients": [
            {"emailAddress": "bob@dest.example", "status": "5.1.1",
             "diagnosticCode": "smtp; 550 5.1.1 user unknown"}]},
        "mail": {"headers": [{"name": "Subject", "value": "a\tb"}]}})
    inner = inner.replace("\\t", "\t")  # a raw control character inside a JSON string
    body = json.dumps({"Type": "Notification", "Message": inner})
    raw = (b"From: no-reply@sns.amazonaws.com\nSubject: AWS Notification Message\n"
           b"Content-Type: text/plain; charset=UTF-8\n\n" + body.encode() + b"\n")
    r = parse(raw)
    assert r.kind == "dsn" and r.recipients[0].email == "bob@dest.example"
    assert r.recipients[0].type == "hard"


SENDMAIL = b"""From: Mail Delivery Subsystem <MAILER-DAEMON@mx.example.net>
To: <b-xyz@bounces.example>
Subject: Returned mail: see transcript for details
Content-Type: text/plain

The original message was received at Thu, 29 Apr 2010 23:34:45 +0900
from [192.0.2.1]

   ----- The following addresses had permanent fatal errors -----
<one@example.net>
    (reason: 550 Unknown user one@example.net)

   ----- Transcript of session follows -----
>>> DATA
<<< 550 Unknown user one@example.net

   ----- Original message follows -----
From: news@sender.example
To: one@example.net
Subject: hi

body
"""


def test_sendmail_opening_line_is_not_the_returned_copy():
    """"The original message was received at" opens Sendmail/Courier bounces: the
    explanation after it is read (here: a 'user unknown' answered to DATA, soft)."""
    r = parse(SENDMAIL)
    assert r.kind == "dsn" and [x.email for x in r.recipients] == ["one@example.net"]
    assert r.recipients[0].type == "soft" and r.recipients[0].reason == "user_unknown"


@pytest.mark.parametrize("status,diag", [
    ("5.2.1", "550 5.2.1 The email account that you tried to reach is disabled."),
    ("5.7.13", "525 5.7.13 Disabled recipient address"),
    ("5.1.1", "550 5.1.1 <x@example.net>: inactive email address"),
])
def test_disabled_account_in_a_bounce_is_hard_as_in_a_live_reply(status, diag):
    """A disabled, suspended or inactive mailbox cannot receive: hard, in a bounce mail
    exactly as in the SMTP reply (issue 16's definition), whatever Sisimai labels it."""
    raw = MULTI.replace(b"Status: 5.1.1", f"Status: {status}".encode(), 1).replace(
        b"550 5.1.1 <one@example.net>: Recipient address rejected: User unknown", diag.encode())
    one = parse(raw).recipients[0]
    assert one.email == "one@example.net" and one.type == "hard"


def test_multipart_without_any_boundary_line_is_read_as_text():
    raw = MULTI.replace(b"--B\n", b"").replace(b"--B--\n", b"").replace(
        b"Content-Type: text/plain\n", b"").replace(
        b"Content-Type: message/delivery-status\n", b"")
    r = parse(raw)
    assert r.kind == "dsn" and "one@example.net" in [x.email for x in r.recipients]


def test_bounce_naming_nobody_falls_back_to_the_returned_to():
    raw = (b"From: Mail Delivery Subsystem <MAILER-DAEMON@mx.example.net>\n"
           b"Subject: Returned mail: Cannot send message for 5 days\n"
           b"To: news@sender.example\n\n"
           b"   ----- Transcript of session follows -----\n"
           b"421 example.com (smtp)... Deferred: Connection timed out\n\n"
           b"   ----- Unsent message follows -----\n"
           b"From: news@sender.example\nTo: alice@example.com\nSubject: hi\n\nbody\n")
    r = parse(raw)
    assert [x.email for x in r.recipients] == ["alice@example.com"]


def test_recipient_blocks_without_blank_lines_between_them():
    """Per-recipient field groups run together (no blank line): each Final-Recipient
    still starts its own recipient, with its own status and type."""
    raw = MULTI.replace(b"Diagnostic-Code: smtp; 550 5.1.1 <one@example.net>: Recipient "
                        b"address rejected: User unknown\n\n",
                        b"Diagnostic-Code: smtp; 550 5.1.1 <one@example.net>: Recipient "
                        b"address rejected: User unknown\n")
    got = {x.email: (x.status, x.type) for x in parse(raw).recipients}
    assert got["one@example.net"] == ("5.1.1", "hard")
    assert got["two@example.net"] == ("4.2.2", "soft")
