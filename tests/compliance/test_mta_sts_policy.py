"""MTA-STS as pure policy (RFC 8461): TXT and policy parsing, MX matching, decisions,
and the cache honouring max_age.  No sockets."""

from __future__ import annotations

import pytest

from fastmta.smtp.mta_sts import (
    PolicyCache,
    PolicyError,
    decide,
    mx_matches,
    parse_policy,
    parse_txt,
)

POLICY = "version: STSv1\r\nmode: enforce\r\nmx: mx1.example.com\r\nmx: *.example.net\r\nmax_age: 86400\r\n"


def test_parse_txt():
    assert parse_txt(["v=STSv1; id=20260101T00"]) == "20260101T00"
    assert parse_txt(["v=spf1 -all"]) is None
    assert parse_txt(["v=STSv1; id=a", "v=STSv1; id=b"]) is None  # two records: none
    with pytest.raises(PolicyError):
        parse_txt(["v=STSv1; id=not valid!"])


def test_parse_policy_and_matching():
    p = parse_policy(POLICY, "x1")
    assert (p.mode, p.mx, p.max_age, p.id) == ("enforce", ("mx1.example.com", "*.example.net"),
                                               86400, "x1")
    assert p.matches("MX1.example.com.") and p.matches("a.example.net")
    assert not p.matches("a.b.example.net") and not p.matches("example.net")
    assert not mx_matches("*.example.net", ".example.net")
    assert parse_policy("version: STSv1\nmode: testing\nmx: a.b\nmax_age: 9999999999").max_age \
        == 31557600  # capped at a year


@pytest.mark.parametrize("text, err", [
    ("mode: enforce\nmx: a\nmax_age: 1", "version"),
    ("version: STSv1\nmode: strict\nmx: a\nmax_age: 1", "mode"),
    ("version: STSv1\nmode: enforce\nmax_age: 1", "no mx"),
    ("version: STSv1\nmode: enforce\nmx: a", "no max_age"),
    ("version: STSv1\nmode: enforce\nmx: a\nmax_age: -1", "invalid max_age"),
])
def test_invalid_policies(text, err):
    with pytest.raises(PolicyError, match=err):
        parse_policy(text)


def test_decide_enforce_and_testing():
    enforce = parse_policy(POLICY)
    testing = parse_policy(POLICY.replace("enforce", "testing"))
    assert decide(enforce, "mx1.example.com", tls=True, verified=True) == (True, "")
    assert decide(enforce, "evil.example.org", tls=True, verified=True) == \
        (False, "validation-failure")
    assert decide(enforce, "mx1.example.com", tls=True, verified=False) == \
        (False, "certificate-not-trusted")
    assert decide(enforce, "mx1.example.com", tls=False, verified=False) == \
        (False, "starttls-not-supported")
    assert decide(testing, "evil.example.org", tls=False, verified=False) == \
        (True, "validation-failure")
    assert decide(None, "any", tls=False, verified=False) == (True, "")


def test_cache_honours_max_age():
    c = PolicyCache()
    p = parse_policy(POLICY.replace("86400", "100"))
    c.put("example.com", p, now=1000.0)
    assert c.get("example.com", 1099.9).policy == p
    assert c.get("example.com", 1100.0) is None  # expired after max_age
    assert len(c) == 0
