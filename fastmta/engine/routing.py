"""Routing: MX site -> routing key -> shard, and provider matching by MX host suffix.

Pure (no I/O).  A *site* is the sorted set of a domain's MX host names joined by ","
(KumoMTA's "site name"): every domain hosted on the same MX hosts shares one site and so
one connection budget.  When the site's hosts match a provider (by MX host suffix, e.g.
``google.com``), the *routing key* is the provider's name, so all of a provider's sites
land on one shard and the provider-level caps (summed over its sites) are enforced by one
worker, never multiplied by the number of workers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Protocol


class _HasSuffixes(Protocol):
    name: str
    mx_suffixes: list[str]


def normalize_host(host: str) -> str:
    """Lower-case, without the trailing root dot."""
    return host.strip().rstrip(".").lower()


def site_of(mx_hosts: Iterable[str]) -> str:
    """The site name of a set of MX host names: sorted, de-duplicated, joined by ","."""
    return ",".join(sorted({normalize_host(h) for h in mx_hosts if h and h != "."}))


def _suffix_match(host: str, suffix: str) -> bool:
    suffix = normalize_host(suffix)
    return host == suffix or host.endswith("." + suffix)


def match_provider(site_or_hosts: str | Sequence[str], providers: Sequence[_HasSuffixes]):
    """The first provider (in the given order) one of whose suffixes matches an MX host.

    ``site_or_hosts`` is a site name (hosts joined by ",") or a list of host names.
    Returns the provider object or None.
    """
    hosts = site_or_hosts.split(",") if isinstance(site_or_hosts, str) else site_or_hosts
    hosts = [normalize_host(h) for h in hosts if h]
    for provider in providers:
        for suffix in provider.mx_suffixes:
            if any(_suffix_match(h, suffix) for h in hosts):
                return provider
    return None


def routing_key(site: str, providers: Sequence[_HasSuffixes] = ()) -> str:
    """``provider:<name>`` when the site belongs to a known provider, else ``site:<site>``."""
    provider = match_provider(site, providers) if site else None
    if provider is not None:
        return f"provider:{provider.name}"
    return f"site:{site}"


def shard_of(key: str, shards: int) -> int:
    """Stable shard of a routing key (or site, or domain) in ``range(shards)``.

    Uses BLAKE2b, so it is the same in every process and every run (Python's ``hash``
    is randomized per process).
    """
    if shards <= 0:
        raise ValueError("shards must be positive")
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def assign_shards(shards: int, workers: int) -> list[list[int]]:
    """The static split by number: shard ``s`` to worker ``s % workers`` (the supervisor
    balances by weight instead: ``engine/shard_plan.py``)."""
    if workers <= 0:
        raise ValueError("workers must be positive")
    return [[s for s in range(shards) if s % workers == w] for w in range(workers)]
