"""MX resolution with dnspython's async resolver: cache, negative cache, single flight.

``Resolver(DnsConfig).resolve_mx(domain) -> MxResult``:

* MX records by preference, random order among equal preferences (RFC 5321 5.1);
* no MX but an address record -> implicit MX (the domain itself, preference 0);
* null MX (RFC 7505, ``MX 0 .``) -> hard ``invalid_domain``;
* NXDOMAIN -> hard ``invalid_domain``; no MX and no address -> hard ``invalid_domain``;
* SERVFAIL, timeout, no answer from any nameserver -> soft ``unreachable``;
* CNAME chains are followed (also when the server answers only the CNAME);
* A (and AAAA when ``ipv6``) of the best ``MAX_MX_HOSTS`` MX hosts, resolved concurrently; MX hosts whose
  addresses are unspecified, private, link-local, multicast or reserved are refused
  unless ``allow_private_mx``; loopback is refused unless ``allow_loopback_mx`` (default:
  allowed exactly when every configured nameserver is a loopback address, i.e. a test
  or benchmark world); a domain left with no usable host is soft ``unreachable``.

Answers are cached for their TTL (capped by ``max_ttl_s``), NXDOMAIN/NODATA for the
SOA minimum (or ``negative_ttl_s``), SERVFAIL/timeouts for ``servfail_ttl_s``; concurrent
lookups of one name share one query.  ``site`` = sorted MX host names joined by ","
(KumoMTA's MX rollup); ``provider`` = the configured provider whose suffix matches the
MX hosts.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time
from collections import OrderedDict

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
import msgspec

from fastmta.classify.outcome import Classification
from fastmta.config import DnsConfig, SmtpConfig
from fastmta.errors import ConfigError

__all__ = ["Resolver", "MxResult", "MxHost", "site_of", "provider_of", "dns_failure"]


class MxHost(msgspec.Struct, frozen=True):
    name: str
    preference: int
    addresses: list[str]


class MxResult(msgspec.Struct, frozen=True, kw_only=True):
    """MX hosts of a domain in the order to try them, or the error that stops delivery."""

    domain: str
    hosts: list[MxHost] = msgspec.field(default_factory=list)
    site: str = ""
    provider: str | None = None
    implicit: bool = False
    error: Classification | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None

    def addresses(self) -> list[tuple[str, str]]:
        """(ip, MX host name) in try order, each IP once."""
        seen: set[str] = set()
        out = []
        for h in self.hosts:
            for a in h.addresses:
                if a not in seen:
                    seen.add(a)
                    out.append((a, h.name))
        return out


def dns_failure(kind: str, detail: str = "") -> Classification:
    """Classification of a DNS failure: ``invalid_domain`` (hard) or ``unreachable`` (soft)."""
    if kind == "invalid_domain":
        return Classification(code=550, enhanced="5.1.2", bounce_class=21, type="hard",
                               reason="invalid_domain", action="bounce")
    return Classification(code=451, enhanced="4.4.3", bounce_class=21, type="soft",
                          reason="unreachable", action="retry")


def site_of(mx_hosts) -> str:
    """Site key: the sorted set of MX host names (names or MxHost objects)."""
    names = {(h.name if isinstance(h, MxHost) else str(h)).lower().rstrip(".") for h in mx_hosts}
    return ",".join(sorted(names))


def provider_of(host_names, providers: dict[str, list[str]]) -> str | None:
    """The provider whose suffix matches an MX host name (longest suffix wins)."""
    best: tuple[int, str] | None = None
    for name in host_names:
        n = name.lower().rstrip(".")
        for prov, suffixes in providers.items():
            for suf in suffixes:
                s = suf.lower().strip(".")
                if n == s or n.endswith("." + s):
                    if best is None or len(s) > best[0]:
                        best = (len(s), prov)
    return best[1] if best else None


class _Answer(msgspec.Struct, frozen=True):
    """A cached lookup: records (text) or a failure kind."""

    records: list  # MX: [(pref, host)], A/AAAA: [ip]
    failure: str = ""  # "" | nxdomain | nodata | servfail | timeout
    detail: str = ""


_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")


def _address_ok(ip: str, allow_private: bool, allow_loopback: bool) -> bool:
    a = ipaddress.ip_address(ip)
    if a.is_loopback:
        return allow_loopback
    if a.is_unspecified or a.is_multicast or (a.version == 4 and a in _THIS_NETWORK):
        return False
    if a.is_private or a.is_link_local or a.is_reserved or not a.is_global:
        # not is_global also catches shared address space (100.64/10, RFC 6598)
        return allow_private
    return True


class Resolver:
    """MX resolution with caches (see module docstring).  One per process/event loop."""

    def __init__(self, dns_cfg: DnsConfig | None = None, smtp: SmtpConfig | None = None, *,
                 rng: random.Random | None = None) -> None:
        cfg = dns_cfg or DnsConfig()
        self.cfg = cfg
        self.rng = rng or random.Random()
        if cfg.nameservers:
            for ns in cfg.nameservers:
                try:
                    ipaddress.ip_address(ns)
                except ValueError:
                    raise ConfigError(f"[dns] nameservers must be IP addresses, not {ns!r}") \
                        from None
            r = dns.asyncresolver.Resolver(configure=False)
            r.nameservers = list(cfg.nameservers)
            r.port = cfg.port
        else:
            r = dns.asyncresolver.Resolver()  # the system's resolver (production only)
        r.timeout = cfg.timeout_s
        r.lifetime = cfg.timeout_s
        r.cache = None
        self._r = r
        all_loopback = bool(cfg.nameservers) and all(
            ipaddress.ip_address(n).is_loopback for n in cfg.nameservers)
        self.allow_loopback = all_loopback if cfg.allow_loopback_mx is None \
            else cfg.allow_loopback_mx
        self.allow_private = cfg.allow_private_mx or bool(smtp and smtp.allow_private_mx)
        self._cache: OrderedDict[tuple[str, int], tuple[float, _Answer]] = OrderedDict()
        self._inflight: dict[tuple[str, int], asyncio.Task] = {}
        self.queries = 0  # DNS queries actually sent
        self.hits = 0

    # ------------------------------------------------------------------ cache
    def _get(self, key) -> _Answer | None:
        item = self._cache.get(key)
        if item is None:
            return None
        expires, ans = item
        if expires < time.monotonic():
            del self._cache[key]
            return None
        self._cache.move_to_end(key)
        return ans

    def _put(self, key, ans: _Answer, ttl: float) -> None:
        self._cache[key] = (time.monotonic() + max(0.0, min(ttl, self.cfg.max_ttl_s)), ans)
        self._cache.move_to_end(key)
        while len(self._cache) > self.cfg.cache_size:
            self._cache.popitem(last=False)

    async def _lookup(self, name: str, rdtype: int) -> _Answer:
        """Cached answer, or one query shared by every concurrent caller (single flight).

        The query runs in its own task, so a caller that is cancelled does not cancel
        it for the others.
        """
        key = (name, rdtype)
        ans = self._get(key)
        if ans is not None:
            self.hits += 1
            return ans
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch(key))
            self._inflight[key] = task
        return await asyncio.shield(task)

    async def _fetch(self, key: tuple[str, int]) -> _Answer:
        try:
            ans, ttl = await self._query(*key)
            self._put(key, ans, ttl)
            return ans
        finally:
            self._inflight.pop(key, None)

    async def _query(self, name: str, rdtype: int, depth: int = 0) -> tuple[_Answer, float]:
        """One lookup (following CNAMEs the server did not chase), with its cache TTL."""
        cfg = self.cfg
        self.queries += 1
        try:
            a = await self._r.resolve(name + ".", rdtype, raise_on_no_answer=False,
                                      search=False)
        except dns.resolver.NXDOMAIN as exc:
            try:
                resp = exc.response(exc.qnames()[0])
            except Exception:  # no response kept by dnspython
                resp = None
            return _Answer([], "nxdomain", str(exc)), self._neg_ttl(resp)
        except dns.resolver.LifetimeTimeout as exc:
            return _Answer([], "timeout", str(exc)), cfg.servfail_ttl_s
        except dns.resolver.NoNameservers as exc:
            return _Answer([], "servfail", str(exc)), cfg.servfail_ttl_s
        except dns.exception.DNSException as exc:
            return _Answer([], "servfail", f"{type(exc).__name__}: {exc}"), cfg.servfail_ttl_s
        if a.rrset is None:
            canon = a.canonical_name.to_text(omit_final_dot=True).lower()
            if canon != name and depth < 8:
                # the server answered only the CNAME: chase it ourselves
                return await self._query(canon, rdtype, depth + 1)
            return _Answer([], "nodata"), self._neg_ttl(a.response)
        if rdtype == dns.rdatatype.MX:
            recs = [(r.preference, r.exchange.to_text(omit_final_dot=True).lower())
                    for r in a.rrset]
        else:
            recs = [r.address for r in a.rrset]
        return _Answer(recs), float(a.rrset.ttl)

    def _neg_ttl(self, response) -> float:
        ttl = self.cfg.negative_ttl_s
        if response is not None:
            for rr in response.authority:
                if rr.rdtype == dns.rdatatype.SOA:
                    ttl = min(ttl, rr.ttl, rr[0].minimum)
        return ttl

    # ------------------------------------------------------------------ public
    async def resolve_addresses(self, host: str) -> tuple[list[str], str]:
        """A (and AAAA) addresses of a host; ('' or a failure kind) as second item."""
        host = host.lower().rstrip(".")
        try:
            ipaddress.ip_address(host)
            return [host], ""
        except ValueError:
            pass
        types = [dns.rdatatype.A] + ([dns.rdatatype.AAAA] if self.cfg.ipv6 else [])
        answers = await asyncio.gather(*(self._lookup(host, t) for t in types))
        addrs: list[str] = []
        failure = ""
        for ans in answers:
            addrs.extend(ans.records)
            if ans.failure and not failure:
                failure = ans.failure
        return addrs, ("" if addrs else failure or "nodata")

    async def resolve_mx(self, domain: str) -> MxResult:
        """MX hosts of ``domain`` with their addresses, or the error (see module doc)."""
        d = domain.lower().strip().rstrip(".")
        try:
            dns.name.from_text(d)
            if not d or "@" in d or " " in d:
                raise ValueError
        except (ValueError, dns.exception.DNSException):
            return MxResult(domain=d, error=dns_failure("invalid_domain"),
                            detail="not a valid domain name")
        ans = await self._lookup(d, dns.rdatatype.MX)
        if ans.failure == "nxdomain":
            return MxResult(domain=d, error=dns_failure("invalid_domain"),
                            detail="NXDOMAIN")
        if ans.failure in ("servfail", "timeout"):
            return MxResult(domain=d, error=dns_failure("unreachable"),
                            detail=f"MX lookup {ans.failure}: {ans.detail}")
        implicit = False
        if ans.failure == "nodata" or not ans.records:
            implicit = True
            mx = [(0, d)]
        else:
            mx = list(ans.records)
            if any(host in ("", ".") for _, host in mx):
                if len(mx) == 1:
                    return MxResult(domain=d, error=dns_failure("invalid_domain"),
                                    detail="null MX (RFC 7505): domain accepts no mail")
                mx = [(p, h) for p, h in mx if host_ok(h)]
        # preference order, shuffled among equals; a hostile or broken zone with
        # hundreds of MX records gets its best MAX_MX_HOSTS looked up, not all of them
        order = sorted(mx, key=lambda ph: (ph[0], self.rng.random()))[:MAX_MX_HOSTS]
        resolved = await asyncio.gather(*(self.resolve_addresses(h) for _, h in order))
        hosts: list[MxHost] = []
        refused: list[str] = []
        failures: list[str] = []
        for (pref, host), (addrs, failure) in zip(order, resolved, strict=True):
            good = [a for a in addrs if _address_ok(a, self.allow_private, self.allow_loopback)]
            refused.extend(a for a in addrs if a not in good)
            if failure:
                failures.append(f"{host}: {failure}")
            if good:
                hosts.append(MxHost(host, pref, good))
        names = [h for _, h in order]
        site = site_of(names)
        provider = provider_of(names, self.cfg.providers)
        if not hosts:
            if implicit and failures and all(f.endswith(("nodata", "nxdomain"))
                                             for f in failures) and not refused:
                return MxResult(domain=d, site=site, implicit=True,
                                error=dns_failure("invalid_domain"),
                                detail="no MX and no address record")
            why = "; ".join(failures + [f"refused address {a}" for a in refused])
            return MxResult(domain=d, site=site, provider=provider, implicit=implicit,
                            error=dns_failure("unreachable"),
                            detail=f"no usable MX host address ({why})")
        return MxResult(domain=d, hosts=hosts, site=site, provider=provider, implicit=implicit)

    def clear_cache(self) -> None:
        self._cache.clear()


MAX_MX_HOSTS = 20  # MX hosts of one domain resolved and tried (Postfix: 5 addresses)


def host_ok(host: str) -> bool:
    return host not in ("", ".")
