from __future__ import annotations

import pytest

from fastmta.config import ProviderConfig
from fastmta.engine.routing import assign_shards, match_provider, routing_key, shard_of, site_of


def test_site_is_sorted_lowercase_set():
    assert site_of(["MX2.Example.com.", "mx1.example.com", "mx2.example.com"]) == \
        "mx1.example.com,mx2.example.com"
    assert site_of([]) == ""


def test_provider_match_by_suffix_not_substring():
    google = ProviderConfig(name="google", mx_suffixes=["google.com"])
    ms = ProviderConfig(name="ms", mx_suffixes=["protection.outlook.com"])
    assert match_provider("alt1.aspmx.l.google.com,aspmx.l.google.com", [ms, google]) is google
    assert match_provider(["x-com.mail.protection.outlook.com"], [ms, google]) is ms
    assert match_provider("mx.notgoogle.com", [google]) is None  # suffix on a label boundary
    assert match_provider("google.com", [google]) is google


def test_routing_key_groups_provider_sites():
    google = ProviderConfig(name="google", mx_suffixes=["google.com"])
    a = routing_key("aspmx.l.google.com", [google])
    b = routing_key("alt1.aspmx.l.google.com,aspmx.l.google.com", [google])
    assert a == b == "provider:google"
    assert routing_key("mx.example.org", [google]) == "site:mx.example.org"


def test_shard_is_stable_and_in_range():
    # fixed values: the hash must not depend on the process (PYTHONHASHSEED)
    assert shard_of("site:mx.example.org", 64) == shard_of("site:mx.example.org", 64)
    values = {shard_of(f"site:mx{i}.example.org", 16) for i in range(500)}
    assert values == set(range(16))
    assert shard_of("provider:google", 64) == 24
    with pytest.raises(ValueError):
        shard_of("x", 0)


def test_assign_shards_partitions():
    parts = assign_shards(10, 3)
    assert sorted(s for p in parts for s in p) == list(range(10))
    assert [len(p) for p in parts] == [4, 3, 3]
