"""MTA-STS in the engine (RFC 8461): which MX hosts a domain may use and how TLS is set up.

The worker asks the gate once per domain (memoised for ``MEMO_S``, an hour for domains
without a policy) after resolving its MX; domains the injection found without an
``_mta-sts`` record (``sts_prefetch.py``) cost it no query.  A domain with an ``enforce`` or ``testing`` policy gets its own site,
``mta-sts:<domain>`` (its policy must not leak to other domains of the same MX hosts):

* ``enforce``: only MX hosts matching the policy are tried (none matches: each
  connection is refused locally with a 421 4.7.10 reply naming the policy, so the
  recipients are retried and expire), and connections use
  ``tls = "verify"`` against ``[compliance] mta_sts_cafile`` (empty: the system store);
  a failed verification is a failed connection (next MX, then retry later);
* ``testing``: every MX host is kept; the connection tries verified TLS, records the
  failure and delivers over opportunistic TLS.

Every attempt on such a site is recorded for TLS-RPT (``compliance/tlsrpt.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import msgspec

from fastmta.compliance.tlsrpt import TlsResultLog
from fastmta.engine.sts_prefetch import PrefetchedTxt
from fastmta.smtp.mta_sts import Policy
from fastmta.smtp.mta_sts_fetch import FetchResult, PolicyFetcher

log = logging.getLogger("fastmta.engine.mta_sts")

__all__ = ["StsGate", "StsSite", "MEMO_S", "failure_type"]

MEMO_S = 300.0  # how long a domain's policy decision is reused before the TXT is re-read
NO_POLICY_MEMO_S = 3600.0  # ... when the domain publishes no policy (most domains): one
# TXT lookup costs ~0.7 ms of worker CPU (dnspython), so it is not repeated every 5 min


def failure_type(text: str) -> str:
    """The RFC 8460 result type of a failed STARTTLS (from the synthetic reply text)."""
    t = text.lower()
    if "not offered" in t or "starttls refused" in t:
        return "starttls-not-supported"
    if "hostname mismatch" in t or "doesn't match" in t:
        return "certificate-host-mismatch"
    if "expired" in t:
        return "certificate-expired"
    if "certificate" in t:
        return "certificate-not-trusted"
    return "validation-failure"


def policy_strings(p: Policy) -> list[str]:
    return ["version: STSv1", f"mode: {p.mode}", *[f"mx: {m}" for m in p.mx],
            f"max_age: {p.max_age}"]


class StsSite:
    """The MTA-STS state of one ``mta-sts:<domain>`` site (``Site.sts``)."""

    def __init__(self, gate: StsGate, domain: str, policy: Policy) -> None:
        self.gate = gate
        self.domain = domain
        self.policy = policy

    def record(self, mx: str, ip: str, result: str, detail: str = "") -> None:
        self.gate.record(self.domain, self.policy, mx, ip, result, detail)

    async def connect(self, connect, host: str, ip: str, smtp, source_ip: str | None):
        """Open a connection under the policy (raises ``ConnectFailed`` in enforce)."""
        from fastmta.smtp.transport import ConnectFailed

        kw = dict(ehlo_name=smtp.ehlo_name, server_hostname=host, source_ip=source_ip,
                  timeouts=smtp)
        matched = self.policy.matches(host)
        if not matched:
            self.record(host, ip, "validation-failure", "MX host not listed in the policy")
            if self.policy.mode == "enforce":
                from fastmta.classify.outcome import local

                reply, cls = local("tls_failed", "connect",
                                   f"MTA-STS enforce: MX host {host} is not in the policy of "
                                   f"{self.domain} (mx: {', '.join(self.policy.mx)})")
                raise ConnectFailed("tls_failed", reply, cls)
        try:
            conn = await connect(ip, smtp.port, tls="verify", cafile=self.gate.cafile, **kw)
        except ConnectFailed as exc:
            if exc.kind != "tls_failed":
                raise
            text = exc.reply.raw if exc.reply is not None else str(exc)
            self.record(host, ip, failure_type(text), text)
            if self.policy.mode == "enforce":
                raise
            log.info("MTA-STS testing: %s %s: %s (delivering anyway)", self.domain, host, text)
            return await connect(ip, smtp.port, tls="opportunistic", **kw)
        if matched:
            self.record(host, ip, "success")
        return conn


class StsGate:
    """Per-worker MTA-STS decisions (see module docstring)."""

    def __init__(self, cfg, spool_path: str, *, fetcher: PolicyFetcher | None = None,
                 clock=time.time) -> None:
        c = cfg.compliance
        self.cafile = c.mta_sts_cafile or None
        self.fetcher = fetcher or PolicyFetcher(
            list(cfg.dns.nameservers), cfg.dns.port, https_port=c.mta_sts_port,
            cafile=self.cafile, timeout_s=c.mta_sts_timeout_s,
            allow_loopback=cfg.dns.allow_loopback_mx, clock=clock)
        self.log = TlsResultLog(c.tls_rpt_dir or Path(spool_path) / "tls-rpt")
        self.clock = clock
        self._memo: dict[str, tuple[float, FetchResult]] = {}
        # the injection's TXT answers (engine/sts_prefetch.py): no query for domains
        # known to publish no policy
        self.prefetched = PrefetchedTxt(spool_path, clock=clock)
        self._sem = asyncio.Semaphore(32)

    def record(self, domain: str, policy: Policy | None, mx: str, ip: str, result: str,
               detail: str = "") -> None:
        try:
            self.log.record(ts=self.clock(), domain=domain,
                            policy_type="sts" if policy is not None else "no-policy-found",
                            policy=policy_strings(policy) if policy is not None else [],
                            mx=mx, ip=ip, result=result, detail=detail)
        except OSError as exc:  # reporting must never stop delivery
            log.warning("TLS-RPT record for %s failed: %s", domain, exc)

    async def _result(self, domain: str) -> FetchResult:
        now = time.monotonic()
        hit = self._memo.get(domain)
        if hit is not None and hit[0] > now:
            return hit[1]
        async with self._sem:
            try:
                fr = await self.fetcher.policy(domain)
            except Exception as exc:  # never lose the batch over a policy fetch
                log.warning("MTA-STS policy of %s: %s", domain, exc)
                fr = FetchResult(domain=domain, source="none", failure="sts-policy-fetch-error",
                                 detail=str(exc))
        if len(self._memo) > 50_000:
            self._memo.clear()
        ttl = MEMO_S if fr.policy is not None or fr.failure else NO_POLICY_MEMO_S
        self._memo[domain] = (now + ttl, fr)
        if fr.failure:
            self.record(domain, fr.policy, "", "", fr.failure, fr.detail)
        return fr

    def _known_without_policy(self, domain: str, now: float) -> bool:
        """The injection saw no ``_mta-sts`` record (and no cached policy outlives it):
        memoise "no policy" until that answer is stale."""
        until = self.prefetched.no_policy_until(domain)
        if not until or self.fetcher.cache.get(domain, self.clock()) is not None:
            return False
        ttl = min(NO_POLICY_MEMO_S, until - self.clock())
        if len(self._memo) > 50_000:
            self._memo.clear()
        self._memo[domain] = (now + ttl, FetchResult(domain=domain, source="injection"))
        return True

    async def adjust(self, resolved: dict) -> dict:
        """``domain -> MxResult`` with the MTA-STS sites substituted (see module doc)."""
        # hot path: memo hits are decided inline (no task per domain); only the domains
        # not seen for MEMO_S are fetched, concurrently
        now = time.monotonic()
        memo = self._memo
        found: dict[str, FetchResult] = {}
        todo = []
        for d, mx in resolved.items():
            if mx.error is not None:
                continue
            hit = memo.get(d)
            if hit is not None and hit[0] > now:
                if hit[1].policy is not None:
                    found[d] = hit[1]
            elif not self._known_without_policy(d, now):
                todo.append(d)
        if todo:
            for d, fr in zip(todo, await asyncio.gather(*(self._result(d) for d in todo)),
                             strict=True):
                if fr.policy is not None:
                    found[d] = fr
        if not found:
            return resolved
        out = dict(resolved)
        for d, fr in found.items():
            pol = fr.policy
            if pol is None or pol.mode == "none":
                continue
            mx = resolved[d]
            hosts = list(mx.hosts)
            if pol.mode == "enforce":
                # only matching hosts; none: keep them, every connection is then refused
                # with the reason in the reply (and a TLS-RPT validation-failure)
                hosts = [h for h in hosts if pol.matches(h.name)] or hosts
            out[d] = msgspec.structs.replace(mx, hosts=hosts, site=f"mta-sts:{d}")
        return out

    def bind(self, site, domain: str, mx) -> None:
        """Give an ``mta-sts:`` site its policy (called when a job is queued on it)."""
        if not mx.site.startswith("mta-sts:"):
            return
        hit = self._memo.get(domain)
        pol = hit[1].policy if hit is not None else None
        if pol is not None:
            site.sts = StsSite(self, domain, pol)
