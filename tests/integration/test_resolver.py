"""MX resolution against the simulated internet's DNS server on loopback (never the system's)."""

from __future__ import annotations

import asyncio
import random

import pytest

from fastmta.config import DnsConfig
from fastmta.dns.resolver import Resolver, _address_ok, provider_of, site_of
from fastmta.sim import SimInternet, load_world
from smtputil import arun


async def with_sim(fn, world="default", **dns_kw):
    async with SimInternet(load_world(world)) as sim:
        r = Resolver(sim.dns_config(**dns_kw), rng=random.Random(1))
        return await fn(r, sim)


def test_mx_by_preference_and_shuffle_among_equals():
    async def fn(r, sim):
        orders = set()
        for seed in range(20):
            r.rng = random.Random(seed)
            r.clear_cache()
            res = await r.resolve_mx("bigmail.test")
            assert res.ok
            names = [h.name for h in res.hosts]
            assert names[0] == "gmail-smtp-in.l.google.com"  # preference 5 first
            assert [h.preference for h in res.hosts] == [5, 10, 10]
            orders.add(tuple(names[1:]))
            assert res.provider == "gmail"
            assert res.site == ",".join(sorted(names))
        return orders

    orders = arun(with_sim(fn))
    assert len(orders) == 2  # both orders of the two preference-10 hosts occur


@pytest.mark.parametrize("domain,ok,reason,implicit", [
    ("accept.test", True, None, False),
    ("implicit.test", True, None, True),
    ("cname.test", True, None, False),
    ("cname-partial.test", True, None, False),
    ("nullmx.test", False, ("hard", "invalid_domain"), False),
    ("nxdomain.test", False, ("hard", "invalid_domain"), False),
    ("not-in-the-world.test", False, ("hard", "invalid_domain"), False),
    ("servfail.test", False, ("soft", "unreachable"), False),
    ("bad domain", False, ("hard", "invalid_domain"), False),
])
def test_outcomes(domain, ok, reason, implicit):
    async def fn(r, sim):
        return await r.resolve_mx(domain)

    res = arun(with_sim(fn))
    assert res.ok is ok, res
    if ok:
        assert res.hosts and all(a.startswith("127.0.1.") for h in res.hosts for a in h.addresses)
        assert res.implicit is implicit
    else:
        assert (res.error.type, res.error.reason) == reason
        assert res.hosts == []


def test_slow_dns_times_out_softly():
    async def fn(r, sim):
        return await r.resolve_mx("slowdns.test")

    res = arun(with_sim(fn, timeout_s=0.3))
    assert not res.ok and res.error.type == "soft" and "timeout" in res.detail


def test_cache_negative_cache_and_single_flight():
    async def fn(r, sim):
        results = await asyncio.gather(*(r.resolve_mx("accept.test") for _ in range(20)))
        q1 = r.queries
        await r.resolve_mx("accept.test")
        q2 = r.queries
        await r.resolve_mx("nxdomain.test")
        await r.resolve_mx("nxdomain.test")
        q3 = r.queries
        return results, q1, q2, q3, sim.dns.queries

    results, q1, q2, q3, served = arun(with_sim(fn))
    assert all(x.ok for x in results)
    assert q1 == 3  # one MX query + one A query per MX host, shared by 20 callers
    assert q2 == q1  # cached
    assert q3 == q2 + 1  # NXDOMAIN cached too
    assert served == q3


def test_loopback_refused_unless_allowed():
    async def fn(r, sim):
        return await r.resolve_mx("accept.test")

    res = arun(with_sim(fn, allow_loopback_mx=False))
    assert not res.ok and res.error.type == "soft" and "refused address 127.0.1" in res.detail


def test_address_policy():
    assert _address_ok("192.0.2.1", False, False) is False  # reserved documentation net
    assert _address_ok("10.1.2.3", False, False) is False
    assert _address_ok("10.1.2.3", True, False) is True
    assert _address_ok("0.0.0.0", True, True) is False
    assert _address_ok("::", True, True) is False
    assert _address_ok("127.0.0.1", False, True) is True
    assert _address_ok("8.8.8.8", False, False) is True


def test_site_and_provider():
    assert site_of(["B.example.", "a.example", "b.example"]) == "a.example,b.example"
    provs = DnsConfig().providers
    assert provider_of(["mx1.hotmail.com.olc.protection.outlook.com"], provs) == "outlook"
    assert provider_of(["mta5.am0.yahoodns.net"], provs) == "yahoo"
    assert provider_of(["mx.example.org"], provs) is None
    assert provider_of(["notgoogle.com"], provs) is None


def test_cancelled_caller_does_not_cancel_the_shared_query():
    async def fn(r, sim):
        a = asyncio.ensure_future(r.resolve_mx("slowdns.test"))
        b = asyncio.ensure_future(r.resolve_mx("slowdns.test"))
        await asyncio.sleep(0.05)
        a.cancel()
        res = await b
        return a.cancelled(), res, r.queries

    cancelled, res, queries = arun(with_sim(fn, timeout_s=3.0))
    assert cancelled and res.ok and queries == 2  # one MX + one A query
