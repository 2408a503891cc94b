"""The pure checks over hand-made facts (no DNS, no sockets): the feedback settings'
interface, alignment on the Public Suffix List, DMARC parsing, and DNS failures."""

from __future__ import annotations

from types import SimpleNamespace

from fastmta.compliance.checks import aligned, check_unsubscribe, evaluate, org_domain, parse_dmarc
from fastmta.compliance.facts import Facts, Lookup, PtrFact, SignerFact
from fastmta.compliance.gather import feedback_unsubscribe_url

SIGNED = ["from", "to", "subject", "list-unsubscribe", "list-unsubscribe-post"]


def facts(**kw) -> Facts:
    base = dict(
        headers=[("From", "News <news@mail.shop.co.uk>"), ("Subject", "x")],
        signers=[SignerFact(domain="shop.co.uk", selector="s", headers=SIGNED,
                            record="v=DKIM1; k=ed25519; p=AAA",
                            published=Lookup(name="s._domainkey.shop.co.uk", rdtype="TXT",
                                             records=["v=DKIM1; k=ed25519; p=AAA"]))],
        dmarc=Lookup(name="_dmarc.mail.shop.co.uk", rdtype="TXT", status="nxdomain"),
        dmarc_org=Lookup(name="_dmarc.shop.co.uk", rdtype="TXT",
                         records=["v=DMARC1; p=reject"]),
        spf={"192.0.2.1": ("pass", "")}, source_ips=["192.0.2.1"], ehlo_name="mta.shop.co.uk",
        ptr=[PtrFact(ip="192.0.2.1", ptr=Lookup(name="1.2.0.192.in-addr.arpa", rdtype="PTR",
                                                records=["mta.shop.co.uk"]),
                     forward={"mta.shop.co.uk": Lookup(name="mta.shop.co.uk", rdtype="A",
                                                       records=["192.0.2.1"])})],
        feedback_unsubscribe_url="https://shop.co.uk/u/{token}")
    base.update(kw)
    return Facts(**base)


def test_psl_alignment():
    assert org_domain("mail.shop.co.uk") == "shop.co.uk"
    assert aligned("shop.co.uk", "mail.shop.co.uk")
    assert not aligned("shop.co.uk", "mail.shop.co.uk", strict=True)
    assert not aligned("other.co.uk", "shop.co.uk")  # co.uk is a public suffix


def test_feedback_settings_can_add_the_headers():
    # no List-Unsubscribe in the message, but [feedback] unsubscribe_url adds them
    assert evaluate(facts()) == []
    got = evaluate(facts(feedback_unsubscribe_url=""))
    assert [f.code for f in got] == ["one_click_unsubscribe_missing"]
    # added after signing: not covered by the signature
    got = check_unsubscribe(facts(feedback_signed=False))
    assert [f.code for f in got] == ["unsubscribe_not_signed"]


def test_feedback_config_read_defensively():
    assert feedback_unsubscribe_url(SimpleNamespace()) == ""
    assert feedback_unsubscribe_url(SimpleNamespace(feedback=SimpleNamespace())) == ""
    cfg = SimpleNamespace(feedback=SimpleNamespace(unsubscribe_url="https://x/u"))
    assert feedback_unsubscribe_url(cfg) == "https://x/u"


def test_strict_dkim_alignment_fails_a_parent_domain_key():
    strict = Lookup(name="_dmarc.shop.co.uk", rdtype="TXT",
                    records=["v=DMARC1; p=none; adkim=s; aspf=s"])
    got = evaluate(facts(dmarc_org=strict, envelope_from="bounce@shop.co.uk"))
    assert [(f.code, f.level) for f in got] == [("dmarc_alignment", "error")]
    assert "(adkim=s: exact match)" in got[0].detail
    # SPF of the From domain itself passes: aspf=s is met, DKIM alone is not aligned
    got = evaluate(facts(dmarc_org=strict))
    assert [(f.code, f.level) for f in got] == [("dmarc_alignment", "warning")]


def test_parse_dmarc():
    assert parse_dmarc("v=DMARC1; p=none; rua=mailto:a@b") == {"v": "DMARC1", "p": "none",
                                                                "rua": "mailto:a@b"}
    assert parse_dmarc("p=none; v=DMARC1") is None  # v= must come first
    assert parse_dmarc("v=spf1 -all") is None


def test_dns_errors_are_never_passes():
    fail = Lookup(name="_dmarc.mail.shop.co.uk", rdtype="TXT", status="error", detail="timeout")
    got = evaluate(facts(dmarc=fail))
    assert [(f.code, f.level) for f in got] == [("dns_unavailable", "error")]
    got = evaluate(facts(spf={"192.0.2.1": ("temperror", "DNS timeout")}))
    assert [f.code for f in got] == ["dns_unavailable"]
    ptr = [PtrFact(ip="192.0.2.1", ptr=Lookup(name="1.2.0.192.in-addr.arpa", rdtype="PTR",
                                              status="error", detail="SERVFAIL"))]
    assert [f.code for f in evaluate(facts(ptr=ptr))] == ["dns_unavailable"]


def test_ehlo_name_not_the_ptr_name_is_a_warning():
    got = evaluate(facts(ehlo_name="localhost"))
    assert [(f.code, f.level) for f in got] == [("ptr_mismatch", "warning")]
    assert got[0].detail.endswith('Fix: set [smtp] ehlo_name = "mta.shop.co.uk"')
