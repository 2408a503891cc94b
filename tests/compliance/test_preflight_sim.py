"""A test per pre-flight check code: the simulated DNS zone that makes it pass (the
compliant good.example) and the broken variant that makes it fail, with the exact
message the user sees.  Real DNS queries to the sim's server on loopback."""

from __future__ import annotations

import pytest
from compliance_helpers import config, message

from fastmta.compliance.preflight import blocking, run_preflight
from fastmta.delivery.template import Template


def findings(cfg, msg, mail_from=""):
    return [(f.code, f.level, f.detail) for f in run_preflight(cfg, Template(msg), mail_from)]


def test_compliant_sender_passes_every_check(sim, key):
    cfg = config(sim, key[0])
    got = run_preflight(cfg, Template(message("good.example")))
    assert got == []
    assert blocking(got, cfg) == []


def test_spf_fail(sim, key):
    assert findings(config(sim, key[0]), message("nospf.example")) == [(
        "spf_fail", "error",
        "SPF of nospf.example gives 'fail' for the source IP 127.0.0.1 (SPF fail - not "
        "authorized): Gmail and Yahoo require SPF to pass for bulk mail. Fix: add "
        "ip4:127.0.0.1 to the TXT record \"v=spf1 ...\" of nospf.example")]


def test_spf_without_source_ip_is_a_warning_not_a_pass(sim, key):
    got = findings(config(sim, key[0], source_ips=()), message("good.example"))
    assert [(c, lv) for c, lv, _ in got] == [("spf_fail", "warning")]
    assert "no source IP is known" in got[0][2]


def test_dmarc_missing(sim, key):
    assert findings(config(sim, key[0]), message("nodmarc.example")) == [(
        "dmarc_missing", "error",
        "no DMARC record for nodmarc.example (TXT _dmarc.nodmarc.example): Gmail and Yahoo "
        "require one (p=none at least) of bulk senders. Fix: publish _dmarc.nodmarc.example "
        "TXT \"v=DMARC1; p=none; rua=mailto:dmarc@nodmarc.example\"")]


def test_dmarc_found_on_the_organisational_domain(sim, key):
    # news.good.example has no _dmarc record of its own: the PSL organisational domain's
    # applies (RFC 7489 6.6.3); no DKIM key for the subdomain -> only the DKIM findings
    codes = {c for c, _, _ in findings(config(sim, key[0]), message("news.good.example"))}
    assert "dmarc_missing" not in codes and "dns_unavailable" not in codes
    assert "dkim_missing" in codes


def test_dns_failure_is_dns_unavailable_never_a_pass(sim, key):
    cfg = config(sim, key[0])
    got = findings(cfg, message("dnsfail.example"))
    assert got == [(
        "dns_unavailable", "error",
        "the TXT lookup of _dmarc.dnsfail.example failed (SERVFAIL): the DMARC record was "
        "not checked; retry when DNS answers, or send with --force to skip the check")]
    assert blocking(run_preflight(cfg, Template(message("dnsfail.example"))), cfg, force=True) == []


def test_dkim_missing_no_key(sim, key):
    got = findings(config(sim, key[0]), message("nosig.example"))
    assert ("dkim_missing", "error",
            "no DKIM key signs mail from nosig.example: Gmail and Yahoo require DKIM of bulk "
            "senders. Fix: `fastmta dkim keygen --domain nosig.example --selector SELECTOR "
            "--out KEY.pem`, add a [[dkim.keys]] entry for it and publish the TXT record that "
            "`fastmta dkim records` prints") in got
    assert ("unsubscribe_not_signed", "error",
            "the List-Unsubscribe and List-Unsubscribe-Post headers would not be covered by a "
            "DKIM signature (no DKIM key signs this From domain), so receivers ignore them "
            "(RFC 8058 section 4). Fix: configure a DKIM key (see dkim_missing)") in got
    # SPF passes for the aligned envelope domain: DMARC still passes on SPF
    assert "dmarc_alignment" not in {c for c, _, _ in got}


def test_dkim_missing_key_not_published(sim, key):
    got = findings(config(sim, key[0]), message("unpublished.example"))
    assert got[0][:2] == ("dkim_missing", "error")
    assert got[0][2].startswith(
        "the DKIM key s1._domainkey.unpublished.example is not published (no TXT record): "
        "receivers cannot verify the signature. Fix: publish the record `fastmta dkim "
        "records` prints for it (s1._domainkey.unpublished.example TXT \"v=DKIM1; k=ed25519;")
    assert got[1] == (
        "dmarc_alignment", "warning",
        "DMARC relies on SPF alone: its DKIM signature will not verify (see dkim_missing); "
        "forwarded mail will fail DMARC. Fix: sign with a published key for the From domain")


def test_dmarc_alignment(sim, key):
    # From align.example (no key), envelope bounce@esp.example (SPF passes, not aligned)
    got = findings(config(sim, key[0]), message("align.example"), "bounce@esp.example")
    assert ("dmarc_alignment", "error",
            "DMARC fails: no DKIM signature and SPF does not pass for an envelope domain "
            "(esp.example) aligned with the From domain align.example. Fix: sign with a DKIM "
            "key for align.example") in got
    assert "spf_fail" not in {c for c, _, _ in got}


def test_ptr_mismatch(sim, key):
    cfg = config(sim, key[0], source_ips=["127.0.0.2", "127.0.0.4"])
    got = [f for f in findings(cfg, message("good.example")) if f[0] == "ptr_mismatch"]
    assert got == [
        ("ptr_mismatch", "error",
         "the reverse DNS of 127.0.0.2 is not forward-confirmed: its PTR mta.badptr.example "
         "does not resolve back to 127.0.0.2. Fix: add an A (or AAAA) record "
         "mta.badptr.example -> 127.0.0.2"),
        ("ptr_mismatch", "error",
         "the source IP 127.0.0.4 has no PTR record (4.0.0.127.in-addr.arpa): Gmail rejects "
         "mail from IPs without reverse DNS. Fix: ask the owner of the address block for a "
         "PTR record naming this host (e.g. mta.good.example) and an A record of that name "
         "back to the IP")]


def test_one_click_unsubscribe_missing(sim, key):
    assert findings(config(sim, key[0]), message(unsubscribe=False)) == [(
        "one_click_unsubscribe_missing", "error",
        "the message is not one-click unsubscribable (RFC 8058): it has no List-Unsubscribe "
        "header; Gmail and Yahoo require it of bulk senders. Fix: add 'List-Unsubscribe: "
        "<https://...>' (a URL naming the recipient, e.g. with {{email}}) and "
        "'List-Unsubscribe-Post: List-Unsubscribe=One-Click' to the message, or set "
        "[feedback] unsubscribe_url so that fastmta adds them per recipient")]


def test_one_click_mailto_only(sim, key):
    msg = message(unsubscribe=False, extra="List-Unsubscribe: <mailto:u@good.example>\n")
    got = findings(config(sim, key[0]), msg)
    assert [c for c, _, _ in got] == ["one_click_unsubscribe_missing"]
    assert "has no https URI (a mailto: alone is not one-click)" in got[0][2]


def test_unsubscribe_not_signed(sim, key):
    cfg = config(sim, key[0], dkim_headers=["From", "To", "Subject", "List-Unsubscribe"])
    assert findings(cfg, message()) == [(
        "unsubscribe_not_signed", "error",
        "the DKIM key(s) s1._domainkey.good.example do not sign both List-Unsubscribe and "
        "List-Unsubscribe-Post, so receivers ignore one-click unsubscribe (RFC 8058 section "
        "4). Fix: add them to [dkim] headers (or extra_headers), or use the default header "
        "list, which signs them")]


@pytest.mark.parametrize("change, detail", [
    ((b"From: News <news@good.example>", b"From: a@good.example, b@good.example"),
     "the From header must hold exactly one mailbox (RFC 5322 3.6.2), not "
     "'a@good.example, b@good.example'. Fix: one address in From; put others in Reply-To"),
    ((b"Subject: Hello\n", b"Subject: Hello\nMessage-ID: foo\n"),
     "the Message-ID header 'foo' is not <id@domain>. Fix: remove it (fastmta adds a unique "
     "one per recipient) or correct it"),
    ((b"Subject: Hello\n", b"Subject: Hello\nDate: yesterday\n"),
     "the Date header 'yesterday' is not an RFC 5322 date. Fix: remove it (fastmta adds a "
     "correct one at send time) or correct it"),
    ((b"Subject: Hello\n", b"Subject: Hello\nSubject: again\n"),
     "the subject header appears 2 times; RFC 5322 allows one (Gmail rejects such "
     "messages). Fix: keep a single one"),
])
def test_message_format(sim, key, change, detail):
    msg = message().replace(*change)
    assert findings(config(sim, key[0]), msg) == [("message_format", "error", detail)]


def test_message_format_html_only_is_a_warning(sim, key):
    msg = message().replace(b"Content-Type: text/plain", b"Content-Type: text/html")
    got = findings(config(sim, key[0]), msg)
    assert [(c, lv) for c, lv, _ in got] == [("message_format", "warning")]
    assert "no text/plain alternative" in got[0][2]


def test_missing_date_and_message_id_are_fine(sim, key):
    # fastmta adds both at send time: not a finding
    assert b"Date:" not in message() and b"Message-ID" not in message()
    assert findings(config(sim, key[0]), message()) == []
