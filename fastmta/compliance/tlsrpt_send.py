"""Sending the daily TLS-RPT aggregate reports (RFC 8460 sections 3 and 5).

For every policy domain with results on a UTC day (``tlsrpt.TlsResultLog``), the
``_smtp._tls.<domain>`` TXT record (``v=TLSRPTv1; rua=mailto:...``) names where the
report goes.  Each report is the ``tlsrpt.report`` JSON, gzip-compressed, attached as
``application/tlsrpt+gzip`` to a ``multipart/report; report-type="tlsrpt"`` message
(RFC 8460 5.3: ``TLS-Report-Domain``/``TLS-Report-Submitter`` headers, the subject and
file name it prescribes), and sent with fastmta's SMTP client to the MX hosts of the
``mailto:`` domain, looked up with the configured resolver (STARTTLS as ``[smtp] tls``).

The message is DKIM-signed when ``[dkim]`` has a key for the sender's domain.
Sent reports are remembered in ``<dir>/sent/<day>/<domain>`` so a rerun sends nothing
twice (``force`` sends again).  ``https:`` rua endpoints are reported as ``skipped``
(not implemented).  ``fastmta tls send-reports`` is the command.
"""

from __future__ import annotations

import datetime
import gzip
import json
import os
import re
import time
import uuid
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from urllib.parse import unquote

from fastmta.compliance.tlsrpt import TlsResultLog, report

__all__ = ["parse_tlsrpt_txt", "build_message", "domains_of_day", "send_reports"]

_RUA = re.compile(r"^\s*rua\s*=\s*(.*)$", re.I)


def parse_tlsrpt_txt(records: list[str]) -> list[str]:
    """The ``rua`` URIs of the ``_smtp._tls`` TXT records (RFC 8460 3): exactly one record
    starting ``v=TLSRPTv1``, else none."""
    recs = [r for r in records if r.replace(" ", "").startswith("v=TLSRPTv1")]
    if len(recs) != 1:
        return []
    for part in recs[0].split(";"):
        m = _RUA.match(part)
        if m:
            return [u.strip() for u in m.group(1).split(",") if u.strip()]
    return []


def mailto_address(uri: str) -> str | None:
    """The address of a ``mailto:`` rua URI (None for any other scheme)."""
    if not uri.lower().startswith("mailto:"):
        return None
    addr = unquote(uri[7:].split("?", 1)[0]).strip()
    if addr.count("@") != 1 or any(c in addr for c in " <>\r\n,;"):
        return None
    return addr


def _stamp(text: str) -> int:
    return int(datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")
               .replace(tzinfo=datetime.UTC).timestamp())


def build_message(rep: dict, *, from_addr: str, to_addrs: list[str],
                  now: float | None = None) -> bytes:
    """The RFC 8460 5.3 report message for the report dict ``rep``."""
    submitter = rep["organization-name"]
    domain = rep["policies"][0]["policy"]["policy-domain"] if rep["policies"] else ""
    begin = _stamp(rep["date-range"]["start-datetime"])
    end = _stamp(rep["date-range"]["end-datetime"])
    msg = EmailMessage()
    msg["From"] = from_addr
    msg["To"] = ", ".join(to_addrs)
    msg["Subject"] = (f"Report Domain: {domain} Submitter: {submitter} "
                      f"Report-ID: <{rep['report-id']}>")
    msg["Date"] = format_datetime(datetime.datetime.fromtimestamp(
        time.time() if now is None else now, datetime.UTC))
    msg["Message-ID"] = make_msgid(domain=from_addr.rpartition("@")[2] or None)
    msg["TLS-Report-Domain"] = domain
    msg["TLS-Report-Submitter"] = submitter
    msg.set_content(f"This is an aggregate TLS report (RFC 8460) from {submitter} for "
                    f"{domain}, {rep['date-range']['start-datetime']} to "
                    f"{rep['date-range']['end-datetime']}.\n")
    body = gzip.compress(json.dumps(rep, separators=(",", ":")).encode(), mtime=0)
    name = f"{submitter}!{domain}!{begin}!{end}!{uuid.uuid4().hex[:12]}.json.gz"
    msg.add_attachment(body, maintype="application", subtype="tlsrpt+gzip", filename=name)
    msg.set_type("multipart/report")  # RFC 8460 5.3 (RFC 6522)
    msg.set_param("report-type", "tlsrpt")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def domains_of_day(directory: str | os.PathLike, day: str) -> list[str]:
    return sorted({e["domain"] for e in TlsResultLog(directory).read(day) if e.get("domain")})


async def _deliver(cfg, resolver, mail_from: str, rcpts: list[str], data: bytes) -> str:
    """Send to the MX hosts of the recipients' domain; returns "" or the failure."""
    from fastmta.smtp.messages import Envelope
    from fastmta.smtp.transport import ConnectFailed, Connection

    domain = rcpts[0].rpartition("@")[2]
    mx = await resolver.resolve_mx(domain)
    if mx.error is not None:
        return f"MX of {domain}: {mx.error.reason} ({mx.error.code})"
    last = f"{domain} has no MX host"
    smtp = cfg.smtp
    for host in mx.hosts:
        for ip in host.addresses:
            try:
                conn = await Connection.open(ip, smtp.port, ehlo_name=smtp.ehlo_name,
                                             tls=smtp.tls, server_hostname=host.name,
                                             timeouts=smtp)
            except ConnectFailed as exc:
                last = f"{host.name} [{ip}]: {exc}"
                continue
            try:
                res = await conn.send(Envelope(mail_from, rcpts, data))
                await conn.quit()
            except (ConnectFailed, OSError) as exc:
                last = f"{host.name} [{ip}]: {exc}"
                continue
            if res.ok and len(res.accepted) == len(rcpts):
                return ""
            bad = [f"{r}: {rep.raw}" for r, rep, _c in res.outcomes
                   if rep is not None and rep.code >= 300]
            if res.data_reply is not None and res.data_reply.code >= 300:
                bad.append(res.data_reply.raw)
            return f"{host.name} [{ip}] refused: {'; '.join(bad) or 'not accepted'}"
    return last


async def send_reports(cfg, directory: str | os.PathLike, day: str, *, from_addr: str,
                       organization: str = "fastmta", contact: str = "",
                       domains: list[str] | None = None, force: bool = False,
                       dry_run: bool = False) -> list[dict]:
    """Send ``day``'s reports; one row per (domain, rua): status sent/skipped/failed."""
    from fastmta.dns.resolver import Resolver
    from fastmta.smtp.mta_sts_fetch import PolicyFetcher

    signers = _signers(cfg)
    fetcher = PolicyFetcher(list(cfg.dns.nameservers), cfg.dns.port,
                            timeout_s=cfg.compliance.mta_sts_timeout_s)
    resolver = Resolver(cfg.dns, cfg.smtp)
    sent_dir = Path(directory) / "sent" / day
    rows: list[dict] = []
    for domain in domains or domains_of_day(directory, day):
        marker = sent_dir / domain
        if marker.exists() and not force:
            rows.append({"domain": domain, "rua": "", "status": "skipped",
                         "detail": f"already sent ({marker})"})
            continue
        records, err = await fetcher.txt(f"_smtp._tls.{domain}")
        ruas = parse_tlsrpt_txt(records) if not err else []
        if not ruas:
            rows.append({"domain": domain, "rua": "", "status": "skipped",
                         "detail": f"no TLSRPT record ({err})" if err else
                         f"no v=TLSRPTv1 record at _smtp._tls.{domain}"})
            continue
        rep = report(directory, domain, day, organization=organization, contact=contact)
        by_domain: dict[str, list[str]] = {}
        for uri in ruas:
            addr = mailto_address(uri)
            if addr is None:
                rows.append({"domain": domain, "rua": uri, "status": "skipped",
                             "detail": "only mailto: rua is supported (https: is not done)"})
                continue
            by_domain.setdefault(addr.rpartition("@")[2].lower(), []).append(addr)
        ok = False
        for rcpts in by_domain.values():
            data = build_message(rep, from_addr=from_addr, to_addrs=rcpts)
            signed = bool(signers is not None and signers.has_key_for(
                from_addr.rpartition("@")[2]))
            if signed:  # RFC 8460 3: reports SHOULD be DKIM-signed by the submitter
                data = signers.sign_message(data) + data
            why = "dry run" if dry_run else await _deliver(cfg, resolver, from_addr, rcpts,
                                                              data)
            status = "failed" if why and not dry_run else ("dry-run" if dry_run else "sent")
            ok = ok or status == "sent"
            for r in rcpts:
                rows.append({"domain": domain, "rua": f"mailto:{r}", "status": status,
                             "detail": why, "report_id": rep["report-id"],
                             "bytes": len(data), "dkim": signed})
        if ok:
            sent_dir.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps(rows[-1]) + "\n")
    return rows


def _signers(cfg):
    """The ``[dkim]`` keys (None when DKIM is off or no key loads: reports go unsigned)."""
    if not cfg.dkim.enabled or not cfg.dkim.keys:
        return None
    from fastmta.dkim.signers import SignerSet

    try:
        return SignerSet.from_config(cfg.dkim)
    except Exception as exc:  # a broken key must not stop the reports
        import logging

        logging.getLogger("fastmta.compliance").warning("TLS-RPT reports unsigned: %s", exc)
        return None


def yesterday(now: float | None = None) -> str:
    t = datetime.datetime.fromtimestamp(time.time() if now is None else now, datetime.UTC)
    return (t - datetime.timedelta(days=1)).strftime("%Y-%m-%d")
