"""CLI of outbound TLS policy: ``fastmta tls report`` (RFC 8460 aggregate reports)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click

from fastmta.cli import main
from fastmta.config import load_config
from fastmta.errors import FastMTAError


@main.group("tls")
def tls_group() -> None:
    """Outbound TLS policy: MTA-STS results and TLS-RPT reports (docs/compliance.md)."""


@tls_group.command("report")
@click.option("--domain", required=True, help="Recipient (policy) domain of the report.")
@click.option("--day", required=True, help="UTC day, YYYY-MM-DD.")
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None)
@click.option("--spool", "spool", type=click.Path(file_okay=False), default=None,
              help="Spool directory (the results are in <spool>/tls-rpt by default).")
@click.option("--dir", "directory", type=click.Path(file_okay=False), default=None,
              help="TLS result directory (default: [compliance] tls_rpt_dir or <spool>/tls-rpt).")
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="Write the JSON report to this file (default: stdout).")
@click.option("--organization", default="fastmta", show_default=True)
@click.option("--contact", default="", help="contact-info of the report")
def report_cmd(domain, day, config, spool, directory, out, organization, contact) -> None:
    """Write the RFC 8460 TLS report of DOMAIN for one UTC day, from the per-attempt TLS
    results the workers recorded (MTA-STS domains)."""
    from fastmta.compliance.tlsrpt import report

    _cfg, d = _config_and_dir(day, config, spool, directory)
    try:
        rep = report(d, domain, day, organization=organization, contact=contact)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--day") from exc
    text = json.dumps(rep, indent=2)
    if out:
        Path(out).write_text(text + "\n")
        click.echo(f"wrote {out}: {sum(len(p.get('failure-details', [])) for p in rep['policies'])}"
                   f" failure group(s), {len(rep['policies'])} policy/policies", err=True)
    else:
        click.echo(text)


@tls_group.command("send-reports")
@click.option("--day", default=None, help="UTC day, YYYY-MM-DD (default: yesterday).")
@click.option("--domain", "domains", multiple=True,
              help="Only this policy domain (repeatable; default: every domain of the day).")
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None)
@click.option("--spool", "spool", type=click.Path(file_okay=False), default=None,
              help="Spool directory (the results are in <spool>/tls-rpt by default).")
@click.option("--dir", "directory", type=click.Path(file_okay=False), default=None,
              help="TLS result directory (default: [compliance] tls_rpt_dir or <spool>/tls-rpt).")
@click.option("--from", "from_addr", default=None,
              help="Report sender address (default: tlsrpt@<[smtp] ehlo_name>).")
@click.option("--organization", default="fastmta", show_default=True)
@click.option("--contact", default="", help="contact-info of the reports")
@click.option("--force", is_flag=True, help="Send again reports already sent for that day.")
@click.option("--dry-run", is_flag=True, help="Look the rua up and build, but do not send.")
@click.option("--json", "as_json", is_flag=True)
def send_reports_cmd(day, domains, config, spool, directory, from_addr, organization,
                     contact, force, dry_run, as_json) -> None:
    """Send the day's RFC 8460 aggregate reports (gzip JSON) to the mailto: rua of each
    policy domain's _smtp._tls TXT record, through fastmta's SMTP client and the
    configured resolver.  Exits 1 when a report could not be sent."""
    import asyncio

    from fastmta.compliance.tlsrpt_send import send_reports, yesterday

    day = day or yesterday()
    cfg, d = _config_and_dir(day, config, spool, directory)
    sender = from_addr or f"tlsrpt@{cfg.smtp.ehlo_name}"
    if sender.count("@") != 1 or any(c in sender for c in " <>\r\n"):
        raise click.BadParameter(f"{sender!r} is not an address", param_hint="--from")
    rows = asyncio.run(send_reports(cfg, d, day, from_addr=sender, organization=organization,
                                    contact=contact, domains=list(domains) or None,
                                    force=force, dry_run=dry_run))
    if as_json:
        click.echo(json.dumps({"day": day, "reports": rows}, indent=2))
    else:
        for r in rows:
            click.echo(f"{r['status']:8} {r['domain']} {r['rua']} {r['detail']}".rstrip())
        if not rows:
            click.echo(f"no TLS results for {day} in {d}")
    if any(r["status"] == "failed" for r in rows):
        raise SystemExit(1)


def _config_and_dir(day: str, config, spool, directory):
    """Check ``--day``, load the config, and find the TLS results directory."""
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", day):
        raise click.BadParameter("use YYYY-MM-DD", param_hint="--day")
    try:
        cfg = load_config(config)
    except FastMTAError as exc:
        raise click.ClickException(str(exc)) from exc
    return cfg, directory or cfg.compliance.tls_rpt_dir or str(
        Path(spool or cfg.spool.path) / "tls-rpt")
