"""Sources, pools and pool rules resolved from the configuration.

``[[egress.sources]]`` / ``[[egress.pools]]`` / ``[[egress.rules]]`` when given; else the
addresses of ``[smtp] source_ips`` form one pool ``default`` of equal weights (no address:
one source ``default`` that lets the OS choose).  On loopback every 127.0.0.x address is
usable as a source without any interface configuration.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from datetime import UTC, datetime

from fastmta.config import Config, EgressSourceOverride
from fastmta.errors import ConfigError

DEFAULT = "default"


@dataclass(frozen=True)
class Source:
    name: str
    ip: str  # "" = no bind
    ehlo_name: str
    warmup: bool = False
    plan: str = ""
    first_send: float = 0.0  # epoch seconds from the config (0 = persisted / first use)
    overrides: dict[str, EgressSourceOverride] = field(default_factory=dict)

    def ehlo_for(self, provider: str) -> str:
        o = self.overrides.get(provider)
        return o.ehlo_name if o is not None and o.ehlo_name else self.ehlo_name

    def warms_at(self, provider: str) -> bool:
        o = self.overrides.get(provider)
        return o.warmup if o is not None and o.warmup is not None else self.warmup


@dataclass(frozen=True)
class Pool:
    name: str
    members: tuple[tuple[str, float], ...]
    overflow: str


@dataclass(frozen=True)
class EgressModel:
    sources: dict[str, Source]
    pools: dict[str, Pool]
    rules: tuple[tuple[str, str], ...]  # (from domain or "*", pool)
    default_pool: str

    def pool_for(self, from_domain: str, explicit: str = "") -> Pool:
        """The pool of a message: explicit, else the first matching rule, else default."""
        if explicit:
            pool = self.pools.get(explicit)
            if pool is None:
                raise ConfigError(f"egress pool {explicit!r} is not configured "
                                  f"(pools: {', '.join(self.pools)})")
            return pool
        d = from_domain.lower()
        for pat, pool in self.rules:
            if pat == "*" or d == pat or d.endswith("." + pat):
                return self.pools[pool]
        return self.pools[self.default_pool]


def _epoch(date: str, where: str) -> float:
    try:
        dt = datetime.fromisoformat(date)
    except ValueError:
        raise ConfigError(f"{where}: first_send {date!r} is not an ISO date") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def build_model(cfg: Config) -> EgressModel:
    """Resolve and check the egress configuration (clear errors, nothing guessed)."""
    eg = cfg.egress
    sources: dict[str, Source] = {}
    if eg.sources:
        for s in eg.sources:
            if s.name in sources:
                raise ConfigError(f"egress source {s.name!r} is defined twice")
            if s.source_ip:
                try:
                    ipaddress.ip_address(s.source_ip)
                except ValueError:
                    raise ConfigError(f"egress source {s.name!r}: {s.source_ip!r} is not an "
                                      "IP address") from None
            first = _epoch(s.first_send, f"egress source {s.name!r}") if s.first_send else 0.0
            sources[s.name] = Source(s.name, s.source_ip, s.ehlo_name or cfg.smtp.ehlo_name,
                                     s.warmup, s.plan or eg.warmup_plan, first,
                                     dict(s.providers))
    elif cfg.smtp.source_ips:
        for ip in cfg.smtp.source_ips:
            sources[ip] = Source(ip, ip, cfg.smtp.ehlo_name)
    else:
        sources[DEFAULT] = Source(DEFAULT, "", cfg.smtp.ehlo_name)
    pools: dict[str, Pool] = {}
    for p in eg.pools:
        if p.name in pools:
            raise ConfigError(f"egress pool {p.name!r} is defined twice")
        members = []
        for m in p.members:
            if m.source not in sources:
                raise ConfigError(f"egress pool {p.name!r}: unknown source {m.source!r}")
            if m.weight < 0:
                raise ConfigError(f"egress pool {p.name!r}: weight of {m.source!r} < 0")
            members.append((m.source, m.weight))
        if not any(w > 0 for _, w in members):
            raise ConfigError(f"egress pool {p.name!r} has no member with a weight > 0")
        pools[p.name] = Pool(p.name, tuple(members), p.overflow or eg.overflow)
    if not pools:
        pools[DEFAULT] = Pool(DEFAULT, tuple((n, 1.0) for n in sources), eg.overflow)
    default = eg.default_pool or next(iter(pools))
    if default not in pools:
        raise ConfigError(f"egress default_pool {default!r} is not configured")
    rules = []
    for r in eg.rules:
        if r.pool not in pools:
            raise ConfigError(f"egress rule for {r.from_domain!r}: unknown pool {r.pool!r}")
        rules.append((r.from_domain.lower().lstrip("@"), r.pool))
    return EgressModel(sources, pools, tuple(rules), default)
