"""Gather the pre-flight ``Facts``: the template, the configured DKIM keys and the DNS
answers (DMARC, DKIM keys, SPF through ``pyspf``, PTR and its forward confirmation).

Every query goes to the configured resolver (``[dns] nameservers``; in tests and the
demo the simulated DNS).  ``pyspf`` looks names up through a module-level function; it
is replaced here by one that uses the resolver of the running evaluation and refuses to
query anything when none is set, so SPF never falls back to the system resolver.

Synchronous (dnspython's blocking resolver): call it from a thread (``asyncio.to_thread``)
when the simulated DNS runs in the caller's event loop.
"""

from __future__ import annotations

import ipaddress
import os
import threading
from typing import TYPE_CHECKING

import dns.exception
import dns.resolver
import dns.reversename
import spf

from fastmta.compliance.checks import org_domain
from fastmta.compliance.facts import Facts, Lookup, PtrFact, SignerFact
from fastmta.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from fastmta.config import Config, DnsConfig
    from fastmta.delivery.template import Template

#: Set to 1 (the test suite does) to make a configuration without [dns] nameservers
#: fail its DNS checks (``dns_unavailable``) instead of asking the machine's resolver.
NO_SYSTEM_RESOLVER = "FASTMTA_NO_SYSTEM_RESOLVER"

__all__ = ["NO_SYSTEM_RESOLVER", "DnsLookups", "gather_facts", "source_ips", "feedback_unsubscribe_url"]


class DnsLookups:
    """Blocking lookups over the configured nameservers, as ``Lookup`` values."""

    def __init__(self, cfg: DnsConfig) -> None:
        if cfg.nameservers:
            for ns in cfg.nameservers:
                try:
                    ipaddress.ip_address(ns)
                except ValueError:
                    raise ConfigError(f"[dns] nameservers must be IP addresses, not {ns!r}") \
                        from None
            r = dns.resolver.Resolver(configure=False)
            r.nameservers = list(cfg.nameservers)
            r.port = cfg.port
        elif os.environ.get(NO_SYSTEM_RESOLVER) == "1":
            r = None  # tests: never the machine's resolver
        else:
            r = dns.resolver.Resolver()  # the system's resolver (production only)
        self.resolver = r
        self.queries = 0
        if r is None:
            return
        r.timeout = cfg.timeout_s
        r.lifetime = cfg.timeout_s
        r.cache = None

    @property
    def lifetime(self) -> float:
        return self.resolver.lifetime if self.resolver is not None else 1.0

    def lookup(self, name: str, rdtype: str) -> Lookup:
        name = name.lower().rstrip(".")
        if self.resolver is None:
            return Lookup(name=name, rdtype=rdtype, status="error",
                          detail=f"no [dns] nameservers and {NO_SYSTEM_RESOLVER}=1")
        self.queries += 1
        try:
            a = self.resolver.resolve(name + ".", rdtype, raise_on_no_answer=False,
                                      search=False)
        except dns.resolver.NXDOMAIN:
            return Lookup(name=name, rdtype=rdtype, status="nxdomain")
        except dns.resolver.LifetimeTimeout:
            return Lookup(name=name, rdtype=rdtype, status="error", detail="timeout")
        except dns.resolver.NoNameservers:
            return Lookup(name=name, rdtype=rdtype, status="error", detail="SERVFAIL")
        except (dns.exception.DNSException, OSError) as exc:
            return Lookup(name=name, rdtype=rdtype, status="error",
                          detail=f"{type(exc).__name__}: {exc}")
        if a.rrset is None:
            return Lookup(name=name, rdtype=rdtype, status="nodata")
        if rdtype == "TXT":
            recs = [b"".join(r.strings).decode("utf-8", "replace") for r in a.rrset]
        elif rdtype in ("A", "AAAA"):
            recs = [r.address for r in a.rrset]
        elif rdtype == "PTR":
            recs = [r.target.to_text(omit_final_dot=True).lower() for r in a.rrset]
        else:
            recs = [r.to_text() for r in a.rrset]
        return Lookup(name=name, rdtype=rdtype, records=recs)


# --------------------------------------------------------------------------- pyspf
_local = threading.local()


def _spf_lookup(name, qtype, strict=True, timeout=30):
    """pyspf's DNS function, over the resolver of the evaluation running in this thread."""
    lk: DnsLookups | None = getattr(_local, "lookups", None)
    if lk is None:
        raise spf.TempError("DNS: no resolver configured for this SPF evaluation")
    name = str(name).rstrip(".")
    look = lk.lookup(name, qtype)
    if look.failed:
        raise spf.TempError(f"DNS {look.detail}")
    out = []
    for rec in look.records:
        if qtype in ("TXT", "SPF"):
            out.append(((name, qtype), [rec.encode()]))
        elif qtype == "MX":
            pref, _, host = rec.partition(" ")
            out.append(((name, qtype), (int(pref), host.rstrip("."))))
        else:
            out.append(((name, qtype), rec))
    return out


spf.DNSLookup = _spf_lookup  # never pyspf's own (system resolver) lookups


def evaluate_spf(lookups: DnsLookups, ip: str, sender: str, helo: str) -> tuple[str, str]:
    """(result, explanation) of RFC 7208 ``check_host`` for one source IP."""
    _local.lookups = lookups
    try:
        q = spf.query(i=ip, s=sender, h=helo or "localhost", timeout=lookups.lifetime)
        result, _code, why = q.check()
    except Exception as exc:  # pyspf raises on some malformed input
        return "permerror", f"{type(exc).__name__}: {exc}"
    finally:
        _local.lookups = None
    return str(result), str(why)


# --------------------------------------------------------------------------- facts
def source_ips(cfg: Config) -> list[str]:
    """The public source addresses of the pool ([compliance], else [smtp] source_ips)."""
    return list(cfg.compliance.source_ips or cfg.smtp.source_ips)


def feedback_unsubscribe_url(cfg: Config) -> str:
    """``[feedback] unsubscribe_url`` when the feedback settings (issue 15) exist and set
    it: fastmta then adds RFC 8058 headers per recipient (before signing)."""
    fb = getattr(cfg, "feedback", None)
    url = getattr(fb, "unsubscribe_url", "") if fb is not None else ""
    return url if isinstance(url, str) else ""


def _signers(cfg: Config, from_domain: str, lookups: DnsLookups | None) -> list[SignerFact]:
    from fastmta.dkim.signers import SignerSet

    if not from_domain:
        return []
    out = []
    for s in SignerSet.from_config(cfg.dkim).signers_for(from_domain):
        pub = lookups.lookup(s.dns_name, "TXT") if lookups is not None else None
        out.append(SignerFact(domain=s.domain, selector=s.selector,
                              headers=list(s.header_names), record=s.dns_record(),
                              published=pub))
    return out


def _ptr(lookups: DnsLookups, ip: str) -> PtrFact:
    rev = dns.reversename.from_address(ip).to_text(omit_final_dot=True)
    look = lookups.lookup(rev, "PTR")
    fwd = {}
    if not look.failed:
        rdtype = "AAAA" if ":" in ip else "A"
        for n in look.records[:10]:
            fwd[n] = lookups.lookup(n, rdtype)
    return PtrFact(ip=ip, ptr=look, forward=fwd)


def gather_facts(cfg: Config, template: Template, mail_from: str = "", *,
                 lookups: DnsLookups | None = None, dns_checks: bool = True) -> Facts:
    """The facts of one delivery (``dns_checks=False``: message and keys only)."""
    fd = template.from_domain
    env = mail_from or template.from_address
    if dns_checks and lookups is None:
        lookups = DnsLookups(cfg.dns)
    facts = Facts(
        headers=list(template.headers), body=template.body, size=template.size,
        envelope_from=env, feedback_unsubscribe_url=feedback_unsubscribe_url(cfg),
        signers=_signers(cfg, fd, lookups if dns_checks else None),
        source_ips=source_ips(cfg), ehlo_name=cfg.smtp.ehlo_name,
        max_message_bytes=cfg.compliance.max_message_bytes)
    if not dns_checks or lookups is None:
        return facts
    if fd:
        facts.dmarc = lookups.lookup(f"_dmarc.{fd}", "TXT")
        org = org_domain(fd)
        if org != fd and not facts.dmarc.failed and not any(
                r.startswith("v=DMARC1") for r in facts.dmarc.records):
            facts.dmarc_org = lookups.lookup(f"_dmarc.{org}", "TXT")
    env_dom = env.rpartition("@")[2]
    if env_dom:
        for ip in facts.source_ips:
            facts.spf[ip] = evaluate_spf(lookups, ip, env, cfg.smtp.ehlo_name)
    facts.ptr = [_ptr(lookups, ip) for ip in facts.source_ips]
    return facts
