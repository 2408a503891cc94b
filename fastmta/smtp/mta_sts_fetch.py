"""Fetching MTA-STS policies (RFC 8461 3): the ``_mta-sts.<domain>`` TXT record over the
configured resolver, then ``https://mta-sts.<domain>/.well-known/mta-sts.txt``.

The policy host is resolved with the same resolver and its address checked like an MX
host's (loopback only when every nameserver is loopback, i.e. the sim); the HTTPS port
and the trust anchors are injectable (``[compliance] mta_sts_port``/``mta_sts_cafile``:
the sim serves policies on a loopback port with its own CA).  HTTP redirects are not
followed (RFC 8461 3.3), the body is capped at 64 KB, the certificate must be valid for
``mta-sts.<domain>``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import ssl
import time

import dns.asyncresolver
import dns.exception
import dns.resolver
import msgspec

from fastmta.smtp.mta_sts import (
    MAX_POLICY_BYTES,
    Policy,
    PolicyCache,
    PolicyError,
    parse_policy,
    parse_txt,
)

__all__ = ["PolicyFetcher", "FetchResult"]


class FetchResult(msgspec.Struct, frozen=True, kw_only=True):
    """The policy to apply (None: none) and, when something failed, why (TLS-RPT
    ``sts-policy-fetch-error`` / ``sts-policy-invalid`` / ``sts-webpki-invalid``)."""

    domain: str
    policy: Policy | None = None
    source: str = ""  # fetched | cache | none
    failure: str = ""
    detail: str = ""


class PolicyFetcher:
    """Policies of recipient domains, cached for ``max_age``."""

    def __init__(self, nameservers: list[str], dns_port: int = 53, *, https_port: int = 443,
                 cafile: str | None = None, timeout_s: float = 10.0,
                 allow_loopback: bool | None = None, clock=time.time,
                 cache: PolicyCache | None = None) -> None:
        if nameservers:
            r = dns.asyncresolver.Resolver(configure=False)
            r.nameservers = list(nameservers)
            r.port = dns_port
        elif os.environ.get("FASTMTA_NO_SYSTEM_RESOLVER") == "1":
            raise ValueError("MTA-STS fetcher: no nameservers and FASTMTA_NO_SYSTEM_RESOLVER=1")
        else:
            r = dns.asyncresolver.Resolver()
        r.timeout = r.lifetime = timeout_s
        r.cache = None
        self._r = r
        self.https_port = https_port
        self.timeout_s = timeout_s
        self.clock = clock
        self.cache = cache or PolicyCache()
        loop_ns = bool(nameservers) and all(ipaddress.ip_address(n).is_loopback
                                            for n in nameservers)
        self.allow_loopback = loop_ns if allow_loopback is None else allow_loopback
        ctx = ssl.create_default_context(cafile=cafile or None)
        ctx.check_hostname = True
        self._ssl = ctx
        self.fetches = 0  # HTTPS fetches made (tests check the cache with it)
        self._inflight: dict[str, asyncio.Task] = {}

    async def _txt(self, name: str) -> tuple[list[str], str]:
        try:
            a = await self._r.resolve(name + ".", "TXT", raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN:
            return [], ""
        except dns.exception.DNSException as exc:
            return [], f"{type(exc).__name__}"
        if a.rrset is None:
            return [], ""
        return [b"".join(r.strings).decode("utf-8", "replace") for r in a.rrset], ""

    async def _address(self, host: str) -> str:
        a = await self._r.resolve(host + ".", "A", search=False)
        for r in a.rrset:
            ip = ipaddress.ip_address(r.address)
            if ip.is_loopback and self.allow_loopback:
                return r.address
            if ip.is_global:
                return r.address
        raise PolicyError(f"{host} has no usable address")

    async def txt(self, name: str) -> tuple[list[str], str]:
        """The TXT strings of ``name`` over the configured resolver, and an error text
        ("" when none; an NXDOMAIN is no records, not an error)."""
        return await self._txt(name.rstrip("."))

    async def policy_id(self, domain: str) -> str | None:
        """Only the TXT step: the STSv1 id, ``""`` for no record, None on a DNS error or
        an invalid record (used at injection, ``engine/sts_prefetch.py``)."""
        records, err = await self._txt(f"_mta-sts.{domain.lower().rstrip('.')}")
        if err:
            return None
        try:
            return parse_txt(records) or ""
        except PolicyError:
            return None

    async def policy(self, domain: str) -> FetchResult:
        """The policy of ``domain`` (one fetch at a time per domain)."""
        d = domain.lower().rstrip(".")
        task = self._inflight.get(d)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._policy(d))
            self._inflight[d] = task
            task.add_done_callback(lambda _t: self._inflight.pop(d, None))
        return await asyncio.shield(task)

    async def _policy(self, d: str) -> FetchResult:
        now = self.clock()
        cached = self.cache.get(d, now)
        records, err = await self._txt(f"_mta-sts.{d}")
        try:
            pid = parse_txt(records) if not err else None
        except PolicyError as exc:
            pid, err = None, str(exc)
        if pid is None:
            if cached is not None:  # RFC 8461 5.1: keep using a valid cached policy
                return FetchResult(domain=d, policy=cached.policy, source="cache",
                                   failure="sts-policy-fetch-error" if err else "", detail=err)
            return FetchResult(domain=d, source="none",
                               failure="sts-policy-fetch-error" if err else "", detail=err)
        if cached is not None and cached.policy.id == pid:
            return FetchResult(domain=d, policy=cached.policy, source="cache")
        host = f"mta-sts.{d}"
        try:
            text = await asyncio.wait_for(self._get(host), self.timeout_s)
            pol = parse_policy(text, pid)
        except ssl.SSLError as exc:
            return self._failed(d, cached, "sts-webpki-invalid", f"{host}: {exc}")
        except PolicyError as exc:
            return self._failed(d, cached, "sts-policy-invalid", str(exc))
        except (TimeoutError, OSError, dns.exception.DNSException) as exc:
            return self._failed(d, cached, "sts-policy-fetch-error",
                                f"{host}: {type(exc).__name__} {exc}")
        self.cache.put(d, pol, now)
        return FetchResult(domain=d, policy=pol, source="fetched")

    def _failed(self, d, cached, failure, detail) -> FetchResult:
        if cached is not None:
            return FetchResult(domain=d, policy=cached.policy, source="cache",
                               failure=failure, detail=detail)
        return FetchResult(domain=d, source="none", failure=failure, detail=detail)

    async def _get(self, host: str) -> str:
        """GET the policy file over HTTPS (HTTP/1.0: never chunked; no redirects, 64 KB cap)."""
        ip = await self._address(host)
        self.fetches += 1
        reader, writer = await asyncio.open_connection(ip, self.https_port, ssl=self._ssl,
                                                       server_hostname=host)
        try:
            writer.write((f"GET /.well-known/mta-sts.txt HTTP/1.0\r\nHost: {host}\r\n"
                          "User-Agent: fastmta\r\nConnection: close\r\n\r\n").encode())
            await writer.drain()
            data = await reader.read(MAX_POLICY_BYTES + 4096)
            while len(data) <= MAX_POLICY_BYTES + 4096:
                more = await reader.read(4096)
                if not more:
                    break
                data += more
        finally:
            writer.close()
        head, sep, body = data.partition(b"\r\n\r\n")
        if not sep:
            raise PolicyError(f"{host}: malformed HTTP response")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or parts[1] != "200":
            raise PolicyError(f"{host}: HTTP status {lines[0]!r} (redirects are not followed)")
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in lines[1:])}
        if not headers.get("content-type", "").lower().startswith("text/plain"):
            raise PolicyError(f"{host}: content type {headers.get('content-type')!r}, "
                              "not text/plain")
        if len(body) > MAX_POLICY_BYTES:
            raise PolicyError("policy file larger than 64 KB")
        return body.decode("utf-8", "replace")
