"""Hostile DNS answers (issue #9): CNAME loops, an MX pointing at itself, null MX, MX
hosts on unspecified/private addresses, huge MX sets.  A scripted DNS server on loopback
answers; no query leaves the machine, and no connection is made to a refused address."""

from __future__ import annotations

import random

import pytest
from dnsutil import ScriptDns

from fastmta.config import DnsConfig
from fastmta.dns.resolver import MAX_MX_HOSTS, Resolver
from smtputil import arun

pytestmark = pytest.mark.timeout(30)


def resolve(records, domain, **kw):
    async def go():
        async with ScriptDns(records) as dns_srv:
            cfg = DnsConfig(nameservers=["127.0.0.1"], port=dns_srv.port, timeout_s=1.0, **kw)
            r = Resolver(cfg, rng=random.Random(1))
            res = await r.resolve_mx(domain)
            return res, dns_srv.queries

    return arun(go())


def test_cname_loop_on_the_domain():
    res, queries = resolve({("a.test", "CNAME"): ["b.test."],
                            ("b.test", "CNAME"): ["a.test."]}, "a.test")
    assert not res.ok and res.error.type in ("hard", "soft")
    assert queries < 40  # bounded chase, no endless loop


def test_cname_loop_on_the_mx_host():
    res, queries = resolve({("d.test", "MX"): ["10 mx.d.test."],
                            ("mx.d.test", "CNAME"): ["mx2.d.test."],
                            ("mx2.d.test", "CNAME"): ["mx.d.test."]}, "d.test")
    assert not res.ok and res.error.type == "soft" and res.error.reason == "unreachable"
    assert queries < 40


def test_mx_pointing_at_itself_without_address():
    res, _ = resolve({("self.test", "MX"): ["10 self.test."]}, "self.test")
    assert not res.ok and res.error.type == "soft"
    assert "no usable MX host" in res.detail


def test_mx_pointing_at_itself_with_address_is_fine():
    res, _ = resolve({("self.test", "MX"): ["10 self.test."],
                      ("self.test", "A"): ["127.0.0.9"]}, "self.test")
    assert res.ok and res.hosts[0].addresses == ["127.0.0.9"]


def test_null_mx_is_hard_invalid_domain():
    res, _ = resolve({("nomail.test", "MX"): ["0 ."]}, "nomail.test")
    assert not res.ok and res.error.type == "hard" and res.error.reason == "invalid_domain"
    assert "null MX" in res.detail


@pytest.mark.parametrize("addr", ["0.0.0.0", "10.1.2.3", "192.168.1.1", "172.16.0.1",
                                  "169.254.1.1", "224.0.0.1", "255.255.255.255",
                                  "100.64.0.1"])
def test_mx_on_unspecified_or_private_address_is_refused(addr):
    res, _ = resolve({("p.test", "MX"): ["10 mx.p.test."], ("mx.p.test", "A"): [addr]},
                     "p.test")
    assert not res.ok and res.error.type == "soft" and res.error.reason == "unreachable"
    assert f"refused address {addr}" in res.detail


def test_private_mx_hosts_are_skipped_when_a_public_one_exists():
    res, _ = resolve({("m.test", "MX"): ["10 bad.m.test.", "20 good.m.test."],
                      ("bad.m.test", "A"): ["10.0.0.1"], ("good.m.test", "A"): ["127.0.0.7"]},
                     "m.test")
    assert res.ok and [h.name for h in res.hosts] == ["good.m.test"]


def test_huge_mx_set_is_capped():
    n = 500
    recs = {("huge.test", "MX"): [f"{i % 50} mx{i}.huge.test." for i in range(n)]}
    for i in range(n):
        recs[(f"mx{i}.huge.test", "A")] = ["127.0.0.5"]
    res, queries = resolve(recs, "huge.test")
    assert res.ok and len(res.hosts) <= MAX_MX_HOSTS
    prefs = [h.preference for h in res.hosts]
    assert prefs == sorted(prefs) and prefs[0] == 0  # the best preferences are kept
    assert queries <= MAX_MX_HOSTS + 2  # one MX query, A only for the kept hosts
