"""CLI commands of the delivery model and the spool (issue #3).

``analyze``, ``inject``, ``status``, ``report``, ``log``, ``quarantine list|add|remove``,
``spool info|resize|recover``.  Every command takes ``--spool DIR`` (default: the
config's ``[spool] path``) and ``--config FILE``.
"""

from __future__ import annotations

import contextlib
import csv
import os
import re
import sys
from collections.abc import Callable
from typing import Any

import click
import msgspec

from fastmta.cli import main
from fastmta.config import Config, load_config
from fastmta.errors import FastMTAError


def _cfg(config: str | None) -> Config:
    try:
        return load_config(config)
    except FastMTAError as exc:
        raise click.ClickException(str(exc)) from exc


def _spool_path(spool: str | None, cfg: Config) -> str:
    return spool or cfg.spool.path


def _open_spool(spool: str | None, cfg: Config, *, must_exist: bool = True) -> Any:
    from fastmta.spool import Spool

    path = _spool_path(spool, cfg)
    if must_exist and not os.path.exists(os.path.join(path, "data.mdb")):
        raise click.ClickException(f"no spool at {path} (use --spool DIR or [spool] path)")
    try:
        return Spool.open(path, cfg.spool)
    except FastMTAError as exc:
        raise click.ClickException(str(exc)) from exc


def parse_duration(text: str) -> float:
    """``3d``, ``36h``, ``90m``, ``45s`` or plain seconds -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([dhms]?)\s*", text)
    if not m:
        raise click.BadParameter(f"not a duration: {text!r} (e.g. 3d, 36h, 90m)")
    mult = {"d": 86400, "h": 3600, "m": 60, "s": 1, "": 1}[m.group(2)]
    return float(m.group(1)) * mult


def spool_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--config", "config", type=click.Path(dir_okay=False), default=None,
                     help="TOML configuration file.")(f)
    f = click.option("--spool", "spool", type=click.Path(file_okay=False), default=None,
                     help="Spool directory (default: [spool] path of the config).")(f)
    return f


class _ExclusionWriter:
    """Writes exclusions as CSV (default) or JSONL (``.jsonl``/``.json`` extension)."""

    def __init__(self, path: str) -> None:
        self.f = open(path, "w", encoding="utf-8", newline="")
        self.jsonl = path.lower().endswith((".jsonl", ".json", ".ndjson"))
        self.w = None if self.jsonl else csv.writer(self.f, lineterminator="\n")
        if self.w is not None:
            self.w.writerow(["line", "email", "reason", "detail"])

    def __call__(self, e: Any) -> None:
        if self.jsonl:
            self.f.write(msgspec.json.encode(e).decode() + "\n")
        else:
            assert self.w is not None
            self.w.writerow([e.line, e.email, e.reason, e.detail])

    def close(self) -> None:
        self.f.close()


def _print_analysis(a: Any, as_json: bool, title: str, compliance: list | None = None) -> None:
    from fastmta.delivery import REASON_LABELS

    if as_json:
        if compliance is None:
            click.echo(msgspec.json.encode(a).decode())
        else:
            from fastmta.compliance.preflight import to_json

            out = msgspec.to_builtins(a)
            out["compliance"] = to_json(compliance)
            click.echo(msgspec.json.encode(out).decode())
        return
    click.echo(title)
    click.echo(f"  recipients:  {a.recipients}")
    click.echo(f"  to deliver:  {a.to_deliver}  ({a.domains} domains)")
    total = sum(a.excluded.values())
    click.echo(f"  excluded:    {total}")
    for reason, n in a.excluded.items():
        if n:
            click.echo(f"    {REASON_LABELS.get(reason, reason):<30} {n}")
    if a.top_domains:
        click.echo("  top domains: " + ", ".join(f"{d} {n}" for d, n in a.top_domains[:5]))
    for w in a.warnings:
        click.echo(f"  warning: {w}")
    if compliance is not None:
        from fastmta.compliance.preflight import format_findings

        errors = sum(f.level == "error" for f in compliance)
        click.echo(f"  compliance:  {errors} error(s), {len(compliance) - errors} warning(s)"
                   + ("" if compliance else " (meets the Gmail/Yahoo bulk-sender rules)"))
        for line in format_findings(compliance):
            click.echo(f"    {line}")


def _read_message(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise click.ClickException(f"cannot read message file {path}: {exc.strerror}") from exc


@main.command()
@click.option("--recipients", "recipients", required=True, type=click.Path(dir_okay=False),
              help="Recipients: CSV with header row (email column) or JSONL.")
@click.option("--message", "message", required=True, type=click.Path(dir_okay=False),
              help="RFC 5322 message template with {{field}} placeholders.")
@click.option("--from", "mail_from", default="", help="Envelope sender (default: the From address).")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default=None,
              help="Recipients format (default: from the file extension).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--exclusions", "exclusions", type=click.Path(dir_okay=False), default=None,
              help="Write excluded rows (line, email, reason) to this CSV or .jsonl file.")
@spool_options
def analyze(recipients: str, message: str, mail_from: str, fmt: str | None, as_json: bool,
            exclusions: str | None, spool: str | None, config: str | None) -> None:
    """Analyse a delivery without sending: exclusions with reasons, warnings, and the
    compliance pre-flight (Gmail/Yahoo bulk-sender rules; docs/compliance.md)."""
    from fastmta.delivery import Template, open_recipients
    from fastmta.delivery import analyze as do_analyze

    cfg = _cfg(config)
    path = _spool_path(spool, cfg)
    quarantine = None
    if os.path.exists(os.path.join(path, "data.mdb")):
        quarantine = _open_spool(spool, cfg).precheck
    out = _ExclusionWriter(exclusions) if exclusions else None
    try:
        tpl = Template(_read_message(message))
        from fastmta.dkim.signers import key_check

        has_key = key_check(cfg.dkim)
        with open_recipients(recipients, fmt) as reader:
            a = do_analyze(reader, tpl, mail_from=mail_from, cfg=cfg.delivery,
                           quarantine=quarantine, on_excluded=out, dkim_has_key=has_key)
        from fastmta.compliance.preflight import run_preflight

        findings = run_preflight(cfg, tpl, mail_from or a.mail_from)
    except (FastMTAError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        if out is not None:
            out.close()
    _print_analysis(a, as_json, f"Analysis of {recipients} with {message}:", findings)


@main.command()
@click.option("--recipients", "recipients", required=True, type=click.Path(dir_okay=False))
@click.option("--message", "message", required=True, type=click.Path(dir_okay=False))
@click.option("--from", "mail_from", default="", help="Envelope sender (default: the From address).")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default=None)
@click.option("--validity", "validity", default=None, help="Validity period (default 3d, max 3.5d).")
@click.option("--name", "name", default="", help="Delivery name (for reports).")
@click.option("--shards", "shards", type=int, default=None, help="Shard count (default [engine] shards).")
@click.option("--route", "route", type=click.Choice(["mx", "domain"]), default="mx",
              show_default=True,
              help="Shard by MX site (resolves each domain with the configured DNS) or by "
                   "a hash of the domain name (no DNS; domains sharing MX hosts may then "
                   "be split across workers).")
@click.option("--json", "as_json", is_flag=True)
@click.option("--exclusions", "exclusions", type=click.Path(dir_okay=False), default=None)
@spool_options
def inject(recipients: str, message: str, mail_from: str, fmt: str | None, validity: str | None,
           name: str, shards: int | None, route: str, as_json: bool, exclusions: str | None,
           spool: str | None, config: str | None) -> None:
    """Create a delivery in the spool (analysed, recipients pending); prints its id.

    ``fastmta send`` does this and then sends; ``inject`` only queues.  Recipients are
    sharded by their domain's MX site (resolved with the configured DNS), as ``send``
    does, so one site's limits are never split across workers."""
    import asyncio

    from fastmta.engine.entry import inject_file

    cfg = _cfg(config)
    sp = _open_spool(spool, cfg, must_exist=False)
    out = _ExclusionWriter(exclusions) if exclusions else None
    try:
        a = asyncio.run(inject_file(
            sp, cfg, recipients, _read_message(message), mail_from=mail_from,
            validity_s=parse_duration(validity) if validity else None, name=name,
            fmt=fmt, shards=shards, on_excluded=out, route_by_mx=route == "mx"))
    except (FastMTAError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        if out is not None:
            out.close()
    _print_analysis(a, as_json, f"Delivery {a.delivery_id} queued:")


def _did(text: str) -> int:
    try:
        return int(text.lstrip("#Dd"))
    except ValueError as exc:
        raise click.BadParameter(f"not a delivery id: {text!r}") from exc


@main.command()
@click.argument("delivery")
@click.option("--json", "as_json", is_flag=True)
@spool_options
def status(delivery: str, as_json: bool, spool: str | None, config: str | None) -> None:
    """Progress of a delivery."""
    from fastmta.ops.report import build_status, format_status

    sp = _open_spool(spool, _cfg(config))
    try:
        s = build_status(sp, _did(delivery))
    except FastMTAError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(msgspec.json.encode(s).decode() if as_json else format_status(s))


@main.command()
@click.argument("delivery")
@click.option("--json", "as_json", is_flag=True)
@click.option("--top", "top", type=int, default=20, help="Domains shown in the text report.")
@spool_options
def report(delivery: str, as_json: bool, top: int, spool: str | None, config: str | None) -> None:
    """Delivery report: to deliver, sent, failed, pending, excluded, Success %, breakdowns."""
    from fastmta.ops.report import build_report, format_report

    sp = _open_spool(spool, _cfg(config))
    try:
        r = build_report(sp, _did(delivery))
    except FastMTAError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(msgspec.json.encode(r).decode() if as_json else format_report(r, top=top))


@main.command("log")
@click.argument("delivery")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl")
@click.option("--attempts", is_flag=True, help="One row per attempt (event log) instead of per recipient.")
@click.option("--output", "-o", "output", type=click.Path(dir_okay=False), default=None)
@spool_options
def log_cmd(delivery: str, fmt: str, attempts: bool, output: str | None, spool: str | None,
            config: str | None) -> None:
    """Per-recipient delivery log (CSV in PowerMTA accounting style, or JSONL)."""
    from fastmta.ops.report import attempt_rows, log_rows, write_log

    sp = _open_spool(spool, _cfg(config))
    did = _did(delivery)
    try:
        sp.delivery(did)
    except FastMTAError as exc:
        raise click.ClickException(str(exc)) from exc
    rows = attempt_rows(sp, did) if attempts else log_rows(sp, did)
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(output, "w", encoding="utf-8", newline="")) if output else sys.stdout
        write_log(rows, out, fmt)


@main.group()
def quarantine() -> None:
    """The quarantine and denylist (addresses or @domain)."""


@quarantine.command("list")
@click.option("--state", type=click.Choice(["quarantined", "denylisted", "erroneous"]), default=None)
@click.option("--json", "as_json", is_flag=True, help="JSONL output.")
@spool_options
def quarantine_list(state: str | None, as_json: bool, spool: str | None, config: str | None) -> None:
    """List entries."""
    from fastmta.ops.report import fmt_time

    sp = _open_spool(spool, _cfg(config))
    n = 0
    for e in sp.quarantine_list(state):
        n += 1
        if as_json:
            click.echo(msgspec.json.encode(msgspec.structs.asdict(e)).decode())
        else:
            click.echo(f"{e.address}\t{e.state}\t{e.reason}\thard={e.hard_count} soft={e.soft_count}"
                       f"\t{fmt_time(e.last_ms)}\t{e.source}")
    if not as_json:
        click.echo(f"{n} entr{'y' if n == 1 else 'ies'}", err=True)


@quarantine.command("add")
@click.argument("addresses", nargs=-1, required=True)
@click.option("--denylist", is_flag=True, help="Denylist (never released) instead of quarantine.")
@click.option("--reason", default="manual")
@spool_options
def quarantine_add(addresses: tuple[str, ...], denylist: bool, reason: str, spool: str | None,
                   config: str | None) -> None:
    """Add addresses (or @domain) to the quarantine or the denylist."""
    sp = _open_spool(spool, _cfg(config), must_exist=False)
    for a in addresses:
        try:
            e = sp.quarantine_add(a, state="denylisted" if denylist else "quarantined", reason=reason)
        except FastMTAError as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(f"{e.address}: {e.state}")


@quarantine.command("remove")
@click.argument("addresses", nargs=-1, required=True)
@spool_options
def quarantine_remove(addresses: tuple[str, ...], spool: str | None, config: str | None) -> None:
    """Release addresses from the quarantine / denylist."""
    sp = _open_spool(spool, _cfg(config))
    missing = 0
    for a in addresses:
        if sp.quarantine_remove(a):
            click.echo(f"{a.strip().lower()}: released")
        else:
            missing += 1
            click.echo(f"{a.strip().lower()}: not in quarantine", err=True)
    if missing == len(addresses):
        sys.exit(1)


@main.group("spool")
def spool_group() -> None:
    """Spool maintenance."""


@spool_group.command("info")
@spool_options
def spool_info(spool: str | None, config: str | None) -> None:
    """Map size, bytes used, entries per table, deliveries."""
    sp = _open_spool(spool, _cfg(config))
    inf = sp.info()
    inf["deliveries"] = [{"id": d.id, "name": d.name, "state": d.state} for d in sp.deliveries()]
    click.echo(msgspec.json.encode(inf).decode())


@spool_group.command("resize")
@click.option("--map-size", "map_size", required=True,
              help="New map size, e.g. 128G (only raising is allowed).")
@spool_options
def spool_resize(map_size: str, spool: str | None, config: str | None) -> None:
    """Raise the LMDB map size (running processes adopt it at their next transaction)."""
    m = re.fullmatch(r"(\d+)([KMGT]?)B?", map_size.strip().upper())
    if not m:
        raise click.BadParameter(f"not a size: {map_size!r}")
    size = int(m.group(1)) * 1024 ** " KMGT".index(m.group(2) or " ")
    sp = _open_spool(spool, _cfg(config))
    try:
        sp.set_map_size(size)
    except FastMTAError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"map size now {size} bytes")


@spool_group.command("recover")
@click.option("--owner", default=None, help="Recover this owner's leases (default: dead/expired ones).")
@spool_options
def spool_recover(owner: str | None, spool: str | None, config: str | None) -> None:
    """Return leases of dead or expired owners to the ready queues."""
    sp = _open_spool(spool, _cfg(config))
    click.echo(f"{sp.recover_leases(owner=owner)} recipient(s) returned to the ready queues")


@spool_group.command("expire")
@spool_options
def spool_expire(spool: str | None, config: str | None) -> None:
    """Turn pending recipients of deliveries past their validity into failed/expired."""
    sp = _open_spool(spool, _cfg(config))
    n = 0
    while True:
        k = sp.expire_due()
        n += k
        if k < 50_000:
            break
    click.echo(f"{n} recipient(s) expired")


@spool_group.command("prune-events")
@click.option("--before", "before", type=int, required=True, help="Delete events with seq < this.")
@spool_options
def spool_prune_events(before: int, spool: str | None, config: str | None) -> None:
    """Delete exported events from the event log."""
    sp = _open_spool(spool, _cfg(config))
    click.echo(f"{sp.prune_events(before)} event(s) deleted")
